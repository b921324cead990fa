"""The L2 back end on a real Redis Cluster (three masters started by tests/infra/kv.py).

* the back-end contract, by running test_l2_backends.py's checks against the cluster: values,
  TTLs, odd keys, chunked listings, versioned values, invalidations between instances;
* what is particular to a cluster: keys spread over the masters by hash slot, invalidations
  published on any node reaching a subscriber on any other, the subscription moving to another
  node when its node dies, a master stopped and restarted midway (its keys miss, the others'
  keep working or -- when the cluster declares itself failed -- L1 takes over; recovery without
  help), a failover to a replica, and deletions refused during an outage applied on recovery;
* three geofed front ends sharing the cluster act as one federation, and survive a node's loss.

The session cluster is shared, so every cache gets its own namespace; tests that stop nodes start
a cluster of their own.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError
from redis.asyncio import Redis
from redis.crc import key_slot

from geofed.config import L2Settings, settings_from_mapping
from geofed.federation import l2codec
from geofed.federation.l2 import CHUNK_SIZE, KeyValueCache, create_shared_cache
from geofed.federation.l2_redis_cluster import RedisClusterCache
from geofed.federation.l2codec import chunk_key, encode_key
from geofed.federation.locator import LocateResult
from tests.infra.geofed_server import GeofedServer
from tests.infra.kv import RedisClusterServers, start_redis_cluster
from tests.infra.policies import OPEN_POLICY
from tests.infra.servers import free_port
from tests.integration import test_l2_backends as contract
from tests.integration import test_shared_cache as shared
from tests.integration.test_l2_backends import _namespace, _records, _wait_for

pytestmark = pytest.mark.integration

Factory = Callable[..., KeyValueCache]


@pytest.fixture
async def make() -> AsyncIterator[Callable[[KeyValueCache], KeyValueCache]]:
    """Registers caches so that each is closed after the test, even when it fails."""
    made: list[KeyValueCache] = []

    def register(cache: KeyValueCache) -> KeyValueCache:
        made.append(cache)
        return cache

    yield register
    for cache in made:
        try:
            async with asyncio.timeout(10):
                await cache.aclose()
        except TimeoutError:
            stacks = io.StringIO()
            for task in asyncio.all_tasks():
                task.print_stack(limit=12, file=stacks)
            raise AssertionError(f"aclose() did not return:\n{stacks.getvalue()}") from None


@pytest.fixture
def factory(
    redis_cluster: RedisClusterServers, make: Callable[[KeyValueCache], KeyValueCache]
) -> Iterator[Factory]:
    """Builds started-later caches on the session cluster, all in one namespace (half of them
    given the seeds, half the URL, so both ways of configuring it are exercised)."""
    namespace = _namespace()
    count = 0

    def build(**kw: Any) -> KeyValueCache:
        nonlocal count
        count += 1
        if count % 2:
            return make(RedisClusterCache(redis_cluster.seeds, namespace=namespace, **kw))
        return make(RedisClusterCache(url=redis_cluster.url, namespace=namespace, **kw))

    yield build


async def _started(cache: KeyValueCache) -> RedisClusterCache:
    await cache.start()
    assert cache.state.available, cache.state
    assert isinstance(cache, RedisClusterCache)
    return cache


def _master_of(cache: RedisClusterCache, key: str) -> str:
    """The ``host:port`` of the master serving ``key`` (an L2 key, before encoding)."""
    slot = key_slot(encode_key(cache.namespace, key).encode())
    return cache._cluster().nodes_manager.slots_cache[slot][0].name


async def _keys_on(port: int, namespace: str) -> set[bytes]:
    """The keys of ``namespace`` that the node on ``port`` holds (asked directly, not routed)."""
    client = Redis(host="127.0.0.1", port=port)
    try:
        return set(await client.keys(namespace + "*"))
    finally:
        await client.aclose()


# -- the back-end contract, as for memcached and Redis ---------------------------------------------


async def test_get_set_delete(factory: Factory) -> None:
    await contract.test_get_set_delete(factory)


async def test_values_are_shared_between_instances(factory: Factory) -> None:
    await contract.test_values_are_shared_between_instances(factory)


async def test_ttl_expiry(factory: Factory) -> None:
    await contract.test_ttl_expiry(factory)


async def test_long_and_odd_keys_are_distinct(factory: Factory) -> None:
    await contract.test_long_and_odd_keys_are_distinct(factory)


async def test_large_listing_is_chunked_and_round_trips(factory: Factory) -> None:
    await contract.test_large_listing_is_chunked_and_round_trips(factory)


async def test_invalidation_reaches_other_instances_quickly(factory: Factory) -> None:
    await contract.test_invalidation_reaches_other_instances_quickly(factory)


async def test_versioned_values_round_trip_and_unknown_versions_miss(factory: Factory) -> None:
    writer, reader = await _started(factory()), await _started(factory())
    result = LocateResult("/fed/v", (), (("site", "no answer"),), complete=True, elapsed=0.01)
    await writer.set("loc:/fed/v", l2codec.encode_locate(result), 30)
    data = await reader.get("loc:/fed/v")
    assert data is not None
    decoded = l2codec.decode_locate(data, "/fed/v")
    assert decoded is not None and decoded.cached and decoded.unknown == result.unknown
    # A value written by a newer release (format version 2) or garbage is a miss, not an error.
    newer = bytes([0xC0 | (l2codec.VERSION + 1)]) + json.dumps({"k": "loc"}).encode()
    await writer.set("loc:/fed/newer", newer, 30)
    await writer.set("loc:/fed/garbage", b"\xff\x00garbage", 30)
    for key in ("loc:/fed/newer", "loc:/fed/garbage"):
        raw = await reader.get(key)
        assert raw is not None
        assert l2codec.decode_locate(raw, key[4:]) is None


async def test_unreachable_at_start_is_down_not_an_error(
    make: Callable[[KeyValueCache], KeyValueCache],
) -> None:
    cache = make(RedisClusterCache([f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"]))
    started = time.monotonic()
    await cache.start()
    assert not cache.state.available and cache.state.last_error
    assert "redis-cluster" in cache.state.last_error or "cluster" in cache.state.last_error
    assert await cache.get("k") is None
    await cache.set("k", b"v", 10)
    await cache.delete(["k"])
    await cache.publish_invalidation(["/p"])
    assert time.monotonic() - started < 1.5


async def test_created_from_settings_with_seeds_or_url(redis_cluster: RedisClusterServers) -> None:
    for settings in (
        L2Settings(kind="redis-cluster", servers=tuple(redis_cluster.seeds[1:]), namespace="cfg:"),
        L2Settings(kind="redis-cluster", url=redis_cluster.url, namespace="cfg:"),
    ):
        cache = create_shared_cache(settings)
        assert isinstance(cache, RedisClusterCache) and cache.name == "redis-cluster"
        await cache.start()
        try:
            assert cache.state.available
            await cache.set("k", b"v", 5)
            assert await cache.get("k") == b"v"
        finally:
            await cache.aclose()
        assert not cache.state.available


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({}, "seed nodes"),
        ({"servers": ["no-port"]}, "not host:port"),
        ({"servers": ["h:70000"]}, "not host:port"),
        ({"url": "unix:///run/redis.sock"}, "redis://"),
        ({"url": "redis://"}, "redis://"),
        ({"url": "redis://h"}, "port"),
        ({"url": "redis://h:7000/2"}, "database 0"),
    ],
)
def test_settings_are_validated(fields: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        L2Settings(kind="redis-cluster", **fields)


def test_settings_accept_seeds_url_or_both() -> None:
    L2Settings(kind="redis-cluster", servers=("10.0.0.1:7000", "[::1]:7001"))
    L2Settings(kind="redis-cluster", url="rediss://geofed:s3cret@redis.example:7000/0")
    L2Settings(kind="redis-cluster", url="redis://10.0.0.1:7000", servers=("10.0.0.2:7000",))


# -- what a cluster adds -------------------------------------------------------------------------


async def test_keys_and_chunks_spread_over_the_masters(
    factory: Factory, redis_cluster: RedisClusterServers
) -> None:
    cache = await _started(factory())
    keys = [f"loc:/spread/{i}" for i in range(90)]
    for key in keys:
        await cache.set(key, key.encode(), 30)
    held = {node.port: await _keys_on(node.port, cache.namespace) for node in redis_cluster.nodes}
    assert sum(len(found) for found in held.values()) == len(keys)
    assert all(len(found) > 10 for found in held.values()), {p: len(f) for p, f in held.items()}
    for key in keys[:10]:  # each where the slot map says
        port = int(_master_of(cache, key).rsplit(":", 1)[1])
        assert encode_key(cache.namespace, key).encode() in held[port]

    # A chunked value: its chunks lie on several masters, and it still reads back whole.
    value = l2codec.encode_listing(contract._big_listing(40_000))
    assert len(value) > 2 * CHUNK_SIZE
    await cache.set("list:/big", value, 30)
    count = -(-len(value) // CHUNK_SIZE)
    masters = {_master_of(cache, "list:/big")} | {
        cache._cluster()
        .nodes_manager.slots_cache[key_slot(chunk_key(cache.namespace, "list:/big", i).encode())][0]
        .name
        for i in range(count)
    }
    assert len(masters) > 1
    assert await (await _started(factory())).get("list:/big") == value


async def test_invalidations_published_on_any_node_reach_a_subscriber_on_any_node(
    factory: Factory, redis_cluster: RedisClusterServers
) -> None:
    listener = await _started(factory())
    heard: list[list[str]] = []
    listener.on_invalidation(heard.append)
    assert listener.subscribed_to in redis_cluster.seeds
    for node in redis_cluster.nodes:  # a PUBLISH on each node, through a plain connection to it
        client = Redis(host="127.0.0.1", port=node.port)
        try:
            await client.publish(
                listener.channel, l2codec.encode_invalidation("other", [f"/via/{node.port}"])
            )
        finally:
            await client.aclose()
    expected = [[f"/via/{node.port}"] for node in redis_cluster.nodes]
    await _wait_for(lambda: sorted(heard) == sorted(expected), 1.0)


async def test_invalidations_are_heard_everywhere_when_publishing_returns(factory: Factory) -> None:
    """publish_invalidation hands the message to every master itself (the bus is sometimes tens of
    milliseconds late), so when it returns the listeners on every master have it, once each."""
    publisher = await _started(factory())
    listeners = [await _started(factory()) for _ in range(6)]
    heard: list[list[list[str]]] = [[] for _ in listeners]
    for listener, inbox in zip(listeners, heard, strict=True):
        listener.on_invalidation(inbox.append)
    for round_ in range(40):
        await publisher.publish_invalidation([f"/round/{round_}"])
        await asyncio.sleep(0.005)  # shared.py's propagation delay
        assert all(inbox and inbox[-1] == [f"/round/{round_}"] for inbox in heard), heard
    await asyncio.sleep(0.3)  # the copies relayed over the cluster bus are not delivered again
    assert all(inbox == [[f"/round/{i}"] for i in range(40)] for inbox in heard)


@pytest.fixture
def own_cluster(tmp_path: Path) -> Iterator[Callable[..., RedisClusterServers]]:
    """Start clusters of one's own (stopped at the end), for tests that stop nodes."""
    started: list[RedisClusterServers] = []

    def start(**kw: Any) -> RedisClusterServers:
        cluster = start_redis_cluster(tmp_path / f"cluster-{len(started)}", **kw)
        started.append(cluster)
        return cluster

    yield start
    for cluster in started:
        cluster.stop()


