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
import hashlib
import hmac
from collections.abc import AsyncIterator, Mapping
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
class Space:
    """Bytes used and still available on an endpoint (RFC 4331 quota-used/available-bytes);
    None where the endpoint cannot say."""

    used: int | None = None
    available: int | None = None


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
    read_stream: bool = False
    """The endpoint implements ``read`` (geofed streams a replica: checksums, proxied reads, copies)."""
    store_checksums: bool = False
    """The endpoint keeps checksums geofed computed with the object (metadata, xattr, property)."""
    move: bool = False
    """The endpoint implements ``move`` (rename within the endpoint)."""
    server_copy: bool = False
    """The endpoint implements ``copy``: the store copies a file itself (S3 CopyObject), so a
    third-party copy between two of its paths moves no byte through geofed."""


CHECKSUM_METADATA_PREFIX = "geofed-"
"""Metadata names geofed stores its computed checksums under: ``geofed-adler32`` and so on (S3
``x-amz-meta-geofed-adler32``, Azure ``geofed_adler32`` — Azure names must be identifiers — and the
local xattr ``user.geofed.adler32``). A separate prefix keeps geofed's verified values apart from a
client's ``x-amz-meta-adler32`` claim, which is never reported."""

CHECKSUM_ALGORITHMS = ("adler32", "md5", "sha256", "crc32c")


SEAL = "seal"
"""The metadata entry (``geofed-seal``) that proves the ``geofed-<alg>`` values next to it were
written by geofed: an HMAC, keyed with a key derived from ``signing.secret``, over the object's
size and the values. Whoever can write an object through a pre-signed URL can also set its
metadata (S3 and Azure accept ``x-amz-meta-*`` / ``x-ms-meta-*`` headers on such a PUT), so
without it a client could make geofed report a checksum it never computed."""


def checksum_seal(key: bytes, size: int | None, values: Mapping[str, str]) -> str:
    """The seal of ``values`` (canonical algorithm → hex) for an object of ``size`` bytes."""
    text = f"{size}\n" + "\n".join(f"{algorithm}={values[algorithm]}" for algorithm in sorted(values))
    return hmac.new(key, text.encode(), hashlib.sha256).hexdigest()[:32]


def sealed(key: bytes | None, size: int | None, values: Mapping[str, str]) -> dict[str, str]:
    """``values`` plus their seal (as the entry ``seal``), ready to be stored under the prefix."""
    out = dict(values)
    if key is not None:
        out[SEAL] = checksum_seal(key, size, values)
    return out


def checksums_from_metadata(
    metadata: tuple[tuple[str, str], ...],
    trusted: bool = False,
    *,
    seal_key: bytes | None = None,
    size: int | None = None,
) -> dict[str, str]:
    """The ``geofed-<alg>`` (or Azure's ``geofed_<alg>``) entries of user metadata, believed only
    with a valid ``geofed-seal`` when ``seal_key`` is given (always, inside a federation); with
    ``trusted`` (``endpoints[].checksum_metadata: trusted``) also plain ``<alg>`` entries that the
    site's own tools wrote (``x-amz-meta-adler32``), which geofed otherwise treats as a claim."""
    found: dict[str, str] = {}
    plain: dict[str, str] = {}
    seal: str | None = None
    for name, value in metadata:
        key = name.lower().replace("_", "-")
        value = value.strip().lower()
        if not value:
            continue
        if key.startswith(CHECKSUM_METADATA_PREFIX):
            algorithm = key[len(CHECKSUM_METADATA_PREFIX) :]
            if algorithm in CHECKSUM_ALGORITHMS:
                found[algorithm] = value
            elif algorithm == SEAL:
                seal = value
        elif trusted and key in CHECKSUM_ALGORITHMS:
            plain[key] = value
    if seal_key is not None and found:
        expected = checksum_seal(seal_key, size, found)
        if seal is None or not hmac.compare_digest(seal, expected):
            found = {}
    return {**plain, **found}


class Endpoint(abc.ABC):
    """One storage endpoint. Instances live as long as the configuration that made them."""

    capabilities: Capabilities = Capabilities()

    def __init__(self, settings: EndpointSettings) -> None:
        self.settings = settings
        self.name = settings.name
        self.seal_key: bytes | None = None
        """Set by the federation (derived from ``signing.secret``): seals stored checksums."""

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

    async def read(self, path: str, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        """The bytes of the file ``path`` (from ``offset``, ``length`` of them or to the end),
        streamed in chunks of bounded size; PathNotFound when it is absent."""
        raise NotImplementedError(f"{self.name} cannot stream reads")
        yield b""  # pragma: no cover - makes this an async generator

    async def stored_checksums(self, path: str, stat: StatResult) -> dict[str, str]:
        """Checksums the endpoint itself holds for ``path`` and can vouch for, keyed by canonical
        algorithm (``adler32``, ``md5``, ``sha256``, ``crc32c``), values in canonical form: lower-case
        hex for every algorithm. Only values computed from the stored bytes count (by geofed earlier,
        or verified by the store, like S3's single-part ETag): never a value a client declared. The
        default reads ``stat.metadata`` written by :meth:`store_checksums`; kinds override it."""
        return checksums_from_metadata(
            stat.metadata,
            self.settings.checksum_metadata == "trusted",
            seal_key=self.seal_key,
            size=stat.size,
        )

    async def store_checksums(self, path: str, values: dict[str, str]) -> bool:
        """Keep ``values`` (as :meth:`stored_checksums` returns them) with the object so that the
        next request is answered without reading it again; False when this endpoint cannot."""
        return False

    async def move(self, source: str, destination: str, overwrite: bool = True) -> None:
        """Rename ``source`` to ``destination`` on this endpoint (parents of the destination are
        created). EndpointRefused 412 when the destination exists and ``overwrite`` is False."""
        raise NotImplementedError(f"{self.name} cannot move")

    async def space(self) -> Space | None:
        """Used and available bytes as the endpoint reports them, or None."""
        return None

    async def copy(self, source: str, destination: str) -> StatResult:
        """Copy the file ``source`` to ``destination`` inside the store (replacing what is there),
        metadata included; the destination's stat. Only with ``capabilities.server_copy``."""
        raise NotImplementedError(f"{self.name} cannot copy on the server side")

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
