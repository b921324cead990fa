"""The second-level (L2) cache: bytes shared by every geofed front end, and invalidations between them.

L2 is an optimisation, never a dependency: every operation is bounded by a short timeout and never
raises, a miss and an unreachable server look the same to the caller (``None``), and a server that
fails is skipped at once (no waiting for timeouts) until a background task, trying every second,
sees it answer again. Each state change is logged once on ``geofed.l2``, so an outage of minutes
writes two lines, not thousands.

Keys are namespaced and encoded by :func:`~geofed.federation.l2codec.encode_key` (any path
becomes a legal memcached key of at most 250 bytes; distinct keys stay distinct). Values above
``CHUNK_SIZE`` (memcached's items are at most 1 MB) are split into chunk keys plus a header with
the count and a checksum; a missing or mismatched chunk is a miss. :class:`KeyValueCache` does
all this once for the back ends (``l2_memcached``, ``l2_redis``, ``l2_redis_cluster``), which only
move bytes.

An invalidation ``["/"]`` delivered to the callbacks means "forget everything": it is sent when a
front end may have missed invalidations (a lost connection, a gap in the memcached sequence).
"""

from __future__ import annotations

import abc
import asyncio
import contextlib
import hashlib
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar

from geofed.federation.l2codec import chunk_key, encode_key

if TYPE_CHECKING:
    from geofed.config import L2Settings

log = logging.getLogger("geofed.l2")

T = TypeVar("T")
BackgroundLoop = Callable[[], Coroutine[Any, Any, None]]
"""A loop a back end runs while started (e.g. its invalidation transport)."""

DEFAULT_NAMESPACE = "geofed:"
DEFAULT_TIMEOUT = 0.2
RETRY_INTERVAL = 1.0
"""How often a server that is down is tried again."""
CHUNK_SIZE = 900 * 1024
"""Values above this are chunked: memcached's default item limit is 1 MB including key and header."""
MAX_VALUE_BYTES = 32 * 1024 * 1024
"""Larger values are not stored at all (best effort: a cache is no place for them)."""
CHUNK_TTL_MARGIN = 2.0
"""Chunks outlive their header a little, so a header never points at chunks that just expired."""
INVALIDATE_ALL: list[str] = ["/"]
"""The invalidation that means "forget everything"."""

_SINGLE, _CHUNKED = b"V", b"C"  # value frames: one value, or the header of a chunked one


