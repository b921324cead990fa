"""The moving parts inside one copy: the bandwidth limit, the stall detector and the chunk pipeline.

A reader task pulls the source, cuts it into chunks of ``chunk_size`` bytes, waits for the
bandwidth limit (:class:`TokenBucket`, one per engine, shared by all copies), hashes each chunk (in
a worker thread, while the next one is read) and hands it over a queue of one to the destination,
which is fed by a generator holding back the last chunk, so that a final check can still abort the
upload before anything becomes visible. :class:`Watchdog` fails a copy that stalls or runs too long.

These are mechanisms, independent of where the bytes come from or go to (that is
:mod:`~geofed.transfer.job`), hence their own module.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from typing import Any

from geofed.checksums import MultiHasher

HASH_INLINE_BELOW = 64 * 1024
"""Chunks smaller than this are hashed on the event loop, larger ones in a worker thread."""


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


class Watchdog:
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


class Pipe:
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
        finally:
            await self._close_source()

    async def _close_source(self) -> None:
        """Close the source generator here, on this loop: left to the garbage collector, it would
        be finalized later, perhaps after this loop closed (an "unraisable" error then)."""
        hashing = self._hashing
        if hashing is not None:  # a chunk still being hashed in a thread: its outcome is not needed
            hashing[1].add_done_callback(_retrieve)
            self._hashing = None
        closer = getattr(self._source, "aclose", None)
        if closer is not None:
            with contextlib.suppress(Exception):
                await closer()

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


def _retrieve(future: asyncio.Future[None]) -> None:
    """Mark a future's exception as seen (no "exception was never retrieved" later)."""
    if not future.cancelled():
        future.exception()
