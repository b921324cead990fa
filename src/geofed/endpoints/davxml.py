"""WebDAV PROPFIND/PROPPATCH bodies: the requests we send and the 207 multistatus answers we read.

Pure parsing, no I/O, so it can be tested on hand-written samples of what Apache mod_dav and
nginx dav-ext answer. The parser is incremental (:class:`MultistatusParser` takes the body chunk by
chunk and hands back every ``<response>`` as soon as it is complete): a 10 000-entry listing is
never held as a tree, only the entries decoded so far.

The XML comes from a storage server we do not control, so it goes through ``defusedxml`` with DTDs
forbidden: a multistatus never needs one, and refusing the ``<!DOCTYPE`` outright stops entity
expansion bombs ("billion laughs") and external entities before anything is expanded. Text of the
elements we keep is capped too, so a hostile body cannot grow memory through one giant node.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from urllib.parse import unquote_to_bytes, urlsplit
from xml.sax.saxutils import escape, quoteattr

from defusedxml import DefusedXmlException
from defusedxml.ElementTree import DefusedXMLParser, ParseError

from geofed.endpoints.base import StatResult

logger = logging.getLogger(__name__)

_DAV = "{DAV:}"
_MULTISTATUS = _DAV + "multistatus"
_RESPONSE = _DAV + "response"
_HREF = _DAV + "href"
_STATUS = _DAV + "status"
_PROPSTAT = _DAV + "propstat"
_PROP = _DAV + "prop"
_RESOURCETYPE = _DAV + "resourcetype"
_COLLECTION = _DAV + "collection"
_LENGTH = _DAV + "getcontentlength"
_MODIFIED = _DAV + "getlastmodified"
_ETAG = _DAV + "getetag"
_CONTENT_TYPE = _DAV + "getcontenttype"
_TEXT_PROPS = frozenset({_LENGTH, _MODIFIED, _ETAG, _CONTENT_TYPE})
# Key under which a propstat records <resourcetype><collection/>, kept apart from text properties.
_COLLECTION_MARK = _RESOURCETYPE + "/collection"

#: Namespace of the dead properties geofed keeps on a WebDAV server (``PROPPATCH``).
GEOFED_NS = "https://geofed.org/ns"
#: RFC 4331 live properties of a collection: the bytes still available / already used.
QUOTA_AVAILABLE = _DAV + "quota-available-bytes"
QUOTA_USED = _DAV + "quota-used-bytes"
_XML_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_.-]*")

# A href or property value longer than this is not a real answer; refuse rather than buffer it.
MAX_TEXT = 64 * 1024
# mod_dav and dav-ext nest at most ~6 levels; dead properties could add a few. Deeper is hostile.
MAX_DEPTH = 64

_STATUS_LINE = re.compile(r"^\s*HTTP/\d+(?:\.\d+)?\s+(\d{3})\b")
_SLASHES = re.compile(r"/{2,}")

#: The properties geofed needs for a stat or a listing entry, and nothing else: asking for named
#: properties (not ``allprop``) keeps listings small and avoids dead properties on Apache.
PROPFIND_BODY = (
    b'<?xml version="1.0" encoding="utf-8"?>\n'
    b'<D:propfind xmlns:D="DAV:"><D:prop>'
    b"<D:resourcetype/><D:getcontentlength/><D:getlastmodified/>"
    b"<D:getetag/><D:getcontenttype/>"
    b"</D:prop></D:propfind>"
)


def propfind_body() -> bytes:
    """The PROPFIND request body asking for exactly the properties a :class:`StatResult` holds."""
    return PROPFIND_BODY


def _split_name(name: str) -> tuple[str, str]:
    """``{namespace}local`` (Clark notation, as :attr:`DavItem.props` keys are) → (namespace, local)."""
    namespace, _, local = name[1:].partition("}")
    if not name.startswith("{") or not namespace or not _XML_NAME.fullmatch(local):
        raise ValueError(f"not a namespaced property name: {name!r}")
    return namespace, local


def _namespaces(names: Iterable[str]) -> tuple[dict[str, str], str]:
    """A prefix for every namespace among ``names`` (DAV: is ``D``) and their xmlns declarations."""
    prefixes = {"DAV:": "D"}
    for name in names:
        namespace = _split_name(name)[0]
        prefixes.setdefault(namespace, f"n{len(prefixes)}")
    declarations = " ".join(f"xmlns:{prefix}={quoteattr(ns)}" for ns, prefix in prefixes.items())
    return prefixes, declarations


def _qualified(prefixes: Mapping[str, str], name: str) -> str:
    namespace, local = _split_name(name)
    return f"{prefixes[namespace]}:{local}"


def propfind_named_body(names: Iterable[str]) -> bytes:
    """A PROPFIND body asking for the stat properties and ``names`` (Clark notation) besides."""
    extra = list(names)
    prefixes, declarations = _namespaces(extra)
    wanted = "".join(f"<{_qualified(prefixes, name)}/>" for name in extra)
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        f"<D:propfind {declarations}><D:prop>"
        "<D:resourcetype/><D:getcontentlength/><D:getlastmodified/><D:getetag/><D:getcontenttype/>"
        f"{wanted}</D:prop></D:propfind>"
    ).encode()


def proppatch_body(values: Mapping[str, str]) -> bytes:
    """A PROPPATCH body setting each property of ``values`` (Clark notation → text, escaped)."""
    prefixes, declarations = _namespaces(values)
    props = "".join(
        f"<{_qualified(prefixes, name)}>{escape(text)}</{_qualified(prefixes, name)}>"
        for name, text in values.items()
    )
    return (
        '<?xml version="1.0" encoding="utf-8"?>\n'
        f"<D:propertyupdate {declarations}><D:set><D:prop>{props}</D:prop></D:set></D:propertyupdate>"
    ).encode()


class DavXMLError(ValueError):
    """A multistatus body is malformed, not a multistatus, or uses forbidden XML (DTD, entities)."""


@dataclass(frozen=True, slots=True)
class DavItem:
    """One ``<response>``: the resource's decoded, normalised path and what its properties say."""

    path: str
    stat: StatResult
    props: tuple[tuple[str, str], ...] = ()
    """The extra properties the parser was asked for (Clark notation → text) that came with a 2xx
    propstat: a dead property geofed set, an RFC 4331 quota. A property listed here with an empty
    text was present but empty (a PROPPATCH answer names the properties it set that way)."""

    def prop(self, name: str) -> str | None:
        """The text of the extra property ``name``, or None when the server did not return it."""
        for key, value in self.props:
            if key == name:
                return value
        return None


