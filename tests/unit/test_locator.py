"""The fan-out logic of the locator, with in-process endpoints whose answers and delays are scripted.

Nothing here crosses a wire: these endpoints are plain objects implementing the Endpoint interface,
so the timing of answers is exact and the tests are fast. The same behaviour is shown against real
servers behind delay proxies in the integration tests.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator

from geofed.config import CacheSettings, EndpointSettings, HealthSettings, Location
from geofed.endpoints.base import Endpoint, Entry, StatResult
from geofed.errors import EndpointUnavailable
from geofed.federation.cache import TTLCache
from geofed.federation.locator import LocateResult, Locator, Want
from geofed.federation.namespace import Namespace
from geofed.geo import ClientPlacement
from geofed.health import HealthMonitor

GENEVA = Location(lat=46.2, lon=6.1)
VANCOUVER = Location(lat=49.3, lon=-123.1)
VICTORIA = Location(lat=48.4, lon=-123.4)


class ScriptedEndpoint(Endpoint):
    """Answers stat after ``delay`` seconds with a file, nothing, or an outage."""

    def __init__(self, name: str, delay: float, has: set[str], fail: bool = False) -> None:
        super().__init__(EndpointSettings(name=name, kind="webdav", url=f"http://{name}.invalid/"))
        self.delay, self.has, self.fail = delay, has, fail
        self.calls = 0

    async def stat(self, path: str) -> StatResult | None:
        self.calls += 1
        await asyncio.sleep(self.delay)
        if self.fail:
            raise EndpointUnavailable(self.name, "HTTP 500")
        return StatResult(is_dir=False, size=1) if path in self.has else None

    async def list(self, path: str) -> AsyncIterator[Entry]:
        for _ in ():
            yield _

    def sign_url(self, method: str, path: str, lifetime: float) -> str:
        return f"http://{self.name}.invalid{path}"

    async def delete(self, path: str) -> None:
        return None

    async def mkcol(self, path: str) -> bool:
        return True

    async def probe(self) -> None:
        return None


def make_locator(endpoints: list[ScriptedEndpoint], timeout: float = 1.0, fuzz: float = 0) -> Locator:
    by_name = {e.name: e for e in endpoints}
    locations = {"cern": GENEVA, "triumf": VANCOUVER, "uvic": VICTORIA}
    cache: TTLCache[LocateResult] = TTLCache(100)
    listings: TTLCache[tuple[Entry, ...]] = TTLCache(100)
    return Locator(
        by_name,
        Namespace(e.settings for e in endpoints),
        HealthMonitor(by_name, HealthSettings()),
        cache,
        listings,
        CacheSettings(ttl=60, negative_ttl=5),
        {n: locations.get(n) for n in by_name},
        timeout,
        fuzz,
    )


async def timed(coro: asyncio.Future[LocateResult] | object) -> tuple[LocateResult, float]:
    started = time.monotonic()
    result = await coro  # type: ignore[misc]
    return result, time.monotonic() - started


async def test_closest_mode_does_not_wait_for_far_endpoints() -> None:
    near = ScriptedEndpoint("uvic", 0.01, {"/f"})
    far = ScriptedEndpoint("cern", 0.5, {"/f"})
    locator = make_locator([near, far])
    result, elapsed = await timed(locator.locate("/f", Want.CLOSEST, ClientPlacement(VICTORIA)))
    assert [r.endpoint for r in result.replicas] == ["uvic"]
    assert elapsed < 0.2
    await locator.aclose()


async def test_closest_mode_waits_for_a_closer_slow_endpoint() -> None:
    near_slow = ScriptedEndpoint("uvic", 0.3, {"/f"})
    far_fast = ScriptedEndpoint("cern", 0.01, {"/f"})
    locator = make_locator([near_slow, far_fast])
    result, elapsed = await timed(locator.locate("/f", Want.CLOSEST, ClientPlacement(VICTORIA)))
    assert {r.endpoint for r in result.replicas} == {"uvic", "cern"}
    assert 0.25 < elapsed < 0.6


async def test_fuzz_radius_makes_near_equal_endpoints_wait_for_each_other() -> None:
    uvic = ScriptedEndpoint("uvic", 0.01, {"/f"})
    triumf = ScriptedEndpoint("triumf", 0.2, {"/f"})
    locator = make_locator([uvic, triumf], fuzz=200)
    result, elapsed = await timed(locator.locate("/f", Want.CLOSEST, ClientPlacement(VICTORIA)))
    assert {r.endpoint for r in result.replicas} == {"uvic", "triumf"}
    assert elapsed >= 0.15


async def test_first_mode_answers_on_first_positive() -> None:
    fast = ScriptedEndpoint("cern", 0.01, {"/f"})
    slow = ScriptedEndpoint("uvic", 0.5, {"/f"})
    locator = make_locator([fast, slow])
    result, elapsed = await timed(locator.locate("/f", Want.FIRST))
    assert [r.endpoint for r in result.replicas] == ["cern"]
    assert elapsed < 0.2
    await locator.aclose()


async def test_background_fanout_completes_and_caches_full_answer() -> None:
    fast = ScriptedEndpoint("cern", 0.01, {"/f"})
    slow = ScriptedEndpoint("uvic", 0.1, {"/f"})
    locator = make_locator([fast, slow])
    await locator.locate("/f", Want.FIRST)
    await asyncio.sleep(0.2)
    cached = locator.cached("/f")
    assert cached is not None and cached.complete
    assert {r.endpoint for r in cached.replicas} == {"cern", "uvic"}
    again = await locator.locate("/f", Want.ALL)
    assert again is cached and again.cached
    assert (fast.calls, slow.calls) == (1, 1)


async def test_concurrent_requests_share_one_fanout() -> None:
    endpoint = ScriptedEndpoint("cern", 0.05, {"/f"})
    locator = make_locator([endpoint])
    results = await asyncio.gather(*(locator.locate("/f", Want.FIRST) for _ in range(20)))
    assert all(r.replicas for r in results)
    assert endpoint.calls == 1


async def test_timeout_is_unknown_not_absent() -> None:
    hung = ScriptedEndpoint("cern", 5, {"/f"})
    empty = ScriptedEndpoint("uvic", 0.01, set())
    locator = make_locator([hung, empty], timeout=0.2)
    result, elapsed = await timed(locator.locate("/f", Want.CLOSEST, ClientPlacement(VICTORIA)))
    assert result.replicas == ()
    assert result.unknown == (("cern", "no answer within 0.2 s"),)
    assert 0.15 < elapsed < 0.5
    await asyncio.sleep(0.05)
    assert locator.cached("/f") is None  # an unknown answer is never cached as "absent"


async def test_endpoint_error_reported_and_absence_cached_negatively() -> None:
    broken = ScriptedEndpoint("cern", 0.01, set(), fail=True)
    locator = make_locator([broken])
    result = await locator.locate("/f", Want.FIRST)
    assert result.unknown == (("cern", "HTTP 500"),)
    healthy = ScriptedEndpoint("uvic", 0.01, set())
    locator2 = make_locator([healthy])
    absent = await locator2.locate("/g", Want.FIRST)
    assert absent.replicas == () and absent.unknown == () and absent.complete
    await asyncio.sleep(0.01)
    cached = locator2.cached("/g")
    assert cached is not None and cached.cached and cached.replicas == () and cached.complete


async def test_invalidation_for_a_write_prevents_cached_404() -> None:
    endpoint = ScriptedEndpoint("cern", 0.01, set())
    locator = make_locator([endpoint])
    await locator.locate("/new", Want.FIRST)
    await asyncio.sleep(0.01)
    assert locator.cached("/new") is not None
    locator.invalidate("/new", writing=True)
    assert locator.cached("/new") is None
    await locator.locate("/new", Want.FIRST)
    await asyncio.sleep(0.01)
    assert locator.cached("/new") is None  # not cached while a write is pending
    endpoint.has.add("/new")
    found = await locator.locate("/new", Want.FIRST)
    assert found.replicas


async def test_down_endpoints_are_not_asked() -> None:
    down = ScriptedEndpoint("cern", 0.01, {"/f"})
    up = ScriptedEndpoint("uvic", 0.01, {"/f"})
    locator = make_locator([down, up])
    locator._health.states["cern"].up = False  # as the monitor would after a failed probe
    locator._health._refresh("cern")
    result = await locator.locate("/f", Want.ALL)
    assert [r.endpoint for r in result.replicas] == ["uvic"]
    assert down.calls == 0


async def test_answer_recorded_before_the_waiter_resumes_is_not_lost() -> None:
    """The last answer may arrive between a waiter deciding to wait and its wait starting."""
    from geofed.federation.locator import _Fanout
    from geofed.federation.namespace import Target

    fanout = _Fanout("/x", [Target("a", "/x"), Target("b", "/x")], time.monotonic() + 1.0)

    async def waiter() -> float:
        started = time.monotonic()
        while fanout.pending:
            await asyncio.wait_for(fanout.changed(), fanout.deadline - time.monotonic())
        return time.monotonic() - started

    task = asyncio.create_task(waiter())
    await asyncio.sleep(0.01)
    fanout.record("a")
    for _ in range(3):  # the waiter has called wait_for() but its inner task has not run yet
        await asyncio.sleep(0)
    fanout.record("b")
    assert await task < 0.5


async def test_down_endpoint_makes_the_answer_unknown_not_absent() -> None:
    down = ScriptedEndpoint("cern", 0.01, {"/f"})
    up = ScriptedEndpoint("uvic", 0.01, set())
    locator = make_locator([down, up])
    locator._health.states["cern"].up = False
    locator._health.states["cern"].last_error = "connection refused"
    locator._health._refresh("cern")
    result = await locator.locate("/f", Want.ALL)
    assert result.replicas == ()
    assert result.unknown == (("cern", "endpoint down: connection refused"),)
    await asyncio.sleep(0.01)
    assert locator.cached("/f") is None


async def test_invalidation_reaches_every_ancestor() -> None:
    endpoint = ScriptedEndpoint("cern", 0.0, set())
    locator = make_locator([endpoint])
    for path in ("/a", "/a/b", "/a/b/c"):
        await locator.locate(path, Want.FIRST)
    await asyncio.sleep(0.01)
    assert all(locator.cached(p) is not None for p in ("/a", "/a/b", "/a/b/c"))
    locator.invalidate("/a/b/c/new.dat", writing=True)
    assert all(locator.cached(p) is None for p in ("/a", "/a/b", "/a/b/c"))


async def test_fresh_locate_ignores_the_cache() -> None:
    endpoint = ScriptedEndpoint("cern", 0.0, set())
    locator = make_locator([endpoint])
    await locator.locate("/f", Want.ALL)
    await asyncio.sleep(0.01)
    endpoint.has.add("/f")
    assert (await locator.locate("/f", Want.ALL)).replicas == ()
    assert (await locator.locate("/f", Want.ALL, use_cache=False)).replicas
