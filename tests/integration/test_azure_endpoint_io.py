"""AzureEndpoint's streamed reads, uploads, stored checksums and moves against a real Azurite.

Each test gets its own container; what the endpoint did is checked with the SDK directly. Azurite
finishes every copy at once, so the wait for a pending copy is exercised by making the SDK report
"pending" for a while (the copy itself is real).
"""

from __future__ import annotations

import asyncio
import gzip
import hashlib
import os
import uuid
import zlib
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable
from typing import Any

import google_crc32c
import pytest
from azure.core.credentials import AzureNamedKeyCredential
from azure.storage.blob import BlobBlock, ContentSettings
from azure.storage.blob.aio import BlobClient, ContainerClient

from geofed.checksums.service import ChecksumService
from geofed.config import EndpointSettings
from geofed.endpoints.azure import API_VERSION, AzureEndpoint
from geofed.errors import EndpointRefused, EndpointUnavailable, PathNotFound
from geofed.federation.cache import TTLCache
from tests.infra.azurite import AzuriteServer

pytestmark = pytest.mark.integration

MAIN = "devstoreaccount1"
ODD_NAME = "a b+ü%#[1].dat"
KiB = 1024


def sdk_client(azurite: AzuriteServer, container: str) -> ContainerClient:
    credential = AzureNamedKeyCredential(MAIN, azurite.accounts[MAIN])
    return ContainerClient(azurite.account_url(MAIN), container, credential, api_version=API_VERSION)


def make_endpoint(azurite: AzuriteServer, container: str, **extra: Any) -> AzureEndpoint:
    settings = EndpointSettings.model_validate(
        {
            "name": "blob",
            "kind": "azure",
            "url": azurite.account_url(MAIN),
            "account": MAIN,
            "container": container,
            "credentials": {"account_key": azurite.accounts[MAIN]},
            "timeout": 5.0,
            **extra,
        }
    )
    return AzureEndpoint(settings)


@pytest.fixture
async def container(azurite: AzuriteServer) -> AsyncIterator[str]:
    name = f"io-{uuid.uuid4().hex[:12]}"
    async with sdk_client(azurite, name) as client:
        await client.create_container()
        yield name
        await client.delete_container()


@pytest.fixture
async def blobs(azurite: AzuriteServer, container: str) -> AsyncIterator[ContainerClient]:
    async with sdk_client(azurite, container) as client:
        yield client


@pytest.fixture
async def endpoint(azurite: AzuriteServer, container: str) -> AsyncIterator[AzureEndpoint]:
    ep = make_endpoint(azurite, container)
    yield ep
    await ep.aclose()


@pytest.fixture
async def trusted(azurite: AzuriteServer, container: str) -> AsyncIterator[AzureEndpoint]:
    ep = make_endpoint(azurite, container, checksum_metadata="trusted")
    yield ep
    await ep.aclose()


async def put(blobs: ContainerClient, name: str, data: bytes = b"", **kwargs: Any) -> None:
    await blobs.upload_blob(name, data, overwrite=True, **kwargs)


async def content(blobs: ContainerClient, name: str) -> bytes:
    return await (await blobs.download_blob(name)).readall()


async def names_in(blobs: ContainerClient) -> set[str]:
    return {name async for name in blobs.list_blob_names()}


async def read_all(endpoint: AzureEndpoint, path: str, offset: int = 0, length: int | None = None) -> bytes:
    return b"".join([chunk async for chunk in endpoint.read(path, offset, length)])


async def stream(*chunks: bytes, fail_after: int | None = None) -> AsyncIterator[bytes]:
    for i, chunk in enumerate(chunks):
        if fail_after is not None and i == fail_after:
            raise ConnectionResetError("client went away")
        yield chunk


def all_checksums(data: bytes) -> dict[str, str]:
    return {
        "adler32": f"{zlib.adler32(data):08x}",
        "md5": hashlib.md5(data).hexdigest(),
        "sha256": hashlib.sha256(data).hexdigest(),
        "crc32c": f"{google_crc32c.value(data):08x}",
    }


def intercept(
    endpoint: AzureEndpoint, monkeypatch: pytest.MonkeyPatch, op: str, path: str, nth: int, before: Any
) -> None:
    """Run ``before()`` just ahead of the ``nth`` request that ``endpoint`` makes as (op, path)."""
    real = endpoint._call
    seen = 0

    async def call(op_: str, path_: str, awaitable: Awaitable[Any]) -> Any:
        nonlocal seen
        if (op_, path_) == (op, path):
            seen += 1
            if seen == nth:
                await before()
        return await real(op_, path_, awaitable)

    monkeypatch.setattr(endpoint, "_call", call)


