"""L2 on one Redis server (``redis.asyncio``), with invalidations over Redis pub/sub.

Invalidations are published on the channel ``<namespace>invalidate`` as JSON ``{"s": sender,
"p": [paths]}``. A subscriber task keeps one subscription open; whenever it has to re-subscribe
after losing the connection it delivers ``["/"]`` to the callbacks, since messages published
meanwhile are gone for good (pub/sub does not queue for absent subscribers).

redis-py's own retries are reduced to one immediate retry (a pooled connection made stale by a
server restart is replaced at once); everything else is bounded by the L2 timeout, and while the
server is down no command is sent at all (see :class:`~geofed.federation.l2.KeyValueCache`).
"""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections.abc import Sequence
from urllib.parse import urlsplit, urlunsplit

from redis.asyncio import Redis
from redis.asyncio.client import PubSub
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ResponseError

from geofed.federation.l2 import (
    DEFAULT_NAMESPACE,
    DEFAULT_TIMEOUT,
    INVALIDATE_ALL,
    RETRY_INTERVAL,
    BackgroundLoop,
    KeyValueCache,
    describe,
)
from geofed.federation.l2codec import decode_invalidation, encode_invalidation

_COMPONENT = "redis"
_LISTEN_S = 1.0
"""How long one wait for a pub/sub message lasts (the subscriber loops; cancellation is immediate)."""


def _redact(url: str) -> str:
    """The URL without its password, for logs."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = f"{parts.username}:***@" if parts.username else ":***@"
    return urlunsplit(parts._replace(netloc=user + netloc))


class RedisCache(KeyValueCache):
    """L2 on the Redis server at ``url`` (``redis://host:port/db``, ``rediss://``, ``unix://``)."""

    name = "redis"

    def __init__(
        self,
        url: str,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        timeout: float = DEFAULT_TIMEOUT,
        retry_interval: float = RETRY_INTERVAL,
    ) -> None:
        super().__init__(namespace=namespace, timeout=timeout, retry_interval=retry_interval)
        self.url = url
        self.channel = namespace + "invalidate"
        self._client: Redis | None = None
        self.subscribed = asyncio.Event()
        """Set while the subscription is open (tests wait for it; start() waits a little too)."""

    def _describe_target(self, component: str) -> str:
        return f"redis {_redact(self.url)}"

    def _is_outage(self, exc: Exception) -> bool:
        # The server answered (wrong type, OOM, ...): a refused command, not an unusable server.
        return not isinstance(exc, ResponseError)

    def _redis(self) -> Redis:
        if self._client is None:
            raise RuntimeError("RedisCache used before start()")
        return self._client

    async def _connect(self) -> None:
        self._client = Redis.from_url(
            self.url,
            socket_connect_timeout=self.timeout,
            socket_timeout=max(self.timeout, _LISTEN_S) * 2,
            retry=Retry(NoBackoff(), 1),
            health_check_interval=30,
        )
        try:
            await self._bounded(_COMPONENT, self._redis().ping())
        except Exception:  # recorded by _bounded; the retry loop takes over
            return

    def _background(self) -> list[BackgroundLoop]:
        return [self._subscriber]

    async def start(self) -> None:
        """Connect, and wait (within the timeout) for the subscription, so that an invalidation
        published by another front end right after this returns is heard."""
        await super().start()
        if not self.is_down(_COMPONENT):
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.timeout * 5):
                    await self.subscribed.wait()

    async def _probe(self, component: str) -> None:
        await self._redis().ping()

    async def _close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            await client.aclose()

    # -- values ------------------------------------------------------------------------------------

    async def _fetch(self, keys: Sequence[str]) -> dict[str, bytes]:
        values = await self._bounded(_COMPONENT, self._redis().mget(list(keys)))
        return {key: value for key, value in zip(keys, values, strict=True) if isinstance(value, bytes)}

    async def _store(self, items: Sequence[tuple[str, bytes]], ttl: float) -> None:
        milliseconds = max(1, math.ceil(ttl * 1000))
        pipe = self._redis().pipeline(transaction=False)
        for key, value in items:
            pipe.set(key, value, px=milliseconds)
        await self._bounded(_COMPONENT, pipe.execute())

    async def _remove(self, keys: Sequence[str]) -> None:
        await self._bounded(_COMPONENT, self._redis().unlink(*keys))

    # -- invalidation ------------------------------------------------------------------------------

    async def publish_invalidation(self, paths: Sequence[str]) -> None:
        if not self._running or not paths:
            return
        message = encode_invalidation(self.sender, paths)
        with contextlib.suppress(Exception):
            await self._bounded(_COMPONENT, self._redis().publish(self.channel, message))

    async def _subscriber(self) -> None:
        """Keep one subscription open; after any gap, tell the callbacks to forget everything."""
        missed = False
        while True:
            pubsub: PubSub | None = None
            try:
                if self.is_down(_COMPONENT):
                    missed = True  # conservative: others may have reached the server meanwhile
                else:
                    pubsub = self._redis().pubsub(ignore_subscribe_messages=True)
                    async with asyncio.timeout(self.timeout * 5):
                        await pubsub.subscribe(self.channel)
                    self.subscribed.set()
                    if missed:
                        missed = False
                        self._deliver(INVALIDATE_ALL)
                    await self._listen(pubsub)
            except Exception as exc:
                missed = True
                if self._is_outage(exc):
                    self._fail(_COMPONENT, describe(exc))
            finally:
                self.subscribed.clear()
                if pubsub is not None:
                    with contextlib.suppress(Exception):
                        await pubsub.aclose()  # type: ignore[no-untyped-call]
            await asyncio.sleep(self.retry_interval)

    async def _listen(self, pubsub: PubSub) -> None:
        while True:
            message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=_LISTEN_S)
            if message is None or message.get("type") != "message":
                continue
            decoded = decode_invalidation(message["data"])
            if decoded is not None and decoded[0] != self.sender:
                self._deliver(decoded[1])
