"""WebDAVEndpoint against real Apache mod_dav_fs and real nginx dav-ext (plus a plain HTTP server).

Each test works in its own collection, named with a space so that the endpoint's base URL is itself
percent-encoded, because the servers are shared by the whole session.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from urllib.parse import quote

import aiohttp
import pytest
from aiohttp import web
from pydantic import ValidationError

from geofed.config import EndpointSettings
from geofed.endpoints.base import Entry
from geofed.endpoints.webdav import WebDAVEndpoint
from geofed.errors import EndpointRefused, EndpointUnavailable, PathNotFound
from tests.infra.servers import RunningServer

pytestmark = pytest.mark.integration

UTF8_NAME = "ünïcødé €.dat"
ODD_NAME = "100% #1 [x].bin"


@pytest.fixture(params=["apache_dav", "nginx_dav"])
def dav_server(request: pytest.FixtureRequest) -> RunningServer:
    server: RunningServer = request.getfixturevalue(request.param)
    return server


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture
async def folder(dav_server: RunningServer, http: aiohttp.ClientSession) -> str:
    """A fresh collection on the server for this test; returns its (unencoded) name."""
    name = f"t {uuid.uuid4().hex[:10]}"
    async with http.request("MKCOL", f"{dav_server.url}/{quote(name)}/") as resp:
        assert resp.status == 201, await resp.text()
    return name


def make_endpoint(url: str, timeout: float = 5.0) -> WebDAVEndpoint:
    return WebDAVEndpoint(EndpointSettings(name="dav", kind="webdav", url=url, timeout=timeout))


@pytest.fixture
async def endpoint(dav_server: RunningServer, folder: str) -> AsyncIterator[WebDAVEndpoint]:
    ep = make_endpoint(f"{dav_server.url}/{quote(folder)}")
    yield ep
    await ep.aclose()


async def put(endpoint: WebDAVEndpoint, http: aiohttp.ClientSession, path: str, data: bytes) -> None:
    """Write through the server, as a client would."""
    async with http.put(endpoint.url_for(path), data=data) as resp:
        assert resp.status in (200, 201, 204), await resp.text()


async def listing(endpoint: WebDAVEndpoint, path: str) -> dict[str, Entry]:
    return {entry.name: entry async for entry in endpoint.list(path)}


def write_on_disk(server: RunningServer, relative: str, data: bytes) -> None:
    """Create a file in the served folder directly, owned by the server's user like its own files."""
    assert server.root is not None
    target = server.root / relative
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    if os.geteuid() == 0:
        www = pwd.getpwnam("www-data")
        for path in (target, target.parent):
            os.chown(path, www.pw_uid, www.pw_gid)


# -- stat -------------------------------------------------------------------------------------


async def test_stat_file_dir_and_missing(
    endpoint: WebDAVEndpoint, http: aiohttp.ClientSession, dav_server: RunningServer
) -> None:
    assert await endpoint.mkcol("/d")
    await put(endpoint, http, "/d/f.txt", b"hello world")

    stat = await endpoint.stat("/d/f.txt")
    assert stat is not None
    assert (stat.is_dir, stat.size) == (False, 11)
    assert stat.mtime is not None and abs(stat.mtime - time.time()) < 120
    if dav_server.name == "apache":
        assert stat.etag  # mod_dav sends getetag ...
    else:
        assert stat.etag is None  # ... dav-ext does not

    directory = await endpoint.stat("/d")
    assert directory is not None and directory.is_dir
    root = await endpoint.stat("/")
    assert root is not None and root.is_dir
    assert await endpoint.stat("/d/missing") is None
    assert await endpoint.stat("/no/such/dir") is None


async def test_stat_of_utf8_name(endpoint: WebDAVEndpoint, http: aiohttp.ClientSession) -> None:
    await put(endpoint, http, f"/{UTF8_NAME}", b"x" * 5)
    stat = await endpoint.stat(f"/{UTF8_NAME}")
    assert stat is not None and stat.size == 5


# -- list -------------------------------------------------------------------------------------


async def test_list_names_with_spaces_and_utf8(endpoint: WebDAVEndpoint, http: aiohttp.ClientSession) -> None:
    assert await endpoint.mkcol("/dir")
    assert await endpoint.mkcol("/dir/sub folder")
    for name, data in [("with space.txt", b"12345"), (UTF8_NAME, b""), (ODD_NAME, b"abc")]:
        await put(endpoint, http, f"/dir/{name}", data)

    entries = await listing(endpoint, "/dir")
    assert sorted(entries) == sorted(["sub folder", "with space.txt", UTF8_NAME, ODD_NAME])
    assert entries["sub folder"].stat.is_dir
    assert (entries["with space.txt"].stat.is_dir, entries["with space.txt"].stat.size) == (False, 5)
    assert entries[UTF8_NAME].stat.size == 0
    assert entries[ODD_NAME].stat.size == 3
    assert [e.name for e in (await listing(endpoint, "/")).values()] == ["dir"]
    assert await listing(endpoint, "/dir/sub folder") == {}


