"""L2 on several memcached servers (emcache, one client per server), with polled invalidations.

Placement: rendezvous (highest random weight) hashing of the encoded key over the servers as
configured ("host:port" strings), so every front end that lists the same servers puts a key on the
same server, independently of their order, and adding or removing a server moves only its share.
Keys of a server that is down are misses -- they are *not* moved to another server, because when
it came back it would serve values that missed the invalidations sent meanwhile.

Why one emcache client per server rather than one for the cluster: emcache hides which server a
key maps to, so every command on a dead server would wait for the timeout; and its reconnection
backs off up to 60 s. Here a server that fails has its client closed at once (its keys then miss
without waiting), and the retry loop tries it every second with a plain ``version`` command,
creating a fresh client as soon as it answers.

Invalidation (memcached has no pub/sub): a shared, monotonically increasing sequence on the first
configured server (every front end must list it first). ``publish_invalidation`` does ``incr
<seq>`` and then stores the paths under the new number for ``ENTRY_TTL`` seconds; every front end
reads the sequence every ``poll_interval`` and fetches the entries since the last number it saw,
in one ``get_many`` bounded by the timeout, so delivery takes at most about ``poll_interval`` plus
two round trips. The sequence starts at a random base whenever it is (re)created, so a server
restart always shows as a jump. A front end delivers ``["/"]`` ("forget everything") when the
sequence went backwards or jumped more than ``MAX_BEHIND`` entries, when an entry stayed missing
for ``ENTRY_GRACE`` seconds (expired, evicted, or its publisher died between the two commands), or
after it could not read the sequence (invalidations may have been missed meanwhile).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence

import emcache

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
from geofed.federation.l2codec import decode_invalidation, encode_invalidation, escape

DEFAULT_POLL_INTERVAL = 0.1
ENTRY_TTL = 60
MAX_BEHIND = 1000
ENTRY_GRACE = 1.0
MAX_EXPTIME = 30 * 24 * 3600
"""memcached reads a larger expiry as an absolute Unix time."""


def parse_server(server: str) -> tuple[str, int]:
    """``host:port`` (IPv6 as ``[::1]:11211``) → (host, port)."""
    host, _, port = server.rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"memcached server must be host:port, not {server!r}")
    return host.strip("[]"), int(port)


def rendezvous(key: str, servers: Sequence[str]) -> str:
    """The server that holds ``key``: the one with the highest hash of (server, key)."""

    def weight(server: str) -> bytes:
        return hashlib.blake2b(f"{server}\0{key}".encode(), digest_size=8).digest()

    return max(servers, key=weight)


def exptime(ttl: float) -> int:
    """memcached's whole seconds, at least 1, below the absolute-time threshold."""
    return min(MAX_EXPTIME, max(1, math.ceil(ttl)))


async def ping(host: str, port: int) -> None:
    """One ``version`` round trip on a fresh connection (the caller bounds the time)."""
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(b"version\r\n")
        await writer.drain()
        line = await reader.readline()
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            await writer.wait_closed()
    if not line.startswith(b"VERSION"):
        raise ConnectionError(f"unexpected answer to version: {line[:60]!r}")


