"""Builds the aiohttp application: routes, and the start/stop of every long-lived resource.

Routing is deliberately flat (no middlewares on the request path): geofed's own routes under
``/_geofed/`` first, then one catch-all resource for the federated namespace whose expect handler
answers PUT redirects before the body is sent.

The routes are fixed for the life of the process, but what serves them can be replaced by a reload
(:mod:`geofed.live`): each request runs on the configuration that was current when it began.
"""

from __future__ import annotations

import os
import ssl
import sys
from collections.abc import AsyncIterator
from typing import TextIO

from aiohttp import web

from geofed import admin
from geofed.config import Settings
from geofed.frontend.accesslog import AccessLogWriter, RequestEvents
from geofed.frontend.dataroute import DataRoute
from geofed.frontend.handlers import FederationFrontEnd
from geofed.frontend.status import status_handler
from geofed.live import Generation, Live, SupervisorLink
from geofed.metrics import Metrics, metrics_handler
from geofed.runtime import Federation
from geofed.ui import register as register_ui

FEDERATION_KEY = web.AppKey("federation", Federation)
"""The federation the application started with (after a reload, ``app[LIVE_KEY].current``'s)."""
FRONTEND_KEY = web.AppKey("frontend", FederationFrontEnd)
LIVE_KEY = web.AppKey("live", Live)
"""The configuration in service, its reload, and the administrator's endpoint marks."""
ACCESS_LOG_KEY = web.AppKey("access_log", RequestEvents)
"""The per-request records (always present: the metrics count them; the access log, when on, writes them)."""
METRICS_KEY = web.AppKey("metrics", Metrics)

# aiohttp's own limits, which bound oversized request lines and headers (answered with 400/431).
MAX_LINE_SIZE = 8190
MAX_FIELD_SIZE = 8190


def build_app(
    settings: Settings,
    *,
    access_stream: TextIO | None = None,
    probe_first: bool = True,
    config_path: str | os.PathLike[str] | None = None,
    tls_context: ssl.SSLContext | None = None,
    supervisor: SupervisorLink | None = None,
    handle_signals: bool = False,
) -> web.Application:
    """The web application for ``settings``; resources start with the app and stop with it.

    ``config_path`` is the file a reload re-reads (none: reloads are refused), ``tls_context`` the
    listening socket's (a reload loads a new certificate into it), ``supervisor`` the link of a
    worker of ``serve --workers N``; with ``handle_signals`` a SIGHUP reloads (``geofed serve``).
    """
    federation = Federation(settings)
    metrics = Metrics(federation)
    events = RequestEvents([metrics.consume])
    if settings.server.access_log:
        events.add_consumer(AccessLogWriter(access_stream or sys.stderr, settings.server.access_log_format))
    frontend = FederationFrontEnd(federation, settings.server, events)
    data_route = DataRoute(federation, events, frontend.client_address)
    live = Live(
        Generation(1, settings, federation, frontend, data_route, "start"),
        events=events,
        control=admin.EndpointControl(supervisor.marks_fd if supervisor is not None else None),
        metrics=metrics,
        config_path=config_path,
        probe_first=probe_first,
        tls=tls_context,
        supervisor=supervisor,
        handle_signals=handle_signals,
    )

    app = web.Application(handler_args={"max_line_size": MAX_LINE_SIZE, "max_field_size": MAX_FIELD_SIZE})
    app[FEDERATION_KEY] = federation
    app[FRONTEND_KEY] = frontend
    app[LIVE_KEY] = live
    app[ACCESS_LOG_KEY] = events
    app[METRICS_KEY] = metrics
    app.router.add_get("/_geofed/status", status_handler(live.federation))
    register_ui(app, live.frontend_view())  # the web UI (/_geofed/ui/), before the namespace's catch-all
    app.router.add_get("/_geofed/metrics", metrics_handler(metrics, events))
    admin.register(app, live)
    app.router.add_route("*", "/_geofed/data/{endpoint}/{path:.*}", live.data)
    app.router.add_route("*", "/{tail:.*}", live.dispatch, expect_handler=live.expect_handler)

    async def lifespan(app: web.Application) -> AsyncIterator[None]:
        await live.start()
        events.start()
        yield
        await events.stop()
        await live.stop()  # every configuration still open: the current one and any being retired
        metrics.close()

    app.cleanup_ctx.append(lifespan)
    return app
