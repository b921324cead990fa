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
requests (HEAD, ListObjectsV2, DELETE, marker PUT, multi-object delete) carry an Authorization
header. One ``aiohttp.ClientSession`` per endpoint, created on first use inside the running loop,
with ``max_concurrency`` connections and ``timeout`` as the total time of one request.

Errors follow the contract of :mod:`geofed.endpoints.base`; in addition a ``NoSuchBucket`` answer
is EndpointUnavailable, not "path not found": a missing bucket is a misconfigured endpoint, not
a missing file. Messages carry the status and the S3 error code, never a URL with a signature
and never the secret key.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Mapping, Sequence

import aiohttp
from yarl import URL

from geofed import __version__
from geofed.config import EndpointSettings
from geofed.endpoints.base import Capabilities, Endpoint, Entry, StatResult
from geofed.endpoints.credentials import S3Keys, s3_keys
from geofed.endpoints.davxml import parse_http_date, parse_length
from geofed.endpoints.httpbody import capped_chunks
from geofed.endpoints.s3xml import (
    ListPage,
    S3XMLError,
    delete_objects_body,
    parse_delete_errors,
    parse_error,
    parse_list_page,
    xml_safe,
)
from geofed.endpoints.sigv4 import EMPTY_SHA256, MAX_EXPIRES, BucketAddress, QueryPairs, SigV4Signer
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


def _expires(lifetime: float) -> int:
    """A URL lifetime as S3 takes it: whole seconds between 1 and 7 days."""
    return max(1, min(MAX_EXPIRES, int(lifetime)))


class S3Endpoint(Endpoint):
    """One bucket; keys below the configured prefixes are files, ``/``-separated names directories."""

    capabilities = Capabilities(multipart_upload=True)

    def __init__(self, settings: EndpointSettings, keys: S3Keys | None = None) -> None:
        super().__init__(settings)
        if settings.bucket is None:  # the configuration already refuses this; keeps mypy honest
            raise ValueError(f"endpoint {settings.name}: an s3 endpoint needs a bucket")
        keys = keys if keys is not None else s3_keys(settings)
        self.bucket = settings.bucket
        self._signer = SigV4Signer(keys.access_key, keys.secret_key, settings.region)
        self._address = BucketAddress(settings.url, settings.bucket, settings.addressing)
        self._session: aiohttp.ClientSession | None = None

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
        body: bytes = b"",
        headers: Mapping[str, str] | None = None,
    ) -> AsyncIterator[aiohttp.ClientResponse]:
        """One header-signed request; library errors while sending *or reading* become Unavailable.

        The mapping wraps the caller's whole ``async with`` block because a timeout or a reset can
        strike while the body streams in. ``what`` names the request in messages (never the URL).
        """
        payload = hashlib.sha256(body).hexdigest() if body else EMPTY_SHA256
        url, signed = self._signer.sign_headers(
            method, self._address, key, query, payload_sha256=payload, headers=headers
        )
        try:
            async with self._client().request(
                method, URL(url, encoded=True), headers=signed, data=body or None, allow_redirects=False
            ) as response:
                yield response
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            if isinstance(exc, TimeoutError):
                reason = f"timed out after {self.settings.timeout:g}s"
            else:
                reason = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            raise EndpointUnavailable(self.name, f"{what}: {reason}") from exc

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
        if status >= 500:
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

    async def stat(self, path: str) -> StatResult | None:
        """HeadObject; on 404, a one-key listing of ``key/`` tells whether it is a directory.

        The root is the bucket and always a directory (whether the bucket exists is the probe's
        business). A directory's mtime is its marker's, when it has one.
        """
        if path == "/":
            return StatResult(is_dir=True)
        key = self._key(path)
        async with self._request("HEAD", key, what=f"HEAD {path}") as resp:
            if resp.status == 200:
                return StatResult(
                    is_dir=False,
                    size=parse_length(resp.headers.get("Content-Length")),
                    mtime=parse_http_date(resp.headers.get("Last-Modified")),
                    etag=resp.headers.get("ETag"),
                    content_type=resp.headers.get("Content-Type"),
                    metadata=tuple(
                        sorted(
                            (name[len(_META_PREFIX) :], value)
                            for name, value in ((k.lower(), v) for k, v in resp.headers.items())
                            if name.startswith(_META_PREFIX)
                        )
                    ),
                )
            if resp.status != 404:
                raise await self._error(f"HEAD {path}", resp)
        page = await self._list_page(f"LIST {path}/", key + "/", max_keys=1)
        if page.key_count == 0:
            return None
        first = page.objects[0] if page.objects else None
        marker_mtime = first.mtime if first is not None and first.key == key + "/" else None
        return StatResult(is_dir=True, mtime=marker_mtime)

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
        """Close the session and its connections; a later request would open a new one."""
        session, self._session = self._session, None
        if session is not None and not session.closed:
            await session.close()