# -- capabilities -------------------------------------------------------------------------------


async def test_capabilities_and_space(endpoint: AzureEndpoint) -> None:
    caps = endpoint.capabilities
    assert caps.read_stream and caps.upload_stream and caps.store_checksums and caps.move
    assert not caps.multipart_upload
    assert await endpoint.space() is None  # Azure reports neither usage nor a limit


# -- read ---------------------------------------------------------------------------------------


async def test_read_streams_the_whole_blob_in_bounded_chunks(
    azurite: AzuriteServer, container: str, blobs: ContainerClient
) -> None:
    data = os.urandom(300 * KiB + 7)
    await put(blobs, f"d/{ODD_NAME}", data)
    ep = make_endpoint(azurite, container)
    ep.read_chunk = 64 * KiB  # before the first call: the client is made with it
    try:
        reader = ep.read(f"/d/{ODD_NAME}")
        assert isinstance(reader, AsyncGenerator)
        chunks = [chunk async for chunk in reader]
    finally:
        await ep.aclose()
    assert b"".join(chunks) == data
    assert len(chunks) == 5 and max(len(c) for c in chunks) == 64 * KiB


async def test_read_ranges(azurite: AzuriteServer, container: str, blobs: ContainerClient) -> None:
    data = os.urandom(200 * KiB)
    size = len(data)
    await put(blobs, "r.bin", data)
    ep = make_endpoint(azurite, container)
    ep.read_chunk = 64 * KiB
    try:
        cases = [
            (0, 10),
            (100, 5000),
            (60 * KiB, 10 * KiB),  # across a chunk boundary
            (1, None),  # to the end, several chunks
            (size - 3, None),
            (size - 3, 100),  # past the end: what there is
            (size, None),  # at the end: nothing
            (size + 10, 5),  # after the end: nothing
            (0, size),
            (5, 0),
        ]
        for offset, length in cases:
            end = size if length is None else offset + length
            assert await read_all(ep, "/r.bin", offset, length) == data[offset:end], (offset, length)
        chunks = [c async for c in ep.read("/r.bin", 10, 150 * KiB)]
        assert max(len(c) for c in chunks) <= 64 * KiB and sum(map(len, chunks)) == 150 * KiB
        with pytest.raises(ValueError):
            await read_all(ep, "/r.bin", -1)
        with pytest.raises(ValueError):
            await read_all(ep, "/r.bin", 0, -1)
    finally:
        await ep.aclose()


async def test_read_of_an_empty_blob(endpoint: AzureEndpoint, blobs: ContainerClient) -> None:
    await put(blobs, "empty.bin")
    assert await read_all(endpoint, "/empty.bin") == b""
    assert await read_all(endpoint, "/empty.bin", 0, 10) == b""
    assert await read_all(endpoint, "/empty.bin", 3) == b""


async def test_read_of_missing_paths_and_collections_is_path_not_found(
    endpoint: AzureEndpoint, blobs: ContainerClient
) -> None:
    await put(blobs, "dir/child.bin", b"x")
    await put(blobs, "marked/")
    await put(blobs, "hdi", metadata={"hdi_isfolder": "true"})
    for path in ("/missing", "/dir", "/marked", "/hdi", "/", "/dir/child.bin/x"):
        with pytest.raises(PathNotFound):
            await read_all(endpoint, path)
    with pytest.raises(PathNotFound):
        await read_all(endpoint, "/missing", 0, 0)  # a zero-length read still needs the file
    with pytest.raises(PathNotFound):
        await read_all(endpoint, "/missing", 10, 5)


async def test_read_gives_the_stored_bytes_even_when_compressed(
    endpoint: AzureEndpoint, blobs: ContainerClient
) -> None:
    stored = gzip.compress(b"text " * 1000)
    await put(blobs, "t.gz", stored, content_settings=ContentSettings(content_encoding="gzip"))
    assert await read_all(endpoint, "/t.gz") == stored  # what the checksums are of