async def test_subscription_moves_to_another_node_when_its_node_dies(
    own_cluster: Callable[..., RedisClusterServers], make: Callable[[KeyValueCache], KeyValueCache]
) -> None:
    cluster = own_cluster(require_full_coverage=False)
    namespace = _namespace()
    listener = await _started(make(RedisClusterCache(cluster.seeds, namespace=namespace)))
    publisher = await _started(make(RedisClusterCache(cluster.seeds, namespace=namespace)))
    heard: list[list[str]] = []
    listener.on_invalidation(heard.append)
    first = listener.subscribed_to
    assert first is not None
    index = cluster.index_of(int(first.rsplit(":", 1)[1]))

    await asyncio.to_thread(cluster.stop_node, index)
    await _wait_for(lambda: listener.subscribed.is_set() and listener.subscribed_to != first, 2.0)
    await _wait_for(lambda: ["/"] in heard, 0.5)  # it may have missed messages in between
    heard.clear()
    await publisher.publish_invalidation(["/after"])
    await _wait_for(lambda: heard == [["/after"]], 1.0)

    await asyncio.to_thread(cluster.restart_node, index)
    await _wait_for(lambda: listener.state.available and publisher.state.available, 5.0, step=0.05)
    await publisher.publish_invalidation(["/restarted"])
    await _wait_for(lambda: heard == [["/after"], ["/restarted"]], 1.0)