def describe(exc: BaseException) -> str:
    """A one-line reason for the state and the log (TimeoutError has an empty message)."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


@dataclass(frozen=True, slots=True)
class L2State:
    """Whether L2 can be used now, why not, and since when (wall clock, like the health states)."""

    available: bool
    last_error: str | None
    last_change: float | None


class SharedCache(abc.ABC):
    """L2: bytes values with a TTL, shared by every front end, plus an invalidation broadcast."""

    name: str  # "memcached", "redis" or "redis-cluster"

    @abc.abstractmethod
    async def start(self) -> None:
        """Connect; never raises for an unreachable server (the state becomes down)."""

    @abc.abstractmethod
    async def aclose(self) -> None:
        """Stop the background tasks and close the connections."""

    @abc.abstractmethod
    async def get(self, key: str) -> bytes | None:
        """The value, or None on a miss OR when L2 is unavailable (never raises)."""

    @abc.abstractmethod
    async def set(self, key: str, value: bytes, ttl: float) -> None:
        """Store ``value`` for ``ttl`` seconds (``ttl <= 0`` deletes); best effort, never raises."""

    @abc.abstractmethod
    async def delete(self, keys: Sequence[str]) -> None:
        """Remove ``keys``; best effort, never raises."""

    @abc.abstractmethod
    async def publish_invalidation(self, paths: Sequence[str]) -> None:
        """Tell the other front ends that ``paths`` changed; best effort, never raises."""

    @abc.abstractmethod
    def on_invalidation(self, callback: Callable[[list[str]], None]) -> None:
        """Call ``callback`` with the paths of every invalidation published by another front end.

        A front end's own invalidations are not delivered back to it (they carry its sender id).
        ``["/"]`` means "invalidate everything" (invalidations may have been missed).
        """

    @property
    @abc.abstractmethod
    def state(self) -> L2State:
        """Available or not, with the reason."""


class CallFailed(Exception):
    """An L2 call failed, or was skipped because its server is down (already recorded and logged);
    raised between the layers of this package only, never to callers of SharedCache."""


class KeyValueCache(SharedCache):
    """Key encoding, framing and chunking, bounded calls, the up/down state and the retry loop.

    Subclasses implement the byte moving primitives (``_fetch``, ``_store``, ``_remove``), the
    connection (``_connect``, ``_probe``, ``_close``) and the invalidation transport. Their server
    calls go through :meth:`_bounded`, which applies the timeout and records failures per
    *component* (a memcached server, the Redis server, a Redis Cluster master): an L2 of several
    servers is available only while all of them are; keys on the servers that answer keep working
    meanwhile.
    """

    def __init__(
        self,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        timeout: float = DEFAULT_TIMEOUT,
        retry_interval: float = RETRY_INTERVAL,
        max_value_bytes: int = MAX_VALUE_BYTES,
    ) -> None:
        self.namespace = namespace
        self.timeout = timeout
        self.retry_interval = retry_interval
        self.max_value_bytes = max_value_bytes
        self.sender = uuid.uuid4().hex
        """Identifies this instance's invalidations, so they are not delivered back to it."""
        self._problems: dict[str, str] = {}
        self._running = False
        self._last_change: float | None = None
        self._callbacks: list[Callable[[list[str]], None]] = []
        self._tasks: list[asyncio.Task[None]] = []

    # -- the subclass interface ------------------------------------------------------------------

    @abc.abstractmethod
    def _describe_target(self, component: str) -> str:
        """How the log names ``component`` (with its address)."""

    @abc.abstractmethod
    async def _connect(self) -> None:
        """Create clients and check each server once (bounded; failures recorded, not raised)."""

    @abc.abstractmethod
    async def _probe(self, component: str) -> None:
        """Try a down component again; return normally when it answers (then it counts as up)."""

    @abc.abstractmethod
    async def _close(self) -> None:
        """Close the clients."""

    @abc.abstractmethod
    async def _fetch(self, keys: Sequence[str]) -> dict[str, bytes]:
        """The values of those encoded keys that are present on servers that answer."""

    @abc.abstractmethod
    async def _store(self, items: Sequence[tuple[str, bytes]], ttl: float) -> None:
        """Store every (encoded key, value); raise CallFailed when any could not be stored."""

    @abc.abstractmethod
    async def _remove(self, keys: Sequence[str]) -> None:
        """Delete encoded keys on the servers that answer."""

    def _is_outage(self, exc: Exception) -> bool:
        """Whether ``exc`` means the server is unusable (not, say, a refused oversized value)."""
        return True

    def _went_down(self, component: str) -> None:
        """Called once when ``component`` turns unavailable (e.g. to drop its connections)."""

    def _background(self) -> list[BackgroundLoop]:
        """Extra loops to run while started (the invalidation transport)."""
        return []

    # -- state -------------------------------------------------------------------------------------

    @property
    def state(self) -> L2State:
        if not self._running:
            return L2State(False, "not started", self._last_change)
        reason = "; ".join(f"{c}: {r}" for c, r in sorted(self._problems.items())) or None
        return L2State(not self._problems, reason, self._last_change)

    def is_down(self, component: str) -> bool:
        return component in self._problems

    def _fail(self, component: str, reason: str) -> None:
        """Record ``component`` as down; log only the transition."""
        if component in self._problems:
            self._problems[component] = reason
            return
        self._problems[component] = reason
        self._last_change = time.time()
        log.warning(
            "L2 %s unavailable (%s); retrying every %g s",
            self._describe_target(component),
            reason,
            self.retry_interval,
        )
        self._went_down(component)

    def _recover(self, component: str) -> None:
        if self._problems.pop(component, None) is not None:
            self._last_change = time.time()
            log.info("L2 %s available again", self._describe_target(component))

    async def _bounded(self, component: str, awaitable: Awaitable[T]) -> T:
        """Await one server call within the timeout; a failure marks ``component`` down.

        A component already known to be down is not tried at all, so callers never wait for it.
        """
        if component in self._problems or not self._running:
            if asyncio.iscoroutine(awaitable):
                awaitable.close()
            raise CallFailed(component)
        try:
            async with asyncio.timeout(self.timeout):
                return await awaitable
        except Exception as exc:
            if self._is_outage(exc):
                self._fail(component, describe(exc))
            else:
                log.debug("L2 %s refused a command: %s", self._describe_target(component), describe(exc))
            raise CallFailed(component) from exc

    # -- lifecycle ---------------------------------------------------------------------------------

    async def start(self) -> None:
        if self._running:
            return
        self._running = True
        self._last_change = time.time()
        try:
            await self._connect()
        except Exception:  # _connect records its own failures; this is a safety net
            log.exception("L2 %s: connecting raised", self.name)
        loops = [self._retry_loop, *self._background()]
        self._tasks = [asyncio.create_task(loop(), name=f"l2-{self.name}") for loop in loops]

    async def aclose(self) -> None:
        self._running = False
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        with contextlib.suppress(Exception):
            await self._close()

    async def _retry_loop(self) -> None:
        """Every ``retry_interval``, try each down component again (directly, not via _bounded)."""
        while True:
            await asyncio.sleep(self.retry_interval)
            for component in list(self._problems):
                try:
                    async with asyncio.timeout(self.timeout * 5):
                        await self._probe(component)
                except Exception as exc:
                    if component in self._problems:  # still down: keep the newest reason, quietly
                        self._problems[component] = describe(exc)
                else:
                    self._recover(component)

    # -- values ------------------------------------------------------------------------------------

    async def get(self, key: str) -> bytes | None:
        if not self._running:
            return None
        try:
            encoded = encode_key(self.namespace, key)
            frame = (await self._fetch([encoded])).get(encoded)
            if frame is None or frame[:1] not in (_SINGLE, _CHUNKED):
                return None
            return frame[1:] if frame[:1] == _SINGLE else await self._get_chunked(key, frame[1:])
        except CallFailed:
            return None
        except Exception:
            log.exception("L2 %s: get raised", self.name)
            return None

    async def _get_chunked(self, key: str, header: bytes) -> bytes | None:
        try:
            info = json.loads(header)
            count, length, digest = int(info["n"]), int(info["len"]), str(info["sha256"])
        except (ValueError, KeyError, TypeError):
            return None
        if not 0 < count <= self.max_value_bytes // CHUNK_SIZE + 1:
            return None
        keys = [chunk_key(self.namespace, key, i) for i in range(count)]
        found = await self._fetch(keys)
        parts = [found.get(k) for k in keys]
        if any(part is None for part in parts):
            return None
        value = b"".join(part for part in parts if part is not None)
        if len(value) != length or hashlib.sha256(value).hexdigest() != digest:
            return None
        return value

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        if not self._running:
            return
        if ttl <= 0:
            await self.delete([key])
            return
        if len(value) > self.max_value_bytes:
            log.debug("L2: not storing %s (%d bytes)", key, len(value))
            return
        try:
            encoded = encode_key(self.namespace, key)
            if len(value) < CHUNK_SIZE:
                await self._store([(encoded, _SINGLE + value)], ttl)
                return
            chunks = [
                (chunk_key(self.namespace, key, i), value[offset : offset + CHUNK_SIZE])
                for i, offset in enumerate(range(0, len(value), CHUNK_SIZE))
            ]
            # Chunks first, header last: a reader never finds a header before its chunks exist.
            await self._store(chunks, ttl + CHUNK_TTL_MARGIN)
            header = {"n": len(chunks), "len": len(value), "sha256": hashlib.sha256(value).hexdigest()}
            await self._store([(encoded, _CHUNKED + json.dumps(header).encode())], ttl)
        except CallFailed:
            return
        except Exception:
            log.exception("L2 %s: set raised", self.name)

    async def delete(self, keys: Sequence[str]) -> None:
        """Delete the keys (their headers); chunks of a chunked value are left to expire."""
        if not self._running or not keys:
            return
        try:
            await self._remove([encode_key(self.namespace, key) for key in keys])
        except CallFailed:
            return
        except Exception:
            log.exception("L2 %s: delete raised", self.name)

    # -- invalidation ------------------------------------------------------------------------------

    def on_invalidation(self, callback: Callable[[list[str]], None]) -> None:
        self._callbacks.append(callback)

    def _deliver(self, paths: list[str]) -> None:
        """Call every callback; one that raises does not keep the others from hearing."""
        for callback in list(self._callbacks):
            try:
                callback(list(paths))
            except Exception:
                log.exception("L2 invalidation callback raised")


def create_shared_cache(settings: L2Settings) -> SharedCache:
    """The back end ``settings`` describe (not started yet: call ``start()``)."""
    if settings.kind == "memcached":
        from geofed.federation.l2_memcached import MemcachedCache

        return MemcachedCache(
            settings.servers,
            namespace=settings.namespace,
            timeout=settings.timeout,
            poll_interval=settings.poll_interval,
        )
    if settings.kind == "redis-cluster":
        from geofed.federation.l2_redis_cluster import RedisClusterCache

        return RedisClusterCache(
            settings.servers, url=settings.url, namespace=settings.namespace, timeout=settings.timeout
        )
    from geofed.federation.l2_redis import RedisCache

    assert settings.url is not None  # checked by L2Settings
    return RedisCache(settings.url, namespace=settings.namespace, timeout=settings.timeout)
