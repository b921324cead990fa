"""The ``s3`` endpoint kind: one bucket of an S3 service (AWS, Ceph RGW, MinIO, ...).

The endpoint path ``/a/b`` is the object key ``a/b`` (the prefix mapping of the configuration
already put the key prefix in front). The endpoint is built in layers, one concept per module:

* :mod:`~geofed.endpoints.s3client` -- the signed requests (header SigV4), the session, timeouts
  and the mapping of S3 answers onto the errors of :mod:`geofed.endpoints.base`;
* :mod:`~geofed.endpoints.s3namespace` -- stat, list, delete, mkcol: directories emulated with key
  prefixes and ``key/`` markers, the way S3 consoles and s3fs do;
* :mod:`~geofed.endpoints.s3io` -- ``read`` (GET with ``Range``) and ``upload`` (one PutObject up to
  :data:`PART_SIZE`, a multipart upload beyond, every body with ``Content-MD5``);
* this module -- :class:`S3Endpoint` itself: presigned URLs for clients (query-string SigV4, see
  :mod:`geofed.endpoints.sigv4`), checksum storage, server-side copies and moves, space and the
  probe. The copy limits (:data:`COPY_LIMIT`, :data:`COPY_PART_SIZE`, ...) are module settings
  read at call time, so the code that reads them stays here, next to them.

Checksums and renames (see the methods for the details):

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
import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import TypeVar

from geofed.endpoints.base import (
    CHECKSUM_ALGORITHMS,
    CHECKSUM_METADATA_PREFIX,
    Capabilities,
    Space,
    StatResult,
    checksums_from_metadata,
    sealed,
)
from geofed.endpoints.davxml import parse_length
from geofed.endpoints.s3client import _META_PREFIX, _user_metadata
from geofed.endpoints.s3client import MAX_LIST_BODY as MAX_LIST_BODY
from geofed.endpoints.s3client import MAX_SMALL_BODY as MAX_SMALL_BODY
from geofed.endpoints.s3client import PAGE_SIZE as PAGE_SIZE
from geofed.endpoints.s3client import SEND_SLICE as SEND_SLICE
from geofed.endpoints.s3client import GiB as GiB
from geofed.endpoints.s3client import MiB as MiB
from geofed.endpoints.s3io import MAX_PARTS as MAX_PARTS
from geofed.endpoints.s3io import PART_SIZE as PART_SIZE
from geofed.endpoints.s3io import READ_CHUNK as READ_CHUNK
from geofed.endpoints.s3io import S3DataIO
from geofed.endpoints.s3io import _Parts as _Parts
from geofed.endpoints.s3namespace import MARKER_CONTENT_TYPE as MARKER_CONTENT_TYPE
from geofed.endpoints.s3xml import parse_copy_etag
from geofed.endpoints.sigv4 import MAX_EXPIRES, encode_key
from geofed.errors import EndpointRefused, EndpointUnavailable, PathNotFound

#: The methods a presigned URL is made for; anything else is a programming error.
SIGNABLE = frozenset({"GET", "HEAD", "PUT", "DELETE"})

#: The largest object one CopyObject copies; ``move`` copies larger ones part by part, and
#: ``store_checksums`` (a self-copy) gives up on them.
COPY_LIMIT = 5 * GiB
#: The smallest part of a multipart copy (grown so that no copy needs more than MAX_PARTS).
COPY_PART_SIZE = 512 * MiB
#: A server-side copy of n bytes may take ``timeout + n / COPY_RATE`` seconds to answer.
COPY_RATE = 32 * MiB
#: Objects copied at once when moving a directory.
MOVE_CONCURRENCY = 16
#: Parts copied at once by a multipart copy.
COPY_PART_CONCURRENCY = 4
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


class S3Endpoint(S3DataIO):
    """One bucket; keys below the configured prefixes are files, ``/``-separated names directories."""

    capabilities = Capabilities(
        multipart_upload=True,
        upload_stream=True,
        read_stream=True,
        store_checksums=True,
        move=True,
        server_copy=True,
    )

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