async def test_a_blob_rewritten_during_a_read_fails_it(
    azurite: AzuriteServer, container: str, blobs: ContainerClient
) -> None:
    await put(blobs, "moving.bin", os.urandom(200 * KiB))
    ep = make_endpoint(azurite, container)
    ep.read_chunk = 64 * KiB
    try:
        reader = ep.read("/moving.bin")
        assert len(await anext(reader)) == 64 * KiB
        await put(blobs, "moving.bin", os.urandom(200 * KiB))
        with pytest.raises(EndpointRefused) as info:
            async for _ in reader:
                pass
        assert info.value.status == 412  # never a mix of two versions
    finally:
        await ep.aclose()


async def test_an_abandoned_read_releases_its_connection(
    azurite: AzuriteServer, container: str, blobs: ContainerClient
) -> None:
    await put(blobs, "big.bin", os.urandom(256 * KiB))
    settings = {"max_concurrency": 1}  # one connection: a leaked one would block the next call
    ep = make_endpoint(azurite, container, **settings)
    ep.read_chunk = 64 * KiB
    try:
        for _ in range(3):
            reader = ep.read("/big.bin")
            await anext(reader)
            await reader.aclose()
        assert (await ep.stat("/big.bin")) is not None
    finally:
        await ep.aclose()


# -- upload ---------------------------------------------------------------------------------------


async def test_upload_commits_geofed_md5_and_a_matching_content_md5(
    endpoint: AzureEndpoint, blobs: ContainerClient
) -> None:
    parts = [os.urandom(100 * KiB), b"", b"tail", os.urandom(70 * KiB)]
    data = b"".join(parts)
    md5 = hashlib.md5(data)
    await endpoint.upload(f"/up/{ODD_NAME}", stream(*parts))
    assert await content(blobs, f"up/{ODD_NAME}") == data
    props = await blobs.get_blob_client(f"up/{ODD_NAME}").get_blob_properties()
    assert props.metadata == {"geofed_md5": md5.hexdigest()}
    assert props.content_settings.content_md5 == bytearray(md5.digest())
    stat = await endpoint.stat(f"/up/{ODD_NAME}")
    assert stat is not None and stat.size == len(data)
    assert ("content-md5", md5.hexdigest()) in stat.metadata
    assert await endpoint.stored_checksums(f"/up/{ODD_NAME}", stat) == {"md5": md5.hexdigest()}


async def test_upload_of_nothing_makes_an_empty_blob_with_its_md5(
    endpoint: AzureEndpoint, blobs: ContainerClient
) -> None:
    await endpoint.upload("/empty", stream())
    props = await blobs.get_blob_client("empty").get_blob_properties()
    assert props.size == 0 and props.metadata == {"geofed_md5": hashlib.md5(b"").hexdigest()}


async def test_an_interrupted_upload_leaves_the_old_blob_alone(
    endpoint: AzureEndpoint, blobs: ContainerClient
) -> None:
    await put(blobs, "f.bin", b"old")
    with pytest.raises(ConnectionResetError):
        await endpoint.upload("/f.bin", stream(b"new ", b"bytes", b"never", fail_after=2))
    with pytest.raises(ConnectionResetError):
        await endpoint.upload("/g.bin", stream(b"half", b"more", fail_after=1))
    assert await content(blobs, "f.bin") == b"old"
    assert await names_in(blobs) == {"f.bin"}


async def test_an_upload_replaces_stored_checksums_of_the_old_content(
    endpoint: AzureEndpoint, blobs: ContainerClient
) -> None:
    await put(blobs, "f.bin", b"old", metadata={"owner": "site"})
    assert await endpoint.store_checksums("/f.bin", all_checksums(b"old"))
    await endpoint.upload("/f.bin", stream(b"new"))
    stat = await endpoint.stat("/f.bin")
    assert stat is not None
    assert await endpoint.stored_checksums("/f.bin", stat) == {"md5": hashlib.md5(b"new").hexdigest()}


# -- stored checksums ---------------------------------------------------------------------------


