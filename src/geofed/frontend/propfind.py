"""PROPFIND: parsing what the client asks for and rendering the 207 Multi-Status answer.

The request body is parsed with defusedxml (no DTDs, no entities, so no entity-expansion bombs)
after a size check. The answer is produced one ``<D:response>`` at a time so that a large
collection streams to the client instead of being built in memory.
"""

from __future__ import annotations

import email.utils
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from urllib.parse import quote
from xml.etree.ElementTree import ParseError
from xml.sax.saxutils import escape

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import fromstring

from geofed.endpoints.base import StatResult
from geofed.errors import BadRequest, Forbidden

DAV = "DAV:"
KNOWN_PROPERTIES = (
    "displayname",
    "getcontentlength",
    "getlastmodified",
    "resourcetype",
    "getetag",
    "getcontenttype",
)
MULTISTATUS_OPEN = '<?xml version="1.0" encoding="utf-8"?>\n<D:multistatus xmlns:D="DAV:">\n'
MULTISTATUS_CLOSE = "</D:multistatus>\n"


@dataclass(frozen=True, slots=True)
class PropfindRequest:
    """What the client wants: every known property, only the names, or a list of (namespace, name)."""

    allprop: bool = True
    propname: bool = False
    props: tuple[tuple[str, str], ...] = ()


def parse_depth(header: str | None) -> int:
    """Depth 0 or 1; ``infinity`` is refused (RFC 4918 allows it), anything else is a 400."""
    if header is None:
        return 1
    value = header.strip().lower()
    if value in ("0", "1"):
        return int(value)
    if value == "infinity":
        raise Forbidden("PROPFIND with Depth: infinity is not supported; use Depth 0 or 1")
    raise BadRequest(f"invalid Depth header {header[:20]!r}: use 0 or 1")


def parse_body(body: bytes) -> PropfindRequest:
    """Parse a PROPFIND body; an empty body means allprop."""
    if not body.strip():
        return PropfindRequest()
    try:
        root = fromstring(body)
    except DefusedXmlException as exc:
        raise BadRequest("PROPFIND body must not contain DTDs or entity declarations") from exc
    except (ParseError, ValueError) as exc:
        raise BadRequest(f"PROPFIND body is not well-formed XML: {exc}") from exc
    if root.tag != "{DAV:}propfind":
        raise BadRequest("PROPFIND body must be a DAV: propfind element")
    children = list(root)
    if not children:
        raise BadRequest("PROPFIND body has an empty propfind element")
    first = children[0].tag
    if first == "{DAV:}allprop":
        return PropfindRequest()
    if first == "{DAV:}propname":
        return PropfindRequest(allprop=False, propname=True)
    if first == "{DAV:}prop":
        props = []
        for prop in children[0]:
            tag = prop.tag
            if not isinstance(tag, str) or not tag.startswith("{"):
                props.append(("", str(tag)))
                continue
            namespace, _, name = tag[1:].partition("}")
            props.append((namespace, name))
        return PropfindRequest(allprop=False, props=tuple(props))
    raise BadRequest("PROPFIND body must contain allprop, propname or prop")


def _known_values(name: str, stat: StatResult) -> str | None:
    """The XML text of one DAV: property for ``stat`` (None when it has no value)."""
    if name == "getcontentlength":
        return None if stat.is_dir or stat.size is None else str(stat.size)
    if name == "getlastmodified":
        return None if stat.mtime is None else email.utils.formatdate(stat.mtime, usegmt=True)
    if name == "resourcetype":
        return "<D:collection/>" if stat.is_dir else ""
    if name == "getetag":
        return None if stat.etag is None else escape(stat.etag)
    if name == "getcontenttype":
        if stat.is_dir:
            return "httpd/unix-directory"
        return escape(stat.content_type or "application/octet-stream")
    return None


OWNCLOUD = "http://owncloud.org/ns"
QUOTA_PROPERTIES = ((DAV, "quota-used-bytes"), (DAV, "quota-available-bytes"))
CHECKSUMS_PROPERTY = (OWNCLOUD, "checksums")


def checksums_value(values: Mapping[str, str]) -> str:
    """``<oc:checksum>ADLER32:… MD5:…</oc:checksum>`` as ownCloud/rclone read it (hex values)."""
    names = {"adler32": "ADLER32", "md5": "MD5", "sha256": "SHA256", "crc32c": "CRC32C"}
    text = " ".join(f"{names[a]}:{v}" for a, v in sorted(values.items()) if a in names)
    return f"<oc:checksum>{escape(text)}</oc:checksum>"


def asks_for(request: PropfindRequest, prop: tuple[str, str]) -> bool:
    """Whether the client named ``prop`` explicitly (costly properties are never in allprop)."""
    return not request.allprop and not request.propname and prop in request.props


def render_response(
    href: str,
    display: str,
    stat: StatResult,
    request: PropfindRequest,
    extra: Mapping[tuple[str, str], str] | None = None,
) -> str:
    """One ``<D:response>`` element for a resource; ``extra`` holds the XML content of properties
    computed by the caller (quota, checksums), used only when the client asked for them."""
    found: list[str] = []
    missing: list[str] = []
    if request.propname:
        found = [f"<D:{n}/>" for n in KNOWN_PROPERTIES]
    else:
        wanted = [(DAV, n) for n in KNOWN_PROPERTIES] if request.allprop else list(request.props)
        for namespace, name in wanted:
            if namespace == DAV and name == "displayname":
                found.append(f"<D:displayname>{escape(display)}</D:displayname>")
                continue
            if extra is not None and (namespace, name) in extra:
                found.append(_element(namespace, name, extra[(namespace, name)]))
                continue
            value = _known_values(name, stat) if namespace == DAV else None
            if value is None:
                if not request.allprop:
                    missing.append(_empty_element(namespace, name))
            elif value == "":
                found.append(f"<D:{name}/>")
            else:
                found.append(f"<D:{name}>{value}</D:{name}>")
    parts = [f"<D:response><D:href>{escape(href)}</D:href>"]
    if found or not missing:
        parts.append(f"<D:propstat><D:prop>{''.join(found)}</D:prop>")
        parts.append("<D:status>HTTP/1.1 200 OK</D:status></D:propstat>")
    if missing:
        parts.append(f"<D:propstat><D:prop>{''.join(missing)}</D:prop>")
        parts.append("<D:status>HTTP/1.1 404 Not Found</D:status></D:propstat>")
    parts.append("</D:response>\n")
    return "".join(parts)


def _element(namespace: str, name: str, content: str) -> str:
    if namespace == DAV:
        return f"<D:{name}>{content}</D:{name}>"
    if namespace == OWNCLOUD:
        return f'<oc:{name} xmlns:oc="{OWNCLOUD}">{content}</oc:{name}>'
    return f'<x:{name} xmlns:x="{escape(namespace, {chr(34): "&quot;"})}">{content}</x:{name}>'


def _empty_element(namespace: str, name: str) -> str:
    if namespace == DAV:
        return f"<D:{name}/>"
    if not namespace:
        return f"<{name}/>"
    return f'<x:{name} xmlns:x="{escape(namespace, {chr(34): "&quot;"})}"/>'


def child_href(collection_href: str, name: str, is_dir: bool) -> str:
    """The href of a child, built on the collection's href exactly as the client wrote it."""
    base = collection_href if collection_href.endswith("/") else collection_href + "/"
    return base + quote(name) + ("/" if is_dir else "")


def render_all(items: Iterable[str]) -> str:
    return MULTISTATUS_OPEN + "".join(items) + MULTISTATUS_CLOSE
