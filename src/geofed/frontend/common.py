"""What the frontend's handler modules share: the per-request note, error rendering, request keys
and small helpers. Kept apart so that the read, write and browse handlers need not import each other.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from geofed.auth.identity import ANONYMOUS, Identity
from geofed.endpoints.base import StatResult
from geofed.errors import (
    BadGateway,
    Conflict,
    EndpointError,
    EndpointRefused,
    EndpointUnavailable,
    Forbidden,
    HTTPError,
    ServiceUnavailable,
)

ALLOWED = "OPTIONS, GET, HEAD, PUT, DELETE, MKCOL, MOVE, PROPFIND, COPY"
DIR_STAT = StatResult(is_dir=True)
FLUSH_BYTES = 65536
# Request keys and a marker for uploads that geofed streams itself: the expect handler decides,
# asks the client for the body, and the handler then streams it to the chosen endpoint.
AWAITING_BODY = web.RequestKey("geofed.awaiting_body", bool)
PROXY_TARGET = web.RequestKey("geofed.proxy_target", tuple[str, str])
SEND_THE_BODY = web.Response(status=100)
# Set when the request came through the proxy URL prefix (``proxy.url_prefix``): stream, don't redirect.
VIA_PROXY_PREFIX = web.RequestKey("geofed.via_proxy_prefix", bool)


class Note:
    """What a handler decided, for the access log."""

    __slots__ = ("client", "decision", "endpoint", "identity", "locate_seconds")

    def __init__(self, client: str | None = None) -> None:
        self.client = client
        self.identity: Identity = ANONYMOUS
        self.decision = "-"
        self.endpoint: str | None = None
        self.locate_seconds: float | None = None


Handler = Callable[[web.Request, str, Note], Awaitable[web.StreamResponse]]


def error_response(error: HTTPError) -> web.Response:
    """The one place an HTTPError becomes a response: the status, its headers, a plain message."""
    return web.Response(status=error.status, text=error.detail + "\n", headers=error.headers)


def child(path: str, name: str) -> str:
    return f"{path.rstrip('/')}/{name}"


def endpoint_http_error(exc: EndpointError, what: str) -> HTTPError:
    if isinstance(exc, EndpointUnavailable):
        return ServiceUnavailable(f"{what}: {exc}")
    if isinstance(exc, EndpointRefused) and exc.status == 403:
        return Forbidden(f"{what}: {exc}")
    if isinstance(exc, EndpointRefused) and exc.status == 409:
        return Conflict(f"{what}: {exc}")
    return BadGateway(f"{what}: {exc}")


def http_date(timestamp: float) -> str:
    return time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(timestamp))
