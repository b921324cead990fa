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
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from geofed.checksums import MultiHasher
from geofed.endpoints.base import Endpoint, StatResult
from geofed.errors import EndpointError, PathNotFound
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

    from geofed.checksums import ChecksumService
    from geofed.config import Settings

log = logging.getLogger("geofed.transfer")

HASH_INLINE_BELOW = 64 * 1024
"""Chunks smaller than this are hashed on the event loop, larger ones in a worker thread."""
CLEANUP_TIMEOUT = 30.0
STATS = ("queued", "running", "succeeded", "failed", "cancelled", "bytes")


class TransferFailed(Exception):
    """The copy failed; the message says which side and why (no URL query, no credential)."""


class ClientGone(Exception):
    """The client of the COPY went away; the copy was cancelled and cleaned up."""


# -- what is copied ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Replica:
    endpoint: Endpoint
    path: str
    stat: StatResult


@dataclass(frozen=True, slots=True)
class ReplicaSource:
    """A federated file: its replicas, best first, and the service that knows their checksums."""

    replicas: tuple[Replica, ...]
    label: str
    """The federated path (for messages)."""
    checksums: ChecksumService | None = None


@dataclass(frozen=True, slots=True)
class RemoteSource:
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EndpointDestination:
    endpoint: Endpoint
    path: str
    label: str


@dataclass(frozen=True, slots=True)
class RemoteDestination:
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    head_after: bool = True
    """Ask the destination (HEAD, ``Want-Digest``) for its size and checksum once the PUT is done;
    off for ``Copy-Flags: NoHead`` (a pre-signed PUT URL cannot answer a HEAD)."""


Source = ReplicaSource | RemoteSource
Destination = EndpointDestination | RemoteDestination


@dataclass(frozen=True, slots=True)
class TransferResult:
    size: int
    checksums: dict[str, str]
    seconds: float
    source: str
    """Where the bytes came from: ``endpoint:path`` or the redacted URL."""


# -- rate limiting and stall detection ---------------------------------------------------------


