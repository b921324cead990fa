"""The listing of a federated collection: the union of every listable endpoint's listing.

Each endpoint's listing is read concurrently into one bounded queue, and entries are handed on as
they arrive, de-duplicated by name (the first endpoint to name an entry wins), so a client starts
receiving a large directory at once and geofed never holds the whole listing as a response. The
mount points of prefix translations are listed first as collections. A complete, error-free
listing of at most ``max_listing_entries`` entries is cached.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from geofed.endpoints.base import Endpoint, Entry, StatResult
from geofed.errors import EndpointError, PathNotFound
from geofed.federation.cache import TTLCache
from geofed.federation.namespace import Namespace, Target
from geofed.health import HealthMonitor

if TYPE_CHECKING:
    from geofed.federation.shared import SharedLayer

log = logging.getLogger("geofed.listing")

_DONE = object()
_QUEUE_SIZE = 1024
_MOUNT_STAT = StatResult(is_dir=True)


@dataclass(slots=True)
class ListingOutcome:
    """Filled in while a listing streams: which endpoints failed, and whether it was complete."""

    errors: dict[str, str] = field(default_factory=dict)
    found_on: list[str] = field(default_factory=list)


class ListingMerger:
    def __init__(
        self,
        endpoints: Mapping[str, Endpoint],
        namespace: Namespace,
        health: HealthMonitor,
        cache: TTLCache[tuple[Entry, ...]],
        first_answer_timeout: float,
        ttl: float,
        max_cached_entries: int,
    ) -> None:
        self._endpoints = endpoints
        self._namespace = namespace
        self._health = health
        self._cache = cache
        self._first_timeout = first_answer_timeout
        self._ttl = ttl
        self._max_cached = max_cached_entries
        self._listable = [n for n, e in endpoints.items() if e.settings.listable]
        self.shared: SharedLayer | None = None

    async def entries(self, path: str, outcome: ListingOutcome) -> AsyncIterator[Entry]:
        cached = self._cache.get(path)
        if cached is None and self.shared is not None:
            cached = await self.shared.get_listing(path)
            if cached is not None:
                self._cache.put(path, cached, self._ttl)
        if cached is not None:
            for entry in cached:
                yield entry
            return
        seen: set[str] = set()
        keep: list[Entry] | None = [] if self._max_cached > 0 else None
        for name in sorted(self._namespace.mount_children(path)):
            seen.add(name)
            entry = Entry(name, _MOUNT_STAT)
            if keep is not None:
                keep.append(entry)
            yield entry
        usable = [n for n in self._listable if self._health.is_usable(n)]
        targets = self._namespace.targets(path, usable)
        queue: asyncio.Queue[object] = asyncio.Queue(_QUEUE_SIZE)
        tasks = [asyncio.create_task(self._pump(t, queue, outcome)) for t in targets]
        remaining = len(tasks)
        try:
            while remaining:
                item = await queue.get()
                if item is _DONE:
                    remaining -= 1
                    continue
                assert isinstance(item, Entry)
                if item.name in seen:
                    continue
                seen.add(item.name)
                if keep is not None:
                    keep.append(item)
                    if len(keep) > self._max_cached:
                        keep = None
                yield item
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if keep is not None and not outcome.errors:
            self._cache.put(path, tuple(keep), self._ttl)
            if self.shared is not None:
                self.shared.store_listing(path, keep, self._ttl)

    async def _pump(self, target: Target, queue: asyncio.Queue[object], outcome: ListingOutcome) -> None:
        endpoint = self._endpoints[target.endpoint]
        timeout = max(self._first_timeout, endpoint.settings.timeout)
        iterator = endpoint.list(target.path).__aiter__()
        started = time.monotonic()
        first = True
        cancelled = False
        try:
            while True:
                try:
                    entry = await asyncio.wait_for(
                        iterator.__anext__(), self._first_timeout if first else timeout
                    )
                except StopAsyncIteration:
                    if first:
                        outcome.found_on.append(target.endpoint)
                    break
                if first:
                    outcome.found_on.append(target.endpoint)
                    first = False
                await queue.put(entry)
        except PathNotFound:
            pass
        except asyncio.CancelledError:
            cancelled = True
            raise
        except TimeoutError:
            waited = time.monotonic() - started
            outcome.errors[target.endpoint] = f"listing stalled after {waited:.1f} s"
        except EndpointError as exc:
            outcome.errors[target.endpoint] = exc.reason
        except Exception as exc:
            log.exception("listing on %s raised", target.endpoint)
            outcome.errors[target.endpoint] = f"internal error: {type(exc).__name__}"
        finally:
            if not cancelled:
                await queue.put(_DONE)
            aclose = getattr(iterator, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
