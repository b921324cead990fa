"""Bulk replication: more replicas of federated files on one chosen endpoint, through the copy engine.

An administrator starts a *job* (``POST /_geofed/admin/replicate``, ``geofed replicate``) naming
federated paths -- files, or collections whose files are found with the federated listing (every
level below with ``recursive``) -- and the endpoint that is to hold a replica of each file. The job
runs inside the geofed process: a walker finds the files, ``parallel`` workers handle them, and
every copy goes through the federation's :class:`~geofed.transfer.engine.TransferEngine` (so its
global ``transfer.max_concurrent`` and bandwidth limits hold for replication and HTTP-TPC together).

For each file:

* the destination endpoint must serve the path (``Namespace.translate``), else the file *fails*
  ("endpoint X does not serve this path");
* when the destination already holds a replica of the same size whose adler32 (from the checksum
  service: cached, stored, or computed by reading it once) is the one of the closest other replica,
  the file is *skipped* ("already present, adler32 matches"): a job run again skips what it did;
* when it holds a replica of another size or checksum, that replica is overwritten by a fresh copy
  (*done*, "re-copied", with what differed);
* otherwise the file is copied from its replica closest to the destination endpoint (the others are
  tried in turn when it cannot be read), verified end to end (the engine compares the source's
  checksums with the bytes read and with what the destination holds afterwards).

Jobs are kept in this process only (the last :data:`MAX_KEPT` finished ones, for their reports),
not across a restart, not shared between workers or front ends: run a job again to resume it. Each
file is handled on the configuration in service when its turn comes, so a reload in the middle of a
job applies to the files after it.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import logging
import secrets
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from geofed.errors import BadRequest, Conflict, EndpointError, PathNotFound
from geofed.federation.listing import ListingOutcome
from geofed.federation.locator import LocateResult, Want
from geofed.federation.locator import Replica as Located
from geofed.federation.paths import join, normalise
from geofed.geo import UNPLACED, ClientPlacement
from geofed.transfer.engine import EndpointDestination, Replica, ReplicaSource, Transfer, TransferFailed

if TYPE_CHECKING:
    from geofed.live import Generation
    from geofed.runtime import Federation

log = logging.getLogger("geofed.replication")

DEFAULT_PARALLEL = 4
MAX_PARALLEL = 64
MAX_PATHS = 100_000
MAX_KEPT = 50
"""Finished jobs whose reports are kept (the oldest are forgotten first)."""
ALGORITHM = "adler32"
"""The checksum compared to decide whether a replica is already there (the one WLCG tools use)."""


@dataclass(frozen=True, slots=True)
class JobRequest:
    """What to replicate, as posted (paths normalised, duplicates dropped)."""

    paths: tuple[str, ...]
    to: str
    recursive: bool = False
    parallel: int = DEFAULT_PARALLEL

    @classmethod
    def from_json(cls, body: object) -> JobRequest:
        """The request of a JSON body ``{"paths": [...], "to": "...", "recursive": …, "parallel": N}``;
        BadRequest saying what is wrong."""
        if not isinstance(body, dict):
            raise BadRequest('the body must be a JSON object: {"paths": [...], "to": "<endpoint>"}')
        unknown = sorted(set(body) - {"paths", "to", "recursive", "parallel"})
        if unknown:
            raise BadRequest(f"unknown fields: {', '.join(unknown)} (use paths, to, recursive, parallel)")
        paths, to = body.get("paths"), body.get("to")
        if not isinstance(paths, list) or not paths or not all(isinstance(p, str) for p in paths):
            raise BadRequest('"paths" must be a non-empty list of federated paths')
        if len(paths) > MAX_PATHS:
            raise BadRequest(f"at most {MAX_PATHS} paths per job")
        if not isinstance(to, str) or not to:
            raise BadRequest('"to" must name an endpoint')
        recursive = body.get("recursive", False)
        if not isinstance(recursive, bool):
            raise BadRequest('"recursive" must be true or false')
        parallel = body.get("parallel", DEFAULT_PARALLEL)
        if isinstance(parallel, bool) or not isinstance(parallel, int) or not 1 <= parallel <= MAX_PARALLEL:
            raise BadRequest(f'"parallel" must be a number from 1 to {MAX_PARALLEL}')
        normalised: dict[str, None] = {}
        for path in paths:
            try:
                normalised[normalise(path.strip())] = None
            except BadRequest as exc:
                raise BadRequest(f"path {path!r}: {exc.detail}") from None
        return cls(tuple(normalised), to, recursive, parallel)

    def as_json(self) -> dict[str, Any]:
        return {
            "paths": list(self.paths),
            "to": self.to,
            "recursive": self.recursive,
            "parallel": self.parallel,
        }


@dataclass(frozen=True, slots=True)
class Outcome:
    """What became of one file (or of a path or listing that could not be handled)."""

    path: str
    status: str
    """``done``, ``skipped`` or ``failed``."""
    reason: str
    bytes: int = 0
    source: str | None = None
    adler32: str | None = None
    file: bool = True
    """False for a path that is not a file found: a missing path, an incomplete listing."""

    def as_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"path": self.path, "reason": self.reason}
        if self.status == "done":
            out.update({"bytes": self.bytes, "from": self.source, "adler32": self.adler32})
        return out


@dataclass(slots=True)
class Current:
    """A file being handled now."""

    path: str
    action: str
    """``locating``, ``comparing``, ``creating collections``, ``copying`` or ``re-copying``."""
    source: str | None = None
    size: int | None = None
    transfer: Transfer | None = None

    @property
    def transferred(self) -> int:
        return 0 if self.transfer is None else self.transfer.transferred

    def as_json(self) -> dict[str, Any]:
        size = self.size
        if size is None and self.transfer is not None:
            size = self.transfer.total
        return {
            "path": self.path,
            "action": self.action,
            "from": self.source,
            "bytes": self.transferred,
            "size": size,
        }


class _Superseded(Exception):
    """The copy was cancelled because the configuration it ran on was replaced: try again."""


class ReplicationJob:
    """One job: its request, its progress, and the outcome of each file."""

    def __init__(self, job_id: str, request: JobRequest, by: str) -> None:
        self.id = job_id
        self.request = request
        self.by = by
        self.state = "running"
        """``running``, then ``finished`` or ``cancelled``."""
        self.started = time.time()
        self.ended: float | None = None
        self.walking = True
        self.found = 0
        self.bytes_found = 0
        self.bytes_copied = 0
        self.handled = 0
        """Files found whose outcome is known."""
        self.outcomes: dict[str, list[Outcome]] = {"done": [], "skipped": [], "failed": []}
        self.current: dict[str, Current] = {}
        self.collections: set[str] = set()
        """Collections of the destination known to exist (created by this job, or found there)."""
        self.collections_lock = asyncio.Lock()
        self.task: asyncio.Task[None] | None = None

    @property
    def running(self) -> bool:
        return self.state == "running"

    def record(self, outcome: Outcome) -> None:
        self.outcomes[outcome.status].append(outcome)
        self.bytes_copied += outcome.bytes
        if outcome.file:
            self.handled += 1
        if outcome.status == "failed":
            log.warning("replication %s: %s: %s", self.id, outcome.path, outcome.reason)

    def status(self, *, items: bool = True) -> dict[str, Any]:
        """The progress document (``GET /_geofed/admin/replicate/<id>``); without ``items``, the
        counts only (no list of every file done, skipped or failed)."""
        counts = {name: len(values) for name, values in self.outcomes.items()}
        running = sum(c.transferred for c in self.current.values())
        document: dict[str, Any] = {
            "id": self.id,
            "state": self.state,
            "request": self.request.as_json(),
            "by": self.by,
            "started": self.started,
            "ended": self.ended,
            "seconds": round((self.ended or time.time()) - self.started, 3),
            "walking": self.walking,
            "counts": {
                "found": self.found,
                **counts,
                "handled": self.handled,
                "pending": max(0, self.found - self.handled - len(self.current)),
            },
            "bytes": {"copied": self.bytes_copied + running, "found": self.bytes_found},
            "current": [c.as_json() for c in self.current.values()],
        }
        if items:
            document.update({name: [o.as_json() for o in values] for name, values in self.outcomes.items()})
        return document


class Replicator:
    """The replication jobs of this process."""

    def __init__(self, current: Callable[[], Generation]) -> None:
        self._current = current
        self.jobs: dict[str, ReplicationJob] = {}

    def start(self, request: JobRequest, by: str) -> tuple[ReplicationJob, bool]:
        """Start a job (or return the one with the same request still running: False); BadRequest
        or Conflict when the destination cannot take replicas at all."""
        for job in self.jobs.values():
            if job.running and job.request == request:
                return job, False
        federation = self._current().federation
        self._check_destination(federation, request.to)
        job = ReplicationJob(secrets.token_hex(6), request, by)
        self.jobs[job.id] = job
        self._forget_old()
        # A context of its own: the job must not run pinned to the generation of the request that
        # started it (each file uses the configuration in service when its turn comes).
        job.task = asyncio.get_running_loop().create_task(
            self._run(job), name=f"replication {job.id}", context=contextvars.Context()
        )
        log.info(
            "replication %s started by %s: %d paths to %s%s, %d in parallel",
            job.id,
            by,
            len(request.paths),
            request.to,
            " (recursive)" if request.recursive else "",
            request.parallel,
        )
        return job, True

    @staticmethod
    def _check_destination(federation: Federation, to: str) -> None:
        endpoint = federation.endpoints.get(to)
        if endpoint is None:
            configured = ", ".join(federation.endpoints)
            raise BadRequest(f"no endpoint named {to!r} (configured: {configured})")
        if not endpoint.settings.writable:
            raise BadRequest(f"endpoint {to} is not writable (endpoints[].writable is false)")
        if not endpoint.capabilities.upload_stream:
            raise BadRequest(f"endpoint {to} cannot take copies (a {endpoint.settings.kind} endpoint)")
        why = federation.health.unwritable.get(to)
        if why is not None:
            raise Conflict(f"endpoint {to} cannot take new data now: {why}")

    def _forget_old(self) -> None:
        finished = [job for job in self.jobs.values() if not job.running]
        for job in finished[: max(0, len(finished) - MAX_KEPT)]:
            del self.jobs[job.id]

    async def cancel(self, job: ReplicationJob) -> None:
        task = job.task
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    async def aclose(self) -> None:
        """Cancel every running job (at shutdown); each cancels and cleans up its copies."""
        await asyncio.gather(*(self.cancel(job) for job in list(self.jobs.values())))

    # -- running a job ------------------------------------------------------------------------------

    async def _run(self, job: ReplicationJob) -> None:
        queue: asyncio.Queue[str | None] = asyncio.Queue(maxsize=job.request.parallel * 4)
        try:
            async with asyncio.TaskGroup() as group:
                workers = [group.create_task(self._work(job, queue)) for _ in range(job.request.parallel)]
                try:
                    await self._walk(job, queue)
                finally:
                    job.walking = False
                for _ in workers:
                    await queue.put(None)
        except asyncio.CancelledError:
            job.state = "cancelled"
            raise
        except Exception:  # a bug: say so in the job rather than leave it "running" forever
            log.exception("replication %s failed", job.id)
            job.record(Outcome("/", "failed", "internal error (see the geofed log)", file=False))
            job.state = "finished"
        else:
            job.state = "finished"
        finally:
            job.ended = time.time()
            job.current.clear()
            counts = {name: len(values) for name, values in job.outcomes.items()}
            log.info(
                "replication %s %s: %d done, %d skipped, %d failed, %d bytes copied",
                job.id,
                job.state,
                counts["done"],
                counts["skipped"],
                counts["failed"],
                job.bytes_copied,
            )

    async def _walk(self, job: ReplicationJob, queue: asyncio.Queue[str | None]) -> None:
        """Put every file of the request on ``queue`` (once each)."""
        seen: set[str] = set()

        async def found(path: str, size: int | None) -> None:
            if path in seen:
                return
            seen.add(path)
            job.found += 1
            job.bytes_found += size or 0
            await queue.put(path)

        for path in job.request.paths:
            generation = self._current()
            federation = generation.federation
            result = await federation.locator.locate(path, Want.ALL, UNPLACED, use_cache=False)
            files = result.files
            if files:
                await found(path, files[0].stat.size)
                continue
            if not (result.is_dir or federation.namespace.is_mount_point(path)):
                job.record(Outcome(path, "failed", _missing(result), file=False))
                continue
            stack = [path]
            while stack:
                directory = stack.pop()
                outcome = ListingOutcome()
                children: list[tuple[str, bool, int | None]] = []
                # the listing is read whole first: an endpoint's listing is not held open meanwhile
                async for entry in self._current().frontend.listings.entries(directory, outcome):
                    children.append((join(directory, entry.name), entry.stat.is_dir, entry.stat.size))
                for endpoint, reason in sorted(outcome.errors.items()):
                    job.record(
                        Outcome(directory, "failed", f"listing incomplete: {endpoint}: {reason}", file=False)
                    )
                subdirectories = []
                for child, is_dir, size in sorted(children):
                    if not is_dir:
                        await found(child, size)
                    elif job.request.recursive:
                        subdirectories.append(child)
                stack.extend(reversed(subdirectories))

    async def _work(self, job: ReplicationJob, queue: asyncio.Queue[str | None]) -> None:
        while True:
            path = await queue.get()
            if path is None:
                return
            current = Current(path, "locating")
            job.current[path] = current
            try:
                job.record(await self._replicate(job, path, current))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.exception("replication %s: %s failed with an internal error", job.id, path)
                job.record(Outcome(path, "failed", f"internal error: {type(exc).__name__}: {exc}"))
            finally:
                job.current.pop(path, None)

    async def _replicate(self, job: ReplicationJob, path: str, current: Current) -> Outcome:
        """One file, on the configuration in service (once more when a reload cancelled its copy)."""
        for attempt in range(2):
            generation = self._current()
            try:
                return await _File(job, path, current, generation.federation, self._current, generation).run()
            except _Superseded:
                if attempt:
                    break
                log.info("replication %s: %s: the configuration was replaced, trying again", job.id, path)
        return Outcome(path, "failed", "the copy was cancelled twice by configuration reloads")


class _Failed(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


class _File:
    """The steps for one file of a job."""

    def __init__(
        self,
        job: ReplicationJob,
        path: str,
        current: Current,
        federation: Federation,
        in_service: Callable[[], Generation],
        generation: Generation,
    ) -> None:
        self.job = job
        self.path = path
        self.current = current
        self.fed = federation
        self.to = job.request.to
        self._in_service = in_service
        self._generation = generation

    def failed(self, reason: str) -> Outcome:
        return Outcome(self.path, "failed", reason)

    async def run(self) -> Outcome:
        try:
            return await self._run()
        except _Failed as exc:
            return self.failed(exc.reason)

    async def _run(self) -> Outcome:
        fed, to, path = self.fed, self.to, self.path
        endpoint = fed.endpoints.get(to)
        if endpoint is None:
            return self.failed(f"endpoint {to} is no longer configured")
        local = fed.namespace.translate(path, to)
        if local is None:
            return self.failed(f"endpoint {to} does not serve this path")
        down = fed.health.unavailable.get(to)
        if down is not None:
            return self.failed(f"endpoint {to} is unavailable: {down}")
        self.current.action = "locating"
        result = await fed.locator.locate(path, Want.ALL, UNPLACED, use_cache=False)
        if not result.files:
            if result.is_dir:
                return self.failed("it is a collection now")
            return self.failed(_missing(result))
        here = next((r for r in result.files if r.endpoint == to), None)
        others = tuple(r for r in result.files if r.endpoint != to)
        sources = self._sources(result, others)
        if not sources:
            if here is not None and not others:
                return Outcome(path, "skipped", f"already present (the only replica is on {to})")
            reasons = "; ".join(f"{e}: {why}" for e, why in self._unreadable(result, others))
            return self.failed(f"no other replica can be read now{f' ({reasons})' if reasons else ''}")
        source = sources[0]
        differs: str | None = None
        if here is not None:
            self.current.action = "comparing"
            differs = await self._compare(here, source)
            if differs is None:
                return Outcome(path, "skipped", f"already present, {ALGORITHM} matches")
        unwritable = fed.health.unwritable.get(to)
        if unwritable is not None:
            return self.failed(f"endpoint {to} cannot take new data now: {unwritable}")
        size = source.stat.size
        if size is not None and not fed.space.fits(to, size):
            return self.failed(f"not enough space on {to} for {size} bytes")
        await self._make_parent(local)
        return await self._copy(sources, EndpointDestination(endpoint, local, path), differs)

    async def _make_parent(self, local: str) -> None:
        """Create the destination's parent collections, one at a time for the whole job: uploads
        running in parallel into one new collection would each create it at once (Apache answers
        403 to all MKCOLs but one)."""
        parent = local.rsplit("/", 1)[0] or "/"
        if parent == "/" or parent in self.job.collections:
            return
        async with self.job.collections_lock:
            if parent in self.job.collections:
                return
            self.current.action = "creating collections"
            try:
                await self.fed.endpoints[self.to].makedirs(parent)
            except EndpointError as exc:
                raise _Failed(f"cannot create the collection {parent} on {self.to}: {exc.reason}") from None
            except NotImplementedError:
                pass  # no collections there (an object store): the upload needs none
            self.job.collections.add(parent)

    def _placement(self) -> ClientPlacement:
        """The destination endpoint's place: the replica closest to it is read."""
        return ClientPlacement(self.fed.locations.get(self.to), None, f"endpoint {self.to}")

    def _sources(self, result: LocateResult, others: Sequence[Located]) -> list[Replica]:
        ranking = self.fed.rank(self._placement(), dataclasses.replace(result, replicas=tuple(others)))
        stats = {(r.endpoint, r.path): r.stat for r in others}
        sources = []
        for candidate in ranking.accepted:
            endpoint = self.fed.endpoints[candidate.endpoint]
            stat = stats.get((candidate.endpoint, candidate.path))
            if stat is not None and endpoint.capabilities.read_stream:
                sources.append(Replica(endpoint, candidate.path, stat))
        return sources

    def _unreadable(self, result: LocateResult, others: Sequence[Located]) -> list[tuple[str, str]]:
        ranking = self.fed.rank(self._placement(), dataclasses.replace(result, replicas=tuple(others)))
        out = [(r.endpoint, r.reason) for r in ranking.rejected]
        out += [(name, why) for name, why in result.unknown]
        return out

    async def _compare(self, here: Located, source: Replica) -> str | None:
        """None when the destination's replica is the source's; else what differs."""
        to, name = self.to, source.endpoint.name
        if here.stat.size is not None and source.stat.size is not None and here.stat.size != source.stat.size:
            return f"the replica on {to} has {here.stat.size} bytes, the one on {name} {source.stat.size}"
        try:
            expected = await self.fed.checksums.checksums(name, source.path, source.stat, (ALGORITHM,))
        except (EndpointError, ValueError) as exc:
            raise _Failed(f"cannot get the {ALGORITHM} of the replica on {name}: {_text(exc)}") from None
        try:
            actual = await self.fed.checksums.checksums(to, here.path, here.stat, (ALGORITHM,))
        except PathNotFound:
            return f"the replica on {to} disappeared meanwhile"
        except (EndpointError, ValueError) as exc:
            return f"the {ALGORITHM} of the replica on {to} cannot be had ({_text(exc)})"
        if ALGORITHM not in expected:
            raise _Failed(f"the {ALGORITHM} of the replica on {name} cannot be had")
        if ALGORITHM not in actual:
            return f"the {ALGORITHM} of the replica on {to} cannot be had"
        if expected[ALGORITHM] == actual[ALGORITHM]:
            return None
        return (
            f"the replica on {to} differs ({ALGORITHM} {actual[ALGORITHM]} there, "
            f"{expected[ALGORITHM]} on {name})"
        )

    async def _copy(
        self, sources: list[Replica], destination: EndpointDestination, differs: str | None
    ) -> Outcome:
        fed, path = self.fed, self.path
        first = sources[0]
        self.current.action = "re-copying" if differs else "copying"
        self.current.source = first.endpoint.name
        self.current.size = first.stat.size
        await _invalidate(fed, path, writing=True)
        transfer = fed.transfers.start(
            ReplicaSource(tuple(sources), path, fed.checksums), destination, verify=True
        )
        self.current.transfer = transfer
        try:
            result = await transfer.wait()
        except TransferFailed as exc:
            if transfer.state == "cancelled" and self._in_service() is not self._generation:
                raise _Superseded from None
            return self.failed(f"{'re-copy' if differs else 'copy'} failed: {exc}")
        except asyncio.CancelledError:
            await transfer.abort("the replication job was cancelled")
            raise
        finally:
            self.current.transfer = None
            with contextlib.suppress(Exception):
                await _invalidate(fed, path)
        adler32 = result.checksums.get(ALGORITHM)
        origin = result.source.split(":", 1)[0] or first.endpoint.name
        summary = f"{result.size} bytes, {ALGORITHM} {adler32}" if adler32 else f"{result.size} bytes"
        if differs:
            reason = f"re-copied from {origin}: {differs}; overwritten ({summary})"
        else:
            reason = f"copied from {origin} ({summary})"
        return Outcome(path, "done", reason, result.size, origin, adler32)


async def _invalidate(fed: Federation, path: str, *, writing: bool = False) -> None:
    """As a COPY does: what is cached about ``path`` is dropped before and after it is written."""
    await fed.locator.invalidate_everywhere(path, writing=writing)
    fed.forget_checksums(path)
    fed.claims.discard(path)


def _missing(result: LocateResult) -> str:
    if result.unknown:
        unknown = "; ".join(f"{name}: {why}" for name, why in result.unknown)
        return f"not found on the endpoints that answered (not known: {unknown})"
    return "no such file or collection"


def _text(exc: BaseException) -> str:
    return exc.reason if isinstance(exc, EndpointError) else str(exc)
