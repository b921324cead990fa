"""The data transfers of the ``s3`` endpoint kind: streamed reads, and uploads in bounded memory.

``read`` is a signed GET with ``Range``; ``upload`` is one PutObject up to :data:`PART_SIZE` and a
multipart upload of :data:`PART_SIZE` parts beyond, every body with ``Content-MD5`` so that S3
checks the bytes itself, the multipart upload aborted on any failure (a cancellation included:
the abort then runs in the background and ``aclose`` waits for it).

Kept apart from the namespace (:mod:`~geofed.endpoints.s3namespace`) because the multipart
machinery -- create, upload part, complete, abort, clean up -- is its own concept, shared by
uploads here and by the multipart copies of :mod:`geofed.endpoints.s3`. :class:`S3DataIO` is a
base class of :class:`geofed.endpoints.s3.S3Endpoint`; the constants are re-exported there.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import logging
from collections.abc import AsyncIterator, Mapping, Sequence

from geofed.endpoints.httpbody import window
from geofed.endpoints.s3client import MAX_SMALL_BODY, MiB
from geofed.endpoints.s3namespace import S3Namespace
from geofed.endpoints.s3xml import (
    S3XMLError,
    complete_multipart_body,
    parse_complete_multipart,
    parse_upload_id,
)
from geofed.errors import EndpointError, EndpointRefused, EndpointUnavailable, PathNotFound

# Named as before the split, so that log configuration and filters keep matching.
logger = logging.getLogger("geofed.endpoints.s3")

#: ``read`` yields chunks of at most this many bytes.
READ_CHUNK = 256 * 1024
#: ``upload`` sends up to this many bytes as one PutObject, and larger uploads in parts of exactly
#: this size (the last one shorter); it holds at most two parts in memory (one being sent).
PART_SIZE = 16 * MiB
#: S3 numbers parts 1..10000, so an upload can be at most ``MAX_PARTS * PART_SIZE`` (160 GiB).
MAX_PARTS = 10_000
_MULTIPART_CONTENT_TYPE = "application/octet-stream"


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


class S3DataIO(S3Namespace):
    """``read`` and ``upload`` of one bucket, and the multipart uploads both uploads and copies use."""

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
            async for chunk in window(resp.content, READ_CHUNK, skip, length):
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
