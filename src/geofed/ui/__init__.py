"""geofed's web UI: server-rendered pages that need no JavaScript.

* ``/_geofed/ui/`` -- the endpoint dashboard (:mod:`geofed.ui.dashboard`);
* ``/_geofed/ui/browse/<path>`` -- the namespace: collections, and each file's replicas
  (:mod:`geofed.ui.browse`).

Pages are built by plain string functions with every value escaped (:mod:`geofed.ui.page`); each is
one small response with its style sheet inline and no other asset.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from geofed.errors import HTTPError
from geofed.frontend.common import Note
from geofed.ui import browse, dashboard
from geofed.ui.page import BROWSE_ROOT, UI_ROOT, error_page

if TYPE_CHECKING:
    from geofed.frontend.handlers import FederationFrontEnd

__all__ = ["register"]


def register(app: web.Application, frontend: FederationFrontEnd) -> None:
    """Add the UI's routes to ``app``; call it before the federated namespace's catch-all route."""

    async def show_dashboard(request: web.Request) -> web.StreamResponse:
        return await dashboard.handle(frontend, request)

    async def show_path(request: web.Request) -> web.StreamResponse:
        note = Note(frontend.client_address(request))
        try:
            note.identity = frontend.gate.known(request) or await frontend.gate.identify(request)
            return await browse.handle(frontend, request, note)
        except HTTPError as exc:
            return error_page(exc)

    async def to_slash(request: web.Request) -> web.StreamResponse:
        raise web.HTTPMovedPermanently(request.path + "/")

    app.router.add_get(UI_ROOT.rstrip("/"), to_slash)
    app.router.add_get(UI_ROOT, show_dashboard)
    app.router.add_get(BROWSE_ROOT, to_slash)
    app.router.add_get(BROWSE_ROOT + "/{path:.*}", show_path)
