"""``GET /_geofed/ui/``: the endpoint dashboard.

Each endpoint's state (with the reason when it cannot be used), probe latency, last error, space
(used, available, quota), kind, access flags, prefixes and location, and a world map with a dot per
endpoint. Everything comes from what the federation already holds in memory (the health monitor,
the space monitor, the settings): rendering the page asks no endpoint anything.

It shows what ``GET /_geofed/status`` already publishes without authentication, and nothing more.
Requests served per endpoint are the redirects the metrics counted since the process started.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import TYPE_CHECKING

from aiohttp import web

from geofed.config import Location
from geofed.endpoints.base import Space
from geofed.geo import ClientPlacement
from geofed.health import EndpointState
from geofed.ui import worldmap
from geofed.ui.page import BROWSE_ROOT, STATUS_JSON, ago, attr, dash, esc, respond, size

if TYPE_CHECKING:
    from geofed.frontend.handlers import FederationFrontEnd

_LABELS = {"up": "up", "down": "down", "unknown": "not probed yet", "disabled": "disabled"}


def state_badge(state: EndpointState) -> str:
    return f'<span class="state {attr(state.state)}">{esc(_LABELS.get(state.state, state.state))}</span>'


def state_reason(fe: FederationFrontEnd, name: str) -> str:
    """Why the endpoint is not used now ('' when it is)."""
    return fe.fed.health.unavailable.get(name, "")


def _location(location: Location | None) -> str:
    if location is None:
        return dash()
    ns = "N" if location.lat >= 0 else "S"
    ew = "E" if location.lon >= 0 else "W"
    return f"{abs(location.lat):.2f}°&nbsp;{ns}, {abs(location.lon):.2f}°&nbsp;{ew}"


def describe_placement(placement: ClientPlacement) -> str:
    if placement.location is None and placement.preferred_endpoint is None:
        return "not placed (distances are unknown)"
    parts = []
    if placement.location is not None:
        parts.append(f"at {_location(placement.location)}")
    if placement.preferred_endpoint is not None:
        parts.append(f"preferring {esc(placement.preferred_endpoint)}")
    return f"{' '.join(parts)} <span class=dim>(by {esc(placement.source)})</span>"


def _space_cell(space: Space | None, quota: int | None) -> str:
    """Used, available and quota, one a line, each only when known."""
    used = space.used if space is not None else None
    available = space.available if space is not None else None
    lines = [
        f"{size(value)} <span class=dim>{label}</span>"
        for value, label in ((used, "used"), (available, "free"), (quota, "quota"))
        if value is not None
    ]
    return f'<td class="n">{"<br>".join(lines) or dash()}</td>'


def render(
    fe: FederationFrontEnd, placement: ClientPlacement, served: Mapping[str, int] | None = None
) -> str:
    """The dashboard; ``served`` is the number of redirects (reads and writes sent) per endpoint,
    from the metrics counters, since this process started."""
    served = served or {}
    fed = fe.fed
    now = time.time()
    rows = []
    markers = []
    unplaced = []
    counts: dict[str, int] = {}
    for name, endpoint in fed.endpoints.items():
        settings = endpoint.settings
        state = fed.health.states[name]
        counts[state.state] = counts.get(state.state, 0) + 1
        location = fed.locations.get(name)
        reason = state_reason(fe, name)
        latency = dash() if state.latency is None else f"{state.latency * 1000:.1f} ms"
        access = " ".join(
            flag
            for flag, on in (
                ("read", settings.readable),
                ("list", settings.listable),
                ("write", settings.writable),
            )
            if on
        )
        prefixes = "<br>".join(
            f"<code>{esc(p.federated)}</code> → <code>{esc(p.endpoint)}</code>" for p in settings.prefixes
        )
        error = dash() if state.last_error is None else esc(state.last_error)
        since = "" if state.last_change is None else f"since {ago(state.last_change, now)}"
        # a down endpoint's reason is its last error, in the next column; say anything else here
        note = "" if not reason or state.state == "down" else f"<div class=note>{esc(reason)}</div>"
        rows.append(
            f'<tr id="ep-{attr(name)}" data-state="{attr(state.state)}"><th scope=row>{esc(name)}</th>'
            f"<td>{esc(settings.kind)}</td>"
            f"<td>{state_badge(state)}<div class='note nowrap'>{since}</div>{note}</td>"
            f'<td class="n">{latency}<div class=note>{ago(state.last_check, now)}</div></td>'
            f'<td class="err">{error}</td>'
            f"{_space_cell(fed.space.space.get(name), settings.quota)}"
            f'<td class="n served">{served.get(name, 0):,}</td>'
            f"<td>{esc(access) or dash()}</td><td class=nowrap>{prefixes}</td>"
            f"<td class=nowrap>{_location(location)}</td></tr>"
        )
        if location is None:
            unplaced.append(name)
        else:
            title = f"{name}: {_LABELS.get(state.state, state.state)}" + (f" ({reason})" if reason else "")
            markers.append(worldmap.Marker(name, location.lat, location.lon, state.state, title))
    viewer = None if placement.location is None else (placement.location.lat, placement.location.lon)
    summary = ", ".join(f"{n} {_LABELS.get(s, s)}" for s, n in sorted(counts.items()))
    legend = " ".join(
        f'<span class="state {s}">{_LABELS[s]}</span>' for s in ("up", "down", "unknown", "disabled")
    )
    not_on_map = (
        f"<p class=note>Not on the map (no location configured or found): {esc(', '.join(unplaced))}</p>"
        if unplaced
        else ""
    )
    cache = fed.locations_cache
    return (
        f"<h1>Endpoints</h1><p>{len(fed.endpoints)} endpoints: {esc(summary) or 'none'}. "
        f"You: {describe_placement(placement)}.</p>"
        f"{worldmap.render(markers, viewer)}"
        f"<p class=note>Dots by state: {legend}"
        f"{' &middot; the blue ring is you' if viewer is not None else ''}.</p>{not_on_map}"
        "<h2>State</h2><div class=scroll><table><thead><tr><th>Endpoint</th><th>Kind</th><th>State</th>"
        "<th>Probe latency</th><th>Last error</th><th>Space</th><th>Requests served</th>"
        "<th>Access</th><th>Prefixes</th><th>Location</th></tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></div>"
        "<p class=note>Requests served: redirects to the endpoint (GET and PUT) since this process "
        "started. Space is what the endpoint last reported, capped by its quota.</p>"
        f"<h2>Caches</h2><p>Locations: {len(cache):,} entries, {cache.hits:,} hits, {cache.misses:,} misses. "
        f"Checksums computed: {fed.checksums.computations:,} ({size(fed.checksums.bytes_hashed)} read).</p>"
        f'<p><a href="{BROWSE_ROOT}/">Browse the namespace</a> · '
        f'<a href="{STATUS_JSON}">the same state as JSON</a></p>'
    )


async def handle(fe: FederationFrontEnd, request: web.Request) -> web.StreamResponse:
    placement = fe.fed.clients.place(fe.client_address(request))
    return respond("Endpoints", render(fe, placement, served_by_endpoint(request)), current="endpoints")


def served_by_endpoint(request: web.Request) -> dict[str, int]:
    """Redirects per endpoint, summed over method and country, from the app's metrics."""
    from geofed.app import METRICS_KEY  # the app module imports this one

    metrics = request.app.get(METRICS_KEY)
    served: dict[str, int] = {}
    if metrics is not None:
        for (_method, endpoint, _country), count in metrics.redirects.items():
            served[endpoint] = served.get(endpoint, 0) + count
    return served
