"""The steps of one copy: open the source, stream it to the destination, verify, clean up.

:class:`Job` runs one copy once the engine (:mod:`~geofed.transfer.engine`) gave it a slot: it
opens the source -- the replicas of a federated file, best first (the next one is tried when one
fails before its first byte), or a remote URL (GET) -- feeds the destination through the
:class:`~geofed.transfer.pipeline.Pipe` -- an endpoint upload, or a remote PUT -- checks the size
and checksums before the last chunk is handed over and asks the destination what it holds
afterwards. Whatever fails, :meth:`Job.clean_up` removes what the copy left at the destination.

Apart from the engine, which only schedules, counts and reports copies: this is what one copy
does, and how its failures are turned into :class:`~geofed.transfer.model.TransferFailed`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Mapping
from typing import TYPE_CHECKING

from geofed.checksums import MultiHasher
from geofed.errors import EndpointError, PathNotFound
from geofed.transfer.model import (
    EndpointDestination,
    RemoteDestination,
    RemoteSource,
    Replica,
    ReplicaSource,
    TransferFailed,
    TransferResult,
)
from geofed.transfer.pipeline import Pipe, Watchdog
from geofed.transfer.remote import RemoteError, RemoteSession, redact

if TYPE_CHECKING:
    from geofed.checksums import ChecksumService
    from geofed.transfer.engine import Transfer, TransferEngine

log = logging.getLogger("geofed.transfer")

CLEANUP_TIMEOUT = 30.0


class Job:
    """The steps of one copy, and what they leave to clean up when it fails."""

    def __init__(
        self, engine: TransferEngine, transfer: Transfer, http: RemoteSession | None, watchdog: Watchdog
    ) -> None:
        self.engine = engine
        self.transfer = transfer
        self.http = http
        self.watchdog = watchdog
        self.hasher = MultiHasher(engine.settings.checksums)
        self.expected: dict[str, str] = {}
        self.expected_from = ""
        self.size: int | None = None
        self.read = 0
        self.source_name = ""
        self.written = False
        """The destination holds the copy (an upload completed, a PUT was answered 2xx)."""
        self.put_started = False
        self.succeeded = False
        self._pipe: Pipe | None = None
        self._stream: AsyncIterator[bytes] | None = None

    # -- the steps --------------------------------------------------------------------------

    async def run(self, started: float) -> TransferResult:
        transfer = self.transfer
        self._stream = await self._open_source()
        transfer.total = self.size
        pipe = Pipe(
            self._counted(self._stream),
            self.engine.settings.chunk_size,
            self.hasher,
            self.engine._bucket,
            self.watchdog.kick,
            self._sent,
        )
        self._pipe = pipe
        pipe.start()
        body = pipe.body(self._final_check)
        try:
            await self._write(body, pipe)
        finally:
            await body.aclose()
        await pipe.aclose()
        computed = self.hasher.hexdigests()
        await self._check_destination(computed)
        self.succeeded = True
        return TransferResult(self.read, computed, time.monotonic() - started, self.source_name)

    async def _counted(self, stream: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
        async for piece in stream:
            self.read += len(piece)
            yield piece

    def _sent(self, count: int) -> None:
        self.transfer.transferred += count
        self.engine.counters["bytes"] += count
        self.watchdog.kick()

    def _final_check(self) -> None:
        """Everything was read and hashed: the size and the checksums must be the source's."""
        if self.size is not None and self.read != self.size:
            raise TransferFailed(
                f"source {self.source_name}: read {self.read} bytes, expected {self.size} "
                "(the file changed or the stream was cut)"
            )
        if self.transfer.verify and self.expected:
            mismatches = _mismatches(self.expected, self.hasher.hexdigests())
            if mismatches:
                raise TransferFailed(
                    f"checksum mismatch between the source ({self.expected_from}) and the bytes read: "
                    f"{'; '.join(mismatches)}; nothing was stored"
                )

    async def _open_source(self) -> AsyncIterator[bytes]:
        source = self.transfer.source
        if isinstance(source, RemoteSource):
            return await self._open_remote(source)
        return await self._open_replica(source)

    async def _open_remote(self, source: RemoteSource) -> AsyncIterator[bytes]:
        http = self.http
        assert http is not None
        self.source_name = redact(source.url)
        if self.transfer.verify:
            try:
                info = await http.head(source.url, source.headers)
            except RemoteError as exc:
                log.debug("HEAD of the source failed (the GET will say more): %s", exc)
            else:
                if info.checksums:
                    self.expected = info.checksums
                    self.expected_from = f"Digest of {self.source_name}"
        try:
            body = await http.get(source.url, source.headers)
        except RemoteError as exc:
            raise TransferFailed(f"source {exc.message}") from None
        self.size = body.size
        self.source_name = body.url
        return _remote_errors(body.chunks, "source")

    async def _open_replica(self, source: ReplicaSource) -> AsyncIterator[bytes]:
        failures: list[str] = []
        for replica in source.replicas:
            name = f"{replica.endpoint.name}:{replica.path}"
            stream = replica.endpoint.read(replica.path)
            try:
                first = await anext(stream, None)
            except (EndpointError, NotImplementedError) as exc:
                failures.append(f"{replica.endpoint.name}: {exc}")
                await _close(stream)
                continue
            except BaseException:
                await _close(stream)
                raise
            self.source_name = name
            self.size = replica.stat.size
            if self.transfer.verify and source.checksums is not None:
                self.expected = await _known_checksums(source.checksums, replica)
                self.expected_from = f"checksums known for {name}"
            return _endpoint_errors(first, stream, "source")
        detail = "; ".join(failures) or "no replica"
        raise TransferFailed(f"source {source.label}: cannot be read ({detail})")

    async def _write(self, body: AsyncIterator[bytes], pipe: Pipe) -> None:
        destination = self.transfer.destination
        if isinstance(destination, EndpointDestination):
            endpoint = destination.endpoint
            try:
                await endpoint.upload(destination.path, body)
            except EndpointError as exc:
                if pipe.error is not None:
                    raise _as_failure(pipe.error) from None
                raise TransferFailed(f"destination {exc}; nothing was stored") from None
            except NotImplementedError as exc:
                raise TransferFailed(f"destination {endpoint.name}: {exc}") from None
            self.written = True
            return
        http = self.http
        assert http is not None
        self.put_started = True

        def hop() -> AsyncIterator[bytes]:
            return _once(body)

        try:
            await http.put(destination.url, destination.headers, hop, self.size, lambda: pipe.started)
        except RemoteError as exc:
            if pipe.error is not None:
                raise _as_failure(pipe.error) from None
            raise TransferFailed(f"destination {exc.message}") from None
        self.written = True

    async def _check_destination(self, computed: dict[str, str]) -> None:
        """Ask the destination what it holds now; store the checksums with an endpoint's copy."""
        destination = self.transfer.destination
        if isinstance(destination, EndpointDestination):
            endpoint = destination.endpoint
            name = f"{endpoint.name}:{destination.path}"
            try:
                stat = await endpoint.stat(destination.path)
                if stat is None:
                    raise TransferFailed(f"destination {name}: the copy is not there after the upload")
                if stat.size is not None and stat.size != self.read:
                    raise TransferFailed(
                        f"destination {name}: holds {stat.size} bytes after the upload, {self.read} were sent"
                    )
                if self.transfer.verify:
                    stored = await endpoint.stored_checksums(destination.path, stat)
                    mismatches = _mismatches(stored, computed)
                    if mismatches:
                        differs = "; ".join(mismatches)
                        raise TransferFailed(
                            f"destination {name}: the stored copy's checksum differs: {differs}"
                        )
            except EndpointError as exc:
                raise TransferFailed(f"destination {exc} (after the upload)") from None
            if endpoint.capabilities.store_checksums:
                try:
                    await endpoint.store_checksums(destination.path, dict(computed))
                except (EndpointError, NotImplementedError) as exc:
                    log.warning("could not store the checksums of the copy %s: %s", name, exc)
            return
        if not destination.head_after or not self.transfer.verify:
            return
        http = self.http
        assert http is not None
        try:
            info = await http.head(destination.url, destination.headers)
        except RemoteError as exc:
            log.info("cannot ask the destination about the copy: %s", exc)
            return
        if not 200 <= info.status < 300:
            return  # it cannot say (a pre-signed PUT URL, no HEAD allowed): the PUT's answer stands
        where = redact(destination.url)
        if info.size is not None and info.size != self.read:
            raise TransferFailed(
                f"destination {where}: holds {info.size} bytes after the PUT, {self.read} were sent"
            )
        mismatches = _mismatches(info.checksums, computed)
        if mismatches:
            raise TransferFailed(
                f"destination {where}: checksum of the stored copy differs: {'; '.join(mismatches)}"
            )

    # -- failures -----------------------------------------------------------------------------

    async def clean_up(self) -> None:
        """Stop the pipeline; when the copy did not succeed, remove what it left at the destination.
        Shielded: it runs to the end even when the copy was cancelled."""
        pipe, stream = self._pipe, self._stream
        protect = self.engine.protect
        if pipe is not None:
            await asyncio.shield(protect(pipe.aclose()))
        if stream is not None:
            await asyncio.shield(protect(_close(stream)))
        if self.succeeded:
            return
        work = self._remove_destination()
        if work is not None:
            with contextlib.suppress(TimeoutError, asyncio.CancelledError):
                await asyncio.wait_for(asyncio.shield(protect(work)), CLEANUP_TIMEOUT)

    def _remove_destination(self) -> asyncio.Future[None] | None:
        destination = self.transfer.destination
        if isinstance(destination, EndpointDestination):
            if not self.written:
                return None  # an upload that did not complete leaves nothing
            return asyncio.ensure_future(_delete_endpoint(destination))
        if not self.put_started or (self._pipe is not None and not self._pipe.started and not self.written):
            return None  # no byte reached it: whatever is there was not made by this copy
        http = self.http
        assert http is not None
        return asyncio.ensure_future(_delete_remote(http, destination))


