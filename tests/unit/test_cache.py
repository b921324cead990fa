from __future__ import annotations

from geofed.federation.cache import TTLCache


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_entries_expire_after_their_ttl() -> None:
    clock = Clock()
    cache: TTLCache[str] = TTLCache(10, clock)
    cache.put("a", "pos", 300)
    cache.put("b", "neg", 10)
    clock.now += 11
    assert cache.get("a") == "pos"
    assert cache.get("b") is None
    clock.now += 300
    assert cache.get("a") is None
    assert len(cache) == 0


def test_lru_eviction_keeps_recently_used() -> None:
    cache: TTLCache[int] = TTLCache(2, Clock())
    cache.put("a", 1, 60)
    cache.put("b", 2, 60)
    assert cache.get("a") == 1
    cache.put("c", 3, 60)
    assert cache.get("b") is None
    assert cache.get("a") == 1 and cache.get("c") == 3


def test_discard_and_hit_counters() -> None:
    cache: TTLCache[int] = TTLCache(5, Clock())
    cache.put("a", 1, 60)
    cache.discard("a")
    cache.discard("missing")
    assert cache.get("a") is None
    cache.put("a", 2, 60)
    assert cache.get("a") == 2
    assert (cache.hits, cache.misses) == (1, 1)


def test_zero_ttl_stores_nothing() -> None:
    cache: TTLCache[int] = TTLCache(5, Clock())
    cache.put("a", 1, 60)
    cache.put("a", 2, 0)
    assert cache.get("a") is None
