"""Checksums of replicas: from the caches, from the endpoint, or computed by reading the file once.

Clients ask for checksums with a HEAD (``Want-Digest``) and wait for the answer: gfal2 gives up
after 300 s, FTS after 9--15 minutes. A checksum of a large file costs a full read, so the order
is cheapest first, and a read is done at most once per file version however many clients ask:

1. the in-process L1 cache;
2. the shared L2 (when configured), filled by whichever front end computed it first;
3. :meth:`Endpoint.stored_checksums` (metadata written back earlier, or verified by the store);
4. a streamed read of the replica, hashing all four algorithms in one pass (the next client will
   likely want another one, and the read is the cost), then :meth:`Endpoint.store_checksums` so
   that the next front end or restart does not read it again.

Every cached value is keyed by the file's version (:class:`FileVersion`: size, mtime, ETag), so a
changed file never gets a stale answer. Reads are bounded: at most ``max_concurrent`` at once (one
checksum must not starve the endpoint of its other traffic), each holding one chunk at a time,
each within ``timeout`` (waiting for a slot included).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from geofed.checksums import sharedvalue
from geofed.checksums.algorithms import ALGORITHMS, MultiHasher, canonical_hex
from geofed.checksums.sharedvalue import FileVersion
from geofed.endpoints.base import Endpoint, StatResult
from geofed.errors import EndpointError, EndpointUnavailable, PathNotFound
from geofed.federation.cache import TTLCache

if TYPE_CHECKING:
    from geofed.federation.shared import SharedLayer

log = logging.getLogger("geofed.checksums")

MiB = 1024 * 1024
INLINE_BELOW = 64 * 1024
"""Chunks smaller than this are hashed on the event loop; larger ones in a worker thread (hashlib
and zlib release the GIL), so a 10 GB checksum does not stall every other request for seconds."""
_MAX_PENDING_WRITES = 1000


class ChecksumTimeout(EndpointUnavailable):
    """The checksum could not be computed within the service's timeout: the answer is unknown."""


class FileChanged(EndpointUnavailable):
    """The bytes read were not as many as the stat said: the file changed, or the stat is stale.
    Nothing was cached; asking again with a fresh stat will do."""


@dataclass(frozen=True, slots=True)
class CachedChecksums:
    """An L1 entry: the values and the version of the file they belong to."""

    version: FileVersion
    values: tuple[tuple[str, str], ...]


@dataclass(eq=False)
class _Job:
    """One computation, shared by every caller asking for the same file version meanwhile."""

    version: FileVersion
    future: asyncio.Future[dict[str, str]]
    stale: bool = False
    """Set by :meth:`ChecksumService.forget`: the file was written, so keep nothing of the result."""
    started: float = field(default_factory=time.monotonic)


def compare(claims: Mapping[str, str], actual: Mapping[str, str]) -> list[str]:
    """A description of each algorithm whose declared value (``claims``) differs from the one
    computed from the stored bytes (``actual``), both canonical; empty when all agree. Algorithms
    with no actual value are not compared (ask for them first)."""
    return [
        f"{algorithm}: declared {claims[algorithm]}, stored bytes have {actual[algorithm]}"
        for algorithm in ALGORITHMS
        if algorithm in claims and algorithm in actual and claims[algorithm] != actual[algorithm]
    ]


