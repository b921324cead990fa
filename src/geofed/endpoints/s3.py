"""The ``s3`` endpoint kind: one bucket of an S3 service (AWS, Ceph RGW, MinIO, ...).

The endpoint path ``/a/b`` is the object key ``a/b`` (the prefix mapping of the configuration
already put the key prefix in front). S3 has no directories, so this module gives it the ones a
WebDAV federation expects, the way S3 consoles and s3fs do:

* a path is a **directory** when no object has its key but some key starts with ``key/``: a real
  object below it, or a zero-byte **marker** object ``key/`` (what ``mkcol`` writes, so that an
  empty directory can exist). Markers make their directory exist and are hidden from listings;
* parents are virtual: writing ``a/b/c`` makes ``a`` and ``a/b`` exist, so ``mkcol`` never fails
  for a missing parent and ``makedirs`` is one marker PUT;
* deleting a directory deletes every key under ``key/``, page by page, marker included.

Clients get presigned URLs (query-string SigV4, see :mod:`geofed.endpoints.sigv4`); geofed's own
requests (HEAD, ListObjectsV2, DELETE, marker PUT, multi-object delete, and the data transfers
below) carry an Authorization header. One ``aiohttp.ClientSession`` per endpoint, created on first
use inside the running loop, with ``max_concurrency`` connections and ``timeout`` as the total time
of one request; requests that move data instead get ``timeout`` per step (connecting, each read,
each 1 MiB of body handed to the connection), so a large transfer is not cut off while it progresses.

Data, checksums and renames (see the methods for the details):

* ``read`` is a signed GET with ``Range``; ``upload`` is one PutObject up to :data:`PART_SIZE`
  and a multipart upload of :data:`PART_SIZE` parts beyond, every body with ``Content-MD5`` so
  that S3 checks the bytes itself, the multipart upload aborted on any failure;
* checksums are kept as ``x-amz-meta-geofed-<alg>`` metadata. S3 cannot change metadata in place,
  so ``store_checksums`` copies the object onto itself (CopyObject, ``REPLACE``) conditionally on
  its ETag; a single-part object's ETag is its MD5, verified by S3 on upload, and is reported;
* ``move`` is CopyObject then DeleteObject (UploadPartCopy above 5 GiB), a directory key by key.

Errors follow the contract of :mod:`geofed.endpoints.base`; in addition a ``NoSuchBucket`` answer
is EndpointUnavailable, not "path not found": a missing bucket is a misconfigured endpoint, not
a missing file. Messages carry the status and the S3 error code, never a URL with a signature
and never the secret key.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine, Mapping, Sequence
from typing import Any, TypeVar

import aiohttp
from multidict import CIMultiDictProxy
from yarl import URL

from geofed import __version__
from geofed.config import EndpointSettings
from geofed.endpoints.base import (
    CHECKSUM_ALGORITHMS,
    CHECKSUM_METADATA_PREFIX,
    Capabilities,
    Endpoint,
    Entry,
    Space,
    StatResult,
    checksums_from_metadata,
    sealed,
)
from geofed.endpoints.credentials import S3Keys, s3_keys
from geofed.endpoints.davxml import parse_http_date, parse_length
from geofed.endpoints.httpbody import capped_chunks
from geofed.endpoints.s3xml import (
    ListPage,
    S3XMLError,
    complete_multipart_body,
    delete_objects_body,
    parse_complete_multipart,
    parse_copy_etag,
    parse_delete_errors,
    parse_error,
    parse_list_page,
    parse_upload_id,
    xml_safe,
)
from geofed.endpoints.sigv4 import (
    EMPTY_SHA256,
    MAX_EXPIRES,
    UNSIGNED_PAYLOAD,
    BucketAddress,
    QueryPairs,
    SigV4Signer,
    encode_key,
)
from geofed.errors import EndpointError, EndpointRefused, EndpointUnavailable, PathNotFound

logger = logging.getLogger(__name__)


#: A ListObjectsV2 page holds at most 1000 keys of at most 1 KiB each, plus a little XML per key.
MAX_LIST_BODY = 8 << 20
#: Error documents and other small answers are read up to this size.
MAX_SMALL_BODY = 64 * 1024
#: What S3 lists per page at most; asking for more gives this many anyway.
PAGE_SIZE = 1000
#: The methods a presigned URL is made for; anything else is a programming error.
SIGNABLE = frozenset({"GET", "HEAD", "PUT", "DELETE"})
MARKER_CONTENT_TYPE = "application/x-directory"
_USER_AGENT = f"geofed/{__version__}"

_META_PREFIX = "x-amz-meta-"

MiB = 1024 * 1024
GiB = 1024 * MiB
#: ``read`` yields chunks of at most this many bytes.
READ_CHUNK = 256 * 1024
#: ``upload`` sends up to this many bytes as one PutObject, and larger uploads in parts of exactly
#: this size (the last one shorter); it holds at most two parts in memory (one being sent).
PART_SIZE = 16 * MiB
#: S3 numbers parts 1..10000, so an upload can be at most ``MAX_PARTS * PART_SIZE`` (160 GiB).
MAX_PARTS = 10_000
#: The largest object one CopyObject copies; ``move`` copies larger ones part by part, and
#: ``store_checksums`` (a self-copy) gives up on them.
COPY_LIMIT = 5 * GiB
#: The smallest part of a multipart copy (grown so that no copy needs more than MAX_PARTS).
COPY_PART_SIZE = 512 * MiB
#: A server-side copy of n bytes may take ``timeout + n / COPY_RATE`` seconds to answer.
COPY_RATE = 32 * MiB
#: Request bodies are handed to the connection this many bytes at a time, each within ``timeout``.
SEND_SLICE = 1 * MiB
#: Objects copied at once when moving a directory.
MOVE_CONCURRENCY = 16
#: Parts copied at once by a multipart copy.
COPY_PART_CONCURRENCY = 4
_MULTIPART_CONTENT_TYPE = "application/octet-stream"
_ETAG_MD5 = re.compile(r'\s*"?([0-9A-Fa-f]{32})"?\s*')
#: What a CopyObject with ``x-amz-metadata-directive: REPLACE`` drops unless sent again (and what a
#: multipart copy must give the new upload): the object's headers, apart from user metadata.
_OBJECT_HEADERS = (
    "Content-Type",
    "Cache-Control",
    "Content-Disposition",
    "Content-Encoding",
    "Content-Language",
    "Expires",
    "x-amz-website-redirect-location",
)
#: Properties any copy drops (S3 gives the copy the default) unless they are sent again.
_STORAGE_HEADERS = (
    "x-amz-storage-class",
    "x-amz-server-side-encryption",
    "x-amz-server-side-encryption-aws-kms-key-id",
    "x-amz-server-side-encryption-bucket-key-enabled",
)
#: Present on SSE-C objects: S3 needs the client's key to read or copy them.
_SSE_C = "x-amz-server-side-encryption-customer-algorithm"
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


def _expires(lifetime: float) -> int:
    """A URL lifetime as S3 takes it: whole seconds between 1 and 7 days."""
    return max(1, min(MAX_EXPIRES, int(lifetime)))


def etag_md5(etag: str | None) -> str | None:
    """The MD5 (lower-case hex) an ETag stands for, or None when it is not one.

    A single-part upload's ETag is the quoted MD5 of its bytes, computed (and, with Content-MD5,
    checked) by S3. A multipart upload's is ``"<md5 of the part md5s>-<parts>"`` and is no MD5 of
    the content; Ceph RGW keeps that form through CopyObject, onto itself or elsewhere.
    """
    match = _ETAG_MD5.fullmatch(etag) if etag else None
    return match.group(1).lower() if match else None


def _user_metadata(headers: Mapping[str, str]) -> tuple[tuple[str, str], ...]:
    """``x-amz-meta-*`` headers as (lower-case name without the prefix, value) pairs, sorted."""
    return tuple(
        sorted(
            (name[len(_META_PREFIX) :], value)
            for name, value in ((k.lower(), v) for k, v in headers.items())
            if name.startswith(_META_PREFIX)
        )
    )


def _header_safe(text: str) -> bool:
    """Whether ``text`` can be sent back as a header name or value as it came (printable ASCII)."""
    return text.isascii() and text.isprintable()


async def _bounded(jobs: Sequence[Callable[[], Awaitable[_T]]], limit: int) -> list[_T]:
    """Run ``jobs`` with at most ``limit`` at once; results in order. The first failure cancels the
    others (waiting for them to finish) and is raised."""
    semaphore = asyncio.Semaphore(limit)

    async def run(job: Callable[[], Awaitable[_T]]) -> _T:
        async with semaphore:
            return await job()

    tasks = [asyncio.ensure_future(run(job)) for job in jobs]
    try:
        return list(await asyncio.gather(*tasks))
    except BaseException:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


class _Parts:
    """Cuts a byte stream into parts of exactly ``size`` bytes with their Content-MD5, hashed as the
    bytes arrive. A full part is handed out only once a byte beyond it arrives, so a stream of
    ``size`` bytes or fewer stays one part (one PutObject) and no multipart upload ends in an
    empty part."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._data = bytearray()
        self._md5 = hashlib.md5(usedforsecurity=False)

    def feed(self, chunk: bytes) -> list[tuple[bytearray, str]]:
        full: list[tuple[bytearray, str]] = []
        view = memoryview(chunk)
        while len(view):
            if len(self._data) == self.size:
                full.append(self.finish())
            piece = view[: self.size - len(self._data)]
            self._data += piece
            self._md5.update(piece)
            view = view[len(piece) :]
        return full

    def finish(self) -> tuple[bytearray, str]:
        """The bytes held (possibly none) and their Content-MD5; the buffer starts afresh."""
        data, digest = self._data, base64.b64encode(self._md5.digest()).decode()
        self._data = bytearray()
        self._md5 = hashlib.md5(usedforsecurity=False)
        return data, digest