class TokenBucket:
    """At most ``rate`` bytes per second over time, with bursts of up to one second's worth.
    Callers take tokens in turn (FIFO), so concurrent copies share the rate fairly by chunk."""

    def __init__(self, rate: float) -> None:
        if rate <= 0:
            raise ValueError("rate must be positive")
        self.rate = float(rate)
        self._tokens = self.rate
        self._stamp = time.monotonic()
        self._lock = asyncio.Lock()

    async def take(self, amount: int) -> None:
        async with self._lock:
            now = time.monotonic()
            self._tokens = min(self.rate, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now
            self._tokens -= amount
            if self._tokens < 0:
                await asyncio.sleep(-self._tokens / self.rate)


class _Watchdog:
    """Fails the copy when nothing moved for ``idle`` seconds, or when it runs past ``total``."""

    def __init__(self, idle: float, total: float | None) -> None:
        self.idle = idle
        self.total = total
        self._loop = asyncio.get_running_loop()
        self._end = None if total is None else self._loop.time() + total
        self.timeout = asyncio.timeout_at(self._next())

    def _next(self) -> float:
        deadline = self._loop.time() + self.idle
        return deadline if self._end is None else min(deadline, self._end)

    def kick(self) -> None:
        """Bytes moved: the idle time starts again (a no-op once the copy has ended)."""
        with contextlib.suppress(RuntimeError):
            self.timeout.reschedule(self._next())

    def reason(self) -> str:
        if self._end is not None and self._loop.time() >= self._end:
            return f"not finished within {self.total:g} s"
        return f"no progress for {self.idle:g} s"


# -- the pipeline inside one copy --------------------------------------------------------------

_END = object()


class _Pipe:
    """Source chunks → rechunk → rate limit → hash (overlapping the next read) → queue (one chunk)
    → destination, which gets each chunk as a generator that holds back the last one. At most
    five chunks are held: one being filled, one being hashed, one queued, one held back, one being
    written."""

    def __init__(
        self,
        source: AsyncIterator[bytes],
        chunk_size: int,
        hasher: MultiHasher,
        bucket: TokenBucket | None,
        moved: Callable[[], None],
        sent: Callable[[int], None],
    ) -> None:
        self._source = source
        self._chunk_size = chunk_size
        self._hasher = hasher
        self._bucket = bucket
        self._moved = moved
        self._sent = sent
        self._queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=1)
        self._task: asyncio.Task[None] | None = None
        self._hashing: tuple[bytes, asyncio.Future[None]] | None = None
        self.started = False
        """The destination took its first chunk (after which a remote PUT cannot be redirected)."""
        self.error: BaseException | None = None
        """What ended the body early (a source failure, a mismatch): the real cause of an upload
        failure that an HTTP client may have wrapped."""

    def start(self) -> None:
        self._task = asyncio.create_task(self._read(), name="tpc reader")

    async def aclose(self) -> None:
        task = self._task
        if task is not None and not task.done():
            task.cancel()
        if task is not None:
            await asyncio.gather(task, return_exceptions=True)

    async def _read(self) -> None:
        buffer = bytearray()
        size = self._chunk_size
        try:
            async for piece in self._source:
                self._moved()
                if not buffer and len(piece) == size:
                    await self._emit(piece)
                    continue
                buffer += piece
                while len(buffer) >= size:
                    chunk = bytes(buffer) if len(buffer) == size else bytes(buffer[:size])
                    del buffer[:size]
                    await self._emit(chunk)
            if buffer:
                await self._emit(bytes(buffer))
            await self._hashed()
            await self._queue.put(_END)
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # handed to the consumer, which raises it in the upload
            await self._queue.put(exc)

    async def _emit(self, chunk: bytes) -> None:
        """Hash ``chunk`` in a worker thread while the next one is read (the previous chunk,
        hashed by now, goes to the destination first: the hasher sees chunks in order)."""
        if self._bucket is not None:
            await self._bucket.take(len(chunk))
        await self._hashed()
        if len(chunk) >= HASH_INLINE_BELOW:
            self._hashing = (chunk, asyncio.ensure_future(asyncio.to_thread(self._hasher.update, chunk)))
        else:
            self._hasher.update(chunk)
            await self._queue.put(chunk)

    async def _hashed(self) -> None:
        """Wait for the chunk being hashed, then hand it over."""
        if self._hashing is not None:
            chunk, hashing = self._hashing
            self._hashing = None
            await hashing
            await self._queue.put(chunk)

    async def body(self, final_check: Callable[[], None]) -> AsyncGenerator[bytes, None]:
        """The chunks for the destination; ``final_check`` runs once everything was read and
        hashed, before the last chunk is handed over (it raises to abort the upload)."""
        held: bytes | None = None
        try:
            while True:
                item = await self._queue.get()
                if item is _END:
                    break
                if isinstance(item, BaseException):
                    raise item
                if held is not None:
                    self.started = True
                    yield held
                    self._sent(len(held))
                held = item
            final_check()
            if held is not None:
                self.started = True
                yield held
                self._sent(len(held))
        except BaseException as exc:
            if not isinstance(exc, GeneratorExit | asyncio.CancelledError):
                self.error = exc
            raise


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
        """Cancel every copy (each cleans up after itself) and wait for them."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)

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
                transfer.result = await self._copy(transfer, started)
            finally:
                counters["running"] -= 1
                self._slots.release()
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
            watchdog = _Watchdog(settings.idle_timeout, settings.max_duration)
            job = _Job(self, transfer, http, watchdog)
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


class _Job:
    """The steps of one copy, and what they leave to clean up when it fails."""

    def __init__(
        self, engine: TransferEngine, transfer: Transfer, http: RemoteSession | None, watchdog: _Watchdog
    ) -> None:
        self.engine = engine
        self.transfer = transfer
        self.http = http
        self.watchdog = watchdog
        self.hasher = MultiHasher(engine.settings.checksums)
        self.expected: dict[str, str] = {}
        self.expected_from = ""
        self.size: int | None = None
        self.read = 0
        self.source_name = ""
        self.written = False
        """The destination holds the copy (an upload completed, a PUT was answered 2xx)."""
        self.put_started = False
        self.succeeded = False
        self._pipe: _Pipe | None = None
        self._stream: AsyncIterator[bytes] | None = None

    # -- the steps --------------------------------------------------------------------------

    async def run(self, started: float) -> TransferResult:
        transfer = self.transfer
        self._stream = await self._open_source()
        transfer.total = self.size
        pipe = _Pipe(
            self._counted(self._stream),
            self.engine.settings.chunk_size,
            self.hasher,
            self.engine._bucket,
            self.watchdog.kick,
            self._sent,
        )
        self._pipe = pipe
        pipe.start()
        body = pipe.body(self._final_check)
        try:
            await self._write(body, pipe)
        finally:
            await body.aclose()
        await pipe.aclose()
        computed = self.hasher.hexdigests()
        await self._check_destination(computed)
        self.succeeded = True
        return TransferResult(self.read, computed, time.monotonic() - started, self.source_name)

    async def _counted(self, stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for piece in stream:
            self.read += len(piece)
            yield piece

    def _sent(self, count: int) -> None:
        self.transfer.transferred += count
        self.engine.counters["bytes"] += count
        self.watchdog.kick()

    def _final_check(self) -> None:
        """Everything was read and hashed: the size and the checksums must be the source's."""
        if self.size is not None and self.read != self.size:
            raise TransferFailed(
                f"source {self.source_name}: read {self.read} bytes, expected {self.size} "
                "(the file changed or the stream was cut)"
            )
        if self.transfer.verify and self.expected:
            mismatches = _mismatches(self.expected, self.hasher.hexdigests())
            if mismatches:
                raise TransferFailed(
                    f"checksum mismatch between the source ({self.expected_from}) and the bytes read: "
                    f"{'; '.join(mismatches)}; nothing was stored"
                )

    async def _open_source(self) -> AsyncIterator[bytes]:
        source = self.transfer.source
        if isinstance(source, RemoteSource):
            return await self._open_remote(source)
        return await self._open_replica(source)

    async def _open_remote(self, source: RemoteSource) -> AsyncIterator[bytes]:
        http = self.http
        assert http is not None
        self.source_name = redact(source.url)
        if self.transfer.verify:
            try:
                info = await http.head(source.url, source.headers)
            except RemoteError as exc:
                log.debug("HEAD of the source failed (the GET will say more): %s", exc)
            else:
                if info.checksums:
                    self.expected = info.checksums
                    self.expected_from = f"Digest of {self.source_name}"
        try:
            body = await http.get(source.url, source.headers)
        except RemoteError as exc:
            raise TransferFailed(f"source {exc.message}") from None
        self.size = body.size
        self.source_name = body.url
        return _remote_errors(body.chunks, "source")

    async def _open_replica(self, source: ReplicaSource) -> AsyncIterator[bytes]:
        failures: list[str] = []
        for replica in source.replicas:
            name = f"{replica.endpoint.name}:{replica.path}"
            stream = replica.endpoint.read(replica.path)
            try:
                first = await anext(stream, None)
            except (EndpointError, NotImplementedError) as exc:
                failures.append(f"{replica.endpoint.name}: {exc}")
                await _close(stream)
                continue
            except BaseException:
                await _close(stream)
                raise
            self.source_name = name
            self.size = replica.stat.size
            if self.transfer.verify and source.checksums is not None:
                self.expected = await _known_checksums(source.checksums, replica)
                self.expected_from = f"checksums known for {name}"
            return _endpoint_errors(first, stream, "source")
        detail = "; ".join(failures) or "no replica"
        raise TransferFailed(f"source {source.label}: cannot be read ({detail})")

    async def _write(self, body: AsyncIterator[bytes], pipe: _Pipe) -> None:
        destination = self.transfer.destination
        if isinstance(destination, EndpointDestination):
            endpoint = destination.endpoint
            try:
                await endpoint.upload(destination.path, body)
            except EndpointError as exc:
                if pipe.error is not None:
                    raise _as_failure(pipe.error) from None
                raise TransferFailed(f"destination {exc}; nothing was stored") from None
            except NotImplementedError as exc:
                raise TransferFailed(f"destination {endpoint.name}: {exc}") from None
            self.written = True
            return
        http = self.http
        assert http is not None
        self.put_started = True

        def hop() -> AsyncIterator[bytes]:
            return _once(body)

        try:
            await http.put(destination.url, destination.headers, hop, self.size, lambda: pipe.started)
        except RemoteError as exc:
            if pipe.error is not None:
                raise _as_failure(pipe.error) from None
            raise TransferFailed(f"destination {exc.message}") from None
        self.written = True

    async def _check_destination(self, computed: dict[str, str]) -> None:
        """Ask the destination what it holds now; store the checksums with an endpoint's copy."""
        destination = self.transfer.destination
        if isinstance(destination, EndpointDestination):
            endpoint = destination.endpoint
            name = f"{endpoint.name}:{destination.path}"
            try:
                stat = await endpoint.stat(destination.path)
                if stat is None:
                    raise TransferFailed(f"destination {name}: the copy is not there after the upload")
                if stat.size is not None and stat.size != self.read:
                    raise TransferFailed(
                        f"destination {name}: holds {stat.size} bytes after the upload, {self.read} were sent"
                    )
                if self.transfer.verify:
                    stored = await endpoint.stored_checksums(destination.path, stat)
                    mismatches = _mismatches(stored, computed)
                    if mismatches:
                        differs = "; ".join(mismatches)
                        raise TransferFailed(
                            f"destination {name}: the stored copy's checksum differs: {differs}"
                        )
            except EndpointError as exc:
                raise TransferFailed(f"destination {exc} (after the upload)") from None
            if endpoint.capabilities.store_checksums:
                try:
                    await endpoint.store_checksums(destination.path, dict(computed))
                except (EndpointError, NotImplementedError) as exc:
                    log.warning("could not store the checksums of the copy %s: %s", name, exc)
            return
        if not destination.head_after or not self.transfer.verify:
            return
        http = self.http
        assert http is not None
        try:
            info = await http.head(destination.url, destination.headers)
        except RemoteError as exc:
            log.info("cannot ask the destination about the copy: %s", exc)
            return
        if not 200 <= info.status < 300:
            return  # it cannot say (a pre-signed PUT URL, no HEAD allowed): the PUT's answer stands
        where = redact(destination.url)
        if info.size is not None and info.size != self.read:
            raise TransferFailed(
                f"destination {where}: holds {info.size} bytes after the PUT, {self.read} were sent"
            )
        mismatches = _mismatches(info.checksums, computed)
        if mismatches:
            raise TransferFailed(
                f"destination {where}: checksum of the stored copy differs: {'; '.join(mismatches)}"
            )

    # -- failures -----------------------------------------------------------------------------

    async def clean_up(self) -> None:
        """Stop the pipeline; when the copy did not succeed, remove what it left at the destination.
        Shielded: it runs to the end even when the copy was cancelled."""
        pipe, stream = self._pipe, self._stream
        if pipe is not None:
            await asyncio.shield(pipe.aclose())
        if stream is not None:
            await asyncio.shield(_close(stream))
        if self.succeeded:
            return
        work = self._remove_destination()
        if work is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(work), CLEANUP_TIMEOUT)

    def _remove_destination(self) -> asyncio.Future[None] | None:
        destination = self.transfer.destination
        if isinstance(destination, EndpointDestination):
            if not self.written:
                return None  # an upload that did not complete leaves nothing
            return asyncio.ensure_future(_delete_endpoint(destination))
        if not self.put_started or (self._pipe is not None and not self._pipe.started and not self.written):
            return None  # no byte reached it: whatever is there was not made by this copy
        http = self.http
        assert http is not None
        return asyncio.ensure_future(_delete_remote(http, destination))


