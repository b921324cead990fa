"""Builds the aiohttp application: routes, and the start/stop of every long-lived resource.

Routing is deliberately flat (no middlewares on the request path): geofed's own routes under
``/_geofed/`` first, then one catch-all resource for the federated namespace whose expect handler
answers PUT redirects before the body is sent.
"""

from __future__ import annotations

import sys
from collections.abc import AsyncIterator
from typing import TextIO

from aiohttp import web

from geofed.config import Settings
from geofed.frontend.accesslog import AccessLog
from geofed.frontend.dataroute import DataRoute
from geofed.frontend.handlers import FederationFrontEnd
from geofed.frontend.status import status_handler
from geofed.runtime import Federation

FEDERATION_KEY = web.AppKey("federation", Federation)
FRONTEND_KEY = web.AppKey("frontend", FederationFrontEnd)
ACCESS_LOG_KEY = web.AppKey("access_log", AccessLog)

# aiohttp's own limits, which bound oversized request lines and headers (answered with 400/431).
MAX_LINE_SIZE = 8190
MAX_FIELD_SIZE = 8190


def build_app(
    settings: Settings, *, access_stream: TextIO | None = None, probe_first: bool = True
) -> web.Application:
    """The web application for ``settings``; resources start with the app and stop with it."""
    federation = Federation(settings)
    access_log = AccessLog(access_stream or sys.stderr) if settings.server.access_log else None
    frontend = FederationFrontEnd(federation, settings.server, access_log)
    data_route = DataRoute(federation, access_log, frontend.client_address)

    app = web.Application(handler_args={"max_line_size": MAX_LINE_SIZE, "max_field_size": MAX_FIELD_SIZE})
    app[FEDERATION_KEY] = federation
    app[FRONTEND_KEY] = frontend
    if access_log is not None:
        app[ACCESS_LOG_KEY] = access_log
    app.router.add_get("/_geofed/status", status_handler(federation))
    app.router.add_route("*", "/_geofed/data/{endpoint}/{path:.*}", data_route.handle)
    app.router.add_route("*", "/{tail:.*}", frontend.dispatch, expect_handler=frontend.expect_handler)

    async def lifespan(app: web.Application) -> AsyncIterator[None]:
        await federation.start(probe_first=probe_first)
        if access_log is not None:
            access_log.start()
        yield
        if access_log is not None:
            await access_log.stop()
        await frontend.gate.close()
        await federation.stop()

    app.cleanup_ctx.append(lifespan)
    return app
