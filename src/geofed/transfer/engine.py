"""The copy engine: moves the bytes of a third-party copy, in bounded memory, verified end to end.

A copy goes from a source -- replicas of a federated file on endpoints (``Endpoint.read``; the
next replica is tried when one fails before its first byte), or a remote URL (GET) -- to a
destination -- a path on an endpoint (``Endpoint.upload``, which does S3 multipart and Azure block
uploads and leaves nothing behind when it fails), or a remote URL (PUT).

Inside one copy a reader task pulls the source, cuts it into chunks of ``chunk_size`` bytes, waits
for the bandwidth limit, hashes each chunk (in a worker thread, while the next one is read) and
hands it over a queue of one to the destination, which is fed by a generator holding back the last
chunk: before that chunk is handed over, the size and the checksums of everything read are
compared with the source's, so a mismatch aborts the upload before anything becomes visible.
Afterwards the destination is asked for what it holds (size, the checksums it knows) and, for an
endpoint, the checksums computed on the way are stored with the copy.

Whatever fails -- the source, the destination, a checksum, a timeout, the client going away (the
handler cancels the copy) -- a destination object the copy created is removed (an endpoint upload
never shows one; a completed upload that fails verification is deleted; a remote destination gets
a best-effort DELETE once bytes were sent to it).

One engine per process: it limits the copies running at once (the others wait for a slot) and,
optionally, the bandwidth of all of them together (a token bucket), and counts what it did.

The steps of one copy are :mod:`~geofed.transfer.job`, the pipeline inside it (bandwidth limit,
stall detection, chunking and hashing) :mod:`~geofed.transfer.pipeline`, and the values it works on
(sources, destinations, results, failures) :mod:`~geofed.transfer.model`; their public names are
re-exported here, where callers import them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from typing import TYPE_CHECKING, Any

from geofed import metrics
from geofed.errors import EndpointError
from geofed.transfer.job import CLEANUP_TIMEOUT, Job
from geofed.transfer.model import (
    ClientGone,
    Destination,
    EndpointDestination,
    RemoteDestination,
    RemoteSource,
    Replica,
    ReplicaSource,
    Source,
    TransferFailed,
    TransferResult,
)
from geofed.transfer.pipeline import HASH_INLINE_BELOW, TokenBucket, Watchdog
from geofed.transfer.remote import (
    RemoteError,
    RemoteInfo,
    RemoteSession,
    client_ssl_context,
    networks,
    redact,
)
from geofed.transfer.settings import TransferSettings

if TYPE_CHECKING:
    import ssl

    from geofed.config import Settings

__all__ = [
    "CLEANUP_TIMEOUT",
    "HASH_INLINE_BELOW",
    "STATS",
    "ClientGone",
    "Destination",
    "EndpointDestination",
    "RemoteDestination",
    "RemoteSource",
    "Replica",
    "ReplicaSource",
    "Source",
    "TokenBucket",
    "Transfer",
    "TransferEngine",
    "TransferFailed",
    "TransferResult",
]


log = logging.getLogger("geofed.transfer")

STATS = ("queued", "running", "succeeded", "failed", "cancelled", "bytes")


# -- one copy ------------------------------------------------------------------------------


class Transfer:
    """One copy, started by :meth:`TransferEngine.start`; its progress and outcome."""

    def __init__(
        self, engine: TransferEngine, source: Source, destination: Destination, verify: bool
    ) -> None:
        self.engine = engine
        self.source = source
        self.destination = destination
        self.verify = verify
        self.state = "queued"
        self.transferred = 0
        """Bytes the destination has taken so far."""
        self.total: int | None = None
        self.result: TransferResult | None = None
        self.error: str | None = None
        self._abort_reason: str | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def done(self) -> bool:
        return self._task is not None and self._task.done()

    async def progress(
        self, interval: float, alive: Callable[[], bool] | None = None, poll: float = 0.5
    ) -> AsyncIterator[int]:
        """Bytes so far, now and then every ``interval`` seconds while the copy runs; returns when
        it succeeded, raises TransferFailed when it failed. ``alive`` is asked every ``poll``
        seconds: when it says False, the copy is cancelled and ClientGone raised."""
        task = self._task
        assert task is not None, "the transfer was not started"
        loop = asyncio.get_running_loop()
        yield self.transferred
        next_marker = loop.time() + interval
        while not task.done():
            wait = max(0.0, next_marker - loop.time())
            if alive is not None:
                wait = min(wait, poll)
            await asyncio.wait([task], timeout=wait)
            if task.done():
                break
            if alive is not None and not alive():
                await self.abort("the client went away")
                raise ClientGone(self._abort_reason)
            if loop.time() >= next_marker:
                yield self.transferred
                next_marker = loop.time() + interval
        await self.wait()

    async def wait(self) -> TransferResult:
        """The result once the copy ended; TransferFailed when it failed or was cancelled."""
        task = self._task
        assert task is not None, "the transfer was not started"
        await asyncio.wait([task])
        if self.result is None:
            raise TransferFailed(self.error or "the transfer was cancelled")
        return self.result

    async def abort(self, reason: str) -> None:
        """Cancel the copy and wait (bounded) for its clean-up."""
        task = self._task
        if task is None or task.done():
            return
        self._abort_reason = reason
        task.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(asyncio.wait([task])), CLEANUP_TIMEOUT)


class TransferEngine:
    """Runs copies: at most ``max_concurrent`` at once, within the bandwidth limit."""

    def __init__(self, settings: TransferSettings, ssl_context: ssl.SSLContext | None = None) -> None:
        self.settings = settings
        self._ssl = ssl_context
        self._deny = networks(settings.deny_networks)
        self._slots: asyncio.Semaphore | None = None
        self._bucket: TokenBucket | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._cleanups: set[asyncio.Future[Any]] = set()
        """Clean-ups still running for copies that were cancelled: never cancelled themselves,
        and waited for by :meth:`aclose`, so none is destroyed unfinished with the loop."""
        self.counters: dict[str, int] = dict.fromkeys(STATS, 0)
        """``queued`` and ``running`` now; ``succeeded``, ``failed``, ``cancelled`` and ``bytes``
        (copied by finished and running copies) since the start."""

    @classmethod
    def from_settings(cls, settings: Settings) -> TransferEngine:
        """The engine for a whole configuration: ``transfer`` (defaults when absent), and the CAs
        of ``transfer`` or else of ``server.tls`` to verify remote HTTPS peers."""
        transfer = getattr(settings, "transfer", None)
        if not isinstance(transfer, TransferSettings):
            transfer = TransferSettings()
        ca_file, ca_dir = transfer.ca_file, transfer.ca_dir
        tls = settings.server.tls
        if ca_file is None and ca_dir is None and tls is not None:
            ca_file, ca_dir = tls.ca_file, tls.ca_dir
        return cls(transfer, client_ssl_context(ca_file, ca_dir))

    def stats(self) -> dict[str, int]:
        """The counters (for metrics and the status page)."""
        return dict(self.counters)

    def start(self, source: Source, destination: Destination, *, verify: bool | None = None) -> Transfer:
        """Start a copy in the background (it waits for a slot first); ``verify`` None means the
        configured ``verify_checksums``."""
        if self._slots is None:  # created in the running loop
            self._slots = asyncio.Semaphore(self.settings.max_concurrent)
            limit = self.settings.bandwidth_limit
            self._bucket = TokenBucket(limit) if limit else None
        transfer = Transfer(
            self, source, destination, self.settings.verify_checksums if verify is None else verify
        )
        task = asyncio.create_task(self._run(transfer), name="tpc copy")
        transfer._task = task
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return transfer

    async def copy(
        self, source: Source, destination: Destination, *, verify: bool | None = None
    ) -> TransferResult:
        """Start a copy and wait for it (no progress reports): a plain WebDAV COPY."""
        transfer = self.start(source, destination, verify=verify)
        try:
            return await transfer.wait()
        except asyncio.CancelledError:
            await transfer.abort("the request was cancelled")
            raise

    async def probe(self, url: str, headers: Mapping[str, str]) -> RemoteInfo | None:
        """A HEAD of a remote URL (``Overwrite: F`` before a push); None when it did not answer."""
        session = RemoteSession(
            self._ssl or client_ssl_context(),
            connect_timeout=self.settings.connect_timeout,
            idle_timeout=self.settings.connect_timeout,
            max_redirects=self.settings.max_redirects,
            deny=self._deny,
        )
        async with session as http:
            try:
                return await http.head(url, headers)
            except RemoteError as exc:
                log.info("HEAD of %s failed: %s", redact(url), exc)
                return None

    async def aclose(self) -> None:
        """Cancel every copy (each cleans up after itself) and wait for them and their clean-ups."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)
        if self._cleanups:
            await asyncio.wait(list(self._cleanups), timeout=CLEANUP_TIMEOUT)

    def protect(self, work: Coroutine[Any, Any, Any] | asyncio.Future[Any]) -> asyncio.Future[Any]:
        """Run clean-up ``work`` to its end even if its caller is cancelled (await the result
        with :func:`asyncio.shield`); :meth:`aclose` waits for it."""
        future = asyncio.ensure_future(work)
        self._cleanups.add(future)
        future.add_done_callback(self._cleanups.discard)
        return future

    # -- running one copy ----------------------------------------------------------------------

    async def _run(self, transfer: Transfer) -> None:
        assert self._slots is not None
        counters = self.counters
        counters["queued"] += 1
        started = time.monotonic()
        try:
            try:
                await self._slots.acquire()
            finally:
                counters["queued"] -= 1
            try:
                counters["running"] += 1
                transfer.state = "running"
                metrics.transfer_started()
                transfer.result = await self._copy(transfer, started)
            finally:
                counters["running"] -= 1
                self._slots.release()
                result = transfer.result
                metrics.transfer_finished(result is not None, result.size if result is not None else 0)
        except asyncio.CancelledError:
            transfer.state = "cancelled"
            transfer.error = transfer._abort_reason or "the transfer was cancelled"
            counters["cancelled"] += 1
            log.info("copy %s cancelled: %s", _describe(transfer), transfer.error)
            raise
        except TransferFailed as exc:
            transfer.state = "failed"
            transfer.error = str(exc)
            counters["failed"] += 1
            log.warning("copy %s failed: %s", _describe(transfer), exc)
        except Exception as exc:
            transfer.state = "failed"
            transfer.error = f"internal error: {type(exc).__name__}: {exc}"
            counters["failed"] += 1
            log.exception("copy %s failed with an internal error", _describe(transfer))
        else:
            transfer.state = "succeeded"
            counters["succeeded"] += 1
            result = transfer.result
            assert result is not None
            log.info(
                "copy %s from %s: %d bytes in %.1f s (%.1f MB/s)",
                _describe(transfer),
                result.source,
                result.size,
                result.seconds,
                result.size / max(result.seconds, 1e-6) / 1e6,
            )

    async def _copy(self, transfer: Transfer, started: float) -> TransferResult:
        source, destination = transfer.source, transfer.destination
        settings = self.settings
        shortcut = _same_store(source, destination)
        if shortcut is not None:
            return await self._server_copy(shortcut, destination, started)
        remote = isinstance(source, RemoteSource) or isinstance(destination, RemoteDestination)
        session = (
            RemoteSession(
                self._ssl or client_ssl_context(),
                connect_timeout=settings.connect_timeout,
                idle_timeout=settings.idle_timeout,
                max_redirects=settings.max_redirects,
                deny=self._deny,
            )
            if remote
            else None
        )
        async with session if session is not None else contextlib.nullcontext() as http:
            watchdog = Watchdog(settings.idle_timeout, settings.max_duration)
            job = Job(self, transfer, http, watchdog)
            try:
                async with watchdog.timeout:
                    return await job.run(started)
            except TimeoutError as exc:
                if not watchdog.timeout.expired():
                    raise TransferFailed(f"timed out: {exc}") from exc
                raise TransferFailed(watchdog.reason()) from None
            finally:
                await job.clean_up()

    async def _server_copy(
        self, replica: Replica, destination: Destination, started: float
    ) -> TransferResult:
        """The store copies the object itself (S3 CopyObject): no byte through geofed. The copy
        keeps the object's metadata, so sealed checksums stay valid (same size, same values)."""
        assert isinstance(destination, EndpointDestination)
        endpoint = destination.endpoint
        try:
            copied = await endpoint.copy(replica.path, destination.path)
        except EndpointError as exc:
            raise TransferFailed(f"server-side copy on {endpoint.name} failed: {exc}") from exc
        size = copied.size or 0
        self.counters["bytes"] += size
        checksums: dict[str, str] = {}
        with contextlib.suppress(EndpointError):
            checksums = await endpoint.stored_checksums(destination.path, copied)
        return TransferResult(
            size, checksums, time.monotonic() - started, f"{endpoint.name}:{replica.path} (server-side copy)"
        )


def _same_store(source: Source, destination: Destination) -> Replica | None:
    """The source replica on the destination's own endpoint, when that endpoint copies by itself."""
    if not isinstance(source, ReplicaSource) or not isinstance(destination, EndpointDestination):
        return None
    endpoint = destination.endpoint
    if not endpoint.capabilities.server_copy:
        return None
    for replica in source.replicas:
        if replica.endpoint is endpoint and replica.path != destination.path:
            return replica
    return None


def _describe(transfer: Transfer) -> str:
    return f"{_source_text(transfer.source)} -> {_destination_text(transfer.destination)}"


def _source_text(source: Source) -> str:
    if isinstance(source, RemoteSource):
        return redact(source.url)
    return source.label


def _destination_text(destination: Destination) -> str:
    if isinstance(destination, RemoteDestination):
        return redact(destination.url)
    return f"{destination.endpoint.name}:{destination.path}"
