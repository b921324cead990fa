"""``GET /_geofed/status``: endpoint health and cache figures as JSON, without any secret."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

from geofed import __version__
from geofed.runtime import Federation


def status_document(federation: Federation) -> dict[str, object]:
    endpoints = []
    for name, endpoint in federation.endpoints.items():
        state = federation.health.states[name].as_json()
        settings = endpoint.settings
        location = federation.locations.get(name)
        space = federation.space.space.get(name)
        state.update(
            space=None
            if space is None
            else {
                "used_bytes": space.used,
                "available_bytes": space.available,
                "quota_bytes": settings.quota,
            },
            kind=settings.kind,
            readable=settings.readable,
            listable=settings.listable,
            writable=settings.writable,
            prefixes=[{"federated": p.federated, "endpoint": p.endpoint} for p in settings.prefixes],
            location=None if location is None else {"lat": location.lat, "lon": location.lon},
        )
        endpoints.append(state)
    cache = federation.locations_cache
    l2: dict[str, object] | None = None
    if federation.shared is not None:
        l2_state = federation.shared.cache.state
        l2 = {
            "kind": federation.shared.cache.name,
            "available": l2_state.available,
            "last_error": l2_state.last_error,
            "last_change": l2_state.last_change,
        }
    return {
        "version": __version__,
        "endpoints": endpoints,
        "cache": {"entries": len(cache), "hits": cache.hits, "misses": cache.misses, "l2": l2},
        "checksums": {
            "computed": federation.checksums.computations,
            "bytes_hashed": federation.checksums.bytes_hashed,
        },
    }


def status_handler(
    federation: Federation | Callable[[], Federation],
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """The route; ``federation`` may be a callable giving the one in service (it changes on reload)."""
    current = federation if callable(federation) else lambda: federation

    async def handle(request: web.Request) -> web.StreamResponse:
        return web.json_response(status_document(current()))

    return handle
