"""Browsing the namespace: PROPFIND (Depth 0 and 1, as WebDAV clients stat and list) and the HTML
or JSON listing a GET of a collection returns. Listings are streamed and show only the entries the
client may see.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from geofed.auth.identity import Identity, Privilege
from geofed.checksums import ALGORITHMS as ALL
from geofed.endpoints.base import StatResult
from geofed.errors import EndpointError, PayloadTooLarge
from geofed.federation.listing import ListingOutcome
from geofed.federation.locator import Replica, Want
from geofed.federation.paths import basename
from geofed.frontend import listing_html
from geofed.frontend import propfind as propfind_xml
from geofed.frontend.common import FLUSH_BYTES, Note, child
from geofed.space import total

if TYPE_CHECKING:
    from geofed.frontend.handlers import FederationFrontEnd


async def propfind(fe: FederationFrontEnd, request: web.Request, path: str, note: Note) -> web.StreamResponse:
    depth = propfind_xml.parse_depth(request.headers.get("Depth"))
    identity = note.identity
    fe.gate.require_stat(identity, path)
    limit = fe.server.max_propfind_body
    if request.content_length is not None and request.content_length > limit:
        raise PayloadTooLarge(f"PROPFIND body larger than {limit} bytes")
    body = await request.content.read(limit + 1)
    if len(body) > limit:
        raise PayloadTooLarge(f"PROPFIND body larger than {limit} bytes")
    wanted = propfind_xml.parse_body(body)
    result = await fe.locate(path, Want.FIRST, None, note)
    stat = fe.stat_from(path, result)
    extra = await _extra_properties(fe, wanted, path, stat, result.files, identity)
    note.decision = "propfind"
    href = request.raw_path.split("?", 1)[0]
    response = web.StreamResponse(status=207)
    response.content_type = "application/xml"
    response.charset = "utf-8"
    await response.prepare(request)
    chunk = propfind_xml.MULTISTATUS_OPEN + propfind_xml.render_response(
        href, basename(path) or "/", stat, wanted, extra
    )
    if depth == 1 and stat.is_dir and fe.gate.may_list(identity, path):
        outcome = ListingOutcome()
        visible = fe.gate.visible
        async for entry in fe.listings.entries(path, outcome):
            if not visible(identity, child(path, entry.name)):
                continue
            chunk += propfind_xml.render_response(
                propfind_xml.child_href(href, entry.name, entry.stat.is_dir), entry.name, entry.stat, wanted
            )
            if len(chunk) >= FLUSH_BYTES:
                await response.write(chunk.encode())
                chunk = ""
    await response.write((chunk + propfind_xml.MULTISTATUS_CLOSE).encode())
    await response.write_eof()
    return response


async def _extra_properties(
    fe: FederationFrontEnd,
    wanted: propfind_xml.PropfindRequest,
    path: str,
    stat: StatResult,
    replicas: tuple[Replica, ...],
    identity: Identity,
) -> dict[tuple[str, str], str]:
    """Properties that cost more than a stat, given only when asked for by name: RFC 4331 quota at
    the root and at mount points (the sum over the endpoints below; what is available only over
    the writable ones, since no client can use a read-only endpoint's free space), checksums of a
    file."""
    extra: dict[tuple[str, str], str] = {}
    if stat.is_dir and any(propfind_xml.asks_for(wanted, p) for p in propfind_xml.QUOTA_PROPERTIES):
        known = fe.fed.space.space
        below = _endpoints_below(fe, path)
        used = total(known.get(name) for name in below)
        writable = total(known.get(name) for name in below if fe.fed.endpoints[name].settings.writable)
        if used is not None and used.used is not None:
            extra[propfind_xml.QUOTA_PROPERTIES[0]] = str(used.used)
        if writable is not None and writable.available is not None:
            extra[propfind_xml.QUOTA_PROPERTIES[1]] = str(writable.available)
    if (
        not stat.is_dir
        and propfind_xml.asks_for(wanted, propfind_xml.CHECKSUMS_PROPERTY)
        and fe.gate.allows(identity, Privilege.READ, path)
    ):
        for replica in replicas:
            try:
                values = await fe.fed.checksums.checksums(replica.endpoint, replica.path, replica.stat, ALL)
            except EndpointError:
                continue
            if values:
                extra[propfind_xml.CHECKSUMS_PROPERTY] = propfind_xml.checksums_value(values)
                break
    return extra


def _endpoints_below(fe: FederationFrontEnd, path: str) -> list[str]:
    """Endpoints with a mount point at or below ``path``: those whose space a collection holds."""
    prefix = path.rstrip("/") + "/"
    return [
        e.name
        for e in fe.fed.settings.endpoints
        if any(p.federated == path or p.federated.startswith(prefix) or path == "/" for p in e.prefixes)
    ]


async def listing(
    fe: FederationFrontEnd, request: web.Request, path: str, identity: Identity
) -> web.StreamResponse:
    as_json = "application/json" in request.headers.get("Accept", "")
    response = web.StreamResponse(status=200)
    response.content_type = "application/json" if as_json else "text/html"
    response.charset = "utf-8"
    await response.prepare(request)
    outcome = ListingOutcome()
    base = listing_html.collection_base(request.raw_path)
    chunk = listing_html.json_head(path) if as_json else listing_html.html_head(path, base)
    first = True
    visible = fe.gate.visible
    async for entry in fe.listings.entries(path, outcome):
        if not visible(identity, child(path, entry.name)):
            continue
        chunk += listing_html.json_entry(entry, first) if as_json else listing_html.html_row(entry, base)
        first = False
        if len(chunk) >= FLUSH_BYTES:
            await response.write(chunk.encode())
            chunk = ""
    chunk += listing_html.json_tail(outcome.errors) if as_json else listing_html.html_tail(outcome.errors)
    await response.write(chunk.encode())
    await response.write_eof()
    return response
