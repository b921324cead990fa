"""``GET /_geofed/ui/browse/<path>``: the namespace for people.

A collection shows its entries (collections first, then files, by name) with size and mtime, through
the same listing machinery and visibility filter as a GET of the collection itself; a file shows its
replicas: the endpoint, its distance from the viewer, its health, and the checksums already known
(asked with ``compute=False``: looking at a page never reads a file).

Authorization is that of the federation's own requests: the viewer must be allowed to stat the path
at all (checked before anything is looked up, so a refused viewer learns nothing), to list a
collection, and to read a file to see its checksums and the download and metalink links.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncGenerator
from typing import TYPE_CHECKING, cast

from aiohttp import web

from geofed.auth.identity import Identity, Privilege
from geofed.checksums import ALGORITHMS
from geofed.endpoints.base import Entry
from geofed.errors import EndpointError
from geofed.federation.listing import ListingOutcome
from geofed.federation.locator import LocateResult, Replica, Want
from geofed.federation.paths import basename, check_raw_path, normalise, parent
from geofed.frontend import metalink
from geofed.frontend.common import Note, child
from geofed.geo import ClientPlacement, great_circle_km
from geofed.ui.dashboard import describe_placement, state_badge, state_reason
from geofed.ui.page import UI_ROOT, attr, browse_href, dash, esc, federated_href, respond, size, utc

if TYPE_CHECKING:
    from geofed.frontend.handlers import FederationFrontEnd

MAX_ROWS = 2000
"""Entries shown on one collection page; past that the page points to the streamed listing."""
_LABELS = {"adler32": "ADLER32", "md5": "MD5", "sha256": "SHA-256", "crc32c": "CRC32C"}


def ui_path(request: web.Request) -> str:
    """The federated path a browse address names (BadRequest for a hidden separator or ``..``)."""
    check_raw_path(request.raw_path)
    return normalise("/" + request.match_info.get("path", ""))


def _mtime(value: float | None) -> str:
    return dash() if value is None else f'<span class="nowrap">{esc(utc(value))}</span>'


def breadcrumbs(path: str) -> str:
    """``/ > fed > data > file``: every ancestor a link, the page itself not."""
    crumbs = [f'<a href="{attr(browse_href("/", True))}">/</a>' if path != "/" else "<span>/</span>"]
    so_far = ""
    segments = [s for s in path.split("/") if s]
    for index, segment in enumerate(segments):
        so_far += "/" + segment
        if index == len(segments) - 1:
            crumbs.append(f"<span aria-current=page>{esc(segment)}</span>")
        else:
            crumbs.append(f'<a href="{attr(browse_href(so_far, True))}">{esc(segment)}</a>')
    return f'<nav class="crumbs" aria-label="breadcrumbs">{" &rsaquo; ".join(crumbs)}</nav>'


async def handle(fe: FederationFrontEnd, request: web.Request, note: Note) -> web.StreamResponse:
    path = ui_path(request)
    gate = fe.gate
    gate.require_stat(note.identity, path)
    result = fe.fed.locations_cache.get(path)
    if result is None:
        result = await fe.locate(path, Want.FIRST, None, note)
    if not result.files:
        fe.stat_from(path, result)  # 404/503 when it is neither a collection nor a mount point
        gate.require_list(note.identity, path)
        return await _collection(fe, path, note.identity)
    placement = fe.fed.clients.place(note.client)
    if not result.complete:  # the page lists every replica: hear from every endpoint
        result = await fe.locate(path, Want.ALL, placement, note)
    return await _file(fe, path, result, placement, note.identity)


# -- a collection -----------------------------------------------------------------------------------


async def _visible_entries(
    fe: FederationFrontEnd, path: str, identity: Identity, outcome: ListingOutcome
) -> tuple[list[Entry], bool]:
    """Up to MAX_ROWS entries the viewer may see, and whether there were more."""
    visible = fe.gate.visible
    shown: list[Entry] = []
    more = False
    entries = cast(AsyncGenerator[Entry, None], fe.listings.entries(path, outcome))
    async with contextlib.aclosing(entries):
        async for entry in entries:
            if not visible(identity, child(path, entry.name)):
                continue
            if len(shown) == MAX_ROWS:
                more = True
                break
            shown.append(entry)
    shown.sort(key=lambda e: (not e.stat.is_dir, e.name.casefold(), e.name))
    return shown, more


async def _collection(fe: FederationFrontEnd, path: str, identity: Identity) -> web.StreamResponse:
    outcome = ListingOutcome()
    entries, more = await _visible_entries(fe, path, identity, outcome)
    rows = []
    if path != "/":
        rows.append(
            f'<tr><td><a href="{attr(browse_href(parent(path), True))}" rel="up">../</a></td>'
            "<td></td><td></td><td></td></tr>"
        )
    for entry in entries:
        target = child(path, entry.name)
        is_dir = entry.stat.is_dir
        name = entry.name + ("/" if is_dir else "")
        kind = "dir" if is_dir else "file"
        get = "" if is_dir else f'<a href="{attr(federated_href(target))}" class="dim">download</a>'
        rows.append(
            f'<tr class="{kind}"><td><a href="{attr(browse_href(target, is_dir))}">{esc(name)}</a></td>'
            f'<td class="n">{"" if is_dir else size(entry.stat.size)}</td>'
            f"<td>{_mtime(entry.stat.mtime)}</td><td>{get}</td></tr>"
        )
    notes = []
    if not entries:
        notes.append("<p class=note>Nothing here that you may see.</p>")
    if more:
        notes.append(
            f"<p class=warn>Only the first {MAX_ROWS:,} entries received are shown. "
            f'<a href="{attr(federated_href(path))}">The complete listing</a> streams them all.</p>'
        )
    fed = fe.fed
    # endpoints serving this path that were not asked (down, disabled): their entries are missing
    unused = sorted(n for n in fed.health.unavailable if fed.endpoints[n].settings.listable)
    skipped = fed.namespace.targets(path, unused)
    if skipped:
        items = "".join(
            f"<li>{esc(t.endpoint)}: {esc(fed.health.unavailable[t.endpoint])}</li>" for t in skipped
        )
        notes.append(f"<div class=warn>Not asked, so their entries are missing:<ul>{items}</ul></div>")
    if outcome.errors:
        failed = "".join(f"<li>{esc(k)}: {esc(v)}</li>" for k, v in sorted(outcome.errors.items()))
        notes.append(
            f"<div class=warn>This listing may be incomplete; these endpoints failed:<ul>{failed}</ul></div>"
        )
    title = basename(path) or "/"
    body = (
        f"{breadcrumbs(path)}<h1>{esc(path)}</h1>"
        "<table><thead><tr><th>Name</th><th>Size</th><th>Last modified</th><th></th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table>{''.join(notes)}"
        f"<p class=note>{len(entries):,} entries &middot; "
        f'<a href="{attr(federated_href(path))}">plain listing</a></p>'
    )
    return respond(title, body, current="browse")


# -- a file -----------------------------------------------------------------------------------------


async def _known_checksums(fe: FederationFrontEnd, replica: Replica) -> dict[str, str] | str:
    """What is already known of the replica's checksums (never computed here), or why not."""
    try:
        return await fe.fed.checksums.checksums(
            replica.endpoint, replica.path, replica.stat, ALGORITHMS, compute=False
        )
    except (EndpointError, ValueError) as exc:
        return str(exc)