def normalise_path(path: str) -> str:
    """``path`` with repeated slashes collapsed and no trailing slash; the root stays ``/``.

    WebDAV servers mark collections with a trailing slash in hrefs and some accept ``//``; geofed's
    paths have neither, so every comparison goes through this one function.
    """
    path = _SLASHES.sub("/", path)
    if len(path) > 1:
        path = path.rstrip("/")
    return path if path.startswith("/") else "/" + path


def href_to_path(href: str) -> str | None:
    """The decoded, normalised path of a ``<D:href>``, which may be an absolute URL or a path.

    Returns None when the percent-decoded bytes are not UTF-8: such a name cannot be represented in
    geofed's (text) namespace, and guessing a decoding would produce a path nobody can open.
    """
    parts = urlsplit(href.strip())
    try:
        decoded = unquote_to_bytes(parts.path).decode("utf-8")
    except UnicodeDecodeError:
        return None
    return normalise_path(decoded)


def parse_status(line: str) -> int | None:
    """The code of a ``<D:status>`` line such as ``HTTP/1.1 404 Not Found``; None if unreadable."""
    match = _STATUS_LINE.match(line)
    return int(match.group(1)) if match else None


def parse_http_date(value: str | None) -> float | None:
    """Epoch seconds of an RFC 1123 date (``getlastmodified``, ``Last-Modified``); None if invalid."""
    if not value:
        return None
    try:
        return parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError, OverflowError):
        return None


def parse_length(value: str | None) -> int | None:
    """A non-negative byte count from ``getcontentlength`` or ``Content-Length``; None if invalid."""
    if value is None:
        return None
    value = value.strip()
    return int(value) if value.isdigit() else None


class _ResponseBuilder:
    """Collects one ``<response>`` while its elements stream past."""

    __slots__ = ("hrefs", "is_dir", "ok_props", "props", "propstat_status", "status")

    def __init__(self) -> None:
        self.hrefs: list[str] = []
        self.status: int | None = None  # response-level status (the no-propstat form)
        self.is_dir = False
        self.ok_props: dict[str, str] = {}
        # The propstat being read: its properties are kept only once its status says 2xx.
        self.props: dict[str, str] = {}
        self.propstat_status: int | None = None

    def end_propstat(self) -> None:
        status = self.propstat_status
        if status is not None and 200 <= status < 300:
            self.ok_props.update(self.props)
            if _COLLECTION_MARK in self.props:
                self.is_dir = True
        self.props = {}
        self.propstat_status = None

    def items(self, extra: frozenset[str]) -> list[DavItem]:
        if self.status is not None and not 200 <= self.status < 300:
            return []  # e.g. "HTTP/1.1 404 Not Found" for a child that vanished mid-listing
        props = self.ok_props
        found = tuple((name, value) for name, value in props.items() if name in extra)
        stat = StatResult(
            is_dir=self.is_dir,
            size=parse_length(props.get(_LENGTH)),
            mtime=parse_http_date(props.get(_MODIFIED)),
            etag=props.get(_ETAG) or None,
            content_type=props.get(_CONTENT_TYPE) or None,
        )
        out = []
        for href in self.hrefs:
            path = href_to_path(href)
            if path is None:
                logger.warning("skipping a WebDAV entry whose name is not UTF-8: %r", href)
                continue
            out.append(DavItem(path, stat, found))
        return out