async def test_store_and_read_back_checksums_keeping_other_metadata(
    endpoint: AzureEndpoint, blobs: ContainerClient
) -> None:
    data = b"checksummed"
    await put(blobs, f"c/{ODD_NAME}", data, metadata={"owner": "site", "Geofed_MD5": "stale"})
    before = await endpoint.stat(f"/c/{ODD_NAME}")
    assert before is not None
    values = all_checksums(data)
    assert await endpoint.store_checksums(f"/c/{ODD_NAME}", {**values, "md5": values["md5"].upper()})
    props = await blobs.get_blob_client(f"c/{ODD_NAME}").get_blob_properties()
    assert props.metadata == {"owner": "site", **{f"geofed_{a}": v for a, v in values.items()}}
    after = await endpoint.stat(f"/c/{ODD_NAME}")
    assert after is not None
    assert await endpoint.stored_checksums(f"/c/{ODD_NAME}", after) == values
    listed = [e async for e in endpoint.list("/c")]
    assert await endpoint.stored_checksums(f"/c/{ODD_NAME}", listed[0].stat) == values
    # Set Blob Metadata is a write: the ETag changes (so does Last-Modified, to the second)
    assert after.etag != before.etag and after.size == before.size


async def test_store_checksums_refuses_what_is_not_a_checksum(
    endpoint: AzureEndpoint, blobs: ContainerClient
) -> None:
    await put(blobs, "f.bin", b"x")
    assert await endpoint.store_checksums("/f.bin", {"md5": "not hex", "whirlpool": "abcdef01"}) is False
    assert await endpoint.store_checksums("/f.bin", {}) is False
    assert (await blobs.get_blob_client("f.bin").get_blob_properties()).metadata == {}
    await put(blobs, "hdi", metadata={"hdi_isfolder": "true"})
    assert await endpoint.store_checksums("/hdi", all_checksums(b"")) is False
    with pytest.raises(PathNotFound):
        await endpoint.store_checksums("/missing", all_checksums(b""))