async def test_list_of_files_written_directly_on_disk(
    endpoint: WebDAVEndpoint, dav_server: RunningServer, folder: str
) -> None:
    names = [f"file {i:04d} é.dat" for i in range(1500)]  # a listing spanning many chunks
    for name in names:
        write_on_disk(dav_server, f"{folder}/many/{name}", name.encode())
    entries = await listing(endpoint, "/many")
    assert sorted(entries) == names
    assert all(entries[name].stat.size == len(name.encode()) for name in names)


async def test_list_missing_or_file_raises_path_not_found(
    endpoint: WebDAVEndpoint, http: aiohttp.ClientSession
) -> None:
    await put(endpoint, http, "/plain.txt", b"data")
    with pytest.raises(PathNotFound):
        await listing(endpoint, "/missing")
    with pytest.raises(PathNotFound, match="not a collection"):
        await listing(endpoint, "/plain.txt")


async def test_list_stopped_early_releases_the_connection(
    endpoint: WebDAVEndpoint, http: aiohttp.ClientSession
) -> None:
    for i in range(5):
        await put(endpoint, http, f"/f{i}", b"x")
    async for _entry in endpoint.list("/"):
        break
    assert len(await listing(endpoint, "/")) == 5  # the endpoint still works afterwards


# -- mkcol, makedirs, delete ------------------------------------------------------------------


async def test_mkcol_new_existing_and_missing_parent(endpoint: WebDAVEndpoint) -> None:
    assert await endpoint.mkcol("/new") is True
    assert await endpoint.mkcol("/new") is False
    with pytest.raises(EndpointRefused) as info:
        await endpoint.mkcol("/absent/child")
    assert info.value.status == 409


async def test_makedirs_creates_every_parent(endpoint: WebDAVEndpoint) -> None:
    await endpoint.makedirs("/a/b b/ç/d")
    for path in ("/a", "/a/b b", "/a/b b/ç", "/a/b b/ç/d"):
        stat = await endpoint.stat(path)
        assert stat is not None and stat.is_dir, path
    await endpoint.makedirs("/a/b b/ç/d")  # already there: nothing to do, no error


async def test_delete_file_and_collection(endpoint: WebDAVEndpoint, http: aiohttp.ClientSession) -> None:
    await endpoint.makedirs("/tree/inner")
    await put(endpoint, http, "/tree/inner/f.txt", b"1")
    await put(endpoint, http, "/top.txt", b"2")

    await endpoint.delete("/top.txt")
    assert await endpoint.stat("/top.txt") is None
    await endpoint.delete("/tree")  # a collection with content
    assert await endpoint.stat("/tree") is None
    assert await listing(endpoint, "/") == {}
    with pytest.raises(PathNotFound):
        await endpoint.delete("/tree")
    with pytest.raises(EndpointRefused):
        await endpoint.delete("/")


# -- sign_url, probe, errors ------------------------------------------------------------------


async def test_sign_url_get_serves_the_bytes(
    dav_server: RunningServer, folder: str, http: aiohttp.ClientSession
) -> None:
    host = dav_server.url.removeprefix("http://")
    with pytest.raises(ValidationError, match="put credentials under 'credentials'"):
        make_endpoint(f"http://alice:s3cret@{host}/{quote(folder)}/")  # never carried in a URL
    endpoint = make_endpoint(f"http://{host}/{quote(folder)}/")
    try:
        payload = os.urandom(100_000)
        await put(endpoint, http, f"/{ODD_NAME}", payload)
        url = endpoint.sign_url("GET", f"/{ODD_NAME}", 600)
        assert url.startswith(f"{dav_server.url}/")
        async with http.get(url) as resp:
            assert resp.status == 200
            assert await resp.read() == payload
    finally:
        await endpoint.aclose()


async def test_probe_healthy_and_wrong_base(dav_server: RunningServer, endpoint: WebDAVEndpoint) -> None:
    await endpoint.probe()
    wrong = make_endpoint(f"{dav_server.url}/no-such-base-{uuid.uuid4().hex}")
    try:
        with pytest.raises(EndpointUnavailable, match="404"):
            await wrong.probe()
    finally:
        await wrong.aclose()


def _dead_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port  # closed again: connecting is refused


async def test_probe_of_dead_port_fails_fast() -> None:
    endpoint = make_endpoint(f"http://127.0.0.1:{_dead_port()}/base", timeout=10)
    try:
        started = time.monotonic()
        with pytest.raises(EndpointUnavailable) as info:
            await endpoint.probe()
        assert time.monotonic() - started < 2
        assert isinstance(info.value.__cause__, aiohttp.ClientError | OSError)
        with pytest.raises(EndpointUnavailable):
            await endpoint.stat("/x")
    finally:
        await endpoint.aclose()


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


