"""The federation's HTTP methods: what geofed answers itself, and what it redirects.

Only GET (302) and PUT (307) are redirected; HEAD, PROPFIND, MKCOL, DELETE and OPTIONS are answered
here, because clients mishandle redirected namespace operations and a redirected PROPFIND would
show the endpoint's namespace (see the client reference). One instance serves every request; the
warm GET path is: validate the path, place the client, read the cached replica list, rank, sign.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable

from aiohttp import web

from geofed.auth.identity import ANONYMOUS, Identity, Privilege
from geofed.config import ServerSettings
from geofed.endpoints.base import StatResult
from geofed.errors import (
    BadGateway,
    BadRequest,
    Conflict,
    EndpointError,
    EndpointRefused,
    EndpointUnavailable,
    ExpectationFailed,
    Forbidden,
    HTTPError,
    MethodNotAllowed,
    NotFound,
    PathNotFound,
    PayloadTooLarge,
    ServiceUnavailable,
    UnsupportedMediaType,
)
from geofed.federation.listing import ListingMerger, ListingOutcome
from geofed.federation.locator import LocateResult, Want
from geofed.federation.paths import basename, is_clean_request_path, parent, request_path
from geofed.frontend import listing_html, multipart, propfind, uploadproxy
from geofed.frontend.accesslog import AccessLog
from geofed.frontend.clientaddr import ClientAddressResolver
from geofed.frontend.gate import AccessGate
from geofed.frontend.redirect import MAX_PREPARED_PER_ANSWER, PreparedRedirect, prepare_redirect
from geofed.geo import ClientPlacement
from geofed.runtime import Federation

ALLOWED = "OPTIONS, GET, HEAD, PUT, DELETE, MKCOL, PROPFIND"
_DIR_STAT = StatResult(is_dir=True)
_FLUSH_BYTES = 65536
_NO_REDIRECTS: dict[int, PreparedRedirect] = {}
# Request keys and a marker for uploads that geofed streams itself: the expect handler decides,
# asks the client for the body, and the handler then streams it to the chosen endpoint.
_AWAITING_BODY = web.RequestKey("geofed.awaiting_body", bool)
_PROXY_TARGET = web.RequestKey("geofed.proxy_target", tuple[str, str])
_SEND_THE_BODY = web.Response(status=100)


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


class FederationFrontEnd:
    def __init__(self, federation: Federation, server: ServerSettings, access_log: AccessLog | None) -> None:
        self.fed = federation
        self._server = server
        self._log = access_log.appender() if access_log is not None else None
        self._addresses = ClientAddressResolver(server.trusted_proxies)
        self._public_url = server.public_url.rstrip("/") if server.public_url else None
        fs = federation.settings
        self.gate = AccessGate(fs)
        self._known = self.gate.known
        self._allows = self.gate.allows
        self.listings = ListingMerger(
            federation.endpoints,
            federation.namespace,
            federation.health,
            federation.listings_cache,
            fs.federation.locate_timeout,
            fs.cache.ttl,
            fs.cache.max_listing_entries,
        )
        self.listings.shared = federation.shared
        self._methods: dict[str, Handler] = {
            "GET": self.get,
            "HEAD": self.head,
            "PUT": self.put,
            "DELETE": self.delete,
            "MKCOL": self.mkcol,
            "PROPFIND": self.propfind,
            "OPTIONS": self.options,
        }
        # bound once: the warm GET path calls these on every request
        self._place = federation.clients.place
        self._cached = federation.locations_cache.get
        self._max_alternatives = fs.federation.max_alternatives
        self._retry_after = fs.federation.retry_after

    # -- entry points -------------------------------------------------------------------------

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        if request.method == "GET":
            warm = self._warm_redirect(request)
            if warm is not None:
                return warm
        note = Note(self.client_address(request))
        path = request.path
        try:
            handler = self._methods.get(request.method)
            if handler is None:
                raise _unsupported(request)
            path = request_path(request.raw_path, path)
            note.identity = self._known(request) or await self.gate.identify(request)
            response = await handler(request, path, note)
            if response is _SEND_THE_BODY:
                return response  # the expect handler lets the body come; logged when handled
        except HTTPError as exc:
            note.decision = "error"
            response = error_response(exc)
        if self._log is not None:
            self._log(
                (
                    time.time(),
                    request.method,
                    path,
                    note.client,
                    note.identity.label(),
                    response.status,
                    note.decision,
                    note.endpoint,
                    note.locate_seconds,
                )
            )
        return response

    async def expect_handler(self, request: web.Request) -> web.StreamResponse | None:
        """Answer a PUT's redirect before its body is sent; let other methods continue."""
        if request.headers.get("Expect", "").lower() != "100-continue":
            return error_response(ExpectationFailed("only Expect: 100-continue is supported"))
        if request.method == "PUT":
            request[_AWAITING_BODY] = True
            response = await self.dispatch(request)
            if response is not _SEND_THE_BODY:
                if response.status >= 300:
                    response.force_close()
                return response
        await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        request.writer.output_size = 0
        return None

    # -- helpers ------------------------------------------------------------------------------

    def client_address(self, request: web.Request) -> str | None:
        if not self._addresses.enabled:
            return request.remote
        return self._addresses.resolve(request.remote, request.headers.get("X-Forwarded-For"))

    def _absolute(self, request: web.Request, url: str) -> str:
        if url.startswith("/"):
            return (self._public_url or f"{request.scheme}://{request.host}") + url
        return url

    def _signed(self, request: web.Request, method: str, endpoint: str, path: str) -> str:
        """An absolute URL signed by ``endpoint`` for ``method`` with that endpoint's lifetime."""
        url = self.fed.endpoints[endpoint].sign_url(method, path, self.fed.url_lifetimes[endpoint])
        return self._absolute(request, url)

    async def _locate(
        self, path: str, want: Want, client: ClientPlacement | None, note: Note
    ) -> LocateResult:
        result = await self.fed.locator.locate(path, want, client)
        note.locate_seconds = 0.0 if result.cached else result.elapsed
        return result

    def _missing(self, path: str, result: LocateResult) -> HTTPError:
        """404 only when every endpoint said no; 503 when some could not answer."""
        if result.unknown:
            detail = "; ".join(f"{name}: {why}" for name, why in result.unknown)
            return ServiceUnavailable(
                f"{path} was not found on the endpoints that answered, and these could not say: {detail}",
                retry_after=self._retry_after,
            )
        return NotFound(f"{path} does not exist on any endpoint")

    async def _stat(self, path: str, note: Note) -> StatResult:
        """The federated stat of ``path``: a file replica's metadata, a collection, or an error."""
        result = await self._locate(path, Want.FIRST, None, note)
        files = result.files
        if files:
            return files[0].stat
        if result.replicas:
            return result.replicas[0].stat
        if self.fed.namespace.is_mount_point(path):
            return _DIR_STAT
        raise self._missing(path, result)

    # -- methods ------------------------------------------------------------------------------

    def _warm_redirect(self, request: web.Request) -> web.Response | None:
        """The hot path: a GET of a clean path whose redirect is already prepared for this kind of
        client. Anything else (None) takes the general path, which prepares it for next time."""
        path = request.path
        if not is_clean_request_path(request.raw_path, path):
            return None
        result = self._cached(path)
        if result is None:
            return None
        identity = self._known(request)
        if identity is None or not self._allows(identity, Privilege.READ, path):
            return None  # the general path identifies the client, or answers the refusal
        client = self.client_address(request)
        placement = self._place(client)
        prepared = result.redirects.get(self._public_url or request.host, _NO_REDIRECTS).get(placement.key)
        if prepared is None or not prepared.usable(self.fed.health.generation):
            return None
        headers, endpoint = prepared.pick(self.fed.rng)
        if self._log is not None:
            self._log((time.time(), "GET", path, client, identity.label(), 302, "redirect", endpoint, 0.0))
        return web.Response(status=302, headers=headers)

    async def get(self, request: web.Request, path: str, note: Note) -> web.StreamResponse:
        gate = self.gate
        gate.require_read_or_list(note.identity, path)
        placement = self._place(note.client)
        base = self._public_url or request.host
        result = self._cached(path)
        if result is not None:
            note.locate_seconds = 0.0
        else:
            result = await self._locate(path, Want.CLOSEST, placement, note)
        if not result.files:
            if result.replicas or self.fed.namespace.is_mount_point(path):
                gate.require_list(note.identity, path)
                note.decision = "listing"
                return await self._listing(request, path, note.identity)
            raise self._missing(path, result)
        gate.require(note.identity, Privilege.READ, path)
        ranking = self.fed.rank(placement, result)
        if not ranking.accepted:
            reasons = "; ".join(f"{r.endpoint}: {r.reason}" for r in ranking.rejected)
            raise ServiceUnavailable(f"no replica of {path} can be served now ({reasons})")

        def sign(endpoint: str, endpoint_path: str, extra: float) -> str:
            lifetime = self.fed.url_lifetimes[endpoint] + extra
            return self._absolute(
                request, self.fed.endpoints[endpoint].sign_url("GET", endpoint_path, lifetime)
            )

        prepared = prepare_redirect(ranking, sign, self._max_alternatives, self.fed.health.generation)
        if result.cached:
            per_base = result.redirects.setdefault(base, {})
            if len(per_base) >= MAX_PREPARED_PER_ANSWER or len(result.redirects) > MAX_PREPARED_PER_ANSWER:
                result.redirects.clear()
                per_base = result.redirects.setdefault(base, {})
            per_base[placement.key] = prepared
        headers, note.endpoint = prepared.pick(self.fed.rng)
        note.decision = "redirect"
        return web.Response(status=302, headers=headers)

    async def head(self, request: web.Request, path: str, note: Note) -> web.StreamResponse:
        self.gate.require_stat(note.identity, path)
        stat = await self._stat(path, note)
        note.decision = "stat"
        if stat.is_dir:
            return web.Response(status=200, content_type="text/html", charset="utf-8")
        headers = {"Accept-Ranges": "bytes", "Content-Type": stat.content_type or "application/octet-stream"}
        if stat.size is not None:
            headers["Content-Length"] = str(stat.size)
        if stat.mtime is not None:
            headers["Last-Modified"] = _http_date(stat.mtime)
        if stat.etag is not None:
            headers["ETag"] = stat.etag
        response = web.Response(status=200, headers=headers)
        return response

    async def options(self, request: web.Request, path: str, note: Note) -> web.StreamResponse:
        note.decision = "options"
        return web.Response(
            status=200, headers={"DAV": "1", "Allow": ALLOWED, "MS-Author-Via": "DAV", "Content-Length": "0"}
        )

    async def put(self, request: web.Request, path: str, note: Note) -> web.StreamResponse:
        self.gate.require(note.identity, Privilege.WRITE, path)
        if path == "/" or self.fed.namespace.is_mount_point(path):
            raise MethodNotAllowed(f"{path} is a collection", headers={"Allow": ALLOWED})
        if multipart.UPLOAD_ID_HEADER in request.headers:
            return await self._multipart_parts(request, path, note)
        target = request.get(_PROXY_TARGET)
        if target is not None:  # chosen in the expect handler, before the body was sent
            return await self._proxy_upload(request, path, target[0], target[1], note)
        placement = self.fed.clients.place(note.client)
        existing = await self._locate(path, Want.ALL, placement, note)
        if existing.is_dir:
            raise Conflict(f"a collection exists at {path}")
        if existing.replicas:
            self.gate.require(note.identity, Privilege.MODIFY, path)
        ranking = self.fed.rank(placement, existing, writable=True)
        if not ranking.accepted:
            ranking = self.fed.rank_for_write(placement, path)
        if not ranking.accepted:
            if ranking.rejected:
                reasons = "; ".join(f"{r.endpoint}: {r.reason}" for r in ranking.rejected)
                raise ServiceUnavailable(f"no writable endpoint for {path} is available ({reasons})")
            raise Forbidden(f"no writable endpoint serves {path}")
        best = ranking.accepted[0]
        endpoint = self.fed.endpoints[best.endpoint]
        try:
            await endpoint.makedirs(parent(best.path))
        except EndpointError as exc:
            raise _endpoint_http_error(exc, f"cannot create the parent collection of {path}") from exc
        if uploadproxy.wants_proxy(endpoint, request.headers.get("User-Agent", "")):
            if request.get(_AWAITING_BODY):
                request[_PROXY_TARGET] = (best.endpoint, best.path)
                return _SEND_THE_BODY
            return await self._proxy_upload(request, path, best.endpoint, best.path, note)
        await self.fed.locator.invalidate_everywhere(path, writing=True)
        headers = {"Location": self._signed(request, "PUT", best.endpoint, best.path)}
        headers.update(multipart.offer_headers(endpoint, best.path, self.fed.url_lifetimes[best.endpoint]))
        note.decision, note.endpoint = "redirect", best.endpoint
        response = web.Response(status=307, headers=headers)
        length = request.content_length
        if (
            length is not None
            and length > self._server.max_unread_put_body
            and "Expect" not in request.headers
        ):
            response.force_close()
        return response

    async def _proxy_upload(
        self, request: web.Request, path: str, name: str, endpoint_path: str, note: Note
    ) -> web.StreamResponse:
        """Stream the body to the endpoint ourselves (see frontend.uploadproxy for why)."""
        endpoint = self.fed.endpoints[name]
        existed = (await self.fed.locator.locate(path, Want.FIRST, None)).replicas != ()
        await self.fed.locator.invalidate_everywhere(path, writing=True)
        try:
            await uploadproxy.stream_upload(request, endpoint, endpoint_path)
        except EndpointError as exc:
            raise _endpoint_http_error(exc, f"upload of {path} to {name} failed; nothing was stored") from exc
        finally:
            await self.fed.locator.invalidate_everywhere(path)
        note.decision, note.endpoint = "proxy-upload", name
        return web.Response(status=204 if existed else 201)

    async def _multipart_parts(self, request: web.Request, path: str, note: Note) -> web.StreamResponse:
        """Step 3 of the multipart protocol: sign the part and commit URLs on the endpoint the
        client was sent to (named by ``x-ugrpluginid``)."""
        name = request.headers.get(multipart.PLUGIN_ID_HEADER, "")
        endpoint = self.fed.endpoints.get(name)
        local = self.fed.namespace.translate(path, name) if endpoint is not None else None
        if endpoint is None or local is None or not endpoint.settings.writable:
            raise BadRequest(f"{multipart.PLUGIN_ID_HEADER} does not name a writable endpoint serving {path}")
        if not endpoint.capabilities.multipart_upload:
            raise BadRequest(f"endpoint {name} does not support multipart uploads")
        count = multipart.chunk_count(request.headers.get(multipart.CHUNKS_HEADER))
        response = multipart.parts_response(
            endpoint,
            local,
            request.headers[multipart.UPLOAD_ID_HEADER],
            count,
            self.fed.url_lifetimes[name],
        )
        await self.fed.locator.invalidate_everywhere(path, writing=True)
        note.decision, note.endpoint = "multipart", name
        return response

    async def delete(self, request: web.Request, path: str, note: Note) -> web.StreamResponse:
        self.gate.require(note.identity, Privilege.DELETE, path)
        if path == "/" or self.fed.namespace.is_mount_point(path):
            raise Forbidden(f"{path} is a mount point of the federation and cannot be deleted")
        result = await self.fed.locator.locate(path, Want.ALL, None, use_cache=False)
        note.locate_seconds = result.elapsed
        if not result.replicas:
            raise self._missing(path, result)
        failures: list[str] = [f"{name}: {why} (its replica may remain)" for name, why in result.unknown]
        deleted: list[str] = []
        for replica in result.replicas:
            endpoint = self.fed.endpoints[replica.endpoint]
            if not endpoint.settings.writable or not endpoint.capabilities.delete:
                failures.append(f"{replica.endpoint}: endpoint is read-only")
                continue
            try:
                await endpoint.delete(replica.path)
            except PathNotFound:
                deleted.append(replica.endpoint)
            except EndpointError as exc:
                failures.append(f"{replica.endpoint}: {exc.reason}")
            else:
                deleted.append(replica.endpoint)
        await self.fed.locator.invalidate_everywhere(path)
        note.decision, note.endpoint = "delete", ",".join(deleted) or None
        if failures:
            done = f"deleted on {', '.join(deleted)}; " if deleted else ""
            raise BadGateway(f"{path}: {done}failed on {'; '.join(failures)}")
        return web.Response(status=204)

    async def mkcol(self, request: web.Request, path: str, note: Note) -> web.StreamResponse:
        self.gate.require(note.identity, Privilege.WRITE, path)
        if request.body_exists:
            raise UnsupportedMediaType("MKCOL with a body is not supported")
        if path == "/" or self.fed.namespace.is_mount_point(path):
            raise MethodNotAllowed(f"{path} already exists", headers={"Allow": ALLOWED})
        existing = await self._locate(path, Want.FIRST, None, note)
        if existing.replicas:
            raise MethodNotAllowed(f"{path} already exists", headers={"Allow": ALLOWED})
        try:
            parent_stat = await self._stat(parent(path), Note())
        except NotFound as exc:
            raise Conflict(f"the parent collection of {path} does not exist") from exc
        if not parent_stat.is_dir:
            raise Conflict(f"the parent of {path} is not a collection")
        ranking = self.fed.rank_for_write(self.fed.clients.place(note.client), path)
        if not ranking.accepted:
            raise Forbidden(f"no writable endpoint serves {path}")
        best = ranking.accepted[0]
        try:
            await self.fed.endpoints[best.endpoint].makedirs(best.path)
        except EndpointError as exc:
            raise _endpoint_http_error(exc, f"cannot create {path}") from exc
        await self.fed.locator.invalidate_everywhere(path)
        note.decision, note.endpoint = "mkcol", best.endpoint
        return web.Response(status=201)

    async def propfind(self, request: web.Request, path: str, note: Note) -> web.StreamResponse:
        depth = propfind.parse_depth(request.headers.get("Depth"))
        identity = note.identity
        self.gate.require_stat(identity, path)
        limit = self._server.max_propfind_body
        if request.content_length is not None and request.content_length > limit:
            raise PayloadTooLarge(f"PROPFIND body larger than {limit} bytes")
        body = await request.content.read(limit + 1)
        if len(body) > limit:
            raise PayloadTooLarge(f"PROPFIND body larger than {limit} bytes")
        wanted = propfind.parse_body(body)
        stat = await self._stat(path, note)
        note.decision = "propfind"
        href = request.raw_path.split("?", 1)[0]
        response = web.StreamResponse(status=207)
        response.content_type = "application/xml"
        response.charset = "utf-8"
        await response.prepare(request)
        chunk = propfind.MULTISTATUS_OPEN + propfind.render_response(
            href, basename(path) or "/", stat, wanted
        )
        if depth == 1 and stat.is_dir and self.gate.may_list(identity, path):
            outcome = ListingOutcome()
            visible = self.gate.visible
            async for entry in self.listings.entries(path, outcome):
                if not visible(identity, _child(path, entry.name)):
                    continue
                chunk += propfind.render_response(
                    propfind.child_href(href, entry.name, entry.stat.is_dir), entry.name, entry.stat, wanted
                )
                if len(chunk) >= _FLUSH_BYTES:
                    await response.write(chunk.encode())
                    chunk = ""
        await response.write((chunk + propfind.MULTISTATUS_CLOSE).encode())
        await response.write_eof()
        return response

    async def _listing(self, request: web.Request, path: str, identity: Identity) -> web.StreamResponse:
        as_json = "application/json" in request.headers.get("Accept", "")
        response = web.StreamResponse(status=200)
        response.content_type = "application/json" if as_json else "text/html"
        response.charset = "utf-8"
        await response.prepare(request)
        outcome = ListingOutcome()
        base = listing_html.collection_base(request.raw_path)
        chunk = listing_html.json_head(path) if as_json else listing_html.html_head(path, base)
        first = True
        visible = self.gate.visible
        async for entry in self.listings.entries(path, outcome):
            if not visible(identity, _child(path, entry.name)):
                continue
            chunk += listing_html.json_entry(entry, first) if as_json else listing_html.html_row(entry, base)
            first = False
            if len(chunk) >= _FLUSH_BYTES:
                await response.write(chunk.encode())
                chunk = ""
        chunk += listing_html.json_tail(outcome.errors) if as_json else listing_html.html_tail(outcome.errors)
        await response.write(chunk.encode())
        await response.write_eof()
        return response


def _child(path: str, name: str) -> str:
    return f"{path.rstrip('/')}/{name}"


MACAROON_REQUEST = "application/macaroon-request"


def _unsupported(request: web.Request) -> HTTPError:
    """405 for methods geofed does not serve; a clear word for gfal2's macaroon request, which
    gfal2 sends before its operations and after which it carries on with its own credential."""
    if request.method == "POST" and request.content_type == MACAROON_REQUEST:
        return MethodNotAllowed(
            "geofed does not issue macaroons; authenticate with your X509 proxy or a WLCG token",
            headers={"Allow": ALLOWED},
        )
    return MethodNotAllowed(f"{request.method} is not supported here", headers={"Allow": ALLOWED})


def _endpoint_http_error(exc: EndpointError, what: str) -> HTTPError:
    if isinstance(exc, EndpointUnavailable):
        return ServiceUnavailable(f"{what}: {exc}")
    if isinstance(exc, EndpointRefused) and exc.status == 403:
        return Forbidden(f"{what}: {exc}")
    if isinstance(exc, EndpointRefused) and exc.status == 409:
        return Conflict(f"{what}: {exc}")
    return BadGateway(f"{what}: {exc}")


def _http_date(timestamp: float) -> str:
    return time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(timestamp))
