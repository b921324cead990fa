"""The endpoint interface: the one seam between the federation and a storage protocol.

Everything protocol-specific (signing, PROPFIND parsing, object-store listing) lives behind this
interface, so the federation logic never asks "which kind?". Paths given to an endpoint are already
translated into the endpoint's own namespace: absolute, normalised, without a trailing slash (the
root is ``/``).

Error contract, for every method:

* a definite "no such path" is :class:`~geofed.errors.PathNotFound` (``stat`` returns ``None``);
* a timeout, connection failure or 5xx is :class:`~geofed.errors.EndpointUnavailable`;
* any other definite refusal is :class:`~geofed.errors.EndpointRefused` with the status.

No library exception (aiohttp, OSError) crosses this boundary.
"""

from __future__ import annotations

import abc
from collections.abc import AsyncIterator
from dataclasses import dataclass

from geofed.config import EndpointSettings
from geofed.errors import EndpointRefused


@dataclass(frozen=True, slots=True)
class StatResult:
    """What an endpoint knows about one path."""

    is_dir: bool
    size: int | None = None
    mtime: float | None = None
    etag: str | None = None
    content_type: str | None = None
    metadata: tuple[tuple[str, str], ...] = ()
    """User metadata the store keeps with the object (S3 ``x-amz-meta-*``, Azure ``x-ms-meta-*``),
    names lower-cased without the prefix: where stored checksums are found."""


@dataclass(frozen=True, slots=True)
class Entry:
    """One child of a collection, as listed by an endpoint."""

    name: str
    stat: StatResult


@dataclass(frozen=True, slots=True)
class Capabilities:
    """What an endpoint kind can do; the federation consults this instead of the kind."""

    stat: bool = True
    list: bool = True
    delete: bool = True
    mkcol: bool = True
    redirect_get: bool = True
    redirect_put: bool = True
    multipart_upload: bool = False
    """The endpoint implements the sign_multipart_* methods (S3)."""
    upload_stream: bool = False
    """The endpoint implements ``upload`` (geofed streams a client's body to it)."""


class Endpoint(abc.ABC):
    """One storage endpoint. Instances live as long as the configuration that made them."""

    capabilities: Capabilities = Capabilities()

    def __init__(self, settings: EndpointSettings) -> None:
        self.settings = settings
        self.name = settings.name

    @abc.abstractmethod
    async def stat(self, path: str) -> StatResult | None:
        """Metadata of ``path``, or ``None`` when the endpoint says it does not exist."""

    @abc.abstractmethod
    def list(self, path: str) -> AsyncIterator[Entry]:
        """The children of the collection ``path``, streamed; PathNotFound when it is absent."""

    @abc.abstractmethod
    def sign_url(self, method: str, path: str, lifetime: float) -> str:
        """A URL a client can use for ``method`` on ``path`` during ``lifetime`` seconds.

        May return a path starting with ``/`` (geofed's own data route); the caller makes it absolute.
        """

    @abc.abstractmethod
    async def delete(self, path: str) -> None:
        """Remove ``path`` (a file, or a collection with its content)."""

    @abc.abstractmethod
    async def mkcol(self, path: str) -> bool:
        """Create the collection ``path``; False when it already exists.

        EndpointRefused with status 409 when the parent is missing.
        """

    async def makedirs(self, path: str) -> None:
        """Create ``path`` and every missing parent collection (used before redirecting a PUT)."""
        if path == "/":
            return
        try:
            await self.mkcol(path)
        except EndpointRefused as exc:
            if exc.status != 409:
                raise
            await self.makedirs(path.rsplit("/", 1)[0] or "/")
            await self.mkcol(path)

    @abc.abstractmethod
    async def probe(self) -> None:
        """Check that the endpoint serves; raise EndpointUnavailable with the reason when not."""

    async def upload(self, path: str, chunks: AsyncIterator[bytes]) -> None:
        """Store the bytes of ``chunks`` at ``path``, visible only once every chunk has arrived
        (an interrupted upload leaves nothing behind)."""
        raise NotImplementedError(f"{self.name} cannot take streamed uploads")

    def sign_multipart_create(self, path: str, lifetime: float) -> str:
        """A URL the client POSTs (empty body) to start a multipart upload of ``path``."""
        raise NotImplementedError(f"{self.name} does not support multipart uploads")

    def sign_multipart_parts(self, path: str, upload_id: str, count: int, lifetime: float) -> tuple[str, ...]:
        """URLs the client PUTs parts 1..count of upload ``upload_id`` to."""
        raise NotImplementedError(f"{self.name} does not support multipart uploads")

    def sign_multipart_complete(self, path: str, upload_id: str, lifetime: float) -> str:
        """The URL the client POSTs the CompleteMultipartUpload document to."""
        raise NotImplementedError(f"{self.name} does not support multipart uploads")

    async def aclose(self) -> None:
        """Release connections and other resources."""
        return None
