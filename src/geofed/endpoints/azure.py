"""The ``azure`` endpoint kind: one container of an Azure Blob Storage account (or Azurite).

The endpoint path ``/a/b`` is the blob ``a/b`` of ``settings.container``; the configured prefixes
have already been applied, so an endpoint-side prefix is simply a blob name prefix. The blob service
URL is ``settings.url`` (``https://ACCOUNT.blob.core.windows.net``, or Azurite's path-style
``http://127.0.0.1:10000/ACCOUNT``), so a blob's URL is always ``<url>/<container>/<blob>``.

Blob storage has no directories, so this module defines them the way the usual tools do:

* a **directory** is a name that other blobs start with (``a/b/...``), or a zero-byte *marker* blob
  ``a/b/`` (what ``mkcol`` creates, so that an empty directory survives), or a blob whose metadata
  has ``hdi_isfolder=true`` (how accounts with a hierarchical namespace show their directories);
* markers never show in a listing;
* parents are virtual: ``mkcol`` never answers "parent missing".

Clients never receive the account key: downloads and uploads are redirected to the blob's URL with
a **service SAS** scoped to that one blob, with exactly the permissions of the method (read for GET
and HEAD; create+write for PUT; delete for DELETE). davix recognises an Azure PUT URL by ``sig``,
``sr`` and ``sp`` in its query and then uploads in blocks (clients.md §8).

The SDK client (``azure.storage.blob.aio.ContainerClient`` over aiohttp) is created on first use,
inside the running loop, and asks for API version 2025-11-05, the newest Azurite 3.35 knows
(test-infrastructure.md §4). The SDK's own retries are off: their back-off starts at 15 s, longer
than any timeout here, and the federation already falls back to other replicas and marks a failing
endpoint down. ``settings.timeout`` bounds every request (one page of a listing counts as one).

Reads, checksums, moves (each method's docstring has the details):

* ``read`` streams a download in chunks of at most :data:`READ_CHUNK` bytes (the client's
  ``max_single_get_size``/``max_chunk_get_size``), the stored bytes as they are (never decompressed);
  the SDK pins the later ranges of one read to the first answer's ETag.
* ``upload`` computes the MD5 of the bytes while staging and commits it as the blob's
  ``Content-MD5`` together with the metadata ``geofed_md5``.
* Checksums kept with a blob are the metadata ``geofed_<alg>`` (Azure metadata names are C
  identifiers, so not ``geofed-<alg>``). The blob's ``Content-MD5`` is in ``StatResult.metadata`` as
  ``content-md5`` (hex; the hyphen keeps it apart from any user metadata name) and counts only with
  ``checksum_metadata: trusted``: Put Block List stores whatever MD5 the client sends, unverified.
  Writing checksums (Set Blob Metadata) changes the blob's ETag and Last-Modified.
* ``move`` is a server-side copy then a delete of the source (Azure has no rename); collections
  are refused (403).
* ``space`` is None: Azure reports neither usage nor a limit (``endpoints[].quota`` sets one).

The account key lives in this object only: it is never put in a message, a log line or a repr. The
SDK's HTTP logging policies would log request headers at INFO; their loggers are held at WARNING.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hashlib
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Iterable, Mapping
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Final, TypeVar
from urllib.parse import quote

import aiohttp
from azure.core import MatchConditions
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import AzureError, HttpResponseError, ResourceExistsError
from azure.core.pipeline.transport import AioHttpTransport
from azure.storage.blob import (
    BlobBlock,
    BlobProperties,
    BlobSasPermissions,
    ContentSettings,
    generate_blob_sas,
)
from azure.storage.blob.aio import BlobClient, ContainerClient

from geofed.config import EndpointSettings
from geofed.endpoints.base import (
    CHECKSUM_ALGORITHMS,
    SEAL,
    Capabilities,
    Endpoint,
    Entry,
    Space,
    StatResult,
    checksums_from_metadata,
    sealed,
)
from geofed.endpoints.credentials import azure_account_key
from geofed.errors import (
    ConfigError,
    EndpointError,
    EndpointRefused,
    EndpointUnavailable,
    PathNotFound,
)

#: The newest version Azurite 3.35 accepts; real Azure serves it too.
API_VERSION: Final = "2025-11-05"
#: A SAS starts this much in the past, so that a client whose clock is behind can use it at once.
CLOCK_SKEW: Final = timedelta(minutes=5)
#: The most blobs the service returns per listing page (its own maximum).
LIST_PAGE_SIZE: Final = 5000
#: Deletes in flight at once when removing a directory, at most (and at most max_concurrency).
DELETE_PARALLELISM: Final = 16
#: The largest chunk ``read`` yields, and the most of a blob one download request fetches.
READ_CHUNK: Final = 4 * 1024 * 1024
#: Chunks at least this big are hashed in a worker thread during an upload (hashlib drops the GIL).
HASH_INLINE_BELOW: Final = 64 * 1024
#: How long ``move`` waits for a server-side copy that Azure did not finish at once.
COPY_WAIT: Final = 300.0
#: The first and the longest pause between two looks at a pending copy.
COPY_POLL_FIRST: Final = 0.2
COPY_POLL_MAX: Final = 5.0
#: Metadata names of the checksums geofed keeps with a blob (CHECKSUM_METADATA_PREFIX, as an identifier).
METADATA_PREFIX: Final = "geofed_"
#: The blob's Content-MD5 in StatResult.metadata (hex): no Azure metadata name has a hyphen.
CONTENT_MD5: Final = "content-md5"

log = logging.getLogger("geofed.endpoints.azure")

# Loggers of the SDK that log request headers and URLs at INFO/DEBUG.
_SDK_LOGGERS = (
    "azure.core.pipeline.policies.http_logging_policy",
    "azure.storage.blob._shared.policies",
    "azure.storage.blob._shared.policies_async",
)
for _name in _SDK_LOGGERS:
    _sdk_logger = logging.getLogger(_name)
    if _sdk_logger.level < logging.WARNING:
        _sdk_logger.setLevel(logging.WARNING)

_PERMISSIONS: Final = {
    "GET": BlobSasPermissions(read=True),
    "HEAD": BlobSasPermissions(read=True),
    "PUT": BlobSasPermissions(create=True, write=True),
    "DELETE": BlobSasPermissions(delete=True),
}
_GONE = frozenset({404, 410})
_HEX = re.compile(r"[0-9a-f]{8,64}")
# Error codes of a copy refused because its destination exists (If-None-Match: *). A 412 with any
# other code is the source's If-Match (SourceConditionNotMet; Azurite says ConditionNotMet).
_DESTINATION_EXISTS = frozenset({"BlobAlreadyExists", "TargetConditionNotMet"})

_T = TypeVar("_T")


def _blob_name(path: str) -> str:
    """The blob name of endpoint path ``path`` ("" for the root)."""
    return path.strip("/")


def _is_folder_blob(blob: BlobProperties) -> bool:
    """A blob that stands for a directory: hdi_isfolder metadata (hierarchical namespace accounts)."""
    metadata = blob.metadata or {}
    return any(k.lower() == "hdi_isfolder" and v.lower() == "true" for k, v in metadata.items())


def _quoted(etag: str | None) -> str | None:
    """The ETag in HTTP's quoted form: the service quotes it in headers but not in listings."""
    if not etag or etag.startswith(('"', 'W/"')):
        return etag or None
    return f'"{etag}"'


