"""AzureEndpoint against a real Azurite (two accounts, path-style URLs, SAS checked for real).

Each test gets its own container, created and removed with the SDK directly, so that what the
endpoint reports is compared with what the blob service really holds. Signed URLs are fetched with
plain aiohttp, the way a redirected client would use them.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
import uuid
from collections.abc import AsyncGenerator, AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import pytest
from azure.core.credentials import AzureNamedKeyCredential
from azure.storage.blob import ContentSettings
from azure.storage.blob.aio import ContainerClient

from geofed.config import EndpointSettings
from geofed.endpoints.azure import API_VERSION, AzureEndpoint
from geofed.endpoints.base import Entry
from geofed.errors import EndpointRefused, EndpointUnavailable, PathNotFound
from tests.infra.azurite import AzuriteServer

pytestmark = pytest.mark.integration

MAIN = "devstoreaccount1"
OTHER = "site2"
ODD_NAME = "a b+ü%#[1].dat"


def sdk_client(azurite: AzuriteServer, account: str, container: str) -> ContainerClient:
    credential = AzureNamedKeyCredential(account, azurite.accounts[account])
    return ContainerClient(azurite.account_url(account), container, credential, api_version=API_VERSION)


def make_endpoint(
    azurite: AzuriteServer,
    container: str,
    *,
    account: str = MAIN,
    key: str | None = None,
    url: str | None = None,
    timeout: float = 5.0,
) -> AzureEndpoint:
    settings = EndpointSettings.model_validate(
        {
            "name": "blob",
            "kind": "azure",
            "url": url or azurite.account_url(account),
            "account": account,
            "container": container,
            "credentials": {"account_key": key or azurite.accounts[account]},
            "timeout": timeout,
        }
    )
    return AzureEndpoint(settings)


@pytest.fixture
async def container(azurite: AzuriteServer) -> AsyncIterator[str]:
    """A fresh container in the main account, deleted after the test."""
    name = f"t-{uuid.uuid4().hex[:12]}"
    async with sdk_client(azurite, MAIN, name) as client:
        await client.create_container()
        yield name
        await client.delete_container()


@pytest.fixture
async def blobs(azurite: AzuriteServer, container: str) -> AsyncIterator[ContainerClient]:
    """The SDK's view of the test's container, to set up content and check results."""
    async with sdk_client(azurite, MAIN, container) as client:
        yield client


@pytest.fixture
async def endpoint(azurite: AzuriteServer, container: str) -> AsyncIterator[AzureEndpoint]:
    ep = make_endpoint(azurite, container)
    yield ep
    await ep.aclose()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def put(blobs: ContainerClient, name: str, data: bytes = b"", **kwargs: Any) -> None:
    await blobs.upload_blob(name, data, overwrite=True, **kwargs)


async def names_in(blobs: ContainerClient) -> set[str]:
    return {name async for name in blobs.list_blob_names()}


async def listing(endpoint: AzureEndpoint, path: str) -> dict[str, Entry]:
    entries = [entry async for entry in endpoint.list(path)]
    by_name = {entry.name: entry for entry in entries}
    assert len(by_name) == len(entries), f"duplicate names in {[e.name for e in entries]}"
    return by_name


def with_query(url: str, query: str) -> str:
    parts = urlsplit(url)
    return urlunsplit((parts.scheme, parts.netloc, parts.path, query, ""))


# -- stat ---------------------------------------------------------------------------------------


async def test_stat_of_a_file_reports_size_time_etag_and_type(
    endpoint: AzureEndpoint, blobs: ContainerClient
) -> None:
    before = time.time()
    await put(blobs, "d/f.txt", b"hello", content_settings=ContentSettings(content_type="text/plain"))
    result = await endpoint.stat("/d/f.txt")
    assert result is not None and not result.is_dir
    assert result.size == 5 and result.content_type == "text/plain" and result.etag
    assert result.mtime is not None and before - 5 <= result.mtime <= time.time() + 5
    listed = (await listing(endpoint, "/d"))["f.txt"].stat
    assert listed == result  # the same facts whether stat or listing found them
    assert result.etag is not None and result.etag.startswith('"')  # HTTP's quoted form


async def test_stat_of_directories_by_children_marker_and_folder_metadata(
    endpoint: AzureEndpoint, blobs: ContainerClient
) -> None:
    await put(blobs, "parent/child/leaf.bin", b"x")
    await put(blobs, "empty/")
    await put(blobs, "hdi", metadata={"hdi_isfolder": "true"})
    for path in ("/", "/parent", "/parent/child", "/empty", "/hdi"):
        result = await endpoint.stat(path)
        assert result is not None and result.is_dir, path


async def test_stat_of_a_missing_path_is_none(endpoint: AzureEndpoint, blobs: ContainerClient) -> None:
    await put(blobs, "dir.txt", b"not a dir prefix")  # sorts before "dir/": must not confuse stat
    assert await endpoint.stat("/dir") is None
    assert await endpoint.stat("/nothing/here") is None


async def test_odd_names_round_trip(endpoint: AzureEndpoint, blobs: ContainerClient) -> None:
    await put(blobs, f"odd dir/{ODD_NAME}", b"12")
    result = await endpoint.stat(f"/odd dir/{ODD_NAME}")
    assert result is not None and result.size == 2
    assert set(await listing(endpoint, "/odd dir")) == {ODD_NAME}


# -- list ---------------------------------------------------------------------------------------


async def test_listing_pages_through_many_blobs_and_hides_markers(
    endpoint: AzureEndpoint, blobs: ContainerClient
) -> None:
    files = {f"f{i:03d}.dat" for i in range(300)}
    await asyncio.gather(*(put(blobs, f"many/{name}", b"abc") for name in files))
    await put(blobs, "many/")  # the directory's own marker
    await put(blobs, "many/sub/")  # a child directory's marker
    await put(blobs, "many/sub/deep.bin", b"z")
    await put(blobs, "many/hdi", metadata={"hdi_isfolder": "true"})
    await put(blobs, "many/hdi/inside.bin", b"z")
    await put(blobs, "many.txt", b"sibling, not a child")
    endpoint.list_page_size = 40  # 300+ entries: at least 8 pages
    entries = await listing(endpoint, "/many")
    assert set(entries) == files | {"sub", "hdi"}
    assert entries["sub"].stat.is_dir and entries["hdi"].stat.is_dir
    assert entries["f000.dat"].stat.size == 3 and not entries["f000.dat"].stat.is_dir


async def test_listing_is_streamed_page_by_page(
    endpoint: AzureEndpoint, blobs: ContainerClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    await asyncio.gather(*(put(blobs, f"s/{i:02d}", b"") for i in range(30)))
    endpoint.list_page_size = 5
    fetched: list[object] = []
    next_page = endpoint._next_page

    async def counting(*args: Any) -> Any:
        page = await next_page(*args)
        fetched.append(page)
        return page

    monkeypatch.setattr(endpoint, "_next_page", counting)
    stream = endpoint.list("/s")
    assert isinstance(stream, AsyncGenerator)
    names = [(await anext(stream)).name for _ in range(7)]
    await stream.aclose()
    assert names == [f"{i:02d}" for i in range(7)]
    assert len(fetched) == 2  # two pages of five for seven entries, not all six


async def test_listing_of_the_root_and_of_an_empty_directory(
    endpoint: AzureEndpoint, blobs: ContainerClient
) -> None:
    assert await listing(endpoint, "/") == {}
    await put(blobs, "top.txt", b"1")
    await put(blobs, "empty/")
    root = await listing(endpoint, "/")
    assert set(root) == {"top.txt", "empty"} and root["empty"].stat.is_dir
    assert await listing(endpoint, "/empty") == {}


async def test_listing_a_file_or_a_missing_path_is_path_not_found(
    endpoint: AzureEndpoint, blobs: ContainerClient
) -> None:
    await put(blobs, "file.txt", b"1")
    with pytest.raises(PathNotFound, match="not a collection"):
        await listing(endpoint, "/file.txt")
    with pytest.raises(PathNotFound):
        await listing(endpoint, "/missing")


# -- delete and mkcol ---------------------------------------------------------------------------


async def test_delete_a_file(endpoint: AzureEndpoint, blobs: ContainerClient) -> None:
    await put(blobs, "d/a.txt", b"1")
    await put(blobs, "d/b.txt", b"2")
    await endpoint.delete("/d/a.txt")
    assert await names_in(blobs) == {"d/b.txt"}


async def test_delete_a_directory_removes_everything_under_it_and_the_marker(
    endpoint: AzureEndpoint, blobs: ContainerClient
) -> None:
    await asyncio.gather(*(put(blobs, f"tree/{i % 3}/{i}.bin", b"x") for i in range(120)))
    await put(blobs, "tree/")
    await put(blobs, "tree/1/")
    await put(blobs, "treehouse.txt", b"kept: only a common prefix")
    endpoint.list_page_size = 25
    await endpoint.delete("/tree")
    assert await names_in(blobs) == {"treehouse.txt"}
    assert await endpoint.stat("/tree") is None


async def test_delete_of_a_missing_path_or_the_root(endpoint: AzureEndpoint, blobs: ContainerClient) -> None:
    with pytest.raises(PathNotFound):
        await endpoint.delete("/missing")
    with pytest.raises(EndpointRefused) as info:
        await endpoint.delete("/")
    assert info.value.status == 403


async def test_mkcol_creates_a_marker_and_says_false_when_it_exists(
    endpoint: AzureEndpoint, blobs: ContainerClient
) -> None:
    assert await endpoint.mkcol("/new") is True
    assert await names_in(blobs) == {"new/"}
    assert await endpoint.mkcol("/new") is False
    assert await endpoint.mkcol("/") is False
    await put(blobs, "implicit/child.txt", b"1")
    assert await endpoint.mkcol("/implicit") is False  # exists through its child
    assert await endpoint.mkcol("/a/b/c") is True  # parents are virtual: no 409
    await endpoint.makedirs("/x/y")
    assert (await endpoint.stat("/x/y")) is not None
    assert await listing(endpoint, "/new") == {}


# -- signed URLs --------------------------------------------------------------------------------


async def test_signed_get_and_head_fetch_the_blob(
    endpoint: AzureEndpoint, blobs: ContainerClient, http: aiohttp.ClientSession
) -> None:
    await put(blobs, f"dir/{ODD_NAME}", b"payload")
    url = endpoint.sign_url("GET", f"/dir/{ODD_NAME}", 60)
    async with http.get(url) as resp:
        assert resp.status == 200 and await resp.read() == b"payload"
    async with http.head(endpoint.sign_url("HEAD", f"/dir/{ODD_NAME}", 60)) as resp:
        assert resp.status == 200 and resp.headers["Content-Length"] == "7"


async def test_a_read_sas_cannot_write_and_a_tampered_sas_is_refused(
    endpoint: AzureEndpoint, blobs: ContainerClient, http: aiohttp.ClientSession
) -> None:
    await put(blobs, "f.bin", b"original")
    read_url = endpoint.sign_url("GET", "/f.bin", 60)
    async with http.put(read_url, data=b"evil", headers={"x-ms-blob-type": "BlockBlob"}) as resp:
        assert resp.status == 403
    query = urlsplit(read_url).query
    sig = next(p for p in query.split("&") if p.startswith("sig="))
    tampered = query.replace(sig, "sig=" + base64.b64encode(b"x" * 32).decode().replace("=", "%3D"))
    async with http.get(with_query(read_url, tampered)) as resp:
        assert resp.status == 403
    async with http.get(endpoint.sign_url("PUT", "/f.bin", 60)) as resp:
        assert resp.status == 403  # a write SAS does not read
    async with http.get(read_url) as resp:
        assert await resp.read() == b"original"


async def test_a_signed_put_stores_a_block_blob_and_a_signed_delete_removes_it(
    endpoint: AzureEndpoint, blobs: ContainerClient, http: aiohttp.ClientSession
) -> None:
    url = endpoint.sign_url("PUT", f"/up/{ODD_NAME}", 60)
    async with http.put(url, data=b"uploaded", headers={"x-ms-blob-type": "BlockBlob"}) as resp:
        assert resp.status == 201, await resp.text()
    result = await endpoint.stat(f"/up/{ODD_NAME}")
    assert result is not None and result.size == 8
    async with http.delete(endpoint.sign_url("DELETE", f"/up/{ODD_NAME}", 60)) as resp:
        assert resp.status == 202
    assert await names_in(blobs) == set()


async def test_a_sas_of_one_account_does_not_work_on_the_other(
    azurite: AzuriteServer, container: str, blobs: ContainerClient, http: aiohttp.ClientSession
) -> None:
    await put(blobs, "shared.txt", b"main")
    async with sdk_client(azurite, OTHER, container) as other:
        await other.create_container()
        try:
            await put(other, "shared.txt", b"other")
            site2 = make_endpoint(azurite, container, account=OTHER)
            url = site2.sign_url("GET", "/shared.txt", 60)
            async with http.get(url) as resp:
                assert resp.status == 200 and await resp.read() == b"other"
            on_main = url.replace(f"/{OTHER}/", f"/{MAIN}/", 1)
            async with http.get(on_main) as resp:
                assert resp.status == 403
        finally:
            await other.delete_container()


# -- health and errors --------------------------------------------------------------------------


async def test_probe_of_a_healthy_endpoint(endpoint: AzureEndpoint) -> None:
    await endpoint.probe()


async def test_a_wrong_key_makes_the_endpoint_unavailable_without_revealing_it(
    azurite: AzuriteServer, container: str, caplog: pytest.LogCaptureFixture
) -> None:
    wrong = base64.b64encode(b"w" * 64).decode()
    ep = make_endpoint(azurite, container, key=wrong)
    caplog.set_level(logging.DEBUG)
    try:
        with pytest.raises(EndpointUnavailable) as info:
            await ep.probe()
        assert "HTTP 403 Authori" in str(info.value) or "HTTP 403 Authenti" in str(info.value)
        with pytest.raises(EndpointRefused) as refused:
            await ep.stat("/f")
        assert refused.value.status == 403
    finally:
        await ep.aclose()
    for text in (str(info.value), str(refused.value), caplog.text, repr(ep)):
        assert wrong not in text and azurite.accounts[MAIN] not in text


async def test_a_missing_container_makes_the_endpoint_unavailable(azurite: AzuriteServer) -> None:
    ep = make_endpoint(azurite, "no-such-container")
    try:
        with pytest.raises(EndpointUnavailable, match="does not exist"):
            await ep.probe()
        with pytest.raises(EndpointUnavailable, match="does not exist"):
            await ep.stat("/some/file")
        with pytest.raises(EndpointUnavailable, match="does not exist"):
            await listing(ep, "/")
    finally:
        await ep.aclose()


async def test_a_dead_port_is_unavailable_at_once(azurite: AzuriteServer, unused_tcp_port: int) -> None:
    ep = make_endpoint(azurite, "fed-a", url=f"http://127.0.0.1:{unused_tcp_port}/{MAIN}", timeout=10)
    started = time.monotonic()
    try:
        with pytest.raises(EndpointUnavailable) as info:
            await ep.probe()
        assert isinstance(info.value.__cause__, aiohttp.ClientError | OSError)  # what went wrong
        with pytest.raises(EndpointUnavailable):
            await ep.stat("/f")
    finally:
        await ep.aclose()
    assert time.monotonic() - started < 3  # no SDK retries with back-off


@pytest.fixture
async def silent_server() -> AsyncIterator[int]:
    """A server that accepts connections and never answers: the only way to see a timeout."""
    connections: list[asyncio.StreamWriter] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connections.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    yield server.sockets[0].getsockname()[1]
    for writer in connections:
        writer.close()
    server.close()
    await server.wait_closed()


async def test_timeouts_become_endpoint_unavailable(azurite: AzuriteServer, silent_server: int) -> None:
    ep = make_endpoint(azurite, "fed-a", url=f"http://127.0.0.1:{silent_server}/{MAIN}", timeout=0.3)
    try:
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: ep.stat("/f"),
            ep.probe,
            lambda: ep.mkcol("/d"),
            lambda: ep.delete("/f"),
            lambda: listing(ep, "/d"),
        ]
        for call in calls:
            started = time.monotonic()
            with pytest.raises(EndpointUnavailable, match=r"timed out after 0\.3s"):
                await call()
            assert time.monotonic() - started < 2
    finally:
        await ep.aclose()


async def test_nothing_signed_or_secret_is_logged(
    endpoint: AzureEndpoint, blobs: ContainerClient, azurite: AzuriteServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    await put(blobs, "f", b"1")
    await endpoint.stat("/f")
    await listing(endpoint, "/")
    await endpoint.mkcol("/d")
    await endpoint.delete("/d")
    assert azurite.accounts[MAIN] not in caplog.text
    assert "SharedKey" not in caplog.text and "sig=" not in caplog.text