async def test_timeouts_become_endpoint_unavailable(silent_server: int) -> None:
    endpoint = make_endpoint(f"http://127.0.0.1:{silent_server}/", timeout=0.3)
    try:
        calls: list[Callable[[], Awaitable[object]]] = [
            lambda: endpoint.stat("/f"),
            endpoint.probe,
            lambda: endpoint.mkcol("/d"),
            lambda: endpoint.delete("/f"),
            lambda: listing(endpoint, "/"),
        ]
        for call in calls:
            started = time.monotonic()
            with pytest.raises(EndpointUnavailable, match=r"timed out after 0\.3s") as info:
                await call()
            assert time.monotonic() - started < 2
            assert isinstance(info.value.__cause__, TimeoutError)
    finally:
        await endpoint.aclose()


# -- a plain HTTP server (no WebDAV) ----------------------------------------------------------


class PlainServer:
    """aiohttp serving GET/HEAD only, as a static web server would; counts the methods it sees."""

    def __init__(self) -> None:
        self.methods: list[str] = []
        self.url = ""
        self.propfind_status = 405

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.methods.append(request.method)
        if request.method == "PROPFIND":
            return web.Response(status=self.propfind_status)
        if request.path == "/base/file.bin":
            headers = {"ETag": '"v1"', "Last-Modified": "Mon, 01 Jan 2024 00:00:00 GMT"}
            return web.Response(body=b"0123456789", headers=headers)
        if request.path == "/base/folder":
            raise web.HTTPMovedPermanently("/base/folder/")
        if request.path == "/base/broken":
            return web.Response(status=503)
        if request.path == "/base/secret":
            return web.Response(status=403)
        if request.path == "/base/":
            return web.Response(status=403)  # a folder without an index page
        return web.Response(status=404)


@pytest.fixture
async def plain() -> AsyncIterator[PlainServer]:
    state = PlainServer()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", state.handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    state.url = f"http://127.0.0.1:{port}/base"
    yield state
    await runner.cleanup()


@pytest.fixture
async def plain_endpoint(plain: PlainServer) -> AsyncIterator[WebDAVEndpoint]:
    endpoint = make_endpoint(plain.url)
    yield endpoint
    await endpoint.aclose()


@pytest.mark.parametrize("status", [405, 501, 400, 200])
async def test_plain_http_stat_falls_back_to_head_and_remembers(
    plain: PlainServer, plain_endpoint: WebDAVEndpoint, status: int
) -> None:
    plain.propfind_status = status
    stat = await plain_endpoint.stat("/file.bin")
    assert stat is not None
    assert (stat.is_dir, stat.size, stat.mtime, stat.etag) == (False, 10, 1704067200.0, '"v1"')
    assert plain.methods == ["PROPFIND", "HEAD"]
    assert await plain_endpoint.stat("/missing") is None
    folder = await plain_endpoint.stat("/folder")
    assert folder is not None and folder.is_dir
    with pytest.raises(EndpointUnavailable, match="503"):
        await plain_endpoint.stat("/broken")
    with pytest.raises(EndpointRefused) as info:
        await plain_endpoint.stat("/secret")
    assert info.value.status == 403
    assert plain.methods.count("PROPFIND") == 1
    with pytest.raises(EndpointRefused) as info:
        await listing(plain_endpoint, "/")
    assert info.value.status == 405
    await plain_endpoint.probe()  # HEAD of the base answers 403: up, just no index page


async def test_propfind_403_is_remembered_only_after_a_definite_head(
    plain: PlainServer, plain_endpoint: WebDAVEndpoint
) -> None:
    plain.propfind_status = 403
    with pytest.raises(EndpointRefused):
        await plain_endpoint.stat("/secret")  # HEAD is refused too: maybe only this path is
    assert await plain_endpoint.stat("/file.bin") is not None  # PROPFIND tried again, then HEAD
    assert await plain_endpoint.stat("/file.bin") is not None  # now straight to HEAD
    assert plain.methods == ["PROPFIND", "HEAD", "PROPFIND", "HEAD", "HEAD"]


def test_url_building_encodes() -> None:
    endpoint = make_endpoint("https://storage.example:8443/dav%20root/")
    assert endpoint.url_for("/") == "https://storage.example:8443/dav%20root/"
    assert endpoint.url_for("/a b/é?#%") == "https://storage.example:8443/dav%20root/a%20b/%C3%A9%3F%23%25"
    assert endpoint.url_for("/d", collection=True) == "https://storage.example:8443/dav%20root/d/"
