"""geofed's own data route for ``local`` endpoints: the target of their signed redirects.

``/_geofed/data/<endpoint>/<path>?e=<expiry>&s=<signature>`` serves GET (with Range) and HEAD,
accepts PUT, DELETE and MKCOL, each only with a valid, unexpired signature for that method and path.
A PUT is streamed to a hidden temporary file in the destination directory and renamed into place
only when every declared byte has arrived, so a broken upload never leaves a partial file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path

from aiohttp import web

from geofed.endpoints.local import UPLOAD_PREFIX, LocalEndpoint
from geofed.errors import (
    BadRequest,
    Conflict,
    EndpointError,
    Forbidden,
    HTTPError,
    MethodNotAllowed,
    NotFound,
    PathNotFound,
    ServiceUnavailable,
)
from geofed.federation.paths import check_raw_path, normalise
from geofed.frontend.accesslog import AccessLog
from geofed.frontend.common import error_response
from geofed.runtime import Federation

_CHUNK = 1 << 20


class DataRoute:
    def __init__(
        self,
        federation: Federation,
        access_log: AccessLog | None = None,
        client_address: Callable[[web.Request], str | None] | None = None,
    ) -> None:
        self.fed = federation
        self._access = access_log
        self._client_address = client_address

    async def handle(self, request: web.Request) -> web.StreamResponse:
        try:
            response = await self._handle(request)
        except HTTPError as exc:
            response = error_response(exc)
        if self._access is not None:
            client = self._client_address(request) if self._client_address else request.remote
            endpoint = request.match_info.get("endpoint")
            self._access.record(
                request.method, request.path, client, None, response.status, "data", endpoint, None
            )
        return response

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        check_raw_path(request.raw_path)
        name = request.match_info["endpoint"]
        endpoint = self.fed.local_endpoints.get(name)
        if endpoint is None:
            raise NotFound(f"no local endpoint named {name!r}")
        path = normalise("/" + request.match_info["path"])
        why = self.fed.signer.verify(
            request.method, name, path, request.query.get("e", ""), request.query.get("s", "")
        )
        if why is not None:
            raise Forbidden(why)
        try:
            target = endpoint.resolve(path)
        except EndpointError as exc:
            raise Forbidden(exc.reason) from exc
        if request.method in ("GET", "HEAD"):
            if not target.is_file():
                raise NotFound(f"{path} is not a file on {name}")
            return web.FileResponse(target, chunk_size=256 * 1024)
        if request.method == "PUT":
            return await self._put(request, endpoint, path, target)
        if request.method == "DELETE":
            try:
                await endpoint.delete(path)
            except PathNotFound as exc:
                raise NotFound(f"{path} does not exist on {name}") from exc
            except EndpointError as exc:
                raise ServiceUnavailable(exc.reason) from exc
            await self._invalidate(name, path)
            return web.Response(status=204)
        if request.method == "MKCOL":
            try:
                created = await endpoint.mkcol(path)
            except EndpointError as exc:
                raise Conflict(exc.reason) from exc
            if not created:
                raise MethodNotAllowed(f"{path} already exists", headers={"Allow": "GET, HEAD, PUT, DELETE"})
            await self._invalidate(name, path)
            return web.Response(status=201)
        raise MethodNotAllowed(f"{request.method} is not supported on the data route")

    async def _put(
        self, request: web.Request, endpoint: LocalEndpoint, path: str, target: Path
    ) -> web.StreamResponse:
        if target.is_dir():
            raise Conflict(f"{path} is a collection")
        expected = request.content_length
        await endpoint.makedirs(path.rsplit("/", 1)[0] or "/")
        temporary = target.parent / f"{UPLOAD_PREFIX}{secrets.token_hex(8)}"
        existed = target.exists()
        received = 0
        handle = await asyncio.to_thread(open, temporary, "wb")
        try:
            try:
                while chunk := await request.content.read(_CHUNK):
                    received += len(chunk)
                    await asyncio.to_thread(handle.write, chunk)
                await asyncio.to_thread(handle.flush)
                await asyncio.to_thread(os.fsync, handle.fileno())
            except (ConnectionError, asyncio.IncompleteReadError) as exc:
                raise BadRequest(f"upload interrupted after {received} bytes; nothing was stored") from exc
            finally:
                handle.close()
            if expected is not None and received != expected:
                raise BadRequest(f"received {received} bytes of the {expected} declared; nothing was stored")
            await asyncio.to_thread(os.replace, temporary, target)
        except BaseException:
            with contextlib.suppress(OSError):
                temporary.unlink()
            raise
        await self._invalidate(endpoint.name, path)
        return web.Response(status=204 if existed else 201)

    async def _invalidate(self, endpoint: str, path: str) -> None:
        for federated in self.fed.namespace.federated_paths(endpoint, path):
            await self.fed.locator.invalidate_everywhere(federated)