# -- helpers ------------------------------------------------------------------------------------


async def _once(body: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
    """``body`` behind a fresh generator per request hop: a hop that is redirected before sending
    anything leaves ``body`` untouched for the next one."""
    async for chunk in body:
        yield chunk


async def _remote_errors(chunks: AsyncIterator[bytes], role: str) -> AsyncIterator[bytes]:
    try:
        async for chunk in chunks:
            yield chunk
    except RemoteError as exc:
        raise TransferFailed(f"{role} {exc.message}") from None
    finally:
        await _close(chunks)


async def _endpoint_errors(
    first: bytes | None, stream: AsyncIterator[bytes], role: str
) -> AsyncIterator[bytes]:
    try:
        if first:
            yield first
        if first is None:
            return
        async for chunk in stream:
            yield chunk
    except EndpointError as exc:
        raise TransferFailed(f"{role} {exc}") from None
    finally:
        await _close(stream)


async def _close(stream: AsyncIterator[bytes]) -> None:
    aclose = getattr(stream, "aclose", None)
    if aclose is not None:
        with contextlib.suppress(Exception):
            await aclose()


async def _known_checksums(service: ChecksumService, replica: Replica) -> dict[str, str]:
    """What is known of the replica's checksums without reading it (caches, stored values)."""
    try:
        return await service.checksums(replica.endpoint.name, replica.path, replica.stat, (), compute=False)
    except (EndpointError, ValueError, KeyError) as exc:
        log.debug("no known checksums for %s:%s: %s", replica.endpoint.name, replica.path, exc)
        return {}


async def _delete_endpoint(destination: EndpointDestination) -> None:
    try:
        await destination.endpoint.delete(destination.path)
    except PathNotFound:
        pass
    except (EndpointError, NotImplementedError) as exc:
        log.warning(
            "could not remove the failed copy %s:%s: %s", destination.endpoint.name, destination.path, exc
        )


async def _delete_remote(http: RemoteSession, destination: RemoteDestination) -> None:
    await http.delete(destination.url, destination.headers)


def _mismatches(expected: Mapping[str, str], actual: Mapping[str, str]) -> list[str]:
    return [
        f"{algorithm}: expected {value}, the copied bytes have {actual[algorithm]}"
        for algorithm, value in sorted(expected.items())
        if algorithm in actual and actual[algorithm] != value
    ]


def _as_failure(exc: BaseException) -> TransferFailed:
    if isinstance(exc, TransferFailed):
        return exc
    return TransferFailed(f"{type(exc).__name__}: {exc}")
