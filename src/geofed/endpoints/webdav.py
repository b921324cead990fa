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

Streamed transfers (``read``, ``upload``) cannot have a total time: there ``timeout`` bounds each
wait instead (connecting, every read from the socket, the server taking each chunk, the answer).

* ``read`` is a GET, with ``Range`` when a part is wanted; a server that ignores the range
  (200) is still read correctly, the bytes outside it are dropped. A collection is not a file:
  PathNotFound (Apache answers GET of a collection with 404, nginx redirects to ``path/``).
* ``upload`` PUTs the chunks (chunked transfer encoding) to ``.<name>.geofed-<uuid>.part`` in the
  destination's collection, then MOVEs that onto the name (``Overwrite: T``); on any failure the
  temporary name is deleted. Listings hide such names. (Apache and nginx write a PUT body to a
  temporary file of their own already; the MOVE makes it so on servers that write in place.)
* ``store_checksums`` PROPPATCHes dead properties ``{https://geofed.org/ns}checksums``
  (``adler32:<hex>,md5:<hex>,...``) and ``checksum-stamp`` (size, ETag without ``W/`` and mtime
  of the file at that moment). Apache mod_dav_fs keeps dead properties (in ``.DAV/`` beside the
  file, moved and deleted with it); nginx dav-ext answers PROPPATCH with 405, which is remembered
  (``store_checksums`` then answers False without asking).
* ``stored_checksums`` reads that property back (PROPFIND Depth 0, believed only while the stamp
  matches the file) and asks the server itself with ``HEAD`` and ``Want-Digest`` (RFC 3230);
  a ``Digest`` the server sends is its own, verified value. Neither Apache nor nginx sends one.
* ``move`` is MOVE with an absolute ``Destination`` on the same server, after a stat of the
  source (nginx wants collections named with a trailing slash on both sides) and creating the
  destination's parents (Apache answers 500 to a MOVE into a missing collection).
* ``space`` asks for the RFC 4331 quota properties of the base URL; neither Apache 2.4 mod_dav_fs
  (no quota support) nor nginx dav-ext reports them, so it is None there.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import re
import uuid
from collections.abc import AsyncGenerator, AsyncIterable, AsyncIterator, Iterable, Mapping
from urllib.parse import quote, unquote, urljoin, urlsplit, urlunsplit

import aiohttp
from yarl import URL

from geofed import __version__
from geofed.config import EndpointSettings
from geofed.endpoints.base import CHECKSUM_ALGORITHMS, Capabilities, Endpoint, Entry, Space, StatResult
from geofed.endpoints.davxml import (
    GEOFED_NS,
    QUOTA_AVAILABLE,
    QUOTA_USED,
    DavItem,
    DavXMLError,
    MultistatusParser,
    normalise_path,
    parse_http_date,
    parse_length,
    propfind_body,
    propfind_named_body,
    proppatch_body,
)
from geofed.endpoints.httpbody import CHUNK_SIZE, capped_chunks, window
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
_XML = "application/xml; charset=utf-8"

#: Bytes per chunk that ``read`` yields at most.
READ_CHUNK = 256 * 1024
#: The dead properties of stored checksums, in Clark notation.
CHECKSUMS_PROPERTY = f"{{{GEOFED_NS}}}checksums"
STAMP_PROPERTY = f"{{{GEOFED_NS}}}checksum-stamp"
WANT_DIGEST = "adler32, md5, sha-256, crc32c"
_DIGEST_NAMES = {
    "adler32": "adler32",
    "md5": "md5",
    "sha-256": "sha256",
    "sha256": "sha256",
    "crc32c": "crc32c",
}
_HEX_LENGTH = {"adler32": 8, "md5": 32, "sha256": 64, "crc32c": 8}
_HEX = re.compile(r"[0-9a-fA-F]+")
_TEMPORARY = re.compile(r"\..*\.geofed-[0-9a-f]{32}\.part", re.DOTALL)
_CONTENT_RANGE = re.compile(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*$")
#: Longest part of a file name kept in its upload's temporary name (in UTF-8 bytes), so that the
#: temporary name stays below the usual 255-byte limit.
_TEMPORARY_NAME_BYTES = 180


def temporary_name(name: str) -> str:
    """The name ``upload`` first PUTs ``name`` under: hidden, unique, recognisable."""
    kept = name.encode()[:_TEMPORARY_NAME_BYTES].decode(errors="ignore")
    return f".{kept}.geofed-{uuid.uuid4().hex}.part"


def is_temporary(name: str) -> bool:
    """Whether ``name`` is an upload's temporary name (hidden from listings)."""
    return _TEMPORARY.fullmatch(name) is not None


def _digest_value(algorithm: str, value: str) -> str:
    """Canonical hex of a ``Digest`` value: adler32 and crc32c as hex (crc32c also as base64 of
    its 4 bytes, as XrdHttp sends it), md5 and sha256 as base64 (or full-length hex)."""
    length = _HEX_LENGTH[algorithm]
    if _HEX.fullmatch(value) and (len(value) == length or (length == 8 and len(value) < 8)):
        return value.lower().rjust(length, "0")
    if algorithm == "adler32":
        raise ValueError(f"not an adler32 value: {value[:80]!r}")
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ValueError(f"not base64: {value[:80]!r}") from exc
    if len(raw) * 2 != length:
        raise ValueError(f"a {algorithm} digest has {length // 2} bytes, not {len(raw)}")
    return raw.hex()


def parse_digest(header: str | None) -> dict[str, str]:
    """{canonical algorithm: lower-case hex} of an RFC 3230 ``Digest`` answer; entries of other
    algorithms or with malformed values are skipped."""
    values: dict[str, str] = {}
    for item in (header or "").split(","):
        token, _, value = item.strip().partition("=")
        algorithm = _DIGEST_NAMES.get(token.strip().lower())
        if algorithm is None or not value.strip():
            continue
        try:
            values.setdefault(algorithm, _digest_value(algorithm, value.strip()))
        except ValueError:
            logger.debug("ignoring a malformed Digest entry %r", item.strip()[:100])
    return values


def format_checksums(values: Mapping[str, str]) -> str:
    """The text of the checksums property: ``adler32:<hex>,md5:<hex>,...``."""
    return ",".join(
        f"{algorithm}:{values[algorithm]}" for algorithm in CHECKSUM_ALGORITHMS if algorithm in values
    )


def parse_checksums(text: str) -> dict[str, str]:
    """The values of a checksums property; unknown algorithms and non-hex values are skipped."""
    values: dict[str, str] = {}
    for item in text.split(","):
        algorithm, _, value = (part.strip().lower() for part in item.partition(":"))
        length = _HEX_LENGTH.get(algorithm)
        if length is None or not _HEX.fullmatch(value):
            continue
        if len(value) == length or (length == 8 and len(value) < 8):  # 32-bit ones may be unpadded
            values[algorithm] = value.rjust(length, "0")
    return values


def _etag(stat: StatResult) -> str | None:
    """The ETag without the weak marker: Apache sends ``W/"..."`` for a file changed within the
    last second and the strong form afterwards, for the same bytes."""
    return stat.etag.removeprefix("W/") if stat.etag else None


def version_stamp(stat: StatResult) -> str:
    """What ties stored checksums to one content of a file: ``size=..;etag=..;mtime=..``."""
    mtime = "" if stat.mtime is None else f"{stat.mtime:.0f}"
    size = "" if stat.size is None else str(stat.size)
    return f"size={size};etag={_etag(stat) or ''};mtime={mtime}"


def describes(fresh: StatResult, stat: StatResult) -> bool:
    """Whether ``fresh`` (what the server says now) is the version of the file ``stat`` describes,
    as far as ``stat`` tells: its size, and its ETag (or, without ETags, its mtime)."""
    if stat.size is not None and fresh.size is not None and stat.size != fresh.size:
        return False
    if _etag(stat) and _etag(fresh):
        return _etag(stat) == _etag(fresh)
    if stat.mtime is not None and fresh.mtime is not None:
        return int(stat.mtime) == int(fresh.mtime)
    return True


def same_version(stamp: str, stat: StatResult) -> bool:
    """Whether ``stat`` describes the file a stamp was made for: same size, and the same ETag
    (or, when the server sends none, the same mtime)."""
    then = dict(part.partition("=")[::2] for part in stamp.split(";"))
    now = dict(part.partition("=")[::2] for part in version_stamp(stat).split(";"))
    if not then.get("size") or then.get("size") != now["size"]:
        return False
    if then.get("etag") or now["etag"]:
        return then.get("etag") == now["etag"]
    return bool(now["mtime"]) and then.get("mtime") == now["mtime"]


class WebDAVEndpoint(Endpoint):
    """An endpoint reached over HTTP(S), speaking WebDAV where the server does."""

    capabilities = Capabilities(upload_stream=True, read_stream=True, store_checksums=True, move=True)

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
        self._proppatch_supported = True

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
        data: bytes | AsyncIterable[bytes] | None = None,
        follow: bool = False,
        streaming: bool = False,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """One request; library errors while sending *or reading the body* become EndpointUnavailable.

        The mapping wraps the caller's whole ``async with`` block because a timeout or a dropped
        connection can strike while the body streams in, long after the status line arrived.
        ``streaming`` replaces the total time limit by limits on connecting and on each read.
        """
        url = URL(self.url_for(path, collection=collection), encoded=True)
        session = self._client()
        timeout = session.timeout
        if streaming:
            limit = self.settings.timeout
            timeout = aiohttp.ClientTimeout(total=None, connect=limit, sock_read=limit)
        try:
            async with session.request(
                method,
                url,
                headers=headers,
                data=data,
                allow_redirects=follow,
                max_redirects=MAX_REDIRECTS,
                timeout=timeout,
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
        self, response: aiohttp.ClientResponse, path: str, limit: int, extra: Iterable[str] = ()
    ) -> AsyncGenerator[list[DavItem], None]:
        """Batches of entries parsed from a 207 body as its chunks arrive (``extra``: further
        properties to keep, see :class:`MultistatusParser`)."""
        parser = MultistatusParser(extra)

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
                        if name not in ("", ".", "..") and not is_temporary(name):
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
        missing, and ``makedirs`` relies on 409 to create parents. Apache answers 403 to the loser
        of two MKCOLs of one collection at the same moment (two uploads into a new folder): when
        the collection exists afterwards, that is "already exists", not a refusal.
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
            error = self._status_error("MKCOL", path, resp)
        if resp.status == 403:
            existing = await self.stat(path)
            if existing is not None and existing.is_dir:
                return False
        raise error

    # -- streamed reads and uploads ---------------------------------------------------------------

    async def read(self, path: str, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        """GET (with ``Range`` for a part), yielding chunks of at most READ_CHUNK bytes.

        PathNotFound for a missing path or a collection. A range starting at or after the end
        (416) yields nothing, as reading past the end of a file does.
        """
        if offset < 0 or (length is not None and length < 0):
            raise ValueError(f"invalid range: offset {offset}, length {length}")
        if length == 0:
            stat = await self.stat(path)
            if stat is None or stat.is_dir:
                raise PathNotFound(self.name, f"GET {path}: no such file")
            return
        # The stored bytes, not a compressed form of them (a Range counts bytes of what is sent).
        headers = {"Accept-Encoding": "identity"}
        if offset or length is not None:
            end = "" if length is None else str(offset + length - 1)
            headers["Range"] = f"bytes={offset}-{end}"
        # Redirects are followed (dCache sends reads to a pool); one to ``path/`` means a collection.
        async with self._request("GET", path, headers=headers, follow=True, streaming=True) as resp:
            if any(self._is_slash_redirect(hop) for hop in resp.history):
                await self._discard(resp)
                raise PathNotFound(self.name, f"GET {path}: a collection, not a file")
            if resp.status == 416:
                await self._discard(resp)
                return
            if resp.status == 206:
                self._check_range(path, resp, offset)
                skip = 0
            elif resp.status == 200:
                skip = offset  # the server ignored Range: drop what comes before it
            else:
                raise self._status_error("GET", path, resp)
            async for chunk in window(resp.content, READ_CHUNK, skip, length):
                yield chunk

    def _check_range(self, path: str, response: aiohttp.ClientResponse, offset: int) -> None:
        """A 206 must be the part asked for (a multipart or shifted answer would corrupt the read)."""
        match = _CONTENT_RANGE.match(response.headers.get("Content-Range", ""))
        if match is None or int(match.group(1)) != offset:
            found = response.headers.get("Content-Range")
            raise EndpointUnavailable(self.name, f"GET {path}: asked for bytes from {offset}, got {found!r}")

    async def upload(self, path: str, chunks: AsyncIterator[bytes]) -> None:
        """PUT ``chunks`` to a temporary name beside ``path``, then MOVE it onto ``path``.

        Parents are created. EndpointRefused 409 when ``path`` is a collection. Whatever fails --
        the server, or the ``chunks`` iterator (whose exception is passed on unchanged) -- the
        temporary name is deleted and ``path`` is untouched.
        """
        if path == "/":
            raise EndpointRefused(self.name, "PUT /: cannot upload to the endpoint's root", 409)
        parent, _, name = path.rpartition("/")
        current = await self.stat(path)
        if current is not None and current.is_dir:
            raise EndpointRefused(self.name, f"PUT {path}: a collection is in the way", 409)
        await self.makedirs(parent or "/")
        temporary = f"{parent}/{temporary_name(name)}"
        try:
            await self._put_stream(temporary, chunks)
            await self._move(temporary, path, overwrite=True, collection=False)
        except BaseException:
            with contextlib.suppress(EndpointError):
                await self.delete(temporary)
            raise

    async def _put_stream(self, path: str, chunks: AsyncIterator[bytes]) -> None:
        """A chunked PUT of ``chunks``. The endpoint's timeout bounds each step that depends on the
        server (taking one chunk, answering at the end), not the wait for the client's next chunk."""
        loop = asyncio.get_running_loop()
        limit = self.settings.timeout
        failure: list[BaseException] = []
        deadline = asyncio.timeout(None)

        async def body() -> AsyncIterator[bytes]:
            try:
                async for chunk in chunks:
                    if not chunk:
                        continue
                    deadline.reschedule(loop.time() + limit)  # the server must take it in time
                    yield chunk
                    deadline.reschedule(None)  # waiting for the client is not the server's fault
            except Exception as exc:
                failure.append(exc)
                raise
            deadline.reschedule(loop.time() + limit)  # and answer in time

        headers = {"Content-Type": "application/octet-stream"}
        try:
            request = self._request("PUT", path, headers=headers, data=body(), streaming=True)
            async with deadline, request as resp:
                await self._discard(resp)
                if resp.status not in (200, 201, 204):
                    raise self._status_error("PUT", path, resp)
        except EndpointError:
            if failure:  # the client's body failed, not the endpoint: report that
                raise failure[0] from None
            raise
        except TimeoutError as exc:
            if not deadline.expired():
                raise
            raise EndpointUnavailable(self.name, f"PUT {path}: timed out after {limit:g}s") from exc

    # -- checksums ------------------------------------------------------------------------------

    async def _propfind_item(
        self, path: str, extra: Iterable[str], *, collection: bool = False
    ) -> DavItem | None:
        """PROPFIND Depth 0 for the stat properties and ``extra``; None when the path is absent."""
        names = tuple(extra)
        headers = {"Depth": "0", "Content-Type": _XML}
        body = propfind_named_body(names)
        items: list[DavItem] = []
        async with self._request(
            "PROPFIND", path, collection=collection, headers=headers, data=body, follow=True
        ) as resp:
            if resp.status in _GONE:
                await self._discard(resp)
                return None
            if resp.status != 207:
                raise self._status_error("PROPFIND", path, resp)
            batches = self._multistatus(resp, path, MAX_STAT_BODY, names)
            async with contextlib.aclosing(batches):
                async for batch in batches:
                    items.extend(batch)
        wanted = self._href_path(path)
        for item in items:
            if item.path == wanted:
                return item
        return items[0] if items else None

    async def stored_checksums(self, path: str, stat: StatResult) -> dict[str, str]:
        """The checksums property geofed stored (while its stamp matches the file and ``stat``),
        then, for what is still missing, the server's own ``Digest`` of a HEAD with
        ``Want-Digest`` (which wins over the property where both have a value)."""
        found = await super().stored_checksums(path, stat)
        if stat.is_dir:
            return found
        if self._propfind_supported and self._proppatch_supported:
            found.update(await self._checksums_property(path, stat))
        if all(algorithm in found for algorithm in CHECKSUM_ALGORITHMS):
            return found
        found.update(await self._server_digest(path, stat))
        return found

    async def _checksums_property(self, path: str, stat: StatResult) -> dict[str, str]:
        try:
            item = await self._propfind_item(path, (CHECKSUMS_PROPERTY, STAMP_PROPERTY))
        except EndpointRefused:
            return {}  # no PROPFIND here (a plain HTTP server): no property, maybe a Digest
        if item is None:
            raise PathNotFound(self.name, f"PROPFIND {path}: no such file")
        text, stamp = item.prop(CHECKSUMS_PROPERTY), item.prop(STAMP_PROPERTY)
        if item.stat.is_dir or not text or not stamp:
            return {}
        if not same_version(stamp, item.stat) or not describes(item.stat, stat):
            return {}  # the file changed since they were stored, or since the caller's stat
        return parse_checksums(text)

    async def _server_digest(self, path: str, stat: StatResult) -> dict[str, str]:
        """The ``Digest`` of a HEAD asking for every algorithm, if it describes ``stat``'s file."""
        async with self._request("HEAD", path, headers={"Want-Digest": WANT_DIGEST}, follow=True) as resp:
            if resp.status in _GONE:
                raise PathNotFound(self.name, f"HEAD {path}: no such file")
            if not 200 <= resp.status < 300:
                if resp.status >= 500:
                    raise self._status_error("HEAD", path, resp)
                return {}
            now = StatResult(
                is_dir=False,
                size=parse_length(resp.headers.get("Content-Length")),
                etag=resp.headers.get("ETag"),
            )
            digest = resp.headers.get("Digest")
        if not digest or not describes(now, stat):
            return {}
        return parse_digest(digest)

    async def store_checksums(self, path: str, values: dict[str, str]) -> bool:
        """PROPPATCH the checksums property with a stamp of the file as it is now. False when the
        server keeps no dead properties (405/501 is remembered) or refused one of them."""
        if not self._propfind_supported or not self._proppatch_supported:
            return False
        checked = parse_checksums(format_checksums({a: v.strip().lower() for a, v in values.items()}))
        if not checked:
            return False
        try:
            item = await self._propfind_item(path, ())
        except EndpointRefused as exc:
            if exc.status in _NOT_DAV:
                return False  # no PROPFIND here, so no properties either
            raise
        if item is None:
            raise PathNotFound(self.name, f"PROPFIND {path}: no such file")
        if item.stat.is_dir:
            return False
        props = {CHECKSUMS_PROPERTY: format_checksums(checked), STAMP_PROPERTY: version_stamp(item.stat)}
        headers = {"Content-Type": _XML}
        items: list[DavItem] = []
        async with self._request("PROPPATCH", path, headers=headers, data=proppatch_body(props)) as resp:
            if resp.status in (405, 501):
                await self._discard(resp)
                logger.info(
                    "endpoint %s: PROPPATCH answered HTTP %d, not storing checksums there",
                    self.name,
                    resp.status,
                )
                self._proppatch_supported = False
                return False
            if resp.status != 207:
                raise self._status_error("PROPPATCH", path, resp)
            batches = self._multistatus(resp, path, MAX_STAT_BODY, props)
            async with contextlib.aclosing(batches):
                async for batch in batches:
                    items.extend(batch)
        # RFC 4918: all or nothing; each property set is listed with a 2xx propstat.
        return any(all(item.prop(name) is not None for name in props) for item in items)

    # -- move and space ---------------------------------------------------------------------------

    async def move(self, source: str, destination: str, overwrite: bool = True) -> None:
        """MOVE ``source`` to ``destination`` (its parents created first). EndpointRefused 412 when
        the destination exists and ``overwrite`` is False, 403 for the root, the same path or a
        collection moved into itself; PathNotFound when ``source`` is absent."""
        if "/" in (source, destination):
            raise EndpointRefused(self.name, "MOVE: refusing to move the endpoint's root", 403)
        if source == destination or destination.startswith(source + "/"):
            raise EndpointRefused(self.name, f"MOVE {source}: cannot move onto itself or into itself", 403)
        current = await self.stat(source)
        if current is None:
            raise PathNotFound(self.name, f"MOVE {source}: no such file or collection")
        await self.makedirs(destination.rsplit("/", 1)[0] or "/")
        await self._move(source, destination, overwrite=overwrite, collection=current.is_dir)

    async def _move(self, source: str, destination: str, *, overwrite: bool, collection: bool) -> None:
        headers = {
            "Destination": self.url_for(destination, collection=collection),
            "Overwrite": "T" if overwrite else "F",
        }
        async with self._request("MOVE", source, collection=collection, headers=headers) as resp:
            await self._discard(resp)
            if resp.status in (200, 201, 204):
                return
            if resp.status == 412:
                message = f"MOVE {source}: {destination} exists and overwrite is off"
                raise EndpointRefused(self.name, message, 412)
            raise self._status_error("MOVE", source, resp)

    async def space(self) -> Space | None:
        """RFC 4331 ``quota-available-bytes`` and ``quota-used-bytes`` of the base URL, or None
        when the server reports neither (Apache 2.4 and nginx do not)."""
        if not self._propfind_supported:
            return None
        item = await self._propfind_item("/", (QUOTA_AVAILABLE, QUOTA_USED), collection=True)
        if item is None:
            raise PathNotFound(self.name, "PROPFIND of the base URL: not found")
        available = parse_length(item.prop(QUOTA_AVAILABLE))
        used = parse_length(item.prop(QUOTA_USED))
        if available is None and used is None:
            return None
        return Space(used=used, available=available)

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