async def test_master_stopped_and_restarted_other_slots_keep_working(
    own_cluster: Callable[..., RedisClusterServers],
    make: Callable[[KeyValueCache], KeyValueCache],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """With ``cluster-require-full-coverage no`` the other masters keep serving their slots."""
    caplog.set_level(logging.INFO, logger="geofed.l2")
    cluster = own_cluster(require_full_coverage=False)
    namespace = _namespace()
    cache = await _started(make(RedisClusterCache(cluster.seeds, namespace=namespace)))
    listener = await _started(make(RedisClusterCache(url=cluster.url, namespace=namespace)))
    heard: list[list[str]] = []
    listener.on_invalidation(heard.append)
    keys = [f"loc:/k{i}" for i in range(60)]
    for key in keys:
        await cache.set(key, b"v", 60)
    victim = cluster.seeds[1]
    on_victim = [key for key in keys if _master_of(cache, key) == victim]
    elsewhere = [key for key in keys if key not in on_victim]
    assert on_victim and elsewhere
    instances_using_victim = 1 + (listener.subscribed_to == victim)  # the listener's subscription
    await asyncio.to_thread(cluster.stop_node, 1)

    assert await cache.get(on_victim[0]) is None  # may take up to the timeout, once
    assert not cache.state.available
    assert victim in (cache.state.last_error or "")
    started = time.monotonic()
    results = {key: await cache.get(key) for key in keys}
    assert time.monotonic() - started < 0.2  # the dead master is not waited for
    assert all(results[key] is None for key in on_victim)
    assert all(results[key] == b"v" for key in elsewhere)  # the other masters still serve
    for key in keys:
        await cache.set(key, b"w", 60)  # no exception, whatever master it maps to
    assert all([await cache.get(key) == b"w" for key in elsewhere])
    await cache.publish_invalidation(["/during"])  # invalidations still flow, through the others
    await _wait_for(lambda: ["/during"] in heard, 1.0)
    await asyncio.sleep(2.5)  # a few failed retries: still one log line
    assert len(_records(caplog, f"node {victim} unavailable")) == instances_using_victim  # once each

    await asyncio.to_thread(cluster.restart_node, 1)
    await _wait_for(lambda: cache.state.available and listener.state.available, 5.0, step=0.05)
    assert len(_records(caplog, f"node {victim} available again")) == instances_using_victim
    for key in keys:
        await cache.set(key, b"x", 60)
    assert all([await listener.get(key) == b"x" for key in keys])


async def test_cluster_declared_failed_then_recovers_and_refused_deletes_are_applied(
    own_cluster: Callable[..., RedisClusterServers],
    make: Callable[[KeyValueCache], KeyValueCache],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Redis's default ``cluster-require-full-coverage yes``: once the cluster has declared a
    master failed, the live masters refuse every key (CLUSTERDOWN) but keep their data and still
    relay pub/sub. Everything misses (L1 and the endpoints serve), invalidations still reach the
    other front ends, and deletions refused meanwhile are applied when the cluster is back, so a
    value a write made stale during the outage is not served afterwards."""
    caplog.set_level(logging.INFO, logger="geofed.l2")
    cluster = own_cluster()
    namespace = _namespace()
    cache = await _started(make(RedisClusterCache(cluster.seeds, namespace=namespace)))
    listener = await _started(make(RedisClusterCache(cluster.seeds, namespace=namespace)))
    heard: list[list[str]] = []
    listener.on_invalidation(heard.append)
    keys = [f"loc:/k{i}" for i in range(30)]
    for key in keys:
        await cache.set(key, b"old", 600)
    victim = cluster.seeds[0]
    survivors = [key for key in keys if _master_of(cache, key) != victim]
    await asyncio.to_thread(cluster.stop_node, 0)

    async def everything_down() -> bool:
        for key in keys:
            await cache.get(key)
        return all(cache.is_down(master) for master in cluster.seeds)

    deadline = time.monotonic() + 10
    while not await everything_down():
        assert time.monotonic() < deadline, cache.state
        await asyncio.sleep(0.2)
    started = time.monotonic()
    assert all([await cache.get(key) is None for key in keys])
    assert time.monotonic() - started < 0.2
    await cache.delete(survivors[:5])  # refused now; the survivors still hold "old"
    heard.clear()
    await cache.publish_invalidation(["/during"])  # pub/sub still works on a failed cluster
    await _wait_for(lambda: heard == [["/during"]], 1.0)

    await asyncio.to_thread(cluster.restart_node, 0)
    await _wait_for(lambda: cache.state.available and listener.state.available, 8.0, step=0.05)
    assert 1 <= len(_records(caplog, f"node {victim} available again")) <= 2  # once per instance
    assert all([await listener.get(key) is None for key in survivors[:5]])  # deleted on recovery
    assert all([await listener.get(key) == b"old" for key in survivors[5:]])


async def test_failover_to_a_replica_is_followed(
    own_cluster: Callable[..., RedisClusterServers],
    make: Callable[[KeyValueCache], KeyValueCache],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A master that dies for good while its replica takes over leaves the slot map: its keys are
    served by the new master (replicated), and L2 counts as available again without the old one."""
    caplog.set_level(logging.INFO, logger="geofed.l2")
    cluster = own_cluster(replicas=1)
    namespace = _namespace()
    cache = await _started(make(RedisClusterCache(cluster.seeds[:1], namespace=namespace)))
    keys = [f"loc:/k{i}" for i in range(30)]
    for key in keys:
        await cache.set(key, b"v", 600)
    victim = _master_of(cache, keys[0])
    on_victim = [key for key in keys if _master_of(cache, key) == victim]
    await asyncio.sleep(0.5)  # let the replica catch up
    await asyncio.to_thread(cluster.stop_node, cluster.index_of(int(victim.rsplit(":", 1)[1])))

    assert await cache.get(on_victim[0]) is None
    assert not cache.state.available
    await _wait_for(lambda: cache.state.available, 40.0, step=0.1)  # failover (slow on a busy machine)
    assert _master_of(cache, on_victim[0]) != victim
    assert all([await cache.get(key) == b"v" for key in on_victim])
    assert len(_records(caplog, f"{victim} no longer serves slots")) == 1


# -- three front ends on the cluster ---------------------------------------------------------------


def _settings(tmp_path: Path, l2: dict[str, Any], **cache: Any) -> Any:
    return settings_from_mapping(
        {
            "signing": {"secret": secrets.token_urlsafe(24)},
            "auth": OPEN_POLICY,
            "cache": {**cache, "l2": l2},
            "health": {"interval": "2s"},
            "endpoints": [
                {
                    "name": "site",
                    "kind": "local",
                    "url": (tmp_path / "site").as_uri(),
                    "prefixes": [{"federated": "/fed", "endpoint": "/"}],
                    "writable": True,
                }
            ],
        },
        environ={},
    )


def _cluster_l2(cluster: RedisClusterServers) -> dict[str, Any]:
    return {"kind": "redis-cluster", "servers": cluster.seeds, "namespace": f"t{secrets.token_hex(4)}:"}


@pytest.fixture
def front_ends(tmp_path: Path, redis_cluster: RedisClusterServers) -> Iterator[list[GeofedServer]]:
    (tmp_path / "site" / "data").mkdir(parents=True)
    (tmp_path / "site" / "data" / "old.txt").write_text("old\n")
    settings = _settings(tmp_path, _cluster_l2(redis_cluster), ttl="300s", negative_ttl="300s")
    with ExitStack() as stack:
        yield [stack.enter_context(GeofedServer(settings)) for _ in range(3)]


def test_write_through_one_is_seen_at_once_through_the_others(
    front_ends: list[GeofedServer], tmp_path: Path
) -> None:
    shared.test_write_through_one_is_seen_at_once_through_the_others(front_ends, tmp_path)


def test_mkcol_through_one_is_seen_through_the_others(front_ends: list[GeofedServer]) -> None:
    shared.test_mkcol_through_one_is_seen_through_the_others(front_ends)


def test_answers_are_shared_through_l2(front_ends: list[GeofedServer], tmp_path: Path) -> None:
    shared.test_answers_are_shared_through_l2(front_ends, tmp_path)


def test_status_shows_the_cluster(front_ends: list[GeofedServer]) -> None:
    doc = json.loads(shared.curl(f"{front_ends[0].url}/_geofed/status").stdout)
    assert doc["cache"]["l2"]["available"] is True
    assert doc["cache"]["l2"]["kind"] == "redis-cluster"


def test_node_lost_midway_front_ends_keep_serving_and_recover(
    tmp_path: Path, own_cluster: Callable[..., RedisClusterServers]
) -> None:
    """A master stops (Redis's default full coverage: the cluster then refuses every key) while
    two front ends serve; they keep answering from L1 and the endpoints, writes through one are
    still seen through the other, the status page says what is wrong, and all recovers by itself."""
    cluster = own_cluster()
    (tmp_path / "site" / "data").mkdir(parents=True)
    (tmp_path / "site" / "data" / "a.txt").write_text("a\n")
    settings = _settings(tmp_path, _cluster_l2(cluster), ttl="300s", negative_ttl="300s")
    code, names, wait_for_l2 = shared.code, shared.names, shared.wait_for_l2
    with GeofedServer(settings) as one, GeofedServer(settings) as two:
        for front in (one, two):
            assert code(f"{front.url}/fed/data/a.txt") == "302"
            assert code(f"{front.url}/fed/data/b.txt") == "404"
        cluster.stop_node(1)
        for front in (one, two):
            assert code(f"{front.url}/fed/data/a.txt") == "302"  # L1 and the endpoints keep serving
            assert code(f"{front.url}/fed/missing.txt") == "404"
        l2 = wait_for_l2(one, available=False)
        assert "redis-cluster" not in l2["last_error"]  # names the nodes: "127.0.0.1:PORT: reason"
        assert any(seed in l2["last_error"] for seed in cluster.seeds), l2
        assert l2["kind"] == "redis-cluster"

        source = tmp_path / "b.txt"
        source.write_text("b\n")
        assert code("-L", "-T", str(source), f"{one.url}/fed/data/b.txt") == "201"
        assert code(f"{two.url}/fed/data/b.txt") == "302"  # its cached 404 was invalidated
        assert sorted(names(two, "/fed/data/")) == ["a.txt", "b.txt"]

        cluster.restart_node(1)
        for front in (one, two):
            assert wait_for_l2(front, available=True)["available"] is True
        assert code("-X", "DELETE", f"{two.url}/fed/data/b.txt") == "204"
        assert code(f"{one.url}/fed/data/b.txt") == "404"
        assert names(one, "/fed/data/") == ["a.txt"]