class MemcachedCache(KeyValueCache):
    """L2 on the memcached ``servers`` ("host:port", at least one)."""

    name = "memcached"

    def __init__(
        self,
        servers: Sequence[str],
        *,
        namespace: str = DEFAULT_NAMESPACE,
        timeout: float = DEFAULT_TIMEOUT,
        poll_interval: float = DEFAULT_POLL_INTERVAL,
        retry_interval: float = RETRY_INTERVAL,
        max_connections: int = 8,
    ) -> None:
        if not servers:
            raise ValueError("memcached needs at least one server")
        super().__init__(namespace=namespace, timeout=timeout, retry_interval=retry_interval)
        self.servers = tuple(dict.fromkeys(servers))
        self._addresses = {server: parse_server(server) for server in self.servers}
        self.poll_interval = poll_interval
        self.max_connections = max_connections
        self._clients: dict[str, emcache.Client] = {}
        self._closing: set[asyncio.Task[None]] = set()
        prefix = escape(namespace)
        # '%i' is never produced by the key encoding: these cannot collide with cache keys.
        self._seq_key = f"{prefix}%iseq".encode()
        self._entry_prefix = f"{prefix}%i"
        self._last_seq: int | None = None
        self._missed = False
        """Invalidations may have been missed (the sequence could not be read): reset when next read."""
        self._missing: tuple[int, float] | None = None
        """(sequence number, since when) of an entry the poller is waiting for."""

    @property
    def sequence_server(self) -> str:
        return self.servers[0]

    def server_for(self, encoded_key: str) -> str:
        return rendezvous(encoded_key, self.servers)

    def _describe_target(self, component: str) -> str:
        return f"memcached {component}"

    def _is_outage(self, exc: Exception) -> bool:
        # A CommandError is an answer (NOT_STORED, SERVER_ERROR object too large) and a ValueError
        # a key emcache refused: the server is up.
        return not isinstance(exc, emcache.CommandError | ValueError)

    # -- connections -------------------------------------------------------------------------------

    async def _open(self, server: str) -> None:
        """A new emcache client for ``server``, once it answered a ``version`` on its own.

        emcache gets no connection timeout: on Python 3.11 its ``asyncio.wait_for`` can swallow
        the cancellation that ``close()`` sends when it coincides with a refused connection, and
        the pool then keeps reconnecting -- and ``close()`` waiting -- for as long as the server
        is down. Every operation is bounded by ``_bounded`` anyway, and a failing server's client
        is closed at once (``_went_down``).
        """
        host, port = self._addresses[server]
        async with asyncio.timeout(self.timeout * 5):
            await ping(host, port)
        self._clients[server] = await emcache.create_client(
            [emcache.MemcachedHostAddress(host, port)],
            timeout=None,  # _bounded applies the L2 timeout to whole operations
            connection_timeout=None,
            max_connections=self.max_connections,
            min_connections=1,
        )

    async def _connect(self) -> None:
        async def first(server: str) -> None:
            try:
                await self._open(server)
            except Exception as exc:
                self._fail(server, describe(exc))

        await asyncio.gather(*(first(server) for server in self.servers))
        try:
            await self._poll_once()  # the baseline: invalidations published from now on are heard
        except CallFailed:
            self._missed = True

    async def _probe(self, component: str) -> None:
        await self._open(component)

    def _went_down(self, component: str) -> None:
        """Close the server's client now: its keys miss without waiting, and emcache's own
        reconnection attempts (backing off up to a minute, logging each) stop."""
        client = self._clients.pop(component, None)
        if client is not None:
            task = asyncio.create_task(client.close())
            self._closing.add(task)
            task.add_done_callback(self._closing.discard)

    async def _close(self) -> None:
        clients, self._clients = list(self._clients.values()), {}
        await asyncio.gather(*(c.close() for c in clients), *self._closing, return_exceptions=True)

    def _client(self, server: str) -> emcache.Client:
        client = self._clients.get(server)
        if client is None:
            raise CallFailed(server)
        return client

    # -- values ------------------------------------------------------------------------------------

    def _by_server(self, keys: Sequence[str]) -> dict[str, list[str]]:
        groups: dict[str, list[str]] = {}
        for key in keys:
            groups.setdefault(self.server_for(key), []).append(key)
        return groups

    async def _each_server(
        self, keys: Sequence[str], call: Callable[[emcache.Client, list[str]], Awaitable[object]]
    ) -> list[object]:
        """``call`` on every server holding some of ``keys``, in parallel; the results of the
        servers that answered (a server that is down or fails is skipped, and recorded)."""

        async def one(server: str, group: list[str]) -> object:
            if self.is_down(server):
                raise CallFailed(server)
            return await self._bounded(server, call(self._client(server), group))

        groups = self._by_server(keys)
        results = await asyncio.gather(*(one(s, g) for s, g in groups.items()), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException) and not isinstance(result, Exception):
                raise result  # cancellation
        return [r for r in results if not isinstance(r, BaseException)]

    async def _fetch(self, keys: Sequence[str]) -> dict[str, bytes]:
        async def get_many(client: emcache.Client, group: list[str]) -> dict[bytes, emcache.Item]:
            return await client.get_many([key.encode("ascii") for key in group])

        found: dict[str, bytes] = {}
        for items in await self._each_server(keys, get_many):
            assert isinstance(items, dict)
            found.update((key.decode("ascii"), item.value) for key, item in items.items())
        return found

    async def _store(self, items: Sequence[tuple[str, bytes]], ttl: float) -> None:
        values = dict(items)
        expiry = exptime(ttl)

        async def set_all(client: emcache.Client, group: list[str]) -> bool:
            await asyncio.gather(
                *(client.set(key.encode("ascii"), values[key], exptime=expiry) for key in group)
            )
            return True

        stored = await self._each_server(list(values), set_all)
        if len(stored) != len(self._by_server(list(values))):
            raise CallFailed("some servers did not store")

    async def _remove(self, keys: Sequence[str]) -> None:
        async def delete_one(client: emcache.Client, key: str) -> None:
            with contextlib.suppress(emcache.NotFoundCommandError):
                await client.delete(key.encode("ascii"))

        async def delete_all(client: emcache.Client, group: list[str]) -> None:
            await asyncio.gather(*(delete_one(client, key) for key in group))

        await self._each_server(keys, delete_all)

    # -- invalidation ------------------------------------------------------------------------------

    def _background(self) -> list[BackgroundLoop]:
        return [self._poller]

    def _entry_key(self, number: int) -> bytes:
        return f"{self._entry_prefix}{number}".encode()

    async def publish_invalidation(self, paths: Sequence[str]) -> None:
        if not self._running or not paths:
            return
        message = encode_invalidation(self.sender, paths)
        server = self.sequence_server
        try:
            client = self._client(server)
            number = await self._bounded(server, self._next_number(client))
            await self._bounded(server, client.set(self._entry_key(number), message, exptime=ENTRY_TTL))
        except Exception:  # best effort; the failure is recorded by _bounded
            return

    async def _create_sequence(self, client: emcache.Client) -> None:
        """Create the sequence (first use, or the server restarted) at a random base, unless another
        front end just did: numbers from before a restart then never reappear, so a restart
        between two polls still shows as a jump (a reset) rather than as old numbers."""
        with contextlib.suppress(emcache.NotStoredStorageCommandError):
            await client.add(self._seq_key, str(secrets.randbelow(2**48) + 2**32).encode())

    async def _next_number(self, client: emcache.Client) -> int:
        try:
            number = await client.increment(self._seq_key, 1)
        except emcache.NotFoundCommandError:
            await self._create_sequence(client)
            number = await client.increment(self._seq_key, 1)
        assert number is not None
        return number

    async def _read_sequence(self, client: emcache.Client) -> int:
        item = await client.get(self._seq_key)
        if item is None:
            await self._create_sequence(client)
            item = await client.get(self._seq_key)
        if item is None:
            raise ConnectionError("the invalidation sequence vanished at once")
        try:
            return int(item.value)
        except ValueError:
            raise ConnectionError(f"the invalidation sequence is not a number: {item.value[:30]!r}") from None

    async def _poller(self) -> None:
        while True:
            await asyncio.sleep(self.poll_interval)
            try:
                await self._poll_once()
            except CallFailed:
                self._missed = True
            except Exception:
                self._missed = True
                log.exception("L2 memcached: invalidation poll raised")

    def _reset(self, current: int) -> None:
        """Skip to ``current`` and tell the callbacks to forget everything."""
        self._last_seq, self._missed, self._missing = current, False, None
        self._deliver(INVALIDATE_ALL)

    async def _poll_once(self) -> None:
        """Read the sequence and deliver the entries since the last one seen (see module doc)."""
        server = self.sequence_server
        client = self._client(server)
        current = await self._bounded(server, self._read_sequence(client))
        last = self._last_seq
        if last is None:  # the baseline (a reset if the first attempt failed, to be safe)
            if self._missed:
                self._reset(current)
            self._last_seq = current
            return
        if self._missed or current < last or current - last > MAX_BEHIND:
            self._reset(current)
            return
        if current == last:
            return
        numbers = range(last + 1, current + 1)
        found = await self._bounded(server, client.get_many([self._entry_key(n) for n in numbers]))
        now = time.monotonic()
        for number in numbers:
            entry = found.get(self._entry_key(number))
            if entry is None:
                if self._missing is None or self._missing[0] != number:
                    self._missing = (number, now)
                if now - self._missing[1] > ENTRY_GRACE:
                    self._reset(current)
                return  # wait for it: its publisher may be between incr and set
            decoded = decode_invalidation(entry.value)
            if decoded is None:
                self._reset(current)
                return
            self._last_seq, self._missing = number, None
            if decoded[0] != self.sender:
                self._deliver(decoded[1])
