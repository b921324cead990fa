"""ChecksumService: caches, stored values, one computation per file version, bounds, failures.

The endpoint is an in-memory fake (pure logic; the wire is tested elsewhere)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import tracemalloc
from collections.abc import AsyncIterator
from typing import Any, cast

import pytest

from geofed.checksums import sharedvalue
from geofed.checksums.algorithms import compute
from geofed.checksums.service import CachedChecksums, ChecksumService, ChecksumTimeout, FileChanged, compare
from geofed.checksums.sharedvalue import FileVersion
from geofed.config import EndpointSettings
from geofed.endpoints.base import Capabilities, Endpoint, Entry, StatResult
from geofed.errors import EndpointUnavailable, PathNotFound
from geofed.federation.cache import TTLCache
from geofed.federation.shared import SharedLayer

DATA = b"hello world\n" * 1000
SUMS = compute(DATA)


class FakeEndpoint(Endpoint):
    """Files in a dict, read in chunks; counts reads, can hold them at a gate, can fail stores."""

    capabilities = Capabilities(read_stream=True, store_checksums=True)

    def __init__(self, name: str = "fake", chunk: int = 1000) -> None:
        super().__init__(EndpointSettings(name=name, kind="webdav", url=f"http://{name}.invalid/"))
        self.files: dict[str, bytes] = {}
        self.stored: dict[str, dict[str, str]] = {}
        self.chunk = chunk
        self.reads = 0
        self.active = 0
        self.max_active = 0
        self.gate: asyncio.Event | None = None
        self.store_error: Exception | None = None
        self.store_calls = 0

    def stat_of(self, path: str, mtime: float | None = 1.0, etag: str | None = None) -> StatResult:
        return StatResult(is_dir=False, size=len(self.files[path]), mtime=mtime, etag=etag)

    async def read(self, path: str, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        self.reads += 1
        self.active += 1
        self.max_active = max(self.max_active, self.active)
        try:
            if self.gate is not None:
                await self.gate.wait()
            if path not in self.files:
                raise PathNotFound(self.name, path)
            data = self.files[path]
            for start in range(0, len(data), self.chunk):
                yield data[start : start + self.chunk]
        finally:
            self.active -= 1

    async def stored_checksums(self, path: str, stat: StatResult) -> dict[str, str]:
        return dict(self.stored.get(path, {}))

    async def store_checksums(self, path: str, values: dict[str, str]) -> bool:
        self.store_calls += 1
        if self.store_error is not None:
            raise self.store_error
        self.stored[path] = dict(values)
        return True

    # The rest of the interface, unused here.
    # fmt: off
    async def stat(self, path: str) -> StatResult | None: return None
    def list(self, path: str) -> AsyncIterator[Entry]: raise NotImplementedError
    def sign_url(self, method: str, path: str, lifetime: float) -> str: return path
    async def delete(self, path: str) -> None: return None
    async def mkcol(self, path: str) -> bool: return True
    async def probe(self) -> None: return None
    # fmt: on


class FakeShared:
    """A SharedLayer whose ``cache`` is itself: the get/set/delete of SharedCache the service uses."""

    def __init__(self) -> None:
        self.cache = self
        self.data: dict[str, bytes] = {}

    async def get(self, key: str) -> bytes | None:
        return self.data.get(key)

    async def set(self, key: str, value: bytes, ttl: float) -> None:
        self.data[key] = value

    async def delete(self, keys: list[str]) -> None:
        for key in keys:
            self.data.pop(key, None)

    def layer(self) -> SharedLayer:
        return cast(SharedLayer, self)


@pytest.fixture
def endpoint() -> FakeEndpoint:
    ep = FakeEndpoint()
    ep.files["/f"] = DATA
    return ep


def make(endpoint: FakeEndpoint, **kwargs: Any) -> ChecksumService:
    kwargs.setdefault("cache", TTLCache[CachedChecksums](100))
    return ChecksumService({endpoint.name: endpoint}, **kwargs)


async def test_computes_all_four_in_one_read_and_stores_them(endpoint: FakeEndpoint) -> None:
    service = make(endpoint)
    values = await service.checksums("fake", "/f", endpoint.stat_of("/f"), ["adler32"])
    assert values == SUMS
    assert (service.computations, endpoint.reads, service.bytes_hashed) == (1, 1, len(DATA))
    await service.wait_idle()
    assert endpoint.stored["/f"] == SUMS


async def test_l1_cache_hit_does_not_read_again(endpoint: FakeEndpoint) -> None:
    service = make(endpoint)
    stat = endpoint.stat_of("/f")
    await service.checksums("fake", "/f", stat, ["md5"])
    endpoint.stored.clear()
    assert await service.checksums("fake", "/f", stat, ["sha256", "crc32c"]) == SUMS
    assert (service.computations, endpoint.reads) == (1, 1)


async def test_stored_values_are_used_without_reading(endpoint: FakeEndpoint) -> None:
    endpoint.stored["/f"] = {"adler32": SUMS["adler32"].upper(), "md5": SUMS["md5"], "sha256": "garbage"}
    service = make(endpoint)
    stat = endpoint.stat_of("/f")
    assert await service.checksums("fake", "/f", stat, ["adler32", "md5"]) == {
        "adler32": SUMS["adler32"],  # normalised
        "md5": SUMS["md5"],
    }
    assert (service.computations, endpoint.reads) == (0, 0)
    # sha256 was stored malformed: it is not trusted, so it is computed.
    assert await service.checksums("fake", "/f", stat, ["sha256"], compute=False) == {
        "adler32": SUMS["adler32"],
        "md5": SUMS["md5"],
    }
    assert (await service.checksums("fake", "/f", stat, ["sha256"]))["sha256"] == SUMS["sha256"]
    assert service.computations == 1


async def test_concurrent_callers_share_one_computation(endpoint: FakeEndpoint) -> None:
    service = make(endpoint)
    endpoint.gate = asyncio.Event()
    stat = endpoint.stat_of("/f")
    callers = [
        asyncio.create_task(service.checksums("fake", "/f", stat, [a])) for a in ["md5", "sha256"] * 10
    ]
    await asyncio.sleep(0.01)
    endpoint.gate.set()
    results = await asyncio.gather(*callers)
    assert all(r == SUMS for r in results)
    assert (service.computations, endpoint.reads) == (1, 1)
    await service.wait_idle()
    assert endpoint.store_calls == 1


async def test_a_caller_that_gives_up_does_not_cancel_the_others(endpoint: FakeEndpoint) -> None:
    service = make(endpoint)
    endpoint.gate = asyncio.Event()
    stat = endpoint.stat_of("/f")
    leaving = asyncio.create_task(service.checksums("fake", "/f", stat, ["md5"]))
    staying = asyncio.create_task(service.checksums("fake", "/f", stat, ["md5"]))
    await asyncio.sleep(0.01)
    leaving.cancel()
    endpoint.gate.set()
    assert await staying == SUMS
    with pytest.raises(asyncio.CancelledError):
        await leaving
    assert service.computations == 1


async def test_concurrency_bound_is_respected() -> None:
    endpoint = FakeEndpoint()
    for i in range(10):
        endpoint.files[f"/f{i}"] = DATA + bytes([i])
    endpoint.gate = asyncio.Event()
    service = make(endpoint, max_concurrent=3)
    calls = [
        asyncio.create_task(service.checksums("fake", f"/f{i}", endpoint.stat_of(f"/f{i}"), ["md5"]))
        for i in range(10)
    ]
    await asyncio.sleep(0.02)
    assert endpoint.active == 3
    endpoint.gate.set()
    results = await asyncio.gather(*calls)
    assert endpoint.max_active == 3
    assert [r["md5"] for r in results] == [compute(DATA + bytes([i]))["md5"] for i in range(10)]
    assert service.computations == 10
    await service.aclose()


class ReusedBuffer(FakeEndpoint):
    """Yields one bytearray, overwritten in place for every chunk (like a readinto loop): only a
    consumer done with each chunk before asking for the next one computes the right checksum."""

    async def read(self, path: str, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        self.reads += 1
        data = self.files[path]
        buffer = bytearray(self.chunk)
        for start in range(0, len(data), self.chunk):
            piece = data[start : start + self.chunk]
            buffer[: len(piece)] = piece
            yield bytes(buffer[: len(piece)]) if len(piece) < self.chunk else cast(bytes, buffer)
            buffer[:] = b"\xee" * self.chunk  # scribble over the chunk once it has been consumed


@pytest.mark.parametrize("chunk", [1000, 128 * 1024])  # hashed on the loop / in a thread
async def test_chunks_are_consumed_one_at_a_time(chunk: int) -> None:
    endpoint = ReusedBuffer(chunk=chunk)
    data = bytes(range(256)) * 2048 + b"tail"
    endpoint.files["/big"] = data
    service = make(endpoint)
    assert await service.checksums("fake", "/big", endpoint.stat_of("/big"), ["md5"]) == compute(data)


async def test_memory_stays_bounded_on_a_large_file() -> None:
    chunk, count = 1024 * 1024, 48

    class Generated(FakeEndpoint):
        async def read(self, path: str, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
            for i in range(count):
                yield bytes([i]) * chunk

    endpoint = Generated()
    stat = StatResult(is_dir=False, size=chunk * count, mtime=1.0)
    service = make(endpoint)
    tracemalloc.start()
    try:
        values = await service.checksums("fake", "/big", stat, ["sha256"])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert values["sha256"] == compute(b"".join(bytes([i]) * chunk for i in range(count)))["sha256"]
    assert peak < 4 * chunk, f"peak {peak} bytes for a {chunk * count} byte file"


async def test_a_chunk_over_the_limit_fails_the_computation(endpoint: FakeEndpoint) -> None:
    service = make(endpoint, chunk_limit=999)
    with pytest.raises(EndpointUnavailable, match="limit 999"):
        await service.checksums("fake", "/f", endpoint.stat_of("/f"), ["md5"])


async def test_a_new_version_is_never_answered_from_the_cache(endpoint: FakeEndpoint) -> None:
    shared = FakeShared()
    service = make(endpoint, shared=shared.layer())
    versions: list[tuple[bytes, dict[str, Any]]] = [
        (DATA, {"mtime": 1.0}),
        (DATA.upper(), {"mtime": 2.0}),  # same size, new mtime
        (DATA + b"!", {"mtime": 2.0}),  # new size, same mtime
        (DATA + b"?", {"mtime": 2.0, "etag": '"b"'}),  # same size and mtime, new ETag
    ]
    for count, (content, version) in enumerate(versions, 1):
        endpoint.files["/f"] = content
        endpoint.stored.clear()
        assert await service.checksums("fake", "/f", endpoint.stat_of("/f", **version), ["md5"]) == compute(
            content
        )
        assert service.computations == count
        await service.wait_idle()
    # Without mtime or ETag, a rewrite of as many bytes would go unseen: nothing is cached at all.
    shared.data.clear()
    for count in (5, 6):
        endpoint.stored.clear()
        assert await service.checksums("fake", "/f", endpoint.stat_of("/f", mtime=None), ["md5"])
        assert service.computations == count
        await service.wait_idle()
    assert not shared.data


async def test_shared_l2_spares_another_front_end_the_read(endpoint: FakeEndpoint) -> None:
    shared = FakeShared()
    first = make(endpoint, shared=shared.layer())
    stat = endpoint.stat_of("/f", etag='"e"')
    await first.checksums("fake", "/f", stat, ["md5"])
    await first.wait_idle()
    assert list(shared.data) == ["ck:fake:/f"]
    endpoint.stored.clear()

    second = make(endpoint, shared=shared.layer())
    assert await second.checksums("fake", "/f", stat, ["crc32c"]) == SUMS
    assert second.computations == 0 and endpoint.reads == 1
    # Another version of the file misses L2.
    endpoint.files["/f"] = DATA[:-1]
    await second.checksums("fake", "/f", endpoint.stat_of("/f", etag='"e2"'), ["md5"])
    assert second.computations == 1


async def test_store_failure_is_tolerated_and_logged_once(
    endpoint: FakeEndpoint, caplog: pytest.LogCaptureFixture
) -> None:
    endpoint.files["/g"] = DATA[::-1]
    endpoint.store_error = EndpointUnavailable("fake", "read-only")
    service = make(endpoint)
    with caplog.at_level(logging.DEBUG, logger="geofed.checksums"):
        assert await service.checksums("fake", "/f", endpoint.stat_of("/f"), ["md5"]) == SUMS
        assert await service.checksums("fake", "/g", endpoint.stat_of("/g"), ["md5"]) == compute(DATA[::-1])
        await service.wait_idle()
    assert (endpoint.store_calls, service.store_failures) == (2, 2)
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING and "could not store" in r.message]
    assert len(warnings) == 1 and "read-only" in warnings[0].message


async def test_timeout(endpoint: FakeEndpoint) -> None:
    endpoint.gate = asyncio.Event()  # never set: the read hangs
    service = make(endpoint, timeout=0.05)
    with pytest.raises(ChecksumTimeout, match=r"not computed within 0\.05 s"):
        await service.checksums("fake", "/f", endpoint.stat_of("/f"), ["md5"])
    assert endpoint.active == 0  # the read was closed
    endpoint.gate = None
    assert await service.checksums("fake", "/f", endpoint.stat_of("/f"), ["md5"]) == SUMS
    # The wait for a free slot counts too: a client behind a long queue is told in time.
    await service.wait_idle()
    endpoint.stored.clear()
    endpoint.files["/g"] = DATA
    endpoint.gate = asyncio.Event()
    service = make(endpoint, max_concurrent=1, timeout=0.1)
    first = asyncio.create_task(service.checksums("fake", "/f", endpoint.stat_of("/f"), ["md5"]))
    await asyncio.sleep(0.01)
    for call in (service.checksums("fake", "/g", endpoint.stat_of("/g"), ["md5"]), first):
        with pytest.raises(ChecksumTimeout):
            await call


async def test_forget_drops_cache_and_a_running_result(endpoint: FakeEndpoint) -> None:
    shared = FakeShared()
    service = make(endpoint, shared=shared.layer())
    stat = endpoint.stat_of("/f")
    endpoint.gate = asyncio.Event()
    running = asyncio.create_task(service.checksums("fake", "/f", stat, ["md5"]))
    await asyncio.sleep(0.01)
    service.forget("fake", "/f")  # a PUT replaces the file meanwhile
    endpoint.gate.set()
    assert await running == SUMS  # the caller asked before the write
    await service.wait_idle()
    assert endpoint.store_calls == 0 and not shared.data  # nothing kept of the old bytes
    await service.checksums("fake", "/f", stat, ["md5"])
    await service.wait_idle()
    assert service.computations == 2 and shared.data

    service.forget("fake", "/f")
    await service.wait_idle()
    endpoint.stored.clear()
    assert not shared.data
    await service.checksums("fake", "/f", stat, ["md5"])
    assert service.computations == 3


async def test_size_mismatch_is_file_changed(endpoint: FakeEndpoint) -> None:
    service = make(endpoint)
    stat = StatResult(is_dir=False, size=len(DATA) + 1, mtime=1.0)
    with pytest.raises(FileChanged, match="read 12000 bytes"):
        await service.checksums("fake", "/f", stat, ["md5"])
    await service.wait_idle()
    assert endpoint.store_calls == 0


async def test_errors_reach_every_caller_and_nothing_is_cached(endpoint: FakeEndpoint) -> None:
    service = make(endpoint)
    stat = StatResult(is_dir=False, size=5, mtime=1.0)
    calls = [service.checksums("fake", "/missing", stat, ["md5"]) for _ in range(3)]
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert all(isinstance(r, PathNotFound) for r in results)
    assert service.computations == 1


async def test_endpoint_that_cannot_read_gives_what_it_has() -> None:
    class NoRead(FakeEndpoint):
        capabilities = Capabilities()

    endpoint = NoRead()
    endpoint.files["/f"] = DATA
    endpoint.stored["/f"] = {"adler32": SUMS["adler32"]}
    values = await make(endpoint).checksums("fake", "/f", endpoint.stat_of("/f"), ["md5"])
    assert values == {"adler32": SUMS["adler32"]}


async def test_bad_arguments(endpoint: FakeEndpoint) -> None:
    service = make(endpoint)
    with pytest.raises(ValueError, match="sha1"):
        await service.checksums("fake", "/f", endpoint.stat_of("/f"), ["sha1"])
    with pytest.raises(ValueError, match="collection"):
        await service.checksums("fake", "/", StatResult(is_dir=True), ["md5"])
    with pytest.raises(KeyError):
        await service.checksums("other", "/f", endpoint.stat_of("/f"), ["md5"])


async def test_verify_and_compare(endpoint: FakeEndpoint) -> None:
    service = make(endpoint)
    stat = endpoint.stat_of("/f")
    assert await service.verify("fake", "/f", stat, {"adler32": SUMS["adler32"]}) == []
    wrong = {"md5": "0" * 32, "adler32": SUMS["adler32"]}
    assert await service.verify("fake", "/f", stat, wrong) == [
        f"md5: declared {'0' * 32}, stored bytes have {SUMS['md5']}"
    ]
    assert compare({"sha256": "1" * 64}, {"md5": SUMS["md5"]}) == []


def test_shared_value_round_trip_and_misses() -> None:
    version = FileVersion("ep", "/a b/ü", 12, 1700000000.5, '"etag"')
    data = sharedvalue.encode(version, SUMS)
    assert len(data) < 300
    assert sharedvalue.decode(data, version) == SUMS
    for change in ({"size": 13}, {"mtime": 1700000001.0}, {"etag": None}, {"endpoint": "ep2"}):
        assert sharedvalue.decode(data, dataclasses.replace(version, **change)) is None
    for garbage in (b"", b"\xc1", b"\xc1{}", b"\xc2" + data[1:], data[:-5], data.replace(b'"v":1', b'"v":2')):
        assert sharedvalue.decode(garbage, version) is None
    assert sharedvalue.decode(data.replace(SUMS["md5"].encode(), b"zz"), version) is None
    int_size = FileVersion("ep", "/a b/ü", 12, 1.0, None)
    assert (
        sharedvalue.decode(sharedvalue.encode(int_size, SUMS).replace(b'"s":12', b'"s":12.0'), int_size)
        is None
    )