# -- helpers ------------------------------------------------------------------------------------


async def _once(body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """``body`` behind a fresh generator per request hop: a hop that is redirected before sending
    anything leaves ``body`` untouched for the next one."""
    async for chunk in body:
        yield chunk


async def _remote_errors(chunks: AsyncIterator[bytes], role: str) -> AsyncIterator[bytes]:
    try:
        async for chunk in chunks:
            yield chunk
    except RemoteError as exc:
        raise TransferFailed(f"{role} {exc.message}") from None
    finally:
        await _close(chunks)


async def _endpoint_errors(
    first: bytes | None, stream: AsyncIterator[bytes], role: str
) -> AsyncIterator[bytes]:
    try:
        if first:
            yield first
        if first is None:
            return
        async for chunk in stream:
            yield chunk
    except EndpointError as exc:
        raise TransferFailed(f"{role} {exc}") from None
    finally:
        await _close(stream)


async def _close(stream: AsyncIterator[bytes]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(Exception):
            await aclose()


async def _known_checksums(service: ChecksumService, replica: Replica) -> dict[str, str]:
    """What is known of the replica's checksums without reading it (caches, stored values)."""
    try:
        return await service.checksums(replica.endpoint.name, replica.path, replica.stat, (), compute=False)
    except (EndpointError, ValueError, KeyError) as exc:
        log.debug("no known checksums for %s:%s: %s", replica.endpoint.name, replica.path, exc)
        return {}


async def _delete_endpoint(destination: EndpointDestination) -> None:
    try:
        await destination.endpoint.delete(destination.path)
    except PathNotFound:
        pass
    except (EndpointError, NotImplementedError) as exc:
        log.warning(
            "could not remove the failed copy %s:%s: %s", destination.endpoint.name, destination.path, exc
        )


async def _delete_remote(http: RemoteSession, destination: RemoteDestination) -> None:
    await http.delete(destination.url, destination.headers)


def _mismatches(expected: Mapping[str, str], actual: Mapping[str, str]) -> list[str]:
    return [
        f"{algorithm}: expected {value}, the copied bytes have {actual[algorithm]}"
        for algorithm, value in sorted(expected.items())
        if algorithm in actual and actual[algorithm] != value
    ]


def _as_failure(exc: BaseException) -> TransferFailed:
    if isinstance(exc, TransferFailed):
        return exc
    return TransferFailed(f"{type(exc).__name__}: {exc}")


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
