"""What front ends share through the second-level cache, and how they keep each other current.

Every process keeps its own L1 (fast, in memory). With ``cache.l2`` configured, an L1 miss asks L2
before the endpoints, a complete answer is written to L2 for the others, and every write through
any front end (PUT, DELETE, MKCOL) removes the affected L2 entries and is broadcast, so the other
front ends drop them from their L1 too. L2 trouble never fails a request: reads miss, writes are
skipped, and the federation keeps serving from L1 and the endpoints.

Signed URLs are never shared: each front end signs (and prepares redirects) itself.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Callable, Coroutine, Iterable, Sequence
from typing import Any

from geofed.config import L2Settings
from geofed.endpoints.base import Entry
from geofed.federation import l2codec
from geofed.federation.l2 import SharedCache
from geofed.federation.locator import LocateResult
from geofed.federation.paths import parent

log = logging.getLogger("geofed.l2")

_MAX_PENDING_WRITES = 1000


def _ancestors(path: str) -> list[str]:
    out = [path]
    while path != "/":
        path = parent(path)
        out.append(path)
    return out


class SharedLayer:
    """The federation's use of one SharedCache: keys, encoding, background writes, invalidation."""

    def __init__(self, cache: SharedCache, settings: L2Settings) -> None:
        self.cache = cache
        # How long a write waits after broadcasting, so that when geofed answers a write every
        # other front end has dropped what it made stale: one poll for memcached; Redis pushes.
        self.propagation_delay = settings.poll_interval * 1.5 if settings.kind == "memcached" else 0.005
        self.sender = uuid.uuid4().hex[:12]
        self._pending: set[asyncio.Task[None]] = set()

    # -- background writes ---------------------------------------------------------------------

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run an L2 write without making the request wait; drop it when too many are queued."""
        if len(self._pending) >= _MAX_PENDING_WRITES:
            coro.close()
            return
        task = asyncio.create_task(coro)
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def aclose(self) -> None:
        if self._pending:
            await asyncio.wait(self._pending, timeout=1.0)
        await self.cache.aclose()

    # -- locate answers ------------------------------------------------------------------------

    async def get_locate(self, path: str) -> LocateResult | None:
        data = await self.cache.get("loc:" + path)
        return None if data is None else l2codec.decode_locate(data, path)

    def store_locate(self, result: LocateResult, ttl: float) -> None:
        self._spawn(self.cache.set("loc:" + result.path, l2codec.encode_locate(result), ttl))

    # -- listings ------------------------------------------------------------------------------

    async def get_listing(self, path: str) -> tuple[Entry, ...] | None:
        data = await self.cache.get("list:" + path)
        if data is None:
            return None
        entries = l2codec.decode_listing(data)
        return None if entries is None else tuple(entries)

    def store_listing(self, path: str, entries: Sequence[Entry], ttl: float) -> None:
        self._spawn(self.cache.set("list:" + path, l2codec.encode_listing(entries), ttl))

    # -- health --------------------------------------------------------------------------------

    async def get_health(self, name: str) -> dict[str, Any] | None:
        data = await self.cache.get("health:" + name)
        return None if data is None else l2codec.decode_health(data)

    def store_health(self, name: str, state: dict[str, Any], ttl: float) -> None:
        self._spawn(self.cache.set("health:" + name, l2codec.encode_health(state), ttl))

    # -- invalidation --------------------------------------------------------------------------

    async def invalidate(self, paths: Iterable[str], *, settle: bool = True) -> None:
        """Drop the L2 entries a write changed and tell the other front ends; with ``settle``,
        return only once they have had the time to act on it."""
        keys: list[str] = []
        changed = list(paths)
        for path in changed:
            for ancestor in _ancestors(path):
                keys += ["loc:" + ancestor, "list:" + ancestor]
        await self.cache.delete(keys)
        await self.cache.publish_invalidation(changed)
        if settle and self.cache.state.available:
            await asyncio.sleep(self.propagation_delay)

    def invalidate_later(self, paths: Iterable[str]) -> None:
        """The same, in the background (for callers that cannot wait)."""
        self._spawn(self.invalidate(list(paths), settle=False))

    def on_invalidation(self, callback: Callable[[list[str]], None]) -> None:
        self.cache.on_invalidation(callback)