def _stat_of(blob: BlobProperties) -> StatResult:
    """The StatResult of a blob from its properties (a folder blob is a directory)."""
    mtime = blob.last_modified.timestamp() if blob.last_modified is not None else None
    if _is_folder_blob(blob):
        return StatResult(is_dir=True, mtime=mtime)
    content_type = blob.content_settings.content_type if blob.content_settings else None
    pairs = [(k.lower(), v) for k, v in (blob.metadata or {}).items()]
    content_md5 = blob.content_settings.content_md5 if blob.content_settings else None
    if content_md5:
        pairs.append((CONTENT_MD5, _md5_hex(content_md5)))
    metadata = tuple(sorted(pairs))
    return StatResult(
        is_dir=False,
        size=blob.size,
        mtime=mtime,
        etag=_quoted(blob.etag),
        content_type=content_type or None,
        metadata=metadata,
    )


def _md5_hex(value: bytes | bytearray | str) -> str:
    """A Content-MD5 as lower-case hex: the SDK gives the raw digest, a header would give base64."""
    if isinstance(value, str):
        try:
            value = base64.b64decode(value, validate=True)
        except (binascii.Error, ValueError):
            return ""
    return bytes(value).hex()


def _error_code(exc: HttpResponseError) -> str:
    """The service's error code of a failed call ("" when it gave none)."""
    code = getattr(exc, "error_code", None) or ""
    return str(code.value if isinstance(code, Enum) else code)


