"""The HTTP layer of the ``s3`` endpoint kind: one signed request, its errors, and the lookups
(HeadObject, one ListObjectsV2 page) that every other part of the endpoint builds on.

Kept apart from :mod:`geofed.endpoints.s3` so that the namespace (:mod:`~geofed.endpoints.s3namespace`),
the data transfers (:mod:`~geofed.endpoints.s3io`) and the server-side copies (in ``s3``) share one
request path -- signing, timeouts, the mapping of library errors and S3 error documents onto the
contract of :mod:`geofed.endpoints.base` -- without each reimplementing it. :class:`S3Client` is
only a base class: the endpoint kind is :class:`geofed.endpoints.s3.S3Endpoint`.

One ``aiohttp.ClientSession`` per endpoint, created on first use inside the running loop, with
``max_concurrency`` connections and ``timeout`` as the total time of one request; requests that
move data instead get ``timeout`` per step (connecting, each read, each :data:`SEND_SLICE` of body
handed to the connection), so a large transfer is not cut off while it progresses. Messages carry
the status and the S3 error code, never a URL with a signature and never the secret key.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from typing import Any, TypeVar

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from geofed import __version__
from geofed.config import EndpointSettings
from geofed.endpoints.base import Endpoint
from geofed.endpoints.credentials import S3Keys, s3_keys
from geofed.endpoints.httpbody import capped_chunks
from geofed.endpoints.s3xml import ListPage, S3XMLError, parse_error, parse_list_page
from geofed.endpoints.sigv4 import EMPTY_SHA256, UNSIGNED_PAYLOAD, BucketAddress, QueryPairs, SigV4Signer
from geofed.errors import EndpointError, EndpointRefused, EndpointUnavailable, PathNotFound

#: A ListObjectsV2 page holds at most 1000 keys of at most 1 KiB each, plus a little XML per key.
MAX_LIST_BODY = 8 << 20
#: Error documents and other small answers are read up to this size.
MAX_SMALL_BODY = 64 * 1024
#: What S3 lists per page at most; asking for more gives this many anyway.
PAGE_SIZE = 1000
_USER_AGENT = f"geofed/{__version__}"

_META_PREFIX = "x-amz-meta-"

MiB = 1024 * 1024
GiB = 1024 * MiB
#: Request bodies are handed to the connection this many bytes at a time, each within ``timeout``.
SEND_SLICE = 1 * MiB
#: Codes of S3 errors that say "try again" rather than "no", whatever their status.
_TRANSIENT_CODES = frozenset(
    {
        "BadDigest",
        "IncompleteBody",
        "RequestTimeout",
        "XAmzContentSHA256Mismatch",
        "InternalError",
        "SlowDown",
    }
)

_T = TypeVar("_T")


def _user_metadata(headers: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """``x-amz-meta-*`` headers as (lower-case name without the prefix, value) pairs, sorted."""
    return tuple(
        sorted(
            (name[len(_META_PREFIX) :], value)
            for name, value in ((k.lower(), v) for k, v in headers.items())
            if name.startswith(_META_PREFIX)
        )
    )


class S3Client(Endpoint):
    """The session, the signer and the request plumbing of one bucket (a base of ``S3Endpoint``)."""

    def __init__(self, settings: EndpointSettings, keys: S3Keys | None = None) -> None:
        super().__init__(settings)
        if settings.bucket is None:  # the configuration already refuses this; keeps mypy honest
            raise ValueError(f"endpoint {settings.name}: an s3 endpoint needs a bucket")
        keys = keys if keys is not None else s3_keys(settings)
        self.bucket = settings.bucket
        self._signer = SigV4Signer(keys.access_key, keys.secret_key, settings.region)
        self._address = BucketAddress(settings.url, settings.bucket, settings.addressing)
        self._session: aiohttp.ClientSession | None = None
        self._cleanups: set[asyncio.Task[None]] = set()
        """Aborts of failed multipart uploads, kept alive (and waited for by ``aclose``) when the
        upload that started them is cancelled."""

    def __repr__(self) -> str:
        return f"S3Endpoint({self.name!r}, {self._address!r})"

    @staticmethod
    def _key(path: str) -> str:
        """The object key of an endpoint path; ``""`` for the root (the bucket itself)."""
        return path.strip("/")

    # -- HTTP plumbing ------------------------------------------------------------------------

    def _client(self) -> aiohttp.ClientSession:
        """The endpoint's session, created on first use so that it binds to the running loop."""
        if self._session is None or self._session.closed:
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.settings.max_concurrency),
                timeout=aiohttp.ClientTimeout(total=self.settings.timeout),
                headers={"User-Agent": _USER_AGENT},
                auto_decompress=False,
            )
        return self._session

    @contextlib.asynccontextmanager
    async def _request(
        self,
        method: str,
        key: str,
        query: QueryPairs = (),
        *,
        what: str,
        body: bytes | bytearray = b"",
        headers: Mapping[str, str] | None = None,
        unsigned_payload: bool = False,
        streaming: bool = False,
        read_timeout: float | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """One header-signed request; library errors while sending *or reading* become Unavailable.

        The mapping wraps the caller's whole ``async with`` block because a timeout or a reset can
        strike while the body streams in. ``what`` names the request in messages (never the URL).

        ``unsigned_payload`` signs ``UNSIGNED-PAYLOAD`` instead of the body's SHA-256 (for data
        bodies, which carry a signed ``Content-MD5`` that S3 checks: the body is bound to the
        signature all the same, for one hash pass instead of two). ``streaming`` replaces the total
        time limit by the endpoint's timeout for connecting, for each read (``read_timeout`` when
        given: a server-side copy answers only when done) and for each :data:`SEND_SLICE` of the
        body to be taken by the connection.
        """
        if unsigned_payload:
            payload = UNSIGNED_PAYLOAD
        else:
            payload = hashlib.sha256(body).hexdigest() if body else EMPTY_SHA256
        url, signed = self._signer.sign_headers(
            method, self._address, key, query, payload_sha256=payload, headers=headers
        )
        session = self._client()
        limit = self.settings.timeout
        timeout = session.timeout
        if streaming:
            timeout = aiohttp.ClientTimeout(total=None, connect=limit, sock_read=read_timeout or limit)
        data: bytes | bytearray | AsyncIterator[memoryview] | None = body or None
        deadline: asyncio.Timeout | None = None
        if streaming and body:
            deadline = asyncio.timeout(None)
            data = self._paced(body, deadline)
            signed["Content-Length"] = str(len(body))
        try:
            async with (
                deadline if deadline is not None else contextlib.nullcontext(),
                session.request(
                    method,
                    URL(url, encoded=True),
                    headers=signed,
                    data=data,
                    allow_redirects=False,
                    timeout=timeout,
                ) as response,
            ):
                yield response
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            if isinstance(exc, TimeoutError):
                reason = f"timed out after {limit:g}s"
            else:
                reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise EndpointUnavailable(self.name, f"{what}: {reason}") from exc

    async def _paced(self, body: bytes | bytearray, deadline: asyncio.Timeout) -> AsyncIterator[memoryview]:
        """``body`` in slices, each to be taken by the connection within the endpoint's timeout
        (aiohttp has no write timeout: a server that stops reading would hang the upload)."""
        loop = asyncio.get_running_loop()
        view = memoryview(body)
        try:
            for start in range(0, len(view), SEND_SLICE):
                deadline.reschedule(loop.time() + self.settings.timeout)
                yield view[start : start + SEND_SLICE]
            deadline.reschedule(None)  # the answer is sock_read's business
        except RuntimeError:  # the request is over (an early answer): nothing more to send
            return

    async def _read(self, response: aiohttp.ClientResponse, what: str, limit: int) -> bytes:
        """The whole body, refusing one larger than ``limit`` (not a real S3 answer)."""

        def too_large() -> Exception:
            return EndpointUnavailable(self.name, f"{what}: answer larger than {limit} bytes")

        return b"".join([chunk async for chunk in capped_chunks(response, limit, too_large)])

    async def _error(self, what: str, response: aiohttp.ClientResponse) -> EndpointError:
        """The contract's error for an unwanted answer, with the S3 error code when there is one."""
        status = response.status
        body = b""
        if response.method != "HEAD":
            with contextlib.suppress(EndpointUnavailable):
                body = await self._read(response, what, MAX_SMALL_BODY)
        info = parse_error(body)
        code = info.code if info is not None else (response.reason or "")
        message = f"{what}: HTTP {status} {code}".rstrip()
        if status >= 500 or (info is not None and info.code in _TRANSIENT_CODES):
            return EndpointUnavailable(self.name, message)
        if info is not None and info.code == "NoSuchBucket":
            return EndpointUnavailable(self.name, f"{message}: bucket {self.bucket} does not exist")
        if status in (404, 410):
            return PathNotFound(self.name, message)
        return EndpointRefused(self.name, message, status)

    def _check_result(self, what: str, answer: bytes, parse: Callable[[bytes], _T]) -> _T:
        """``parse(answer)`` of a 200 answer, which S3 may have turned into an error document."""
        info = parse_error(answer)
        if info is not None:
            raise EndpointUnavailable(self.name, f"{what}: HTTP 200 {info.code}")
        try:
            return parse(answer)
        except S3XMLError as exc:
            raise EndpointUnavailable(self.name, f"{what}: {exc}") from exc

    def _background(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``work`` as a task that outlives a cancelled caller; ``aclose`` waits for it."""
        task = asyncio.ensure_future(work)
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)
        return task

    # -- lookups --------------------------------------------------------------------------------

    async def _list_page(
        self,
        what: str,
        prefix: str,
        *,
        delimiter: str | None = None,
        token: str | None = None,
        max_keys: int = PAGE_SIZE,
    ) -> ListPage:
        """One ListObjectsV2 page of the keys starting with ``prefix`` (keys URL-encoded on the wire,
        so that keys holding characters XML cannot carry still list)."""
        query = [
            ("list-type", "2"),
            ("prefix", prefix),
            ("max-keys", str(max_keys)),
            ("encoding-type", "url"),
        ]
        if delimiter is not None:
            query.append(("delimiter", delimiter))
        if token is not None:
            query.append(("continuation-token", token))
        async with self._request("GET", "", query, what=what) as resp:
            if resp.status != 200:
                raise await self._error(what, resp)
            body = await self._read(resp, what, MAX_LIST_BODY)
        try:
            return parse_list_page(body)
        except S3XMLError as exc:
            raise EndpointUnavailable(self.name, f"{what}: {exc}") from exc

    async def _head(self, path: str, key: str) -> CIMultiDictProxy[str] | None:
        """The headers of HeadObject on ``key``, or None on 404."""
        what = f"HEAD {path}"
        async with self._request("HEAD", key, what=what) as resp:
            if resp.status == 200:
                return resp.headers
            if resp.status != 404:
                raise await self._error(what, resp)
        return None

    async def _is_directory(self, path: str, key: str) -> bool:
        """Whether some key starts with ``key/`` (one one-key listing)."""
        page = await self._list_page(f"LIST {path}/", key + "/", max_keys=1)
        return page.key_count > 0