class _Target:
    """The expat target: tracks the element stack and turns each finished response into items."""

    def __init__(self, extra: frozenset[str] = frozenset()) -> None:
        self.ready: list[DavItem] = []
        self._extra = extra
        self._stack: list[str] = []
        self._text: list[str] = []
        self._text_len = 0
        self._keep_text = False
        self._response: _ResponseBuilder | None = None

    def _parent(self, level: int = 2) -> str | None:
        return self._stack[-level] if len(self._stack) >= level else None

    def start(self, tag: str, attrib: dict[str, str]) -> None:
        if not self._stack and tag != _MULTISTATUS:
            raise DavXMLError(f"expected a DAV:multistatus document, got <{tag}>")
        if len(self._stack) >= MAX_DEPTH:
            raise DavXMLError(f"XML nested deeper than {MAX_DEPTH} levels")
        self._stack.append(tag)
        self._text.clear()
        self._text_len = 0
        parent = self._parent()
        response = self._response
        self._keep_text = False
        if response is None:
            if tag == _RESPONSE and parent == _MULTISTATUS:
                self._response = _ResponseBuilder()
        elif tag == _COLLECTION and parent == _RESOURCETYPE and self._parent(3) == _PROP:
            response.props[_COLLECTION_MARK] = ""
        else:
            self._keep_text = self._wanted(tag, parent)

    def _wanted(self, tag: str, parent: str | None) -> bool:
        if parent == _RESPONSE:
            return tag in (_HREF, _STATUS)
        if parent == _PROPSTAT:
            return tag == _STATUS
        wanted = tag in _TEXT_PROPS or tag in self._extra
        return parent == _PROP and wanted and self._parent(3) == _PROPSTAT

    def data(self, data: str) -> None:
        if self._keep_text:
            self._text_len += len(data)
            if self._text_len > MAX_TEXT:
                raise DavXMLError(f"an element of the multistatus is longer than {MAX_TEXT} characters")
            self._text.append(data)

    def end(self, tag: str) -> None:
        response = self._response
        if response is not None and self._keep_text:
            text = "".join(self._text)
            parent = self._parent()
            if tag == _HREF:
                response.hrefs.append(text)
            elif tag == _STATUS and parent == _RESPONSE:
                response.status = parse_status(text)
            elif tag == _STATUS:
                response.propstat_status = parse_status(text)
            else:
                response.props[tag] = text.strip()
        elif response is not None and tag == _PROPSTAT:
            response.end_propstat()
        elif response is not None and tag == _RESPONSE and self._parent() == _MULTISTATUS:
            self.ready.extend(response.items(self._extra))
            self._response = None
        self._keep_text = False
        self._text.clear()
        self._text_len = 0
        self._stack.pop()

    def close(self) -> None:
        return None


class MultistatusParser:
    """Incremental parser of a 207 body: ``feed`` chunks, get back the entries completed so far.

    Per-propstat statuses are honoured (a ``404`` propstat, as nginx sends for ``getetag``, only
    means "no such property"); a response whose own status is not 2xx is dropped. ``extra`` names
    further properties (Clark notation) whose text is kept in :attr:`DavItem.props`.
    """

    def __init__(self, extra: Iterable[str] = ()) -> None:
        self._target = _Target(frozenset(extra))
        self._parser = DefusedXMLParser(
            target=self._target, forbid_dtd=True, forbid_entities=True, forbid_external=True
        )
        self._started = False

    def feed(self, chunk: bytes) -> list[DavItem]:
        """Parse one more chunk; return the entries whose ``</response>`` it completed."""
        if chunk:
            self._started = True
            try:
                self._parser.feed(chunk)
            except (ParseError, DefusedXmlException) as exc:
                raise DavXMLError(f"invalid multistatus XML: {_describe(exc)}") from exc
        return self._drain()

    def close(self) -> list[DavItem]:
        """End of body: return the last entries; DavXMLError if the document is incomplete."""
        if not self._started:
            raise DavXMLError("empty body where a multistatus was expected")
        try:
            self._parser.close()
        except (ParseError, DefusedXmlException) as exc:
            raise DavXMLError(f"invalid multistatus XML: {_describe(exc)}") from exc
        return self._drain()

    def _drain(self) -> list[DavItem]:
        ready = self._target.ready
        self._target.ready = []
        return ready


def _describe(exc: Exception) -> str:
    """A short reason: defusedxml's own messages name the forbidden construct (DTD, entity)."""
    name = type(exc).__name__
    return f"{name}: {exc}" if isinstance(exc, DefusedXmlException) else str(exc)


def parse_multistatus(body: bytes | Iterable[bytes], extra: Iterable[str] = ()) -> list[DavItem]:
    """Every entry of a whole multistatus body (or of an iterable of its chunks)."""
    parser = MultistatusParser(extra)
    items: list[DavItem] = []
    for chunk in [body] if isinstance(body, bytes) else body:
        items.extend(parser.feed(chunk))
    items.extend(parser.close())
    return items
