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

The account key lives in this object only: it is never put in a message, a log line or a repr. The
SDK's HTTP logging policies would log request headers at INFO; their loggers are held at WARNING.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Awaitable, Iterable
from datetime import UTC, datetime, timedelta
from enum import Enum
from typing import Final, TypeVar
from urllib.parse import quote

import aiohttp
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import AzureError, HttpResponseError, ResourceExistsError
from azure.core.pipeline.transport import AioHttpTransport
from azure.storage.blob import BlobBlock, BlobProperties, BlobSasPermissions, generate_blob_sas
from azure.storage.blob.aio import ContainerClient

from geofed.config import EndpointSettings
from geofed.endpoints.base import Capabilities, Endpoint, Entry, StatResult
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
    metadata = tuple(sorted((k.lower(), v) for k, v in (blob.metadata or {}).items()))
    return StatResult(
        is_dir=False,
        size=blob.size,
        mtime=mtime,
        etag=_quoted(blob.etag),
        content_type=content_type or None,
        metadata=metadata,
    )


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

    capabilities = Capabilities(upload_stream=True)

    #: Blobs per listing page; tests lower it to exercise paging.
    list_page_size: int = LIST_PAGE_SIZE

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
        """The next page of a listing (None at the end), fetched within the timeout."""
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
        (Azure discards them). Memory stays at one chunk."""
        name = _blob_name(path)
        if not name:
            raise EndpointRefused(self.name, "cannot upload to the container root", 409)
        blob = self._container().get_blob_client(name)
        block_ids: list[str] = []
        prefix = os.urandom(8).hex()
        async for chunk in chunks:
            block_id = base64.b64encode(f"{prefix}-{len(block_ids):08d}".encode()).decode()
            await self._call("PUT", path, blob.stage_block(block_id, chunk, length=len(chunk)))
            block_ids.append(block_id)
        await self._call("PUT", path, blob.commit_block_list([BlobBlock(block_id=b) for b in block_ids]))

    # -- URLs and health ------------------------------------------------------------------------

    def sign_url(self, method: str, path: str, lifetime: float) -> str:
        """The blob's URL with a service SAS for ``method`` only, valid for ``lifetime`` seconds."""
        permission = _PERMISSIONS.get(method.upper())
        if permission is None:
            raise ValueError(f"{self.name}: cannot sign a {method} URL for a blob")
        name = _blob_name(path)
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


async def _gather_all(calls: Iterable[Awaitable[None]]) -> None:
    """Run ``calls`` together; the first error is raised once all of them have finished."""
    results = await asyncio.gather(*calls, return_exceptions=True)
    for result in results:
        if isinstance(result, BaseException):
            raise result
