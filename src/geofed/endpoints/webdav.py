"""The ``webdav`` endpoint kind: a WebDAV server (Apache mod_dav, nginx dav-ext, ...) or plain HTTP.

The endpoint path ``/a/b`` is the URL ``<settings.url>/a/b``, percent-encoded. Everything here is
written against what real servers do, not only what RFC 4918 says (test-infrastructure.md §5):

* **PROPFIND goes to the URL without a trailing slash.** Both servers answer it for files and
  collections; with a slash Apache answers a *file* with 400, which would turn "not a collection"
  into a refusal. Redirects are followed for PROPFIND/HEAD, so a server whose ``mod_dir`` adds the
  slash to collections still works.
* **MKCOL goes to the URL with a trailing slash**: nginx answers 409 to every MKCOL without one
  (even when the collection exists); Apache accepts both.
* **DELETE goes without the slash, and again with it on 409**: nginx refuses (409) to delete a
  collection named without a slash and a file named with one; Apache deletes either without.
* **Plain HTTP servers** answer PROPFIND with 405/501/400 (or 403, or a 2xx that is not a
  multistatus). ``stat`` then falls back to HEAD, and once a HEAD has given a definite answer where
  PROPFIND was refused the endpoint remembers it, so later stats cost one request, not two.
  The 403 case waits for that HEAD because a 403 alone may be about one path, not the method.

One ``aiohttp.ClientSession`` per endpoint, created on first use inside the running loop (a session
is bound to its loop), with ``max_concurrency`` connections and ``timeout`` as the total time of one
request, body included. Credentials (userinfo in the URL) are dropped: this endpoint sends none,
and so none can leak into a signed URL, a log line or an error message.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from urllib.parse import quote, unquote, urljoin, urlsplit, urlunsplit

import aiohttp
from yarl import URL

from geofed import __version__
from geofed.config import EndpointSettings
from geofed.endpoints.base import Endpoint, Entry, StatResult
from geofed.endpoints.davxml import (
    DavItem,
    DavXMLError,
    MultistatusParser,
    normalise_path,
    parse_http_date,
    parse_length,
    propfind_body,
)
from geofed.endpoints.httpbody import CHUNK_SIZE, capped_chunks
from geofed.errors import EndpointError, EndpointRefused, EndpointUnavailable, PathNotFound

logger = logging.getLogger(__name__)

#: A Depth 0 answer describes one resource; anything near this size is not a real answer.
MAX_STAT_BODY = 1 << 20
#: A Depth 1 answer is parsed as it streams in (memory stays at one chunk plus the entries not yet
#: consumed), so this cap is not about memory but about a runaway server: 256 MiB is roughly
#: 700 000 entries, far beyond what the federation lists (cache.max_listing_entries is 10 000).
MAX_LISTING_BODY = 256 << 20
#: Error pages are read (so the connection can be reused) up to this size, then dropped.
MAX_DISCARD_BODY = 64 * 1024
MAX_REDIRECTS = 3

# Answers to PROPFIND that mean "this server does not do WebDAV here", so HEAD is worth a try.
_NOT_DAV = frozenset({400, 403, 405, 501})
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_GONE = frozenset({404, 410})
_USER_AGENT = f"geofed/{__version__}"


class WebDAVEndpoint(Endpoint):
    """An endpoint reached over HTTP(S), speaking WebDAV where the server does."""

    def __init__(self, settings: EndpointSettings) -> None:
        super().__init__(settings)
        parts = urlsplit(settings.url)
        netloc = parts.netloc.rpartition("@")[2]  # never keep userinfo
        base_path = parts.path.rstrip("/")
        self._base_url = urlunsplit((parts.scheme, netloc, base_path, "", ""))
        # Decoded form of the base, to recognise the hrefs of a multistatus (which are decoded too).
        self._base_path = normalise_path(unquote(base_path))
        self._session: aiohttp.ClientSession | None = None
        self._propfind_supported = True

    # -- URLs ---------------------------------------------------------------------------------

    def url_for(self, path: str, *, collection: bool = False) -> str:
        """The full URL of endpoint path ``path``; ``collection`` adds the trailing slash."""
        encoded = quote(path, safe="/") if path != "/" else ""
        if collection or not encoded:
            encoded += "/"
        return self._base_url + encoded

    def _href_path(self, path: str) -> str:
        """The decoded server path of ``path``, as the hrefs of a multistatus show it."""
        return normalise_path(self._base_path + path)

    def sign_url(self, method: str, path: str, lifetime: float) -> str:
        """The endpoint's own URL: nothing to sign, as this endpoint kind carries no credentials."""
        return self.url_for(path)

    # -- HTTP plumbing ------------------------------------------------------------------------

    def _client(self) -> aiohttp.ClientSession:
        """The endpoint's session, created on first use so that it binds to the running loop."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.settings.max_concurrency),
                timeout=aiohttp.ClientTimeout(total=self.settings.timeout),
                headers={"User-Agent": _USER_AGENT},
            )
        return self._session

    @contextlib.asynccontextmanager
    async def _request(
        self,
        method: str,
        path: str,
        *,
        collection: bool = False,
        headers: Mapping[str, str] | None = None,
        data: bytes | None = None,
        follow: bool = False,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """One request; library errors while sending *or reading the body* become EndpointUnavailable.

        The mapping wraps the caller's whole ``async with`` block because a timeout or a dropped
        connection can strike while the body streams in, long after the status line arrived.
        """
        url = URL(self.url_for(path, collection=collection), encoded=True)
        try:
            async with self._client().request(
                method,
                url,
                headers=headers,
                data=data,
                allow_redirects=follow,
                max_redirects=MAX_REDIRECTS,
            ) as response:
                yield response
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise self._unavailable(method, path, exc) from exc

    def _propfind(
        self, path: str, depth: str, *, collection: bool = False
    ) -> contextlib.AbstractAsyncContextManager[aiohttp.ClientResponse]:
        """A PROPFIND asking for the properties of a StatResult; redirects are followed."""
        headers = {"Depth": depth, "Content-Type": "application/xml; charset=utf-8"}
        return self._request(
            "PROPFIND", path, collection=collection, headers=headers, data=propfind_body(), follow=True
        )

    def _unavailable(self, method: str, path: str, exc: BaseException) -> EndpointUnavailable:
        if isinstance(exc, TimeoutError):
            reason = f"timed out after {self.settings.timeout:g}s"
        else:
            detail = str(exc)
            reason = f"{type(exc).__name__}: {detail}" if detail else type(exc).__name__
        return EndpointUnavailable(self.name, f"{method} {path}: {reason}")

    def _status_error(self, method: str, path: str, response: aiohttp.ClientResponse) -> EndpointError:
        """The contract's error for an unwanted status: 5xx unavailable, 404 not found, else refused."""
        status = response.status
        message = f"{method} {path}: HTTP {status} {response.reason or ''}".rstrip()
        if status >= 500:
            return EndpointUnavailable(self.name, message)
        if status in _GONE:
            return PathNotFound(self.name, message)
        return EndpointRefused(self.name, message, status)

    @staticmethod
    async def _discard(response: aiohttp.ClientResponse) -> None:
        """Read a small body to its end so that the connection goes back to the pool."""
        seen = 0
        async for chunk in response.content.iter_chunked(CHUNK_SIZE):
            seen += len(chunk)
            if seen > MAX_DISCARD_BODY:
                response.close()  # not worth reading: drop the connection instead
                return

    async def _multistatus(
        self, response: aiohttp.ClientResponse, path: str, limit: int
    ) -> AsyncGenerator[list[DavItem], None]:
        """Batches of entries parsed from a 207 body as its chunks arrive."""
        parser = MultistatusParser()

        def too_large() -> Exception:
            return EndpointUnavailable(self.name, f"PROPFIND {path}: answer larger than {limit} bytes")

        try:
            async for chunk in capped_chunks(response, limit, too_large):
                if batch := parser.feed(chunk):
                    yield batch
            if batch := parser.close():
                yield batch
        except DavXMLError as exc:
            # A broken answer is not a definite one: for the federation the endpoint is unusable.
            raise EndpointUnavailable(self.name, f"PROPFIND {path}: {exc}") from exc

    # -- stat -----------------------------------------------------------------------------------

    async def stat(self, path: str) -> StatResult | None:
        """PROPFIND Depth 0, or HEAD on a server that does not speak WebDAV (see the module doc)."""
        if not self._propfind_supported:
            return await self._stat_head(path)
        async with self._propfind(path, "0") as resp:
            if resp.status == 207:
                return await self._stat_multistatus(resp, path)
            if resp.status in _GONE:
                return None
            if resp.status not in _NOT_DAV and not 200 <= resp.status < 300:
                raise self._status_error("PROPFIND", path, resp)
            refused = resp.status
            await self._discard(resp)
        result = await self._stat_head(path)
        # HEAD answered definitely where PROPFIND was refused: the method is the problem.
        logger.info("endpoint %s: PROPFIND answered HTTP %d, using HEAD from now on", self.name, refused)
        self._propfind_supported = False
        return result

    async def _stat_multistatus(self, response: aiohttp.ClientResponse, path: str) -> StatResult | None:
        """The stat in a Depth 0 answer: the entry for ``path``, else the only entry there is.

        Depth 0 describes exactly one resource, so an entry whose href differs (a server that
        rewrites paths, a redirect) is still the answer. A multistatus without any 2xx entry means
        the server reported the resource itself as missing.
        """
        wanted = self._href_path(path)
        items: list[DavItem] = []
        async with contextlib.aclosing(self._multistatus(response, path, MAX_STAT_BODY)) as batches:
            async for batch in batches:
                items.extend(batch)
        for item in items:
            if item.path == wanted:
                return item.stat
        return items[0].stat if items else None

    async def _stat_head(self, path: str) -> StatResult | None:
        """Stat through HEAD: any 2xx is a file; a redirect to ``path/`` is a collection."""
        async with self._request("HEAD", path) as resp:
            if 200 <= resp.status < 300:
                return StatResult(
                    is_dir=False,
                    size=parse_length(resp.headers.get("Content-Length")),
                    mtime=parse_http_date(resp.headers.get("Last-Modified")),
                    etag=resp.headers.get("ETag"),
                    content_type=resp.headers.get("Content-Type"),
                )
            if resp.status in _GONE:
                return None
            if resp.status in _REDIRECTS and self._is_slash_redirect(resp):
                return StatResult(is_dir=True)
            raise self._status_error("HEAD", path, resp)

    @staticmethod
    def _is_slash_redirect(response: aiohttp.ClientResponse) -> bool:
        """Whether ``Location`` is the request URL plus ``/`` (how web servers announce a folder)."""
        location = response.headers.get("Location")
        if not location:
            return False
        here = unquote(response.url.raw_path)
        there = unquote(urlsplit(urljoin(str(response.url), location)).path)
        return there == here + "/"

    # -- list -----------------------------------------------------------------------------------

    async def list(self, path: str) -> AsyncIterator[Entry]:
        """PROPFIND Depth 1, yielding children as the answer streams in.

        The collection's own entry is recognised by its decoded path (slash-insensitive) and
        skipped; if it says "not a collection", the path is a file and PathNotFound is raised.
        """
        if not self._propfind_supported:
            raise EndpointRefused(self.name, f"PROPFIND {path}: the endpoint does not support listing", 405)
        wanted = self._href_path(path)
        async with self._propfind(path, "1") as resp:
            if 200 <= resp.status < 300 and resp.status != 207:
                message = f"PROPFIND {path}: HTTP {resp.status} instead of a multistatus: not WebDAV"
                raise EndpointRefused(self.name, message, 405)
            if resp.status != 207:
                raise self._status_error("PROPFIND", path, resp)
            async with contextlib.aclosing(self._multistatus(resp, path, MAX_LISTING_BODY)) as batches:
                async for batch in batches:
                    for item in batch:
                        if item.path == wanted:
                            if not item.stat.is_dir:
                                raise PathNotFound(self.name, f"{path} is not a collection")
                            continue
                        name = item.path.rsplit("/", 1)[-1]
                        if name not in ("", ".", ".."):
                            yield Entry(name, item.stat)

    # -- changes --------------------------------------------------------------------------------

    async def delete(self, path: str) -> None:
        """DELETE, retried with a trailing slash on 409 (nginx's answer for a collection without one)."""
        if path == "/":
            raise EndpointRefused(self.name, "DELETE /: refusing to delete the endpoint's root", 403)
        async with self._request("DELETE", path) as resp:
            await self._discard(resp)
            if resp.status != 409:
                self._check_deleted(path, resp)
                return
        async with self._request("DELETE", path, collection=True) as retry:
            await self._discard(retry)
            # Apache answers 400 to a file named with a slash; then the first answer stands.
            self._check_deleted(path, resp if retry.status == 400 else retry)

    def _check_deleted(self, path: str, response: aiohttp.ClientResponse) -> None:
        if response.status not in (200, 202, 204):
            raise self._status_error("DELETE", path, response)

    async def mkcol(self, path: str) -> bool:
        """MKCOL with a trailing slash: 201 created, 405 exists, 409 (or 404) parent missing.

        A 404 is reported as the 409 of RFC 4918: for MKCOL it can only mean the parent is
        missing, and ``makedirs`` relies on 409 to create parents.
        """
        async with self._request("MKCOL", path, collection=True) as resp:
            await self._discard(resp)
            if resp.status == 201:
                return True
            if resp.status == 405:
                return False
            if resp.status in (404, 409):
                message = f"MKCOL {path}: HTTP {resp.status}: the parent collection is missing"
                raise EndpointRefused(self.name, message, 409)
            raise self._status_error("MKCOL", path, resp)

    # -- health ---------------------------------------------------------------------------------

    async def probe(self) -> None:
        """PROPFIND Depth 0 on the base URL (HEAD for a plain HTTP server).

        Healthy means: a multistatus, or, for plain HTTP, any HEAD answer below 400 or a 403 (a
        folder without an index page). 404 means the configured base path is wrong: unhealthy.
        """
        if self._propfind_supported:
            async with self._propfind("/", "0", collection=True) as resp:
                await self._discard(resp)
                if resp.status == 207:
                    return
                if resp.status not in _NOT_DAV and not 200 <= resp.status < 300:
                    raise EndpointUnavailable(self.name, f"PROPFIND of the base URL: HTTP {resp.status}")
        async with self._request("HEAD", "/", collection=True) as resp:
            if resp.status < 400 or resp.status == 403:
                return
            raise EndpointUnavailable(self.name, f"HEAD of the base URL: HTTP {resp.status}")

    async def aclose(self) -> None:
        """Close the session and its connections; a later request would open a new one."""
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()