def _checksum_cell(values: dict[str, str] | str) -> str:
    if isinstance(values, str):
        return f'<span class="dim">{esc(values)}</span>'
    if not values:
        return '<span class="dim">none known yet</span>'
    items = "".join(
        f"<li>{_LABELS.get(a, a)} <code>{esc(values[a])}</code></li>" for a in ALGORITHMS if a in values
    )
    return f'<ul class="sums">{items}</ul>'


def _distance(fe: FederationFrontEnd, placement: ClientPlacement, endpoint: str) -> str:
    location = fe.fed.locations.get(endpoint)
    if placement.location is None or location is None:
        return dash()
    return f"{great_circle_km(placement.location, location):,.0f} km"


async def _file(
    fe: FederationFrontEnd,
    path: str,
    result: LocateResult,
    placement: ClientPlacement,
    identity: Identity,
) -> web.StreamResponse:
    fed = fe.fed
    files = result.files
    may_read = fe.gate.allows(identity, Privilege.READ, path)
    ranking = fed.rank(placement, result)
    order = {r.endpoint: index for index, r in enumerate(ranking.accepted, start=1)}
    sums: list[dict[str, str] | str]
    if may_read:
        sums = list(await asyncio.gather(*(_known_checksums(fe, r) for r in files)))
    else:
        sums = ["needs the read privilege"] * len(files)
    rows = []
    by_order = sorted(
        zip(files, sums, strict=True), key=lambda p: (order.get(p[0].endpoint, len(order) + 1), p[0].endpoint)
    )
    for replica, values in by_order:
        name = replica.endpoint
        state = fed.health.states[name]
        reason = state_reason(fe, name)
        rank = order.get(name)
        rows.append(
            f'<tr data-endpoint="{attr(name)}"><td class="n">{rank if rank is not None else dash()}</td>'
            f'<td class="nowrap"><a href="{UI_ROOT}#ep-{attr(name)}">{esc(name)}</a> '
            f'<span class="dim">{esc(fed.endpoints[name].settings.kind)}</span></td>'
            f'<td class="n">{_distance(fe, placement, name)}</td>'
            f"<td>{state_badge(state)}{f'<div class=note>{esc(reason)}</div>' if reason else ''}</td>"
            f'<td class="n">{size(replica.stat.size)}</td><td>{_mtime(replica.stat.mtime)}</td>'
            f"<td>{_checksum_cell(values)}</td></tr>"
        )
    first = files[0].stat
    href = federated_href(path)
    if may_read:
        actions = (
            f'<p class="actions"><a id="download" href="{attr(href)}">Download</a>'
            f'<a id="metalink" href="{attr(href)}?{metalink.QUERY}" type="{metalink.MEDIA_TYPE}">'
            "Metalink</a></p>"
        )
    else:
        actions = "<p class=note>You may see this file but not read it: no download or metalink.</p>"
    unknown = ""
    if result.unknown:
        items = "".join(f"<li>{esc(n)}: {esc(why)}</li>" for n, why in result.unknown)
        unknown = (
            "<div class=warn>These endpoints could not say whether they hold a replica:"
            f"<ul>{items}</ul></div>"
        )
    body = (
        f"{breadcrumbs(path)}<h1>{esc(basename(path))}</h1>{actions}"
        f"<dl class=facts><dt>Path</dt><dd><code>{esc(path)}</code></dd>"
        f"<dt>Size</dt><dd>{size(first.size)}</dd><dt>Last modified</dt><dd>{_mtime(first.mtime)}</dd>"
        f"<dt>Type</dt><dd>{esc(first.content_type) if first.content_type else dash()}</dd>"
        f"<dt>You</dt><dd>{describe_placement(placement)}</dd></dl>"
        f"<h2>Replicas ({len(files)})</h2>"
        "<div class=scroll><table><thead><tr><th>Order</th><th>Endpoint</th><th>Distance</th><th>Health</th>"
        "<th>Size</th><th>Last modified</th><th>Checksums known</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></div>"
        "<p class=note>Order is the one a download from you would try now (unusable endpoints have none). "
        "Checksums are those already known; viewing this page never reads the file.</p>"
        f"{unknown}"
    )
    return respond(basename(path), body, current="browse")
