"""Finding replicas: ask every usable endpoint in parallel, within one global deadline.

One fan-out per path is shared by every request that arrives while it runs. Each waiter decides
for itself when it has heard enough:

* ``FIRST`` (stat, HEAD, PROPFIND): the first positive answer;
* ``CLOSEST`` (a redirect): once every endpoint that could still be closer to this client than the
  best replica found so far (within the fuzz radius) has answered, so a client near a fast endpoint
  never waits for a far one;
* ``ALL`` (DELETE, ``geofed locate``): every endpoint, or the deadline.

The fan-out itself always runs to completion (or the deadline) in the background and caches the
complete answer. An endpoint that did not answer in time is reported as *unknown*, never as "not
found", so callers can answer 503 instead of a false 404.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import time
from collections.abc import Coroutine, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from geofed import metrics
from geofed.config import CacheSettings, Location
from geofed.endpoints.base import Endpoint, Entry, StatResult
from geofed.errors import EndpointError, PathNotFound
from geofed.federation.cache import TTLCache
from geofed.federation.namespace import Namespace, Target
from geofed.federation.paths import parent
from geofed.geo import ClientPlacement, great_circle_km
from geofed.health import HealthMonitor

if TYPE_CHECKING:
    from geofed.federation.shared import SharedLayer

log = logging.getLogger("geofed.locator")


class Want(enum.Enum):
    FIRST = "first"
    CLOSEST = "closest"
    ALL = "all"


@dataclass(frozen=True, slots=True)
class Replica:
    endpoint: str
    path: str
    stat: StatResult


@dataclass(frozen=True, slots=True)
class LocateResult:
    """What is known of a federated path: where it is, and which endpoints could not say."""

    path: str
    replicas: tuple[Replica, ...]
    unknown: tuple[tuple[str, str], ...]
    complete: bool
    elapsed: float
    cached: bool = False
    redirects: dict[str, dict[int, Any]] = field(default_factory=dict, init=False, compare=False, repr=False)
    """Prepared redirects for this answer, per base URL and client placement key (see
    frontend.redirect); they are dropped with the answer when it expires or is invalidated."""

    @property
    def is_dir(self) -> bool:
        return any(r.stat.is_dir for r in self.replicas)

    @property
    def files(self) -> tuple[Replica, ...]:
        return tuple(r for r in self.replicas if not r.stat.is_dir)


class _Fanout:
    """One parallel stat of a path on every target, observable while it runs."""

    def __init__(self, path: str, targets: list[Target], deadline: float) -> None:
        self.path = path
        self.started = time.monotonic()
        self.deadline = deadline
        self.found: dict[str, Replica] = {}
        self.errors: dict[str, str] = {}
        self.pending: dict[str, Target] = {t.endpoint: t for t in targets}
        self.stale = False
        self._wakeup = asyncio.Event()

    def record(self, endpoint: str, *, replica: Replica | None = None, error: str | None = None) -> None:
        self.pending.pop(endpoint, None)
        if replica is not None:
            self.found[endpoint] = replica
        if error is not None:
            self.errors[endpoint] = error
        wakeup, self._wakeup = self._wakeup, asyncio.Event()
        wakeup.set()

    def changed(self) -> Coroutine[Any, Any, bool]:
        """A wait for the next answer, bound to the event *now*: an answer recorded before the
        waiting task first runs still wakes it (an ``async def`` here would lose it)."""
        return self._wakeup.wait()

    def snapshot(self) -> LocateResult:
        unknown = tuple(sorted(self.errors.items()))
        return LocateResult(
            self.path,
            tuple(self.found[name] for name in sorted(self.found)),
            unknown,
            complete=not self.pending and not self.errors,
            elapsed=time.monotonic() - self.started,
        )


class Locator:
    """Locates federated paths on the endpoints, with caching and fan-out sharing."""

    def __init__(
        self,
        endpoints: Mapping[str, Endpoint],
        namespace: Namespace,
        health: HealthMonitor,
        cache: TTLCache[LocateResult],
        listings: TTLCache[tuple[Entry, ...]],
        cache_settings: CacheSettings,
        locations: Mapping[str, Location | None],
        timeout: float,
        fuzz_km: float,
    ) -> None:
        self._endpoints = endpoints
        self._namespace = namespace
        self._health = health
        self._cache = cache
        self._listings = listings
        self._cache_settings = cache_settings
        self._locations = locations
        self._timeout = timeout
        self._fuzz_km = fuzz_km
        self._readable = [name for name, ep in endpoints.items() if ep.settings.readable]
        self._inflight: dict[str, _Fanout] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._writes: dict[str, float] = {}
        self.shared: SharedLayer | None = None
        """The second-level cache, when configured (set by the runtime before serving)."""

    def cached(self, path: str) -> LocateResult | None:
        """The cached answer for ``path``, if any (the hot path of a warm redirect)."""
        return self._cache.get(path)

    async def locate(
        self, path: str, want: Want, client: ClientPlacement | None = None, *, use_cache: bool = True
    ) -> LocateResult:
        """Where ``path`` is; ``use_cache=False`` asks the endpoints afresh (before a DELETE)."""
        if use_cache:
            cached = self._cache.get(path)
            if cached is not None:
                return cached
        fanout = self._inflight.get(path)
        if fanout is None:
            fanout = self._start(path)
        while not self._enough(fanout, want, client):
            remaining = fanout.deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                await asyncio.wait_for(fanout.changed(), remaining)
            except TimeoutError:
                break
        result = fanout.snapshot()
        if fanout.pending and not result.replicas and time.monotonic() >= fanout.deadline:
            unknown = result.unknown + tuple(
                (name, f"no answer within {self._timeout:g} s") for name in sorted(fanout.pending)
            )
            result = LocateResult(path, result.replicas, unknown, False, result.elapsed)
        return result

    def invalidate(self, path: str, *, writing: bool = False) -> None:
        """Forget what is known of ``path`` and its parent's listing (after a write through geofed).

        With ``writing``, negative answers for the path are not cached for a while: the client is
        uploading to the endpoint right now and must not be told 404 from the cache afterwards.
        With a shared cache, its entries go too and the other front ends are told.
        """
        self._forget_written(path, writing)
        if self.shared is not None:
            self.shared.invalidate_later([path])

    async def invalidate_everywhere(self, path: str, *, writing: bool = False) -> None:
        """``invalidate``, and with a shared cache wait until every front end has dropped what
        the write made stale, so that a client's next request sees the write wherever it lands."""
        self._forget_written(path, writing)
        if self.shared is not None:
            await self.shared.invalidate([path])

    def _forget_written(self, path: str, writing: bool) -> None:
        self.forget(path)
        if writing:
            now = time.monotonic()
            if len(self._writes) > 10000:
                self._writes = {p: t for p, t in self._writes.items() if t > now}
            self._writes[path] = now + 600
            self._writes[parent(path)] = now + 600

    def forget(self, path: str) -> None:
        """Drop this process's knowledge of ``path`` and its ancestors (``/`` forgets everything)."""
        if path == "/" and self.shared is not None:
            self._cache.clear()
            self._listings.clear()
        # Ancestors too: a write may have created missing parent collections on the endpoint.
        current = path
        while True:
            self._cache.discard(current)
            self._listings.discard(current)
            fanout = self._inflight.pop(current, None)
            if fanout is not None:
                fanout.stale = True
            if current == "/":
                break
            current = parent(current)

    def write_pending(self, path: str) -> bool:
        until = self._writes.get(path)
        return until is not None and until > time.monotonic()

    def _start(self, path: str) -> _Fanout:
        unusable = self._health.unavailable
        candidates = self._namespace.targets(path, self._readable)
        targets = [t for t in candidates if t.endpoint not in unusable]
        fanout = _Fanout(path, targets, time.monotonic() + self._timeout)
        # An endpoint that is down may hold the path: its answer is unknown, not "absent".
        for target in candidates:
            if target.endpoint in unusable:
                fanout.errors[target.endpoint] = unusable[target.endpoint]
        self._inflight[path] = fanout
        task = asyncio.create_task(self._run(fanout, targets))
        self._background.add(task)
        task.add_done_callback(self._background.discard)
        return fanout

    async def _run(self, fanout: _Fanout, targets: list[Target]) -> None:
        if self.shared is not None and await self._from_shared(fanout):
            return
        await asyncio.gather(*(self._ask(fanout, t) for t in targets))
        if self._inflight.get(fanout.path) is fanout:
            del self._inflight[fanout.path]
        if fanout.stale:
            return
        result = dataclasses.replace(fanout.snapshot(), cached=True)
        ttl: float | None = None
        if result.complete:
            if result.replicas:
                ttl = self._cache_settings.ttl
            elif not self.write_pending(fanout.path):
                ttl = self._cache_settings.negative_ttl
        elif result.replicas:
            ttl = self._cache_settings.negative_ttl
        if ttl is not None:
            self._cache.put(fanout.path, result, ttl)
            if self.shared is not None and result.complete:
                self.shared.store_locate(result, ttl)

    async def _from_shared(self, fanout: _Fanout) -> bool:
        """Answer a fan-out from L2 when another front end already located the path."""
        assert self.shared is not None
        found = await self.shared.get_locate(fanout.path)
        if found is None or fanout.stale:
            return False
        usable = {r.endpoint: r for r in found.replicas if r.endpoint in self._endpoints}
        for name in list(fanout.pending):
            fanout.record(name, replica=usable.get(name))
        for name, replica in usable.items():
            if name not in fanout.found:
                fanout.found[name] = replica
        if self._inflight.get(fanout.path) is fanout:
            del self._inflight[fanout.path]
        result = dataclasses.replace(fanout.snapshot(), cached=True)
        negative = not result.replicas
        if not (negative and self.write_pending(fanout.path)):
            self._cache.put(
                fanout.path,
                result,
                self._cache_settings.negative_ttl if negative else self._cache_settings.ttl,
            )
        return True

    async def _ask(self, fanout: _Fanout, target: Target) -> None:
        endpoint = self._endpoints[target.endpoint]
        try:
            async with asyncio.timeout_at(_loop_deadline(fanout.deadline)):
                stat = await endpoint.stat(target.path)
        except TimeoutError:
            metrics.fanout_timeout(target.endpoint)
            fanout.record(target.endpoint, error=f"no answer within {self._timeout:g} s")
        except PathNotFound:
            metrics.fanout_answer(target.endpoint, "absent")
            fanout.record(target.endpoint)
        except EndpointError as exc:
            metrics.fanout_answer(target.endpoint, "error")
            fanout.record(target.endpoint, error=exc.reason)
        except Exception as exc:  # never let one endpoint's bug break the fan-out
            log.exception("stat on %s raised", target.endpoint)
            metrics.fanout_answer(target.endpoint, "error")
            fanout.record(target.endpoint, error=f"internal error: {type(exc).__name__}")
        else:
            replica = None if stat is None else Replica(target.endpoint, target.path, stat)
            metrics.fanout_answer(target.endpoint, "absent" if replica is None else "found")
            fanout.record(target.endpoint, replica=replica)

    def _enough(self, fanout: _Fanout, want: Want, client: ClientPlacement | None) -> bool:
        if not fanout.pending:
            return True
        if want is Want.ALL or not fanout.found:
            return False
        if want is Want.FIRST or client is None:
            return True
        if client.preferred_endpoint is not None:
            if client.preferred_endpoint in fanout.found:
                return True
            if client.preferred_endpoint in fanout.pending:
                return False
        if client.location is None:
            return True
        best = min(
            (
                great_circle_km(client.location, loc)
                for name in fanout.found
                if (loc := self._locations.get(name)) is not None
            ),
            default=None,
        )
        if best is None:
            return False
        limit = best + self._fuzz_km
        for name in fanout.pending:
            loc = self._locations.get(name)
            if loc is not None and great_circle_km(client.location, loc) <= limit:
                return False
        return True

    async def aclose(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)


def _loop_deadline(monotonic_deadline: float) -> float:
    """Convert a time.monotonic() deadline to the running loop's clock."""
    loop = asyncio.get_running_loop()
    return loop.time() + (monotonic_deadline - time.monotonic())
