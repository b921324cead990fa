"""The L2 back ends against real memcached and real Redis (started by tests/infra/kv.py).

The session servers are shared, so every cache here gets its own namespace. Tests that kill a
server start their own, and stop it by PID.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path

import emcache
import pytest

from geofed.config import L2Settings
from geofed.endpoints.base import Entry, StatResult
from geofed.federation import l2codec
from geofed.federation.l2 import CHUNK_SIZE, KeyValueCache, SharedCache, create_shared_cache
from geofed.federation.l2_memcached import ENTRY_GRACE, MAX_BEHIND, MemcachedCache, parse_server
from geofed.federation.l2_redis import RedisCache
from geofed.federation.l2codec import chunk_key
from tests.infra.kv import restart, start_memcached, start_redis
from tests.infra.servers import RunningServer, free_port

pytestmark = pytest.mark.integration

KINDS = ("memcached", "redis")
Factory = Callable[..., KeyValueCache]


def _namespace() -> str:
    return f"t{uuid.uuid4().hex[:10]}:"


@pytest.fixture
async def make() -> AsyncIterator[Callable[[KeyValueCache], KeyValueCache]]:
    """Registers caches so that each is closed after the test, even when it fails."""
    made: list[KeyValueCache] = []

    def register(cache: KeyValueCache) -> KeyValueCache:
        made.append(cache)
        return cache

    yield register
    for cache in made:
        await cache.aclose()


@pytest.fixture(params=KINDS)
def factory(
    request: pytest.FixtureRequest, make: Callable[[KeyValueCache], KeyValueCache]
) -> Iterator[Factory]:
    """Builds started-later caches of one kind on the session servers, all in one namespace."""
    namespace = _namespace()
    if request.param == "memcached":
        pair: tuple[RunningServer, RunningServer] = request.getfixturevalue("memcached_pair")
        servers = [pair[0].url, pair[1].url]
        yield lambda **kw: make(MemcachedCache(servers, namespace=namespace, **kw))
    else:
        redis: RunningServer = request.getfixturevalue("redis_server")
        yield lambda **kw: make(RedisCache(redis.url, namespace=namespace, **kw))


async def _started(cache: KeyValueCache) -> KeyValueCache:
    await cache.start()
    assert cache.state.available, cache.state
    return cache


async def _wait_for(predicate: Callable[[], bool], limit: float, step: float = 0.01) -> float:
    """Seconds until ``predicate()`` held; fails after ``limit``."""
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > limit:
            raise AssertionError(f"not within {limit} s")
        await asyncio.sleep(step)
    return time.monotonic() - start


def _records(caplog: pytest.LogCaptureFixture, text: str) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "geofed.l2" and text in r.getMessage()]


# -- values ----------------------------------------------------------------------------------------


async def test_get_set_delete(factory: Factory) -> None:
    cache = await _started(factory())
    assert await cache.get("loc:/a") is None
    await cache.set("loc:/a", b"one", 30)
    await cache.set("loc:/b", b"", 30)
    assert await cache.get("loc:/a") == b"one"
    assert await cache.get("loc:/b") == b""  # an empty value is not a miss
    await cache.set("loc:/a", b"two", 30)
    assert await cache.get("loc:/a") == b"two"
    await cache.delete(["loc:/a", "loc:/b", "loc:/never-set"])
    assert await cache.get("loc:/a") is None
    assert await cache.get("loc:/b") is None
    await cache.set("loc:/c", b"x", 30)
    await cache.set("loc:/c", b"x", 0)  # ttl <= 0 deletes, like the L1 cache
    assert await cache.get("loc:/c") is None


async def test_values_are_shared_between_instances(factory: Factory) -> None:
    writer, reader = await _started(factory()), await _started(factory())
    await writer.set("list:/shared", b"\x00\xffbinary", 30)
    assert await reader.get("list:/shared") == b"\x00\xffbinary"


async def test_ttl_expiry(factory: Factory) -> None:
    cache = await _started(factory())
    await cache.set("short", b"v", 1.0)  # memcached counts whole seconds
    await cache.set("long", b"v", 60)
    assert await cache.get("short") == b"v"
    deadline = time.monotonic() + 3.0
    while await cache.get("short") is not None:
        assert time.monotonic() < deadline, "value outlived its TTL"
        await asyncio.sleep(0.1)
    assert await cache.get("long") == b"v"


ODD_KEYS = [
    "loc:/with space/and\ttab",
    "loc:/new\nline\r\x00nul\x7f",
    "loc:/ünïcödé/日本語/🙂",
    "loc:/percent%20literal",
    "loc:/%h" + "0" * 64,
    "loc:/%c1",
    "loc:/a:0",  # looks like a chunk name of "loc:/a"
    "loc:/surrogate-\udcff",
    "loc:/" + "x" * 1000,
    "loc:/" + "x" * 999 + "y",  # same long head, different end: still distinct
    "loc:/" + "é" * 300,
]


async def test_long_and_odd_keys_are_distinct(factory: Factory) -> None:
    cache = await _started(factory())
    for i, key in enumerate(ODD_KEYS):
        await cache.set(key, f"value {i}".encode(), 30)
    for i, key in enumerate(ODD_KEYS):
        assert await cache.get(key) == f"value {i}".encode(), key
    await cache.delete(ODD_KEYS[:2])
    assert await cache.get(ODD_KEYS[0]) is None
    assert await cache.get(ODD_KEYS[2]) == b"value 2"


def _big_listing(count: int) -> list[Entry]:
    # Random names and ETags: zlib cannot squeeze this below one chunk.
    return [
        Entry(
            f"file-{uuid.uuid4().hex}.dat",
            StatResult(False, i, 1.7e9 + i, f'"{uuid.uuid4().hex}"', "application/octet-stream"),
        )
        for i in range(count)
    ]


async def test_large_listing_is_chunked_and_round_trips(factory: Factory) -> None:
    writer, reader = await _started(factory()), await _started(factory())
    entries = _big_listing(40_000)
    value = l2codec.encode_listing(entries)
    assert len(value) > 2 * CHUNK_SIZE
    await writer.set("list:/big", value, 30)
    data = await reader.get("list:/big")
    assert data == value
    assert l2codec.decode_listing(data) == entries

    # A missing chunk, or a chunk from another value, is a miss (never a wrong listing).
    await writer._remove([chunk_key(writer.namespace, "list:/big", 1)])
    assert await reader.get("list:/big") is None
    await writer.set("list:/big", value, 30)
    await writer._store([(chunk_key(writer.namespace, "list:/big", 0), b"x" * CHUNK_SIZE)], 30)
    assert await reader.get("list:/big") is None


# -- invalidation ----------------------------------------------------------------------------------


async def test_invalidation_reaches_other_instances_quickly(factory: Factory) -> None:
    sender, receiver, bystander = [await _started(factory()) for _ in range(3)]
    own: list[list[str]] = []
    heard: list[list[str]] = []
    also: list[list[str]] = []
    sender.on_invalidation(own.append)
    receiver.on_invalidation(heard.append)
    bystander.on_invalidation(also.append)

    start = time.monotonic()
    await sender.publish_invalidation(["/fed/a b", "/fed/ü"])
    await _wait_for(lambda: bool(heard) and bool(also), 0.5)
    assert time.monotonic() - start < 0.5
    assert heard == [["/fed/a b", "/fed/ü"]] == also
    await sender.publish_invalidation(["/fed/2"])
    await receiver.publish_invalidation(["/fed/3"])
    await _wait_for(lambda: len(heard) == 2 and len(also) == 3, 0.5)
    assert heard[1] == ["/fed/2"] and also[1:] == [["/fed/2"], ["/fed/3"]]
    await asyncio.sleep(0.3)
    assert own == [["/fed/3"]]  # its own are not delivered back


async def test_memcached_lost_entry_or_lag_means_invalidate_everything(
    memcached_pair: tuple[RunningServer, RunningServer], make: Callable[[KeyValueCache], KeyValueCache]
) -> None:
    namespace = _namespace()
    servers = [memcached_pair[0].url, memcached_pair[1].url]
    receiver = await _started(make(MemcachedCache(servers, namespace=namespace)))
    assert isinstance(receiver, MemcachedCache)
    heard: list[list[str]] = []
    receiver.on_invalidation(heard.append)
    raw = await emcache.create_client([emcache.MemcachedHostAddress(*parse_server(servers[0]))])
    try:
        seq_key = receiver._seq_key
        await raw.increment(seq_key, 1)  # a publisher that died between incr and set
        await asyncio.sleep(ENTRY_GRACE / 2)
        assert heard == []  # still within the grace period
        await _wait_for(lambda: heard == [["/"]], ENTRY_GRACE + 0.5)
        await raw.increment(seq_key, MAX_BEHIND + 1)  # fell too far behind
        await _wait_for(lambda: heard == [["/"], ["/"]], 0.5)
    finally:
        await raw.close()


# -- consistent hashing and failures ---------------------------------------------------------------


async def test_memcached_keys_spread_over_both_servers(
    memcached_pair: tuple[RunningServer, RunningServer], make: Callable[[KeyValueCache], KeyValueCache]
) -> None:
    namespace = _namespace()
    first, second = (s.url for s in memcached_pair)
    both = await _started(make(MemcachedCache([first, second], namespace=namespace)))
    keys = [f"loc:/spread/{i}" for i in range(200)]
    for key in keys:
        await both.set(key, key.encode(), 30)
    # The same namespace on one server alone sees exactly the keys placed there.
    only_first = await _started(make(MemcachedCache([first], namespace=namespace)))
    only_second = await _started(make(MemcachedCache([second], namespace=namespace)))
    on_first = {k for k in keys if await only_first.get(k) is not None}
    on_second = {k for k in keys if await only_second.get(k) is not None}
    assert on_first | on_second == set(keys) and not on_first & on_second
    assert 60 < len(on_first) < 140, len(on_first)
    # Order of the servers does not change placement.
    reordered = await _started(make(MemcachedCache([second, first], namespace=namespace)))
    for key in keys[:20]:
        assert await reordered.get(key) == key.encode()


async def test_memcached_server_killed_and_restarted(
    make: Callable[[KeyValueCache], KeyValueCache], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="geofed.l2")
    first, second = start_memcached(), start_memcached()
    try:
        cache = make(MemcachedCache([first.url, second.url], namespace=_namespace()))
        listener = make(MemcachedCache([first.url, second.url], namespace=cache.namespace))
        await _started(cache)
        await _started(listener)
        assert isinstance(cache, MemcachedCache)
        heard: list[list[str]] = []
        listener.on_invalidation(heard.append)
        keys = [f"loc:/k{i}" for i in range(40)]
        for key in keys:
            await cache.set(key, b"v", 60)
        second.stop()

        assert await cache.get(keys[0]) in (None, b"v")  # may take up to the timeout, once
        for key in keys:
            await cache.get(key)
        assert not cache.state.available
        assert str(second.port) in (cache.state.last_error or "")
        started = time.monotonic()
        results = {key: await cache.get(key) for key in keys}
        assert time.monotonic() - started < 0.1  # the dead server is not waited for
        assert b"v" in results.values() and None in results.values()  # keys on `first` still hit
        await cache.set("loc:/new", b"n", 60)  # no exception, whatever server it maps to
        await asyncio.sleep(2.5)  # a few failed retries: still one log line
        assert len(_records(caplog, f"memcached {second.url} unavailable")) == 1

        second = restart(second)
        await _wait_for(lambda: cache.state.available, 3.0, step=0.05)
        assert len(_records(caplog, f"memcached {second.url} available again")) == 1
        for key in keys:
            await cache.set(key, b"w", 60)
        assert all([await cache.get(key) == b"w" for key in keys])

        # The sequence server restarting loses the sequence: listeners forget everything.
        first.stop()
        await _wait_for(lambda: not listener.state.available, 2.0)
        first = restart(first)
        await _wait_for(lambda: ["/"] in heard, 3.0, step=0.05)
        heard.clear()
        await cache.publish_invalidation(["/after"])
        await _wait_for(lambda: ["/after"] in heard, 3.0)
    finally:
        first.stop()
        second.stop()


async def test_redis_killed_and_restarted(
    tmp_path: Path, make: Callable[[KeyValueCache], KeyValueCache], caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="geofed.l2")
    server = start_redis(tmp_path / "redis")
    try:
        namespace = _namespace()
        cache = await _started(make(RedisCache(server.url, namespace=namespace)))
        listener = await _started(make(RedisCache(server.url, namespace=namespace)))
        heard: list[list[str]] = []
        listener.on_invalidation(heard.append)
        await cache.set("loc:/x", b"v", 60)
        server.stop()

        await _wait_for(lambda: not cache.state.available and not listener.state.available, 2.0)
        assert cache.state.last_change is not None
        started = time.monotonic()
        assert await cache.get("loc:/x") is None
        await cache.set("loc:/y", b"v", 60)
        await cache.delete(["loc:/x"])
        await cache.publish_invalidation(["/lost"])
        assert time.monotonic() - started < 0.05  # no waiting while it is known to be down
        await asyncio.sleep(2.5)
        assert len(_records(caplog, "unavailable")) == 2  # once per instance, not per retry

        server = restart(server, tmp_path / "redis")
        await _wait_for(lambda: cache.state.available and listener.state.available, 3.0, step=0.05)
        assert len(_records(caplog, "available again")) == 2
        await cache.set("loc:/x", b"again", 60)
        assert await listener.get("loc:/x") == b"again"
        assert isinstance(listener, RedisCache)
        await _wait_for(listener.subscribed.is_set, 3.0)
        assert heard == [["/"]]  # messages may have been missed while disconnected
        await cache.publish_invalidation(["/after"])
        await _wait_for(lambda: heard == [["/"], ["/after"]], 0.5)
    finally:
        server.stop()


@pytest.mark.parametrize("kind", KINDS)
async def test_unreachable_at_start_is_down_not_an_error(
    kind: str, make: Callable[[KeyValueCache], KeyValueCache]
) -> None:
    port = free_port()  # nothing listens there
    if kind == "memcached":
        cache = make(MemcachedCache([f"127.0.0.1:{port}"], namespace=_namespace()))
    else:
        cache = make(RedisCache(f"redis://127.0.0.1:{port}/0", namespace=_namespace()))
    started = time.monotonic()
    await cache.start()
    assert not cache.state.available and cache.state.last_error
    assert await cache.get("k") is None
    await cache.set("k", b"v", 10)
    await cache.delete(["k"])
    await cache.publish_invalidation(["/p"])
    assert time.monotonic() - started < 1.5


async def test_created_from_settings(memcached_server: RunningServer, redis_server: RunningServer) -> None:
    caches: list[SharedCache] = [
        create_shared_cache(L2Settings(kind="memcached", servers=(memcached_server.url,), namespace="cfg:")),
        create_shared_cache(L2Settings(kind="redis", url=redis_server.url, namespace="cfg:")),
    ]
    for cache in caches:
        await cache.start()
        try:
            assert cache.state.available
            await cache.set("k", b"v", 5)
            assert await cache.get("k") == b"v"
        finally:
            await cache.aclose()
        assert not cache.state.available
