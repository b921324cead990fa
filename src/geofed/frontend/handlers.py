"""The federation's HTTP methods: what geofed answers itself, and what it redirects.

Only GET (302) and PUT (307) are redirected; HEAD, PROPFIND, MKCOL, DELETE and OPTIONS are answered
here, because clients mishandle redirected namespace operations and a redirected PROPFIND would
show the endpoint's namespace (see the client reference). One instance serves every request; the
warm GET path is: validate the path, place the client, read the cached replica list, rank, sign.
"""

from __future__ import annotations

import time
from functools import partial
from urllib.parse import quote

from aiohttp import web

from geofed.auth.identity import Privilege
from geofed.config import ServerSettings
from geofed.endpoints.base import StatResult
from geofed.errors import (
    ExpectationFailed,
    HTTPError,
    MethodNotAllowed,
    NotFound,
    ServiceUnavailable,
)
from geofed.federation.listing import ListingMerger
from geofed.federation.locator import LocateResult, Want
from geofed.federation.paths import is_clean_request_path, request_path
from geofed.frontend import browse, copy, metalink, readproxy, reads, uploadproxy, writes
from geofed.frontend.accesslog import AccessLog
from geofed.frontend.clientaddr import ClientAddressResolver
from geofed.frontend.common import (
    ALLOWED,
    AWAITING_BODY,
    DIR_STAT,
    SEND_THE_BODY,
    VIA_PROXY_PREFIX,
    Handler,
    Note,
    error_response,
    http_date,
)
from geofed.frontend.gate import AccessGate
from geofed.frontend.redirect import MAX_PREPARED_PER_ANSWER, PreparedRedirect, prepare_redirect
from geofed.geo import ClientPlacement
from geofed.runtime import Federation

_NO_REDIRECTS: dict[int, PreparedRedirect] = {}