class ChecksumService:
    """Answers "what are the checksums of this replica", computing them at most once per version."""

    def __init__(
        self,
        endpoints: Mapping[str, Endpoint],
        *,
        cache: TTLCache[CachedChecksums] | None = None,
        shared: SharedLayer | None = None,
        max_concurrent: int = 4,
        timeout: float = 600.0,
        chunk_limit: int = 16 * MiB,
        ttl: float = 3600.0,
        shared_ttl: float = 7 * 86400.0,
    ) -> None:
        """``chunk_limit``: the largest chunk accepted from ``Endpoint.read``; a larger one fails the
        computation (EndpointUnavailable). With it, file data held by this service never exceeds
        ``max_concurrent * chunk_limit`` bytes whatever an endpoint does. ``ttl``/``shared_ttl``:
        how long L1/L2 keep a value; checksums of a version never go wrong, so these only bound
        the space used."""
        if max_concurrent < 1:
            raise ValueError("max_concurrent must be at least 1")
        self._endpoints = endpoints
        self._cache = cache
        self.shared = shared
        self.timeout = timeout
        self.chunk_limit = chunk_limit
        self.ttl = ttl
        self.shared_ttl = shared_ttl
        self._slots = asyncio.Semaphore(max_concurrent)
        self._inflight: dict[FileVersion, _Job] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._store_failing: set[str] = set()
        self.computations = 0
        """Streamed passes started (tests assert "computed once")."""
        self.bytes_hashed = 0
        self.store_failures = 0

    # -- the question --------------------------------------------------------------------------

    async def checksums(
        self,
        endpoint_name: str,
        endpoint_path: str,
        stat: StatResult,
        wanted: Sequence[str],
        compute: bool = True,
    ) -> dict[str, str]:
        """Every checksum known for this version of the file, {canonical algorithm: canonical hex}.

        It holds each of ``wanted`` (canonical names) unless that cannot be had: ``compute`` is
        False, or the endpoint cannot stream reads. Raises ValueError for a collection or an
        unknown algorithm, KeyError for an unknown endpoint, and the endpoint's errors from a read
        (PathNotFound, EndpointUnavailable, :class:`ChecksumTimeout`, :class:`FileChanged`).
        """
        if stat.is_dir:
            raise ValueError(f"{endpoint_path} is a collection: it has no checksum")
        unknown = [a for a in wanted if a not in ALGORITHMS]
        if unknown:
            raise ValueError(f"unsupported checksum algorithms: {', '.join(unknown)}")
        endpoint = self._endpoints[endpoint_name]
        version = FileVersion.of(endpoint_name, endpoint_path, stat)

        known = self._from_l1(version)
        if all(a in known for a in wanted):
            return known
        learned = await self._from_l2(version)
        if learned:
            known = {**learned, **known}
            self._to_l1(version, known)
        if all(a in known for a in wanted):
            return known
        stored = await self._stored(endpoint, endpoint_path, stat)
        if set(stored) - set(known):
            known = {**stored, **known}
            self._to_l1(version, known)
            self._to_l2(version, known)
        if all(a in known for a in wanted) or not compute or not endpoint.capabilities.read_stream:
            return known
        try:
            computed = await self._computed(endpoint, version)
        except NotImplementedError:  # the capability said it could read; it could not
            return known
        for algorithm, value in computed.items():
            if algorithm in known and known[algorithm] != value:
                log.warning(
                    "%s:%s: %s held %s, the bytes have %s; using the computed value",
                    endpoint_name,
                    endpoint_path,
                    algorithm,
                    known[algorithm],
                    value,
                )
        return {**known, **computed}

    async def verify(
        self, endpoint_name: str, endpoint_path: str, stat: StatResult, claims: Mapping[str, str]
    ) -> list[str]:
        """The mismatches between what a client declared (``claims``, canonical) and the stored
        bytes, computing what is needed; empty when everything declared matches."""
        actual = await self.checksums(
            endpoint_name, endpoint_path, stat, [a for a in claims if a in ALGORITHMS]
        )
        return compare(claims, actual)

    def forget(self, endpoint_name: str, endpoint_path: str) -> None:
        """Drop what is known of a file that geofed is writing or deleting: L1, L2, and the result
        of a computation still running (it may be reading the old bytes)."""
        if self._cache is not None:
            self._cache.discard((endpoint_name, endpoint_path))
        for version, job in list(self._inflight.items()):
            if version.endpoint == endpoint_name and version.path == endpoint_path:
                job.stale = True
                del self._inflight[version]
        if self.shared is not None:
            self._spawn(self.shared.cache.delete([sharedvalue.shared_key(endpoint_name, endpoint_path)]))

    # -- the cheap sources ---------------------------------------------------------------------

    def _from_l1(self, version: FileVersion) -> dict[str, str]:
        if self._cache is None or not version.cacheable:
            return {}
        entry = self._cache.get((version.endpoint, version.path))
        if entry is None or entry.version != version:
            return {}
        return dict(entry.values)

    def _to_l1(self, version: FileVersion, values: Mapping[str, str]) -> None:
        if self._cache is not None and version.cacheable:
            ordered = tuple((a, values[a]) for a in ALGORITHMS if a in values)
            self._cache.put((version.endpoint, version.path), CachedChecksums(version, ordered), self.ttl)

    async def _from_l2(self, version: FileVersion) -> dict[str, str]:
        if self.shared is None or not version.cacheable:
            return {}
        data = await self.shared.cache.get(version.shared_key)
        return {} if data is None else sharedvalue.decode(data, version) or {}

    def _to_l2(self, version: FileVersion, values: Mapping[str, str]) -> None:
        if self.shared is not None and version.cacheable:
            value = sharedvalue.encode(version, values)
            self._spawn(self.shared.cache.set(version.shared_key, value, self.shared_ttl))

    async def _stored(self, endpoint: Endpoint, path: str, stat: StatResult) -> dict[str, str]:
        """What the endpoint holds, validated: a value that is not canonical hex is dropped (it was
        not written by geofed, or the store mangled it). Failures only mean "nothing stored";
        PathNotFound is passed on (reading would fail the same way)."""
        try:
            raw = await endpoint.stored_checksums(path, stat)
        except PathNotFound:
            raise
        except EndpointError as exc:
            log.debug("stored checksums of %s:%s unavailable: %s", endpoint.name, path, exc.reason)
            return {}
        except Exception:
            log.exception("stored_checksums on %s raised", endpoint.name)
            return {}
        values: dict[str, str] = {}
        for algorithm, value in raw.items():
            try:
                values[algorithm] = canonical_hex(algorithm, value)
            except ValueError:
                log.debug("ignoring stored %s of %s:%s: %r", algorithm, endpoint.name, path, value)
        return values

    # -- computing -----------------------------------------------------------------------------

    async def _computed(self, endpoint: Endpoint, version: FileVersion) -> dict[str, str]:
        """The four checksums from one read, joining a computation of this version already running.
        The computation is shielded: a client that gives up does not cancel it for the others (and
        its result is kept, for that client's retry)."""
        job = self._inflight.get(version)
        if job is None:
            job = _Job(version, asyncio.get_running_loop().create_future())
            job.future.add_done_callback(_retrieve)
            self._inflight[version] = job
            self._track(asyncio.create_task(self._run(endpoint, job), name=f"checksum {endpoint.name}"))
        return dict(await asyncio.shield(job.future))

    async def _run(self, endpoint: Endpoint, job: _Job) -> None:
        version = job.version
        deadline = asyncio.timeout(self.timeout)
        try:
            async with deadline, self._slots:
                values = await self._hash(endpoint, version)
        except TimeoutError as exc:
            if deadline.expired():
                reason = f"checksum of {version.path} not computed within {self.timeout:g} s"
                job.future.set_exception(ChecksumTimeout(endpoint.name, reason))
            else:  # an endpoint's own timeout that escaped its error contract
                job.future.set_exception(exc)
            return
        except asyncio.CancelledError:
            job.future.cancel()
            raise
        except Exception as exc:
            job.future.set_exception(exc)
            return
        finally:
            if self._inflight.get(version) is job:
                del self._inflight[version]
        if not job.stale:
            self._to_l1(version, values)
            self._to_l2(version, values)
        log.info(
            "computed checksums of %s:%s (%d bytes in %.1f s)",
            endpoint.name,
            version.path,
            version.size or 0,
            time.monotonic() - job.started,
        )
        job.future.set_result(values)
        if not job.stale:  # values of bytes since overwritten must not be attached to the new ones
            await self._store(endpoint, version, values)

    async def _hash(self, endpoint: Endpoint, version: FileVersion) -> dict[str, str]:
        """One streamed pass; only the chunk being hashed is held."""
        self.computations += 1
        hasher = MultiHasher(ALGORITHMS)
        stream = endpoint.read(version.path)
        try:
            async for chunk in stream:
                if len(chunk) > self.chunk_limit:
                    raise EndpointUnavailable(
                        endpoint.name,
                        f"read returned a chunk of {len(chunk)} bytes (limit {self.chunk_limit})",
                    )
                if len(chunk) >= INLINE_BELOW:
                    await asyncio.to_thread(hasher.update, chunk)
                else:
                    hasher.update(chunk)
                self.bytes_hashed += len(chunk)
                del chunk  # not kept while the next one is fetched
        finally:
            aclose = getattr(stream, "aclose", None)
            if aclose is not None:  # release the endpoint's connection or file handle now
                await aclose()
        if version.size is not None and hasher.size != version.size:
            raise FileChanged(
                endpoint.name, f"{version.path}: read {hasher.size} bytes, the stat said {version.size}"
            )
        return hasher.hexdigests()

    async def _store(self, endpoint: Endpoint, version: FileVersion, values: dict[str, str]) -> None:
        """Write the values back to the endpoint; a failure is logged once per endpoint (until a
        store there succeeds again), never raised: the client already has its answer."""
        try:
            async with asyncio.timeout(self.timeout):
                await endpoint.store_checksums(version.path, dict(values))
        except Exception as exc:
            self.store_failures += 1
            first = endpoint.name not in self._store_failing
            self._store_failing.add(endpoint.name)
            (log.warning if first else log.debug)(
                "could not store checksums of %s:%s: %s", endpoint.name, version.path, _describe(exc)
            )
        else:
            self._store_failing.discard(endpoint.name)

    # -- background work -----------------------------------------------------------------------

    def _track(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        """Run an L2 write without making the request wait; drop it when too many are queued."""
        if len(self._tasks) >= _MAX_PENDING_WRITES:
            coro.close()
            return
        self._track(asyncio.create_task(coro))

    async def wait_idle(self) -> None:
        """Wait until computations, write-backs and L2 writes started so far have finished."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def aclose(self) -> None:
        """Cancel what is still running (waiters get CancelledError)."""
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*list(self._tasks), return_exceptions=True)


def _retrieve(future: asyncio.Future[dict[str, str]]) -> None:
    """Mark a job's exception as seen: when every waiter has left, nobody else would."""
    if not future.cancelled():
        future.exception()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, EndpointError):
        return exc.reason
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