class S3Endpoint(Endpoint):
    """One bucket; keys below the configured prefixes are files, ``/``-separated names directories."""

    capabilities = Capabilities(
        multipart_upload=True,
        upload_stream=True,
        read_stream=True,
        store_checksums=True,
        move=True,
        server_copy=True,
    )

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

    # -- presigned URLs -------------------------------------------------------------------------

    def sign_url(self, method: str, path: str, lifetime: float) -> str:
        """A presigned URL for exactly ``method``: S3 signs the method, so a GET URL cannot HEAD."""
        method = method.upper()
        if method not in SIGNABLE:
            raise ValueError(f"cannot sign {method} for an s3 endpoint")
        return self._signer.presign(method, self._address, self._key(path), _expires(lifetime))

    def sign_multipart_create(self, path: str, lifetime: float) -> str:
        """``POST <key>?uploads`` (CreateMultipartUpload); the answer carries the UploadId."""
        return self._signer.presign(
            "POST", self._address, self._key(path), _expires(lifetime), (("uploads", ""),)
        )

    def sign_multipart_parts(self, path: str, upload_id: str, count: int, lifetime: float) -> tuple[str, ...]:
        """``PUT <key>?uploadId=…&partNumber=i`` for parts 1..count (UploadPart)."""
        key, expires = self._key(path), _expires(lifetime)
        return tuple(
            self._signer.presign(
                "PUT", self._address, key, expires, (("uploadId", upload_id), ("partNumber", str(number)))
            )
            for number in range(1, count + 1)
        )

    def sign_multipart_complete(self, path: str, upload_id: str, lifetime: float) -> str:
        """``POST <key>?uploadId=…`` (CompleteMultipartUpload)."""
        return self._signer.presign(
            "POST", self._address, self._key(path), _expires(lifetime), (("uploadId", upload_id),)
        )

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

    # -- stat -----------------------------------------------------------------------------------

    async def _head(self, path: str, key: str) -> CIMultiDictProxy[str] | None:
        """The headers of HeadObject on ``key``, or None on 404."""
        what = f"HEAD {path}"
        async with self._request("HEAD", key, what=what) as resp:
            if resp.status == 200:
                return resp.headers
            if resp.status != 404:
                raise await self._error(what, resp)
        return None

    @staticmethod
    def _file_stat(headers: Mapping[str, str]) -> StatResult:
        return StatResult(
            is_dir=False,
            size=parse_length(headers.get("Content-Length")),
            mtime=parse_http_date(headers.get("Last-Modified")),
            etag=headers.get("ETag"),
            content_type=headers.get("Content-Type"),
            metadata=_user_metadata(headers),
        )

    async def stat(self, path: str) -> StatResult | None:
        """HeadObject; on 404, a one-key listing of ``key/`` tells whether it is a directory.

        The root is the bucket and always a directory (whether the bucket exists is the probe's
        business). A directory's mtime is its marker's, when it has one.
        """
        if path == "/":
            return StatResult(is_dir=True)
        key = self._key(path)
        headers = await self._head(path, key)
        if headers is not None:
            return self._file_stat(headers)
        page = await self._list_page(f"LIST {path}/", key + "/", max_keys=1)
        if page.key_count == 0:
            return None
        first = page.objects[0] if page.objects else None
        marker_mtime = first.mtime if first is not None and first.key == key + "/" else None
        return StatResult(is_dir=True, mtime=marker_mtime)

    async def _is_directory(self, path: str, key: str) -> bool:
        """Whether some key starts with ``key/`` (one one-key listing)."""
        page = await self._list_page(f"LIST {path}/", key + "/", max_keys=1)
        return page.key_count > 0

    # -- list -----------------------------------------------------------------------------------

    async def list(self, path: str) -> AsyncIterator[Entry]:
        """ListObjectsV2 with delimiter ``/``, one page at a time, entries yielded page by page.

        An empty first page means no such directory (PathNotFound), except at the root (an empty
        bucket). When a file ``x`` and keys under ``x/`` both exist, ``stat`` says "file", so the
        directory ``x`` is left out. Since ``x`` sorts before ``x/``, only the names that are a
        prefix of the current position can still meet their directory: ``files`` holds those and
        is pruned after every page, so memory stays bounded however long the listing.
        """
        prefix = "" if path == "/" else self._key(path) + "/"
        what = f"LIST {path}"
        token: str | None = None
        files: set[str] = set()
        first = True
        while True:
            page = await self._list_page(what, prefix, delimiter="/", token=token)
            if first and page.key_count == 0 and prefix:
                raise PathNotFound(self.name, f"{what}: no such directory")
            first = False
            for obj in page.objects:
                name = obj.key[len(prefix) :]
                # Skip the directory's own marker, and what a server that ignored the prefix or the
                # delimiter would add.
                if not name or "/" in name or not obj.key.startswith(prefix):
                    continue
                files.add(name)
                yield Entry(name, StatResult(is_dir=False, size=obj.size, mtime=obj.mtime, etag=obj.etag))
            for common in page.prefixes:
                name = common[len(prefix) : -1]
                if name and "/" not in name and common.startswith(prefix) and name not in files:
                    yield Entry(name, StatResult(is_dir=True))
            if not page.truncated:
                return
            last = [obj.key for obj in page.objects[-1:]] + page.prefixes[-1:]
            if last:
                position = max(last)[len(prefix) :]
                files = {name for name in files if name + "/" >= position}
            token = page.next_token

    # -- changes --------------------------------------------------------------------------------

    async def delete(self, path: str) -> None:
        """DeleteObject for a file; for a directory, every key under ``key/``, a page per request.

        S3 answers 204 to a DELETE of a missing key, so existence is checked first (HEAD, then the
        listing itself): deleting nothing is PathNotFound, as for the other endpoint kinds.
        """
        if path == "/":
            raise EndpointRefused(self.name, "DELETE /: refusing to delete the endpoint's root", 403)
        key = self._key(path)
        async with self._request("HEAD", key, what=f"HEAD {path}") as resp:
            if resp.status not in (200, 404):
                raise await self._error(f"HEAD {path}", resp)
            is_file = resp.status == 200
        if is_file:
            await self._delete_one(path, key)
            return
        token: str | None = None
        deleted = 0
        while True:
            page = await self._list_page(f"LIST {path}/", key + "/", token=token)
            keys = [obj.key for obj in page.objects]
            if keys:
                await self._delete_many(path, keys)
                deleted += len(keys)
            if not page.truncated:
                break
            token = page.next_token
        if not deleted:
            raise PathNotFound(self.name, f"DELETE {path}: no such file or directory")

    async def _delete_one(self, path: str, key: str) -> None:
        what = f"DELETE {path}"
        async with self._request("DELETE", key, what=what) as resp:
            if resp.status not in (200, 204):
                raise await self._error(what, resp)

    async def _delete_many(self, path: str, keys: Sequence[str]) -> None:
        """A quiet multi-object delete (POST ?delete, up to 1000 keys); keys XML cannot carry go one
        by one. Any key the server could not delete makes the whole delete a refusal."""
        what = f"DELETE {path}/"
        for key in (k for k in keys if not xml_safe(k)):
            await self._delete_one(path, key)
        safe = [k for k in keys if xml_safe(k)]
        if not safe:
            return
        body, md5 = delete_objects_body(safe)
        headers = {"Content-MD5": md5, "Content-Type": "application/xml"}
        async with self._request(
            "POST", "", (("delete", ""),), what=what, body=body, headers=headers
        ) as resp:
            if resp.status != 200:
                raise await self._error(what, resp)
            answer = await self._read(resp, what, MAX_LIST_BODY)
        try:
            errors = parse_delete_errors(answer)
        except S3XMLError as exc:
            raise EndpointUnavailable(self.name, f"{what}: {exc}") from exc
        if errors:
            codes = ", ".join(sorted({code for _, code in errors}))
            raise EndpointRefused(self.name, f"{what}: {len(errors)} keys not deleted ({codes})", 403)

    async def mkcol(self, path: str) -> bool:
        """Write the marker ``key/``; False when a file or directory already has this path.

        A missing parent is not an error: S3 parents are virtual and appear with their children.
        """
        if path == "/" or await self.stat(path) is not None:
            return False
        await self._put_marker(path)
        return True

    async def makedirs(self, path: str) -> None:
        """One marker PUT, without mkcol's existence check: parents are virtual, and writing a marker
        over an existing one (or into a directory that only has children) changes nothing visible.
        This runs before every redirected PUT, so it is worth the round trips saved."""
        if path != "/":
            await self._put_marker(path)

    async def _put_marker(self, path: str) -> None:
        what = f"PUT {path}/"
        headers = {"Content-Type": MARKER_CONTENT_TYPE}
        async with self._request("PUT", self._key(path) + "/", what=what, headers=headers) as resp:
            if resp.status != 200:
                raise await self._error(what, resp)

    # -- streamed reads and uploads -------------------------------------------------------------

    async def read(self, path: str, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        """GetObject (with ``Range`` for a part), yielding chunks of at most :data:`READ_CHUNK` bytes.

        PathNotFound for a missing key, a directory and the root (S3 says NoSuchKey for the first
        two). A range starting at or after the end (S3's 416 InvalidRange, which an empty object
        answers to any range) yields nothing, as reading past the end of a file does.
        """
        if offset < 0 or (length is not None and length < 0):
            raise ValueError(f"invalid range: offset {offset}, length {length}")
        what = f"GET {path}"
        if path == "/":
            raise PathNotFound(self.name, f"{what}: the root is a directory, not a file")
        key = self._key(path)
        if length == 0:
            if await self._head(path, key) is None:
                raise PathNotFound(self.name, f"{what}: no such file")
            return
        headers = {}
        if offset or length is not None:
            end = "" if length is None else str(offset + length - 1)
            headers["Range"] = f"bytes={offset}-{end}"
        async with self._request("GET", key, what=what, headers=headers, streaming=True) as resp:
            if resp.status == 416:
                with contextlib.suppress(EndpointUnavailable):  # keeps the connection reusable
                    await self._read(resp, what, MAX_SMALL_BODY)
                return
            if resp.status == 206:
                content_range = resp.headers.get("Content-Range", "")
                if not content_range.replace(" ", "").startswith(f"bytes{offset}-"):
                    message = f"{what}: asked for bytes from {offset}, got {content_range!r}"
                    raise EndpointUnavailable(self.name, message)
                skip = 0
            elif resp.status == 200:
                skip = offset  # a server that ignored Range: drop what comes before it
            else:
                raise await self._error(what, resp)
            remaining = length
            async for chunk in resp.content.iter_chunked(READ_CHUNK):
                if skip:
                    if len(chunk) <= skip:
                        skip -= len(chunk)
                        continue
                    chunk, skip = chunk[skip:], 0
                if remaining is not None:
                    if len(chunk) >= remaining:
                        yield chunk[:remaining]
                        return
                    remaining -= len(chunk)
                yield chunk

    async def upload(self, path: str, chunks: AsyncIterator[bytes]) -> None:
        """PutObject of up to :data:`PART_SIZE` bytes, else a multipart upload of such parts.

        Memory stays bounded: the part being filled and the part being sent (the next part is read
        while the previous one travels), plus one chunk. Every body goes with its ``Content-MD5``,
        so S3 refuses bytes damaged on the way. The object appears only when complete (S3 writes
        are atomic). On any failure -- the endpoint, a cancellation, or the ``chunks`` iterator,
        whose exception is passed on unchanged -- the multipart upload is aborted, so neither an
        object nor stored parts are left. EndpointRefused 409 when a directory is in the way (an
        object ``key`` would hide the keys below ``key/``), 413 beyond ``MAX_PARTS`` parts.
        """
        what = f"PUT {path}"
        if path == "/":
            raise EndpointRefused(self.name, f"{what}: cannot upload to the endpoint's root", 409)
        key = self._key(path)
        if await self._is_directory(path, key):
            raise EndpointRefused(self.name, f"{what}: a directory is in the way", 409)
        parts = _Parts(PART_SIZE)
        upload_id: str | None = None
        etags: list[str] = []
        sending: asyncio.Task[str] | None = None
        try:
            async for chunk in chunks:
                for data, md5 in parts.feed(chunk):
                    if upload_id is None:
                        content = {"Content-Type": _MULTIPART_CONTENT_TYPE}
                        upload_id = await self._start_multipart(what, key, content)
                    if sending is not None:
                        etags.append(await sending)
                        sending = None
                    number = len(etags) + 1
                    if number >= MAX_PARTS:  # a full part is handed out only when more follows
                        limit = MAX_PARTS * PART_SIZE
                        raise EndpointRefused(self.name, f"{what}: larger than {limit} bytes", 413)
                    sending = asyncio.ensure_future(
                        self._upload_part(what, key, upload_id, number, data, md5)
                    )
                    del data
            data, md5 = parts.finish()
            if upload_id is None:
                await self._put_object(what, key, data, md5)
                return
            if sending is not None:
                etags.append(await sending)
                sending = None
            etags.append(await self._upload_part(what, key, upload_id, len(etags) + 1, data, md5))
            await self._complete_multipart(what, key, upload_id, etags)
        except BaseException:
            if sending is not None or upload_id is not None:
                await self._clean_up(what, key, upload_id, sending)
            raise

    async def _put_object(self, what: str, key: str, data: bytearray, md5: str) -> None:
        headers = {"Content-MD5": md5, "Content-Type": _MULTIPART_CONTENT_TYPE}
        async with self._request(
            "PUT", key, what=what, body=data, headers=headers, unsigned_payload=True, streaming=True
        ) as resp:
            if resp.status != 200:
                raise await self._error(what, resp)

    async def _create_multipart(self, what: str, key: str, headers: Mapping[str, str]) -> str:
        """CreateMultipartUpload with the object's headers; its UploadId."""
        async with self._request("POST", key, (("uploads", ""),), what=what, headers=headers) as resp:
            if resp.status != 200:
                raise await self._error(what, resp)
            body = await self._read(resp, what, MAX_SMALL_BODY)
        try:
            return parse_upload_id(body)
        except S3XMLError as exc:
            raise EndpointUnavailable(self.name, f"{what}: {exc}") from exc

    async def _start_multipart(self, what: str, key: str, headers: Mapping[str, str]) -> str:
        """:meth:`_create_multipart`, which a cancellation does not interrupt: the server may have
        created the upload already, so it is awaited in the background and aborted."""
        creating = asyncio.ensure_future(self._create_multipart(what, key, headers))
        try:
            return await asyncio.shield(creating)
        except asyncio.CancelledError:

            async def abort_once_created() -> None:
                try:
                    upload_id = await creating
                except Exception:  # nothing was created (or we cannot know what)
                    return
                await self._abort_multipart(what, key, upload_id)

            self._background(abort_once_created())
            raise

    def _background(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Run ``work`` as a task that outlives a cancelled caller; ``aclose`` waits for it."""
        task = asyncio.ensure_future(work)
        self._cleanups.add(task)
        task.add_done_callback(self._cleanups.discard)
        return task

    async def _upload_part(
        self, what: str, key: str, upload_id: str, number: int, data: bytearray, md5: str
    ) -> str:
        """UploadPart; the part's ETag."""
        query = (("partNumber", str(number)), ("uploadId", upload_id))
        headers = {"Content-MD5": md5}
        async with self._request(
            "PUT", key, query, what=what, body=data, headers=headers, unsigned_payload=True, streaming=True
        ) as resp:
            if resp.status != 200:
                raise await self._error(f"{what} (part {number})", resp)
            etag = resp.headers.get("ETag")
        if not etag:
            raise EndpointUnavailable(self.name, f"{what} (part {number}): no ETag in the answer")
        return etag

    async def _complete_multipart(self, what: str, key: str, upload_id: str, etags: Sequence[str]) -> None:
        """CompleteMultipartUpload. S3 may answer 200 and report a failure in the body."""
        body = complete_multipart_body(etags)
        headers = {"Content-Type": "application/xml"}
        # Assembling thousands of parts takes the server a while; it sends spaces meanwhile.
        async with self._request(
            "POST", key, (("uploadId", upload_id),), what=what, body=body, headers=headers, streaming=True
        ) as resp:
            if resp.status != 200:
                raise await self._error(what, resp)
            answer = await self._read(resp, what, MAX_SMALL_BODY)
        self._check_result(what, answer, parse_complete_multipart)

    def _check_result(self, what: str, answer: bytes, parse: Callable[[bytes], _T]) -> _T:
        """``parse(answer)`` of a 200 answer, which S3 may have turned into an error document."""
        info = parse_error(answer)
        if info is not None:
            raise EndpointUnavailable(self.name, f"{what}: HTTP 200 {info.code}")
        try:
            return parse(answer)
        except S3XMLError as exc:
            raise EndpointUnavailable(self.name, f"{what}: {exc}") from exc

    async def _abort_multipart(self, what: str, key: str, upload_id: str) -> None:
        """AbortMultipartUpload; a failure is logged (the bucket's lifecycle rules are the backstop)."""
        try:
            async with self._request("DELETE", key, (("uploadId", upload_id),), what=what) as resp:
                if resp.status in (200, 204, 404):
                    await self._read(resp, what, MAX_SMALL_BODY)
                    return
                error = await self._error(f"abort of {what}", resp)
            raise error
        except EndpointError as exc:
            logger.warning(
                "endpoint %s: could not abort multipart upload %s of %r: %s", self.name, upload_id, key, exc
            )

    async def _clean_up(
        self, what: str, key: str, upload_id: str | None, sending: asyncio.Future[str] | None
    ) -> None:
        """Stop the part in flight, then abort the upload; shielded, so that a cancelled upload
        still cleans up (the work goes on in the background and ``aclose`` waits for it)."""

        async def clean_up() -> None:
            if sending is not None:
                sending.cancel()
                await asyncio.wait([sending])
                if not sending.cancelled():
                    sending.exception()  # retrieved: the caller's own exception is what counts
            if upload_id is not None:
                await self._abort_multipart(what, key, upload_id)

        await asyncio.shield(self._background(clean_up()))

    # -- checksums ------------------------------------------------------------------------------

    async def stored_checksums(self, path: str, stat: StatResult) -> dict[str, str]:
        """The ``geofed-<alg>`` metadata (and plain ``<alg>`` with ``checksum_metadata: trusted``),
        and the MD5 that a single-part object's ETag is, which wins over any metadata: S3 computed
        it from the bytes (and checked it against Content-MD5 when one was sent), while metadata
        may have been written by whoever uploaded the object.

        A multipart ETag (``"…-N"``) is never taken for an MD5. Not detected, since the stat does
        not say: objects encrypted with SSE-KMS or SSE-C, whose single-part ETag on AWS is not the
        MD5 of the content either; do not use such buckets with geofed's checksums.
        """
        values = checksums_from_metadata(
            stat.metadata,
            self.settings.checksum_metadata == "trusted",
            seal_key=self.seal_key,
            size=stat.size,
        )
        md5 = None if stat.is_dir else etag_md5(stat.etag)
        if md5 is not None:
            values["md5"] = md5
        return values

    async def store_checksums(self, path: str, values: dict[str, str]) -> bool:
        """Copy the object onto itself with ``x-amz-meta-geofed-<alg>`` added to its metadata.

        S3 cannot change metadata in place. The copy (CopyObject, ``x-amz-metadata-directive:
        REPLACE``) carries the object's other metadata and headers (Content-Type, storage class,
        SSE-S3/KMS settings) unchanged, and is conditional on the ETag read just before: if the
        object was overwritten meanwhile, S3 answers 412 and nothing changes (False). The copy
        gives the object a new Last-Modified; Ceph RGW keeps its ETag (multipart ones included).

        False also when the values cannot belong to these bytes (an ``md5`` that is not the
        single-part ETag), for objects over 5 GiB (one CopyObject cannot copy them; a multipart
        self-copy would rewrite the data), for SSE-C objects (S3 needs the client's key), when
        the metadata holds what cannot be sent back as it came, and for a multipart object
        without an ``md5`` to store (a copy might give it an ETag that looks like an MD5 but is not
        one, which :meth:`stored_checksums` would then report). PathNotFound when it is absent.
        """
        what = f"checksums of {path}"
        if path == "/":
            return False
        key = self._key(path)
        headers = await self._head(path, key)
        if headers is None:
            raise PathNotFound(self.name, f"HEAD {path}: no such file")
        etag = headers.get("ETag")
        size = parse_length(headers.get("Content-Length"))
        wanted = {
            algorithm: value.strip().lower()
            for algorithm, value in values.items()
            if algorithm in CHECKSUM_ALGORITHMS and value.strip()
        }
        if not wanted or not etag or size is None or size > COPY_LIMIT or _SSE_C in headers:
            return False
        md5 = etag_md5(etag)
        if md5 is None and "md5" not in wanted:
            return False
        if md5 is not None and wanted.get("md5", md5) != md5:
            return False  # computed from other bytes: the object was replaced since
        current = dict(_user_metadata(headers))
        others = {k: v for k, v in current.items() if not k.lower().startswith(CHECKSUM_METADATA_PREFIX)}
        kept = checksums_from_metadata(tuple(current.items()), seal_key=self.seal_key, size=size)
        ours = sealed(self.seal_key, size, {**kept, **wanted})  # values of other algorithms stay
        metadata = {**others, **{CHECKSUM_METADATA_PREFIX + a: v for a, v in ours.items()}}
        if metadata == current:
            return True
        if not all(_header_safe(name) and _header_safe(value) for name, value in metadata.items()):
            return False
        copy = self._kept_headers(headers, _OBJECT_HEADERS + _STORAGE_HEADERS)
        copy.update({_META_PREFIX + name: value for name, value in metadata.items()})
        copy["x-amz-copy-source"] = self._copy_source(key)
        copy["x-amz-metadata-directive"] = "REPLACE"
        copy.update(self._if_match(etag))
        try:
            await self._copy_object(what, key, copy, size)
        except EndpointRefused as exc:
            if exc.status == 412:
                return False
            raise
        return True

    # -- copies and moves -----------------------------------------------------------------------

    @staticmethod
    def _kept_headers(headers: Mapping[str, str], names: Sequence[str]) -> dict[str, str]:
        kept = {name: headers[name] for name in names if headers.get(name)}
        if kept.get("x-amz-storage-class", "").upper() == "STANDARD":
            del kept["x-amz-storage-class"]
        return kept

    @staticmethod
    def _if_match(etag: str) -> dict[str, str]:
        """The copy-source precondition: AWS's header, and the one Ceph RGW reads instead (RGW 16
        ignores ``x-amz-copy-source-if-match``; AWS ignores the other)."""
        return {"x-amz-copy-source-if-match": etag, "x-amz-copy-if-match": etag}

    def _copy_source(self, key: str) -> str:
        return "/" + encode_key(f"{self.bucket}/{key}")

    def _copy_timeout(self, size: int) -> float:
        return self.settings.timeout + size / COPY_RATE

    async def _copy_object(self, what: str, key: str, headers: Mapping[str, str], size: int) -> str:
        """CopyObject to ``key`` (``headers`` name the source); the copy's ETag."""
        async with self._request(
            "PUT", key, what=what, headers=headers, streaming=True, read_timeout=self._copy_timeout(size)
        ) as resp:
            if resp.status != 200:
                raise await self._error(what, resp)
            answer = await self._read(resp, what, MAX_SMALL_BODY)
        return self._check_result(what, answer, parse_copy_etag)

    async def _copy(
        self,
        what: str,
        source_key: str,
        destination_key: str,
        size: int,
        storage: Mapping[str, str],
        head: Mapping[str, str] | None = None,
    ) -> None:
        """Copy one object with its metadata; part by part above :data:`COPY_LIMIT`."""
        if size <= COPY_LIMIT:
            headers = {**storage, "x-amz-copy-source": self._copy_source(source_key)}
            await self._copy_object(what, destination_key, headers, size)
            return
        if head is None:
            head = await self._head("/" + source_key, source_key)
            if head is None:
                raise PathNotFound(self.name, f"{what}: {source_key!r} vanished")
        await self._multipart_copy(what, source_key, destination_key, head)

    async def _multipart_copy(
        self, what: str, source_key: str, destination_key: str, head: Mapping[str, str]
    ) -> None:
        """CreateMultipartUpload with the source's headers and metadata, UploadPartCopy of every
        range (each conditional on the source's ETag, so that all parts are of one version; RGW
        ignores that, so the source's ETag and Last-Modified are checked again once all parts are
        copied), then CompleteMultipartUpload; aborted on any failure. The copy gets a multipart
        ETag."""
        size = parse_length(head.get("Content-Length")) or 0
        etag = head.get("ETag") or ""
        create = self._kept_headers(head, _OBJECT_HEADERS + _STORAGE_HEADERS)
        create.update({_META_PREFIX + name: value for name, value in _user_metadata(head)})
        upload_id = await self._start_multipart(what, destination_key, create)
        try:
            part_size = max(COPY_PART_SIZE, -(-size // MAX_PARTS))
            source = self._copy_source(source_key)

            async def copy_part(number: int, first: int, last: int) -> str:
                headers = {
                    "x-amz-copy-source": source,
                    "x-amz-copy-source-range": f"bytes={first}-{last}",
                    **self._if_match(etag),
                }
                query = (("partNumber", str(number)), ("uploadId", upload_id))
                part_what = f"{what} (part {number})"
                async with self._request(
                    "PUT",
                    destination_key,
                    query,
                    what=part_what,
                    headers=headers,
                    streaming=True,
                    read_timeout=self._copy_timeout(last - first + 1),
                ) as resp:
                    if resp.status == 412:
                        message = f"{part_what}: the source changed during the copy"
                        raise EndpointUnavailable(self.name, message)
                    if resp.status != 200:
                        raise await self._error(part_what, resp)
                    answer = await self._read(resp, part_what, MAX_SMALL_BODY)
                return self._check_result(part_what, answer, parse_copy_etag)

            jobs = [
                (lambda n=number, a=start: copy_part(n, a, min(a + part_size, size) - 1))
                for number, start in enumerate(range(0, size, part_size), start=1)
            ]
            etags = await _bounded(jobs, COPY_PART_CONCURRENCY)
            # Ceph RGW 16 ignores every copy-source condition on UploadPartCopy: check that the
            # source is the version the copy started from before the copy becomes visible.
            again = await self._head("/" + source_key, source_key)
            if again is None or any(again.get(h) != head.get(h) for h in ("ETag", "Last-Modified")):
                raise EndpointUnavailable(self.name, f"{what}: the source changed during the copy")
            await self._complete_multipart(what, destination_key, upload_id, etags)
        except BaseException:
            await self._clean_up(what, destination_key, upload_id, None)
            raise

    async def move(self, source: str, destination: str, overwrite: bool = True) -> None:
        """Copy then delete: CopyObject (metadata, storage class and SSE-S3/KMS settings kept;
        UploadPartCopy part by part above 5 GiB, the copy then having a multipart ETag) to the
        destination key, then DeleteObject of the source.

        A directory moves key by key, its marker included: a page of keys is copied
        (:data:`MOVE_CONCURRENCY` at once), then exactly those keys are deleted, so a key written
        meanwhile is never deleted uncopied. That is not atomic: an interrupted move leaves some
        keys at the source and the others at the destination. Hence a directory moved onto an
        existing directory (with ``overwrite``) is *merged* into it (same names replaced, others
        kept) instead of replacing it as RFC 4918 says: running the interrupted move again then
        finishes it instead of deleting what it had moved.

        Otherwise what is at the destination is replaced when ``overwrite`` (a directory deleted
        first, when a file moves onto it), else EndpointRefused 412. EndpointRefused 403 for the
        root, the same path, a directory moved into itself or onto one of its parents;
        PathNotFound when ``source`` is absent. Parents are virtual: nothing needs creating.
        """
        what = f"MOVE {source}"
        if "/" in (source, destination):
            raise EndpointRefused(self.name, f"{what}: refusing to move the endpoint's root", 403)
        if source == destination or destination.startswith(source + "/"):
            raise EndpointRefused(self.name, f"{what}: cannot move onto itself or into itself", 403)
        if source.startswith(destination + "/"):
            raise EndpointRefused(self.name, f"{what}: cannot move onto a parent of itself", 403)
        source_key, destination_key = self._key(source), self._key(destination)
        head = await self._head(source, source_key)
        if head is None and not await self._is_directory(source, source_key):
            raise PathNotFound(self.name, f"{what}: no such file or directory")
        existing = await self.stat(destination)
        if existing is not None:
            if not overwrite:
                raise EndpointRefused(self.name, f"{what}: {destination} exists and overwrite is off", 412)
            if existing.is_dir != (head is None):  # a file onto a directory or the reverse
                await self.delete(destination)
        if head is not None:
            size = parse_length(head.get("Content-Length")) or 0
            storage = self._kept_headers(head, _STORAGE_HEADERS)
            await self._copy(what, source_key, destination_key, size, storage, head)
            await self._delete_one(source, source_key)
            return
        prefix = source_key + "/"
        token: str | None = None
        while True:
            page = await self._list_page(f"LIST {source}/", prefix, token=token)
            objects = [obj for obj in page.objects if obj.key.startswith(prefix)]

            def job(key: str, size: int, storage_class: str | None) -> Callable[[], Awaitable[None]]:
                storage = {"x-amz-storage-class": storage_class} if storage_class else {}
                storage = self._kept_headers(storage, _STORAGE_HEADERS)
                target = destination_key + key[len(source_key) :]
                return lambda: self._copy(what, key, target, size, storage)

            classes = page.storage_classes
            await _bounded([job(o.key, o.size or 0, classes.get(o.key)) for o in objects], MOVE_CONCURRENCY)
            if objects:
                await self._delete_many(source, [obj.key for obj in objects])
            if not page.truncated:
                return
            token = page.next_token

    async def copy(self, source: str, destination: str) -> StatResult:
        """Server-side copy of one object (CopyObject, UploadPartCopy above 5 GiB), metadata kept:
        the bytes never leave the store. PathNotFound when ``source`` is not a file."""
        what = f"COPY {source}"
        if source == destination:
            raise EndpointRefused(self.name, f"{what}: the source and the destination are the same", 403)
        source_key, destination_key = self._key(source), self._key(destination)
        head = await self._head(source, source_key)
        if head is None:
            raise PathNotFound(self.name, f"{what}: no such file")
        size = parse_length(head.get("Content-Length")) or 0
        storage = self._kept_headers(head, _STORAGE_HEADERS)
        await self._copy(what, source_key, destination_key, size, storage, head)
        copied = await self.stat(destination)
        if copied is None or copied.size != size:
            raise EndpointUnavailable(
                self.name, f"{what}: the copy at {destination} is not there as expected"
            )
        return copied

    # -- space ----------------------------------------------------------------------------------

    async def space(self) -> Space | None:
        """What Ceph RGW tells in the answer to HeadBucket: ``X-RGW-Bytes-Used`` (the whole
        bucket's, whatever prefixes the endpoint maps) and, when the bucket has a quota
        (``X-RGW-Quota-Bucket-Size`` ≥ 0), what is left of it. None from other S3 services, which
        have no cheap way to tell (AWS would need CloudWatch or a full listing)."""
        what = f"HEAD of bucket {self.bucket}"
        async with self._request("HEAD", "", what=what) as resp:
            if resp.status == 404:
                raise EndpointUnavailable(self.name, f"{what}: HTTP 404: bucket {self.bucket} does not exist")
            if resp.status != 200:
                raise await self._error(what, resp)
            used = parse_length(resp.headers.get("X-RGW-Bytes-Used"))
            quota = resp.headers.get("X-RGW-Quota-Bucket-Size", "").strip()
        if used is None:
            return None
        limit = parse_length(quota)  # -1 (no quota) is not a length
        return Space(used=used, available=None if limit is None else max(0, limit - used))

    # -- health ---------------------------------------------------------------------------------

    async def probe(self) -> None:
        """A one-key ListObjectsV2 with the endpoint's own credentials.

        This checks the service, the bucket and the keys at once; any refusal (403 wrong key or
        secret, 404 no such bucket) means the endpoint is unusable as configured, so it is
        EndpointUnavailable carrying the status and the S3 error code.
        """
        what = f"probe of bucket {self.bucket}"
        query = (("list-type", "2"), ("max-keys", "1"))
        async with self._request("GET", "", query, what=what) as resp:
            if resp.status == 200:
                await self._read(resp, what, MAX_LIST_BODY)
                return
            error = await self._error(what, resp)
        raise EndpointUnavailable(self.name, error.reason)

    async def aclose(self) -> None:
        """Close the session and its connections (after the aborts of failed uploads still running,
        for at most the endpoint's timeout); a later request would open a new one."""
        if self._cleanups:
            await asyncio.wait(set(self._cleanups), timeout=self.settings.timeout)
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()