class FederationFrontEnd:
    def __init__(self, federation: Federation, server: ServerSettings, access_log: AccessLog | None) -> None:
        self.fed = federation
        self.server = server
        self._log = access_log.appender() if access_log is not None else None
        self._addresses = ClientAddressResolver(server.trusted_proxies)
        self._public_url = server.public_url.rstrip("/") if server.public_url else None
        fs = federation.settings
        self.gate = AccessGate(fs)
        self._known = self.gate.known
        self._allows = self.gate.policy.authorize  # the gate's allows, one call less
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
            "PUT": partial(writes.put, self),
            "DELETE": partial(writes.delete, self),
            "MKCOL": partial(writes.mkcol, self),
            "PROPFIND": partial(browse.propfind, self),
            "MOVE": partial(writes.move, self),
            "COPY": partial(copy.copy, self),
            "OPTIONS": self.options,
        }
        # bound once: the warm GET path calls these on every request
        self._place = federation.clients.place
        self._cached = federation.locations_cache.get
        self._max_alternatives = fs.federation.max_alternatives
        self._retry_after = fs.federation.retry_after
        self._proxy_prefix = fs.proxy.url_prefix
        self._proxy_reads = fs.proxy.reads

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
            if self._proxy_prefix is not None and (
                path == self._proxy_prefix or path.startswith(self._proxy_prefix + "/")
            ):
                path = path[len(self._proxy_prefix) :] or "/"
                request[VIA_PROXY_PREFIX] = True
            note.identity = self._known(request) or await self.gate.identify(request)
            response = await handler(request, path, note)
            if response is SEND_THE_BODY:
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
            request[AWAITING_BODY] = True
            response = await self.dispatch(request)
            if response is not SEND_THE_BODY:
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

    def absolute(self, request: web.Request, url: str) -> str:
        if url.startswith("/"):
            return (self._public_url or f"{request.scheme}://{request.host}") + url
        return url

    def signed(self, request: web.Request, method: str, endpoint: str, path: str) -> str:
        """An absolute URL signed by ``endpoint`` for ``method`` with that endpoint's lifetime."""
        url = self.fed.endpoints[endpoint].sign_url(method, path, self.fed.url_lifetimes[endpoint])
        return self.absolute(request, url)

    async def locate(self, path: str, want: Want, client: ClientPlacement | None, note: Note) -> LocateResult:
        result = await self.fed.locator.locate(path, want, client)
        note.locate_seconds = 0.0 if result.cached else result.elapsed
        return result

    def missing(self, path: str, result: LocateResult) -> HTTPError:
        """404 only when every endpoint said no; 503 when some could not answer."""
        if result.unknown:
            detail = "; ".join(f"{name}: {why}" for name, why in result.unknown)
            return ServiceUnavailable(
                f"{path} was not found on the endpoints that answered, and these could not say: {detail}",
                retry_after=self._retry_after,
            )
        return NotFound(f"{path} does not exist on any endpoint")

    async def stat_of(self, path: str, note: Note) -> StatResult:
        """The federated stat of ``path``: a file replica's metadata, a collection, or an error."""
        return self.stat_from(path, await self.locate(path, Want.FIRST, None, note))

    def stat_from(self, path: str, result: LocateResult) -> StatResult:
        files = result.files
        if files:
            return files[0].stat
        if result.replicas:
            return result.replicas[0].stat
        if self.fed.namespace.is_mount_point(path):
            return DIR_STAT
        raise self.missing(path, result)

    # -- methods ------------------------------------------------------------------------------

    def _warm_redirect(self, request: web.Request) -> web.Response | None:
        """The hot path: a GET of a clean path whose redirect is already prepared for this kind of
        client. Anything else (None) takes the general path, which prepares it for next time."""
        path = request.path
        raw_path = request.raw_path
        if not is_clean_request_path(raw_path, path) or "?" in raw_path:
            return None
        headers = request.headers
        if "Want-Digest" in headers or "Want-Repr-Digest" in headers:
            return None
        if metalink.MEDIA_TYPE in headers.get("Accept", ""):
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
            result = await self.locate(path, Want.CLOSEST, placement, note)
        if not result.files:
            if result.replicas or self.fed.namespace.is_mount_point(path):
                gate.require_list(note.identity, path)
                note.decision = "listing"
                return await browse.listing(self, request, path, note.identity)
            raise self.missing(path, result)
        gate.require(note.identity, Privilege.READ, path)
        if metalink.wants_metalink(request.headers.get("Accept", ""), request.query_string):
            if not result.complete:  # a metalink lists every replica: wait for every endpoint
                result = await self.locate(path, Want.ALL, placement, note)
            return await reads.metalink_response(self, request, path, result, note)
        asked = reads.wanted_digests(request)
        ranking = self.fed.rank(placement, result)
        if not ranking.accepted:
            reasons = "; ".join(f"{r.endpoint}: {r.reason}" for r in ranking.rejected)
            raise ServiceUnavailable(f"no replica of {path} can be served now ({reasons})")
        if self._proxy_reads and uploadproxy.proxy_mode(
            self.fed.settings.proxy,
            request.headers.get("User-Agent", ""),
            path,
            bool(request.get(VIA_PROXY_PREFIX)),
        ):
            return await readproxy.stream(self, request, path, result, ranking, note)

        def sign(endpoint: str, endpoint_path: str, extra: float) -> str:
            lifetime = self.fed.url_lifetimes[endpoint] + extra
            return self.absolute(
                request, self.fed.endpoints[endpoint].sign_url("GET", endpoint_path, lifetime)
            )

        prepared = prepare_redirect(
            ranking,
            sign,
            self._max_alternatives,
            self.fed.health.generation,
            describedby=metalink.describedby(quote(path)),
        )
        if asked is not None:
            digests = await reads.digest_headers(self, asked, result.files, path)
            headers, note.endpoint = prepared.pick(self.fed.rng)
            note.decision = "redirect"
            return web.Response(status=302, headers={**headers, **digests})
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
        result = await self.locate(path, Want.FIRST, None, note)
        stat = self.stat_from(path, result)
        note.decision = "stat"
        if stat.is_dir:
            return web.Response(status=200, content_type="text/html", charset="utf-8")
        headers = {"Accept-Ranges": "bytes", "Content-Type": stat.content_type or "application/octet-stream"}
        headers["Link"] = metalink.describedby(quote(path))
        asked = reads.wanted_digests(request)
        if asked is not None:
            if self.gate.allows(note.identity, Privilege.READ, path):
                headers.update(await reads.digest_headers(self, asked, result.files, path))
            else:  # a checksum is a digest of the content: it needs the read privilege
                headers["Want-Digest"] = reads.SUPPORTED
        if stat.size is not None:
            headers["Content-Length"] = str(stat.size)
        if stat.mtime is not None:
            headers["Last-Modified"] = http_date(stat.mtime)
        if stat.etag is not None:
            headers["ETag"] = stat.etag
        response = web.Response(status=200, headers=headers)
        return response

    async def options(self, request: web.Request, path: str, note: Note) -> web.StreamResponse:
        note.decision = "options"
        return web.Response(
            status=200, headers={"DAV": "1", "Allow": ALLOWED, "MS-Author-Via": "DAV", "Content-Length": "0"}
        )


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
