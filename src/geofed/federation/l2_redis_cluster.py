"""L2 on a Redis Cluster (``redis.asyncio.cluster.RedisCluster``), invalidations over classic pub/sub.

Values: every key lives in the hash slot Redis computes from it, on the master that serves the
slot. Commands are single-key (GET, SET) or multi-key within one slot only (MGET and UNLINK of the
keys of one slot; chunks of a large value land on different slots and are fetched per slot), so
no hash tags are needed and nothing ever fails with CROSSSLOT. ``RedisCluster`` follows MOVED and
ASK redirections and refreshes its slot map after a failover.

Failures are tracked per master (component ``host:port``, as the slot map names it), like the
memcached servers of :mod:`~geofed.federation.l2_memcached`: while one master is down its keys
miss at once (nobody waits for its timeout) and the keys of the other masters keep working --
as long as the cluster serves them: with Redis's default ``cluster-require-full-coverage yes`` the
other masters refuse every key (CLUSTERDOWN) once the cluster has declared the master failed, and
then they count as down too. The retry loop asks a down master for ``CLUSTER INFO`` on a fresh
connection every ``retry_interval`` and counts it up again when it says ``cluster_state:ok``; a
master that never comes back but whose slots a replica took over (failover) is no longer in the
cluster's slot map, so it is dropped and the map refreshed. Before the slot map is known (no
seed node answered yet) the whole cluster is one component, ``cluster``.

Invalidations: classic PUBLISH in a cluster is forwarded over the cluster bus to every node, so a
subscription on any one node hears every front end's invalidations, whichever node they were
published on. (redis-py 8's ``ClusterPubSub`` picks one node by the channel's slot and does not
move the subscription when that node dies; its sharded pub/sub, SSUBSCRIBE/SPUBLISH, is confined
to the master and replicas of one slot, so it would go silent with that master.) So a subscriber
task keeps one plain ``redis.asyncio.Redis`` connection SUBSCRIBEd to a master (one that is not
down, chosen at random so that front ends spread over the masters; the seed nodes until the slot
map is known); when that node dies it subscribes on another one at once and delivers ``["/"]``
to the callbacks, since messages published meanwhile are gone.

The bus is quick but not always: a message crossing it now and then arrives 10-40 ms late, while
a write must not be answered before the other front ends have dropped what it made stale. So
``publish_invalidation`` PUBLISHes on every master itself, at once: a node hands a message to its
own subscribers before it replies, so when the replies are in, every subscriber has it, as with
one Redis server. The copies that then arrive over the bus are dropped by the subscribers: each
message carries ``<sender>.<sequence number>`` as its sender, and a subscriber remembers the
last ``SEEN_MESSAGES`` it delivered.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import math
import random
from collections import OrderedDict, defaultdict
from collections.abc import Awaitable, Sequence
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import SSLConnection, parse_url
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.crc import key_slot
from redis.exceptions import ClusterDownError, ResponseError

from geofed.federation.l2 import (
    DEFAULT_NAMESPACE,
    DEFAULT_TIMEOUT,
    INVALIDATE_ALL,
    RETRY_INTERVAL,
    BackgroundLoop,
    CallFailed,
    KeyValueCache,
    describe,
    log,
)
from geofed.federation.l2_memcached import parse_server
from geofed.federation.l2_redis import _redact
from geofed.federation.l2codec import decode_invalidation, encode_invalidation

CLUSTER = "cluster"
"""The component of every key while the slot map is unknown (no node answered yet)."""
_LISTEN_S = 1.0
"""How long one wait for a pub/sub message lasts (the subscriber loops; cancellation is immediate)."""
_HEALTH_CHECK_S = 5
"""How often an idle subscription is checked with a PING (finds a node that vanished silently)."""
MAX_UNAPPLIED = 100_000
"""At most this many keys whose deletion failed are remembered, to delete them on recovery."""
SEEN_MESSAGES = 4096
"""How many message ids a subscriber remembers to drop the copies of a message (one per master)."""


def node_name(host: str, port: int) -> str:
    """How redis-py (and this module's components) name a node."""
    return f"{host}:{port}"


class RedisClusterCache(KeyValueCache):
    """L2 on the Redis Cluster reachable through the ``seeds`` (``host:port``) and/or ``url``.

    ``url`` (``redis://[user:password@]host:port`` or ``rediss://...``) is a seed node too, and
    its credentials, TLS and query options apply to every node. Any one reachable seed is enough:
    the others are only asked when it is down; the cluster's own nodes are learnt from it.
    """

    name = "redis-cluster"

    def __init__(
        self,
        seeds: Sequence[str] = (),
        *,
        url: str | None = None,
        namespace: str = DEFAULT_NAMESPACE,
        timeout: float = DEFAULT_TIMEOUT,
        retry_interval: float = RETRY_INTERVAL,
    ) -> None:
        super().__init__(namespace=namespace, timeout=timeout, retry_interval=retry_interval)
        self.url = url
        self.channel = namespace + "invalidate"
        options: dict[str, Any] = {}
        addresses: list[tuple[str, int]] = []
        if url is not None:
            options = dict(parse_url(url))
            if options.pop("db", 0):
                raise ValueError("a Redis Cluster has only database 0")
            addresses.append((str(options.pop("host")), int(options.pop("port", 6379))))
            if options.pop("connection_class", None) is SSLConnection:
                options["ssl"] = True
        addresses += [parse_server(seed) for seed in seeds]
        if not addresses:
            raise ValueError("a Redis Cluster needs at least one seed node")
        self.seeds: tuple[tuple[str, int], ...] = tuple(dict.fromkeys(addresses))
        self._options = options
        """Connection options for every node (credentials, TLS, query options of ``url``)."""
        self._client: RedisCluster | None = None
        self._sequence = itertools.count(1)
        self._publishers: dict[str, Redis] = {}
        """A plain client per master, for PUBLISH (independent of the cluster client's state)."""
        self._seen: OrderedDict[str, None] = OrderedDict()
        """Ids (``sender.sequence``) of the messages delivered lately, to drop their copies."""
        self._unapplied: dict[str, set[str]] = defaultdict(set)
        """Per component, the keys a write meant to delete while it was down (deleted on recovery)."""
        self._unapplied_overflow_logged = False
        self.subscribed = asyncio.Event()
        """Set while the subscription is open (tests wait for it; start() waits a little too)."""
        self.subscribed_to: str | None = None
        """The node (``host:port``) the subscription is on, while it is open."""

    def _describe_target(self, component: str) -> str:
        if component == CLUSTER:
            where = _redact(self.url) if self.url is not None else ""
            seeds = ", ".join(node_name(h, p) for h, p in self.seeds)
            return f"redis-cluster {where} (seeds {seeds})" if where else f"redis-cluster (seeds {seeds})"
        return f"redis-cluster node {component}"

    def _is_outage(self, exc: Exception) -> bool:
        # CLUSTERDOWN (and MASTERDOWN) come as error replies but mean the node serves no key now;
        # any other error reply (OOM, wrong type, ...) is a refused command, not an unusable node.
        return isinstance(exc, ClusterDownError) or not isinstance(exc, ResponseError)

    def _connection_options(self) -> dict[str, Any]:
        return {
            **self._options,
            # a connection attempt to a silent host must leave time for another node within one call
            "socket_connect_timeout": self.timeout / 2,
            "socket_timeout": max(self.timeout, _LISTEN_S) * 2,
        }

    def _cluster(self) -> RedisCluster:
        if self._client is None:
            raise RuntimeError("RedisClusterCache used before start()")
        return self._client

    # -- topology ----------------------------------------------------------------------------------

    def _component(self, slot: int) -> str:
        """The master serving ``slot`` in the slot map, or CLUSTER while the map is unknown."""
        nodes = self._cluster().nodes_manager.slots_cache.get(slot)
        return nodes[0].name if nodes else CLUSTER

    def _went_down(self, component: str) -> None:
        self._down_last()

    def _down_last(self, *, except_for: str | None = None) -> None:
        """Keep the masters that are down at the end of redis-py's node list: after any
        connection error it refreshes the slot map and then sends COMMAND to the first master of
        that list, and fails the refresh -- every command -- when that one is dead."""
        if self._client is None:
            return
        for name in list(self._problems):
            if name not in (CLUSTER, except_for):
                self._client.nodes_manager.move_node_to_end_of_cached_nodes(name)

    def _masters(self) -> list[ClusterNode]:
        return self._cluster().get_primaries()

    def _nodes(self) -> list[tuple[str, int]]:
        """Every node of the slot map (masters and replicas), or the seeds while it is unknown."""
        known = [(node.host, int(node.port)) for node in self._cluster().get_nodes()]
        return known or list(self.seeds)

    def _subscription_nodes(self) -> list[tuple[str, int]]:
        """Where to subscribe: the masters (they get every PUBLISH first hand), else any node."""
        masters = [(node.host, int(node.port)) for node in self._masters()]
        return masters or self._nodes()

    def _single(self, host: str, port: int, retries: int = 0) -> Redis:
        """A plain client of one node (the caller closes it)."""
        options = self._connection_options()
        return Redis(host=host, port=port, retry=Retry(NoBackoff(), retries), **options)

    async def _connect(self) -> None:
        self._client = RedisCluster(
            startup_nodes=[ClusterNode(host, port) for host, port in self.seeds],
            # one immediate retry, after refreshing the slot map: a pooled connection made stale
            # by a node restart, or a MOVED after a failover, costs no failure
            retry=Retry(NoBackoff(), 1),
            **self._connection_options(),
        )
        with contextlib.suppress(Exception):  # recorded by _bounded; the retry loop takes over
            await self._bounded(CLUSTER, self._cluster().initialize())

    async def _node_state(self, host: str, port: int) -> str:
        """``cluster_state`` as the node at host:port reports it (on a fresh connection)."""
        client = self._single(host, port)
        try:
            info = await client.execute_command("CLUSTER INFO")  # type: ignore[no-untyped-call]
        finally:
            await client.aclose()
        state = info.get("cluster_state") if isinstance(info, dict) else None
        return str(state)

    async def _masters_in_slot_map(self) -> set[str] | None:
        """The masters that serve slots now, asked of a node that is up (None: none answered)."""
        for host, port in self._nodes():
            name = node_name(host, port)
            if name in self._problems:
                continue
            client = self._single(host, port)
            try:
                ranges = await client.execute_command("CLUSTER SLOTS")  # type: ignore[no-untyped-call]
            except Exception:
                continue
            finally:
                await client.aclose()
            masters: set[str] = set()
            for entry in ranges:
                master_host = entry[2][0].decode() if isinstance(entry[2][0], bytes) else str(entry[2][0])
                masters.add(node_name(master_host or host, int(entry[2][1])))
            return masters
        return None

    async def _probe(self, component: str) -> None:
        cluster = self._cluster()
        if component == CLUSTER:
            await cluster.initialize()
            if not cluster.nodes_manager.slots_cache:
                raise ConnectionError("no slot map")
            await self._replay_deletes(component)
            return
        host, port = parse_server(component)
        try:
            state = await self._node_state(host, port)
        except Exception:
            # Down; but if a replica took over its slots it is no longer part of the slot map.
            masters = await self._masters_in_slot_map()
            if masters is None or component in masters:
                raise
            log.info("L2 redis-cluster: %s no longer serves slots; refreshing the slot map", component)
            await cluster.nodes_manager.initialize()
        else:
            if state != "ok":
                raise ConnectionError(f"cluster_state:{state}")
        await self._replay_deletes(component)
        self._down_last(except_for=component)

    def _remember_unapplied(self, component: str, keys: Sequence[str]) -> None:
        """Keys whose deletion failed: a master that refused them (CLUSTERDOWN) or was cut off
        still holds them, and would serve what a write made stale once it is back."""
        if sum(len(pending) for pending in self._unapplied.values()) + len(keys) > MAX_UNAPPLIED:
            if not self._unapplied_overflow_logged:
                self._unapplied_overflow_logged = True
                log.warning(
                    "L2 redis-cluster: more than %d deletions pending during the outage; "
                    "entries may be served stale until their TTL",
                    MAX_UNAPPLIED,
                )
            return
        self._unapplied[component].update(keys)

    async def _replay_deletes(self, component: str) -> None:
        """Delete the keys remembered for ``component`` (whoever serves their slots now) before it
        counts as up again; progress is kept when this fails midway."""
        pending = self._unapplied.get(component)
        if not pending:
            self._unapplied.pop(component, None)
            return
        cluster = self._cluster()
        for group in self._by_slot(sorted(pending)).values():
            await cluster.execute_command("UNLINK", *group)
            pending.difference_update(group)
        self._unapplied.pop(component, None)
        self._unapplied_overflow_logged = False

    async def _close(self) -> None:
        """Close every client, within a bound: a shutdown must not hang on a node that is gone."""
        publishers, self._publishers = list(self._publishers.values()), {}
        client, self._client = self._client, None
        async with asyncio.timeout(self.timeout * 5):
            for publisher in publishers:
                with contextlib.suppress(Exception):
                    await publisher.aclose()
            if client is not None:
                await client.aclose()
                # aclose() skips the nodes while a refresh of the slot map is pending: close them too
                await client.nodes_manager.aclose()
                await client.nodes_manager.aclose("startup_nodes")

    # -- values ------------------------------------------------------------------------------------

    def _by_slot(self, keys: Sequence[str]) -> dict[int, list[str]]:
        groups: dict[int, list[str]] = defaultdict(list)
        for key in keys:
            groups[key_slot(key.encode())].append(key)
        return groups

    async def _each(self, calls: Sequence[tuple[str, Awaitable[Any]]]) -> list[Any]:
        """Run (component, call) pairs at once, each bounded; a failed one gives a CallFailed."""
        results = await asyncio.gather(
            *(self._bounded(component, call) for component, call in calls), return_exceptions=True
        )
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, CallFailed):
                raise result
        return results

    async def _fetch(self, keys: Sequence[str]) -> dict[str, bytes]:
        cluster = self._cluster()
        groups = list(self._by_slot(keys).items())
        results = await self._each(
            [(self._component(slot), cluster.execute_command("MGET", *group)) for slot, group in groups]
        )
        found: dict[str, bytes] = {}
        for (_, group), values in zip(groups, results, strict=True):
            if isinstance(values, CallFailed):
                continue
            found.update((k, v) for k, v in zip(group, values, strict=True) if isinstance(v, bytes))
        return found

    async def _store(self, items: Sequence[tuple[str, bytes]], ttl: float) -> None:
        cluster = self._cluster()
        milliseconds = max(1, math.ceil(ttl * 1000))
        results = await self._each(
            [
                (self._component(key_slot(key.encode())), cluster.set(key, value, px=milliseconds))
                for key, value in items
            ]
        )
        for result in results:
            if isinstance(result, CallFailed):
                raise result

    async def _remove(self, keys: Sequence[str]) -> None:
        cluster = self._cluster()
        groups = [(self._component(slot), group) for slot, group in self._by_slot(keys).items()]
        results = await self._each(
            [(component, cluster.execute_command("UNLINK", *group)) for component, group in groups]
        )
        for (component, group), result in zip(groups, results, strict=True):
            if isinstance(result, CallFailed):
                self._remember_unapplied(component, group)

    # -- invalidation ------------------------------------------------------------------------------

    def _background(self) -> list[BackgroundLoop]:
        return [self._subscriber]

    async def start(self) -> None:
        """Connect, and wait (within the timeout) for the subscription, so that an invalidation
        published by another front end right after this returns is heard."""
        await super().start()
        if not self.is_down(CLUSTER):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.timeout * 5):
                    await self.subscribed.wait()

    async def publish_invalidation(self, paths: Sequence[str]) -> None:
        if not self._running or not paths or self._client is None:
            return
        message = encode_invalidation(f"{self.sender}.{next(self._sequence)}", paths)
        try:
            await self._publish(message)
        except Exception:
            log.exception("L2 %s: publish raised", self.name)

    async def _publish(self, message: bytes) -> bool:
        """PUBLISH on every master at once; whether some node took the message.

        Through a plain client per master: PUBLISH needs no routing, and redis-py's cluster client
        refuses every command while it cannot refresh its slot map. A master that is down for
        keys may still relay pub/sub (a cluster that declared itself failed refuses keys, not
        PUBLISH), and the other front ends' subscriptions on it stay open -- they would not know
        they missed anything -- so it is tried too, directly (no state change) within the timeout.
        """
        masters = {node.name: node for node in self._masters()}
        for name in [name for name in self._publishers if name not in masters]:
            with contextlib.suppress(Exception):
                await self._publishers.pop(name).aclose()

        async def on(node: ClusterNode) -> bool:
            publisher = self._publishers.get(node.name)
            if publisher is None:
                # one immediate retry: a pooled connection made stale by a restart is replaced
                publisher = self._publishers[node.name] = self._single(node.host, int(node.port), 1)
            call = publisher.publish(self.channel, message)
            try:
                if not self.is_down(node.name):
                    await self._bounded(node.name, call)
                else:
                    async with asyncio.timeout(self.timeout):
                        await call
            except Exception:
                return False
            return True

        return any(await asyncio.gather(*(on(node) for node in masters.values())))

    async def _subscriber(self) -> None:
        """Keep one subscription open on some node; after any gap, tell the callbacks to forget
        everything. When the node fails, the next one is tried at once; only when every node
        failed since the last subscription does the loop wait ``retry_interval``."""
        missed = False
        failed: set[str] = set()
        while True:
            candidates = [(h, p) for h, p in self._subscription_nodes() if node_name(h, p) not in failed]
            if not candidates:
                missed = True  # conservative: others may have published meanwhile
                failed.clear()
                await asyncio.sleep(self.retry_interval)
                continue
            # a node that is down for keys may still be alive for pub/sub (CLUSTERDOWN): last resort
            up = [(h, p) for h, p in candidates if not self.is_down(node_name(h, p))]
            host, port = random.choice(up or candidates)
            name = node_name(host, port)
            client = Redis(
                host=host,
                port=port,
                retry=Retry(NoBackoff(), 0),
                health_check_interval=_HEALTH_CHECK_S,
                **self._connection_options(),
            )
            pubsub: PubSub = client.pubsub(ignore_subscribe_messages=True)
            try:
                async with asyncio.timeout(self.timeout * 5):
                    await pubsub.subscribe(self.channel)
                self.subscribed_to = name
                self.subscribed.set()
                failed.clear()
                if missed:
                    missed = False
                    self._deliver(INVALIDATE_ALL)
                await self._listen(pubsub)
            except Exception as exc:
                missed = True
                failed.add(name)
                if name in {node.name for node in self._masters()}:
                    self._fail(name, describe(exc))
                else:
                    log.debug("L2 redis-cluster: subscription on %s failed: %s", name, describe(exc))
            finally:
                self.subscribed.clear()
                self.subscribed_to = None
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(self.timeout):
                        await pubsub.aclose()  # type: ignore[no-untyped-call]
                        await client.aclose()

    async def _listen(self, pubsub: PubSub) -> None:
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=_LISTEN_S)
            if message is None or message.get("type") != "message":
                continue
            decoded = decode_invalidation(message["data"])
            if decoded is None:
                continue
            ident, paths = decoded
            origin, dot, _ = ident.partition(".")
            if origin == self.sender:
                continue  # its own
            if dot:  # one copy per master: deliver the first
                if ident in self._seen:
                    continue
                self._seen[ident] = None
                if len(self._seen) > SEEN_MESSAGES:
                    self._seen.popitem(last=False)
            self._deliver(paths)