async def test_store_checksums_does_not_touch_a_blob_rewritten_meanwhile(
    endpoint: AzureEndpoint, blobs: ContainerClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    await put(blobs, "f.bin", b"old")

    async def rewrite() -> None:
        await put(blobs, "f.bin", b"new content")

    # the second request of store_checksums is Set Blob Metadata: rewrite the blob just before it
    intercept(endpoint, monkeypatch, "CHECKSUM", "/f.bin", 2, rewrite)
    assert await endpoint.store_checksums("/f.bin", all_checksums(b"old")) is False
    props = await blobs.get_blob_client("f.bin").get_blob_properties()
    assert props.metadata == {} and await content(blobs, "f.bin") == b"new content"


async def test_plain_metadata_and_content_md5_count_only_when_trusted(
    endpoint: AzureEndpoint, trusted: AzureEndpoint, blobs: ContainerClient
) -> None:
    data = b"site data"
    real = all_checksums(data)
    wrong_md5 = hashlib.md5(b"something else").digest()
    # what any client can do: commit blocks with a Content-MD5 of its choice (not verified)
    blob = blobs.get_blob_client("claimed.bin")
    await blob.stage_block("YmxvY2s=", data)
    await blob.commit_block_list(
        [BlobBlock(block_id="YmxvY2s=")],
        content_settings=ContentSettings(content_md5=bytearray(wrong_md5)),
        metadata={"adler32": real["adler32"], "SHA256": real["sha256"].upper()},
    )
    assert (await blob.get_blob_properties()).content_settings.content_md5 == bytearray(wrong_md5)
    stat = await endpoint.stat("/claimed.bin")
    assert stat is not None and ("content-md5", wrong_md5.hex()) in stat.metadata
    assert await endpoint.stored_checksums("/claimed.bin", stat) == {}  # nothing geofed computed
    assert await trusted.stored_checksums("/claimed.bin", stat) == {
        "adler32": real["adler32"],
        "sha256": real["sha256"],
        "md5": wrong_md5.hex(),  # trusted means trusted: the site vouches for its writers
    }
    # geofed's own values win over the plain ones, Content-MD5 included
    assert await endpoint.store_checksums("/claimed.bin", real)
    stat = await endpoint.stat("/claimed.bin")
    assert stat is not None
    assert await endpoint.stored_checksums("/claimed.bin", stat) == real
    assert await trusted.stored_checksums("/claimed.bin", stat) == real


async def test_a_plain_put_blob_content_md5_is_not_reported_by_default(
    endpoint: AzureEndpoint, trusted: AzureEndpoint, blobs: ContainerClient
) -> None:
    await put(blobs, "p.bin", b"put blob")  # Azure computes this one, but nothing says so later
    stat = await endpoint.stat("/p.bin")
    assert stat is not None and dict(stat.metadata)["content-md5"] == hashlib.md5(b"put blob").hexdigest()
    assert await endpoint.stored_checksums("/p.bin", stat) == {}
    assert await trusted.stored_checksums("/p.bin", stat) == {"md5": hashlib.md5(b"put blob").hexdigest()}


# -- move ---------------------------------------------------------------------------------------


async def test_move_a_file_keeps_content_properties_and_checksums(
    endpoint: AzureEndpoint, blobs: ContainerClient
) -> None:
    data = os.urandom(50 * KiB)
    await put(blobs, "src/a.bin", data, content_settings=ContentSettings(content_type="text/x-test"))
    assert await endpoint.store_checksums("/src/a.bin", all_checksums(data))
    await endpoint.move("/src/a.bin", f"/new/deep/{ODD_NAME}")
    assert await names_in(blobs) == {f"new/deep/{ODD_NAME}"}
    assert await content(blobs, f"new/deep/{ODD_NAME}") == data
    stat = await endpoint.stat(f"/new/deep/{ODD_NAME}")
    assert stat is not None and stat.content_type == "text/x-test"
    assert await endpoint.stored_checksums(f"/new/deep/{ODD_NAME}", stat) == all_checksums(data)


async def test_move_over_an_existing_file(endpoint: AzureEndpoint, blobs: ContainerClient) -> None:
    await put(blobs, "a", b"source")
    await put(blobs, "b", b"target", metadata={"geofed_md5": hashlib.md5(b"target").hexdigest()})
    await endpoint.move("/a", "/b")
    assert await names_in(blobs) == {"b"}
    assert await content(blobs, "b") == b"source"
    stat = await endpoint.stat("/b")
    assert stat is not None and await endpoint.stored_checksums("/b", stat) == {}  # none of the old


async def test_move_without_overwrite_is_412_when_the_destination_exists(
    endpoint: AzureEndpoint, blobs: ContainerClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    await put(blobs, "a", b"source")
    await put(blobs, "b", b"target")
    await put(blobs, "dir/x", b"in a directory")
    for destination in ("/b", "/dir"):
        with pytest.raises(EndpointRefused) as info:
            await endpoint.move("/a", destination, overwrite=False)
        assert info.value.status == 412
    await endpoint.move("/a", "/c", overwrite=False)  # a free destination is fine
    assert await names_in(blobs) == {"b", "c", "dir/x"}

    async def appear() -> None:  # after geofed's check, before the copy: the service refuses
        await put(blobs, "d", b"raced in")

    intercept(endpoint, monkeypatch, "MOVE", "/d", 1, appear)
    with pytest.raises(EndpointRefused) as info:
        await endpoint.move("/c", "/d", overwrite=False)
    assert info.value.status == 412
    assert await content(blobs, "c") == b"source" and await content(blobs, "d") == b"raced in"


async def test_move_refuses_collections_the_root_and_the_same_path(
    endpoint: AzureEndpoint, blobs: ContainerClient
) -> None:
    await put(blobs, "dir/x", b"1")
    await put(blobs, "marked/")
    await put(blobs, "hdi", metadata={"hdi_isfolder": "true"})
    await put(blobs, "f", b"2")
    for source, destination in [
        ("/dir", "/elsewhere"),
        ("/marked", "/elsewhere"),
        ("/hdi", "/elsewhere"),
        ("/f", "/dir"),  # a collection in the way, even with overwrite
        ("/", "/x"),
        ("/f", "/"),
        ("/f", "/f"),
    ]:
        with pytest.raises(EndpointRefused) as info:
            await endpoint.move(source, destination)
        assert info.value.status == 403, (source, destination)
    assert await names_in(blobs) == {"dir/x", "marked/", "hdi", "f"}
    with pytest.raises(PathNotFound):
        await endpoint.move("/missing", "/x")


async def test_move_of_a_source_rewritten_before_the_copy_changes_nothing(
    endpoint: AzureEndpoint, blobs: ContainerClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    await put(blobs, "a", b"first")

    async def rewrite() -> None:
        await put(blobs, "a", b"second")

    intercept(endpoint, monkeypatch, "MOVE", "/b", 1, rewrite)  # the copy
    with pytest.raises(EndpointRefused) as info:
        await endpoint.move("/a", "/b")
    assert info.value.status == 409
    assert await names_in(blobs) == {"a"} and await content(blobs, "a") == b"second"


async def test_move_keeps_a_source_rewritten_after_the_copy(
    endpoint: AzureEndpoint, blobs: ContainerClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    await put(blobs, "a", b"first")

    async def rewrite() -> None:
        await put(blobs, "a", b"second")

    intercept(endpoint, monkeypatch, "MOVE", "/a", 2, rewrite)  # 1: properties, 2: the delete
    await endpoint.move("/a", "/b")
    assert await content(blobs, "b") == b"first" and await content(blobs, "a") == b"second"


def pending_for(monkeypatch: pytest.MonkeyPatch, destination: str, polls: int | None) -> list[str]:
    """Make the SDK report the copy to ``destination`` as pending for ``polls`` looks (None: ever);
    the aborted copy ids are returned in the list."""
    start, properties, abort = (
        BlobClient.start_copy_from_url,
        BlobClient.get_blob_properties,
        BlobClient.abort_copy,
    )
    looks = 0
    aborted: list[str] = []

    async def start_copy(self: BlobClient, *args: Any, **kwargs: Any) -> Any:
        result = await start(self, *args, **kwargs)
        return {**result, "copy_status": "pending"} if self.blob_name == destination else result

    async def get_properties(self: BlobClient, **kwargs: Any) -> Any:
        nonlocal looks
        props = await properties(self, **kwargs)
        if self.blob_name == destination and props.copy.status == "success":
            looks += 1
            if polls is None or looks <= polls:
                props.copy.status = "pending"
        return props

    async def abort_copy(self: BlobClient, copy_id: Any, **kwargs: Any) -> None:
        aborted.append(copy_id)
        await abort(self, copy_id, **kwargs)

    monkeypatch.setattr(BlobClient, "start_copy_from_url", start_copy)
    monkeypatch.setattr(BlobClient, "get_blob_properties", get_properties)
    monkeypatch.setattr(BlobClient, "abort_copy", abort_copy)
    return aborted


async def test_move_waits_for_a_pending_copy(
    endpoint: AzureEndpoint, blobs: ContainerClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    await put(blobs, "a", b"slow copy")
    aborted = pending_for(monkeypatch, "b", polls=3)
    await endpoint.move("/a", "/b")
    assert aborted == [] and await names_in(blobs) == {"b"}
    assert await content(blobs, "b") == b"slow copy"


async def test_a_copy_that_stays_pending_is_aborted_and_the_source_kept(
    endpoint: AzureEndpoint, blobs: ContainerClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    await put(blobs, "a", b"stuck copy")
    aborted = pending_for(monkeypatch, "b", polls=None)
    endpoint.copy_wait = 0.5
    started = asyncio.get_running_loop().time()
    with pytest.raises(EndpointUnavailable, match=r"did not finish within 0\.5s"):
        await endpoint.move("/a", "/b")
    assert asyncio.get_running_loop().time() - started < 3
    assert len(aborted) == 1  # Azurite had finished it: its abort fails, quietly
    assert await names_in(blobs) == {"a"} and await content(blobs, "a") == b"stuck copy"


# -- with the checksum service ------------------------------------------------------------------


async def test_the_checksum_service_computes_once_and_then_reads_the_metadata(
    azurite: AzuriteServer, container: str, blobs: ContainerClient
) -> None:
    data = os.urandom(150 * KiB)
    await put(blobs, "data.bin", data)
    ep = make_endpoint(azurite, container)
    ep.read_chunk = 64 * KiB
    service = ChecksumService({ep.name: ep}, cache=TTLCache(100))
    try:
        stat = await ep.stat("/data.bin")
        assert stat is not None
        assert await service.checksums(ep.name, "/data.bin", stat, ["adler32"]) == all_checksums(data)
        await service.wait_idle()
        assert service.computations == 1 and service.store_failures == 0
        # storing them was a write: a new ETag, so the L1 entry (keyed by the old one) no longer
        # matches, and the values come from the blob's metadata instead, without a read
        fresh = await ep.stat("/data.bin")
        assert fresh is not None and fresh.etag != stat.etag
        assert await service.checksums(ep.name, "/data.bin", fresh, ["sha256"]) == all_checksums(data)
        assert service.computations == 1
        # the old stat is still answered from L1
        assert await service.checksums(ep.name, "/data.bin", stat, ["md5"]) == all_checksums(data)
    finally:
        await service.aclose()
        await ep.aclose()