def _checked_key(settings: EndpointSettings) -> str:
    """The account key, refused at start when it is not base64 (the SDK would fail on every call)."""
    key = azure_account_key(settings)
    try:
        base64.b64decode(key, validate=True)
    except (binascii.Error, ValueError):
        raise ConfigError(f"endpoint {settings.name}: the account key is not valid base64") from None
    return key


class AzureEndpoint(Endpoint):
    """One container of a blob service, reached with the account's shared key."""

    capabilities = Capabilities(upload_stream=True, read_stream=True, store_checksums=True, move=True)

    #: Blobs per listing page; tests lower it to exercise paging.
    list_page_size: int = LIST_PAGE_SIZE
    #: The largest chunk ``read`` yields; tests lower it (before the first call) to see several.
    read_chunk: int = READ_CHUNK
    #: How long ``move`` waits for a pending server-side copy.
    copy_wait: float = COPY_WAIT

    def __init__(self, settings: EndpointSettings) -> None:
        super().__init__(settings)
        assert settings.account is not None and settings.container is not None  # checked by config
        self._account = settings.account
        self._container_name = settings.container
        self._key = _checked_key(settings)
        self._service_url = settings.url.rstrip("/")
        self._container_url = f"{self._service_url}/{quote(self._container_name)}"
        self._client: ContainerClient | None = None

    def __repr__(self) -> str:
        return f"AzureEndpoint(name={self.name!r}, container={self._container_url!r})"

    # -- plumbing -------------------------------------------------------------------------------

    def _container(self) -> ContainerClient:
        """The container client, created on first use so that its aiohttp session binds to the loop."""
        if self._client is None:
            timeout = self.settings.timeout
            session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.settings.max_concurrency),
                cookie_jar=aiohttp.DummyCookieJar(),
                auto_decompress=False,  # the SDK decompresses itself, as with its own session
            )
            self._client = ContainerClient(
                self._service_url,
                self._container_name,
                credential=AzureNamedKeyCredential(self._account, self._key),
                api_version=API_VERSION,
                transport=AioHttpTransport(
                    session=session, session_owner=True, connection_timeout=timeout, read_timeout=timeout
                ),
                retry_total=0,
                connection_timeout=timeout,
                read_timeout=timeout,
                max_single_get_size=self.read_chunk,  # the first request of a download
                max_chunk_get_size=self.read_chunk,  # each later one, and the chunks yielded
            )
        return self._client

    async def _call(self, op: str, path: str, call: Awaitable[_T]) -> _T:
        """Await one SDK call within the timeout; its errors become the contract's errors."""
        try:
            async with asyncio.timeout(self.settings.timeout):
                return await call
        except (AzureError, aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise self._error(op, path, exc) from _transport_cause(exc)

    async def _next_page(self, op: str, path: str, pages: AsyncIterator[_T]) -> _T | None:
        """The next item of an SDK iterator (None at the end) within the timeout: a listing's
        next page, a download's next chunk."""
        try:
            return await self._call(op, path, anext(pages))
        except StopAsyncIteration:
            return None

    def _error(self, op: str, path: str, exc: BaseException) -> EndpointError:
        """The contract's error for an SDK failure; only status and error code, never the SDK text.

        The SDK's messages quote the server's answer at length; keeping to the status and the
        error code guarantees that nothing signed or secret ends up in a message.
        """
        if isinstance(exc, HttpResponseError) and exc.status_code is not None:
            status = exc.status_code
            code = getattr(exc, "error_code", None) or exc.reason or ""
            code = str(code.value if isinstance(code, Enum) else code)  # StorageErrorCode is an Enum
            message = f"{op} {path}: HTTP {status} {code}".rstrip()
            if status >= 500:
                return EndpointUnavailable(self.name, message)
            if status in _GONE and code == "ContainerNotFound":
                return EndpointUnavailable(self.name, f"container {self._container_name} does not exist")
            if status in _GONE:
                return PathNotFound(self.name, message)
            return EndpointRefused(self.name, message, status)
        if isinstance(exc, TimeoutError):
            return EndpointUnavailable(self.name, f"{op} {path}: timed out after {self.settings.timeout:g}s")
        cause = _transport_cause(exc) or exc
        detail = str(cause).splitlines()[0][:200] if str(cause) else ""
        reason = f"{type(cause).__name__}: {detail}" if detail else type(cause).__name__
        return EndpointUnavailable(self.name, f"{op} {path}: {reason}")

    # -- stat and list --------------------------------------------------------------------------

    async def stat(self, path: str) -> StatResult | None:
        """The blob's properties; else a directory if anything is stored under ``path/``.

        Two requests for a directory or a missing path, one for a file: files are what clients
        ask for most, and a combined listing would not find ``a/`` reliably (``a.txt`` and
        ``a-1`` sort before it).
        """
        name = _blob_name(path)
        if not name:
            await self._call("STAT", path, self._container().get_container_properties())
            return StatResult(is_dir=True)
        blob = self._container().get_blob_client(name)
        try:
            return _stat_of(await self._call("STAT", path, blob.get_blob_properties()))
        except PathNotFound:
            pass
        return StatResult(is_dir=True) if await self._has_children(path, name + "/") else None

    async def _has_children(self, path: str, prefix: str) -> bool:
        """Whether any blob (a marker included) has a name starting with ``prefix``."""
        pages = self._container().list_blob_names(name_starts_with=prefix, results_per_page=1).by_page()
        page = await self._next_page("STAT", path, pages)
        if page is None:
            return False
        async for _ in page:
            return True
        return False

    async def list(self, path: str) -> AsyncIterator[Entry]:
        """The children of ``path``, one page of the service at a time, markers hidden.

        A path with nothing under it is an (empty) directory only if ``stat`` says so; otherwise
        it is missing or a file, and PathNotFound.
        """
        name = _blob_name(path)
        prefix = name + "/" if name else ""
        paged = self._container().walk_blobs(
            name_starts_with=prefix or None,
            include=["metadata"],
            delimiter="/",
            results_per_page=self.list_page_size,
        )
        pages = paged.by_page()
        seen_any = False
        # A folder blob "x" (hdi_isfolder) and the prefix "x/" of its content are one directory.
        # They are not adjacent: a page lists its blobs, then its prefixes, and Azurite may put the
        # prefix pages ahead. So directory names are remembered (files need not be).
        directories: set[str] = set()
        while (page := await self._next_page("PROPFIND", path, pages)) is not None:
            async for item in page:
                seen_any = True
                child = item.name[len(prefix) :]
                if isinstance(item, BlobProperties):
                    if not child or child.endswith("/"):
                        continue  # this directory's own marker
                    stat = _stat_of(item)
                else:  # a BlobPrefix: "child/"
                    child, stat = child.rstrip("/"), StatResult(is_dir=True)
                if not child or child in directories:
                    continue
                if stat.is_dir:
                    directories.add(child)
                yield Entry(child, stat)
        if not seen_any and name:
            found = await self.stat(path)
            if found is None:
                raise PathNotFound(self.name, f"PROPFIND {path}: no such collection")
            if not found.is_dir:
                raise PathNotFound(self.name, f"{path} is not a collection")

    # -- changes --------------------------------------------------------------------------------

    async def delete(self, path: str) -> None:
        """Delete the blob; when there is none, every blob under ``path/`` (the marker included)."""
        name = _blob_name(path)
        if not name:
            raise EndpointRefused(self.name, "DELETE /: refusing to delete the endpoint's root", 403)
        call = self._container().delete_blob(name, delete_snapshots="include")
        try:
            await self._call("DELETE", path, call)
            return
        except PathNotFound:
            pass
        if not await self._delete_tree(path, name + "/"):
            raise PathNotFound(self.name, f"DELETE {path}: no such file or collection")

    async def _delete_tree(self, path: str, prefix: str) -> int:
        """Delete every blob whose name starts with ``prefix``, page by page; the count deleted.

        Deleting behind the listing is safe: the continuation marker is a name, not a position.
        A blob already gone (deleted concurrently) is not an error.
        """
        client = self._container()
        limit = asyncio.Semaphore(min(DELETE_PARALLELISM, self.settings.max_concurrency))

        async def delete_one(blob: str) -> None:
            async with limit:
                with contextlib.suppress(PathNotFound):
                    await self._call("DELETE", path, client.delete_blob(blob, delete_snapshots="include"))

        listing = client.list_blob_names(name_starts_with=prefix, results_per_page=self.list_page_size)
        pages = listing.by_page()
        count = 0
        while (page := await self._next_page("DELETE", path, pages)) is not None:
            names = [blob async for blob in page]
            await _gather_all(delete_one(blob) for blob in names)
            count += len(names)
        return count

    async def mkcol(self, path: str) -> bool:
        """Upload the zero-byte marker ``path/``; False when ``path`` already exists (file or dir).

        Parents need no creating (names are flat), so this never answers 409.
        """
        name = _blob_name(path)
        if not name or await self.stat(path) is not None:
            return False

        async def create() -> bool:
            try:
                await self._container().upload_blob(name + "/", b"", overwrite=False)
            except ResourceExistsError:
                return False  # created meanwhile
            return True

        return await self._call("MKCOL", path, create())

    async def upload(self, path: str, chunks: AsyncIterator[bytes]) -> None:
        """Stage each chunk as a block, then commit the list: the blob appears only when every
        byte has arrived, and uncommitted blocks of an interrupted upload are never visible
        (Azure discards them). Memory stays at one chunk.

        The MD5 of the bytes is computed while staging and committed with the list, as the blob's
        ``Content-MD5`` and as the metadata ``geofed_md5``: both are geofed's own values. The
        commit replaces the blob's metadata, so no checksum of earlier content survives.
        """
        name = _blob_name(path)
        if not name:
            raise EndpointRefused(self.name, "cannot upload to the container root", 409)
        blob = self._container().get_blob_client(name)
        block_ids: list[str] = []
        prefix = os.urandom(8).hex()
        md5 = hashlib.md5()
        size = 0
        async for chunk in chunks:
            if not chunk:
                continue  # the service refuses empty blocks
            size += len(chunk)
            block_id = base64.b64encode(f"{prefix}-{len(block_ids):08d}".encode()).decode()
            await self._call("PUT", path, blob.stage_block(block_id, chunk, length=len(chunk)))
            if len(chunk) >= HASH_INLINE_BELOW:
                await asyncio.to_thread(md5.update, chunk)
            else:
                md5.update(chunk)
            block_ids.append(block_id)
        digest = md5.digest()
        commit = blob.commit_block_list(
            [BlobBlock(block_id=b) for b in block_ids],
            content_settings=ContentSettings(content_md5=bytearray(digest)),
            metadata={
                METADATA_PREFIX + k: v for k, v in sealed(self.seal_key, size, {"md5": digest.hex()}).items()
            },
        )
        await self._call("PUT", path, commit)

    async def move(self, source: str, destination: str, overwrite: bool = True) -> None:
        """Copy the blob ``source`` to ``destination`` on the service, then delete the source.

        Azure has no rename: the copy is server-side (no byte passes through geofed) and keeps the
        content, properties and metadata (so the stored checksums), but the destination gets a new
        ETag and Last-Modified. Parents are virtual: nothing to create.

        * PathNotFound when ``source`` is absent; EndpointRefused 403 for the root, the same path,
          and for collections on either side: a collection is every blob under its prefix, moving
          it would be one copy and one delete per blob, neither atomic nor bounded in time, and a
          retry after a partial failure could not tell what to replace.
        * EndpointRefused 412 when ``destination`` exists and ``overwrite`` is False (for a file,
          checked by the service itself with ``If-None-Match: *``).
        * The copy is of the version first seen (``x-ms-source-if-match``): EndpointRefused 409 when
          the source was rewritten meanwhile (nothing changed). The delete is conditional too: a
          source rewritten after the copy is kept (logged), not lost.
        * A copy Azure does not finish at once (Azurite always does) is polled for at most
          :attr:`copy_wait` seconds; after that, or when it fails, it is aborted, the partial
          destination removed and the error is EndpointUnavailable (the source is untouched, but a
          destination being replaced is already gone).
        """
        src, dst = _blob_name(source), _blob_name(destination)
        if not src or not dst:
            raise EndpointRefused(self.name, "MOVE: refusing to move the endpoint's root", 403)
        if src == dst:
            raise EndpointRefused(self.name, "MOVE: source and destination are the same", 403)
        client = self._container()
        try:
            props = await self._call("MOVE", source, client.get_blob_client(src).get_blob_properties())
        except PathNotFound:
            if await self._has_children(source, src + "/"):
                raise self._collection_refused(source) from None
            raise PathNotFound(self.name, f"MOVE {source}: no such file or collection") from None
        if _is_folder_blob(props):
            raise self._collection_refused(source)
        target = await self.stat(destination)
        if target is not None:
            if not overwrite:
                raise EndpointRefused(self.name, f"MOVE {destination}: the destination exists", 412)
            if target.is_dir:
                raise self._collection_refused(destination)
        dst_blob = client.get_blob_client(dst)
        copy_id = await self._start_copy(src, props, dst_blob, destination, overwrite)
        if copy_id is not None:
            await self._await_copy(dst_blob, destination, copy_id)
        remove = client.delete_blob(
            src, delete_snapshots="include", etag=props.etag, match_condition=MatchConditions.IfNotModified
        )
        try:
            await self._call("MOVE", source, remove)
        except PathNotFound:
            pass  # deleted meanwhile: the move is done all the same
        except EndpointRefused as exc:
            if exc.status != 412:
                raise
            log.warning("%s: %s was rewritten (or leased) while it was moved: it is kept", self.name, source)

    def _collection_refused(self, path: str) -> EndpointRefused:
        return EndpointRefused(
            self.name, f"MOVE {path}: collections are not moved or replaced on an azure endpoint", 403
        )

    async def _start_copy(
        self, src: str, props: BlobProperties, dst_blob: BlobClient, destination: str, overwrite: bool
    ) -> str | None:
        """Start the server-side copy; the copy id while it is pending, None once it is done.

        The source is named by its URL with a read SAS: that works whatever Azure decides about
        Shared Key for copy sources, and lasts as long as a pending copy may be waited for.
        """
        lifetime = self.copy_wait + 2 * self.settings.timeout
        source_url = self._sas_url(src, BlobSasPermissions(read=True), lifetime)
        # If-None-Match: * on the destination: the service refuses to replace it.
        destination_condition = None if overwrite else MatchConditions.IfMissing

        async def start() -> Mapping[str, object]:
            try:
                return await dst_blob.start_copy_from_url(
                    source_url,
                    source_etag=props.etag,
                    source_match_condition=MatchConditions.IfNotModified,
                    match_condition=destination_condition,
                )
            except HttpResponseError as exc:
                code = _error_code(exc)
                if not overwrite and (code in _DESTINATION_EXISTS or exc.status_code == 409):
                    raise EndpointRefused(
                        self.name, f"MOVE {destination}: the destination exists", 412
                    ) from None
                if exc.status_code == 412:
                    raise EndpointRefused(
                        self.name, f"MOVE {destination}: the source changed meanwhile ({code})", 409
                    ) from None
                raise

        result = await self._call("MOVE", destination, start())
        status = result.get("copy_status")
        if status == "success":
            return None
        copy_id = result.get("copy_id")
        if status != "pending" or not isinstance(copy_id, str):
            raise EndpointUnavailable(self.name, f"MOVE {destination}: the copy ended as {status}")
        return copy_id

    async def _await_copy(self, dst_blob: BlobClient, destination: str, copy_id: str) -> None:
        """Poll a pending copy until it succeeds; abort and clean up when it fails or takes too long."""
        deadline = time.monotonic() + self.copy_wait
        pause = COPY_POLL_FIRST
        status: str | None = "pending"
        try:
            while True:
                props = await self._call("MOVE", destination, dst_blob.get_blob_properties())
                if props.copy.id != copy_id:
                    raise EndpointUnavailable(self.name, f"MOVE {destination}: another copy replaced ours")
                status = props.copy.status
                if status == "success":
                    return
                if status != "pending" or time.monotonic() + pause > deadline:
                    break
                await asyncio.sleep(pause)
                pause = min(pause * 2, COPY_POLL_MAX)
        except PathNotFound:
            raise EndpointUnavailable(self.name, f"MOVE {destination}: the copy vanished") from None
        if status == "pending":
            with contextlib.suppress(EndpointError):
                await self._call("MOVE", destination, dst_blob.abort_copy(copy_id))
            reason = f"the copy did not finish within {self.copy_wait:g}s"
        else:
            reason = f"the copy ended as {status}"
        with contextlib.suppress(EndpointError):
            await self._call("MOVE", destination, dst_blob.delete_blob())
        raise EndpointUnavailable(self.name, f"MOVE {destination}: {reason}")

    # -- reads and checksums --------------------------------------------------------------------

    async def read(self, path: str, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        """The blob's stored bytes (never decompressed), in chunks of at most :attr:`read_chunk`.

        One download: the first request fetches up to one chunk, each later one the next chunk
        (on demand, each within the timeout), all pinned to the first answer's ETag, so a blob
        rewritten during the read fails it (EndpointRefused 412) instead of mixing versions.
        PathNotFound for a missing blob or a collection. A range starting at or after the end
        yields nothing, as reading past the end of a file does.
        """
        if offset < 0 or (length is not None and length < 0):
            raise ValueError(f"invalid range: offset {offset}, length {length}")
        name = _blob_name(path)
        if not name:
            raise PathNotFound(self.name, "GET /: a collection, not a file")
        if length == 0:
            found = await self.stat(path)
            if found is None or found.is_dir:
                raise PathNotFound(self.name, f"GET {path}: no such file")
            return
        blob = self._container().get_blob_client(name)
        # Without a range for a whole read: a range of an empty blob would be 416.
        ranged = offset > 0 or length is not None
        download = blob.download_blob(offset if ranged else None, length, max_concurrency=1, decompress=False)
        try:
            downloader = await self._call("GET", path, download)
        except EndpointRefused as exc:
            if exc.status == 416:  # at or past the end
                return
            raise
        if _is_folder_blob(downloader.properties):
            raise PathNotFound(self.name, f"GET {path}: a collection, not a file")
        chunks = downloader.chunks()
        while (chunk := await self._next_page("GET", path, chunks)) is not None:
            yield chunk

    async def stored_checksums(self, path: str, stat: StatResult) -> dict[str, str]:
        """The ``geofed_<alg>`` metadata in ``stat``; with ``checksum_metadata: trusted`` also
        plain ``<alg>`` metadata and the blob's ``Content-MD5`` (below ``geofed_md5``, above a
        plain ``md5``). No request: ``stat`` (and a listing's entries) carry both."""
        trusted = self.settings.checksum_metadata == "trusted"
        found = checksums_from_metadata(stat.metadata, trusted, seal_key=self.seal_key, size=stat.size)
        ours = checksums_from_metadata(stat.metadata, seal_key=self.seal_key, size=stat.size)
        if trusted and "md5" not in ours:
            content_md5 = dict(stat.metadata).get(CONTENT_MD5, "")
            if len(content_md5) == 32:
                found["md5"] = content_md5
        return found

    async def store_checksums(self, path: str, values: dict[str, str]) -> bool:
        """Set ``geofed_<alg>`` for each valid value (other algorithms' old ones are removed; the
        rest of the metadata is kept), on the blob as it is now: its properties are read and the
        metadata set with ``If-Match`` of their ETag. False when the blob changed in between, is a
        folder blob, or no value is valid; PathNotFound when it is gone. The guard covers only
        that gap: the interface does not say which version the values were computed from, so they
        are taken to be of the blob as it is when this is called.

        Set Blob Metadata gives the blob a new ETag and Last-Modified (content unchanged).
        """
        checked = {
            algorithm: value.strip().lower()
            for algorithm, value in values.items()
            if algorithm in CHECKSUM_ALGORITHMS and _HEX.fullmatch(value.strip().lower())
        }
        name = _blob_name(path)
        if not checked or not name:
            return False
        blob = self._container().get_blob_client(name)
        props = await self._call("CHECKSUM", path, blob.get_blob_properties())
        if _is_folder_blob(props) or not props.etag:
            return False
        current = props.metadata or {}
        kept = checksums_from_metadata(tuple(current.items()), seal_key=self.seal_key, size=props.size)
        metadata = _merged_checksums(current, sealed(self.seal_key, props.size, {**kept, **checked}))
        update = blob.set_blob_metadata(
            metadata, etag=props.etag, match_condition=MatchConditions.IfNotModified
        )
        try:
            await self._call("CHECKSUM", path, update)
        except EndpointRefused as exc:
            if exc.status == 412:
                return False  # rewritten (or leased) since its properties were read
            raise
        return True

    async def space(self) -> Space | None:
        """None: the blob service reports neither the bytes used nor a limit (summing a
        container's blob sizes would mean listing all of it); ``endpoints[].quota`` gives one."""
        return None

    # -- URLs and health ------------------------------------------------------------------------

    def sign_url(self, method: str, path: str, lifetime: float) -> str:
        """The blob's URL with a service SAS for ``method`` only, valid for ``lifetime`` seconds."""
        permission = _PERMISSIONS.get(method.upper())
        if permission is None:
            raise ValueError(f"{self.name}: cannot sign a {method} URL for a blob")
        return self._sas_url(_blob_name(path), permission, lifetime)

    def _sas_url(self, name: str, permission: BlobSasPermissions, lifetime: float) -> str:
        """The URL of blob ``name`` with a service SAS for ``permission`` during ``lifetime`` s."""
        now = datetime.now(UTC)
        sas = generate_blob_sas(
            account_name=self._account,
            container_name=self._container_name,
            blob_name=name,
            account_key=self._key,
            permission=permission,
            expiry=now + timedelta(seconds=lifetime),
            start=now - CLOCK_SKEW,
        )
        return f"{self._container_url}/{quote(name)}?{sas}"

    async def probe(self) -> None:
        """The container's properties: any failure (wrong key, no container, no answer) is unhealthy."""
        try:
            await self._call("PROBE", "/", self._container().get_container_properties())
        except EndpointUnavailable:
            raise
        except EndpointError as exc:
            raise EndpointUnavailable(self.name, exc.reason) from None

    async def aclose(self) -> None:
        """Close the client and its session; a later call would open new ones."""
        client, self._client = self._client, None
        if client is not None:
            await client.close()


def _transport_cause(exc: BaseException) -> BaseException | None:
    """The network-level error behind ``exc``, to chain; None for an answer of the service.

    An answer's SDK exception is not chained: its text quotes the service's error message, which
    for an authentication failure includes the request's signature and string-to-sign.
    """
    if isinstance(exc, HttpResponseError) and exc.status_code is not None:
        return None
    if isinstance(exc, AzureError):
        inner = exc.inner_exception
        return inner if isinstance(inner, BaseException) else None
    return exc


def _merged_checksums(metadata: Mapping[str, str], values: Mapping[str, str]) -> dict[str, str]:
    """``metadata`` without any ``geofed_<alg>`` entry (whatever its case), plus ``values`` as
    ``geofed_<alg>``."""
    ours = {METADATA_PREFIX + name for name in (*CHECKSUM_ALGORITHMS, SEAL)}
    kept = {k: v for k, v in metadata.items() if k.lower() not in ours}
    return {**kept, **{METADATA_PREFIX + algorithm: value for algorithm, value in values.items()}}


async def _gather_all(calls: Iterable[Awaitable[None]]) -> None:
    """Run ``calls`` together; the first error is raised once all of them have finished."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
