"""WebDAVEndpoint's read, upload, checksums, move and space against real Apache mod_dav_fs and nginx
dav-ext, plus a small aiohttp server for what neither does (Digest answers, ignored ranges, a
server that stops reading an upload).

What the real servers do, as asserted here: both honour ``Range`` (206, 416 past the end); Apache
keeps dead properties set by PROPPATCH (in ``.DAV/`` beside the file, hidden from PROPFIND, moved
with the file) while nginx dav-ext answers PROPPATCH with 405; neither reports RFC 4331 quota
properties (Apache 2.4's mod_dav_fs has no quota support: 404 propstat; nginx returns an empty
200 propstat) nor answers ``Want-Digest``.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import os
import time
import uuid
import zlib
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote
from xml.etree import ElementTree

import aiohttp
import pytest
from aiohttp import web

from geofed.config import EndpointSettings
from geofed.endpoints.base import StatResult
from geofed.endpoints.davxml import QUOTA_USED, parse_multistatus, propfind_named_body, proppatch_body
from geofed.endpoints.webdav import (
    CHECKSUMS_PROPERTY,
    READ_CHUNK,
    STAMP_PROPERTY,
    WebDAVEndpoint,
    is_temporary,
    parse_checksums,
    parse_digest,
    same_version,
    temporary_name,
    version_stamp,
)
from geofed.errors import EndpointRefused, EndpointUnavailable, PathNotFound
from tests.infra.servers import RunningServer

pytestmark = pytest.mark.integration

ADLER = "0a1b2c3d"
MD5 = "5eb63bbbe01eeed093cb22bb8f5acdc3"
SHA = "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"
CRC = "c99465aa"
ALL = {"adler32": ADLER, "md5": MD5, "sha256": SHA, "crc32c": CRC}


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
    """A fresh collection on the (shared) server for this test; returns its unencoded name."""
    name = f"io {uuid.uuid4().hex[:10]}"
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


@pytest.fixture
def disk(dav_server: RunningServer, folder: str) -> Path:
    """The test's collection in the server's document root."""
    assert dav_server.root is not None
    return dav_server.root / folder


async def put(endpoint: WebDAVEndpoint, http: aiohttp.ClientSession, path: str, data: bytes) -> None:
    """Write through the server, as a client would."""
    async with http.put(endpoint.url_for(path), data=data) as resp:
        assert resp.status in (200, 201, 204), await resp.text()


async def read_all(ep: WebDAVEndpoint, path: str, offset: int = 0, length: int | None = None) -> bytes:
    async with contextlib.aclosing(ep.read(path, offset, length)) as chunks:
        return b"".join([chunk async for chunk in chunks])


async def chunks_of(*parts: bytes, fail_after: int | None = None) -> AsyncIterator[bytes]:
    for index, part in enumerate(parts):
        if fail_after is not None and index == fail_after:
            raise ConnectionResetError("client went away")
        await asyncio.sleep(0)
        yield part


def files_on_disk(directory: Path) -> list[str]:
    """Every file below ``directory`` (relative names), Apache's ``.DAV`` property store excepted."""
    return sorted(
        str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file() and ".DAV" not in p.parts
    )


async def stat_of(ep: WebDAVEndpoint, path: str) -> StatResult:
    stat = await ep.stat(path)
    assert stat is not None
    return stat


def test_capabilities() -> None:
    caps = WebDAVEndpoint.capabilities
    assert (caps.read_stream, caps.upload_stream, caps.store_checksums, caps.move) == (True,) * 4


# -- read -----------------------------------------------------------------------------------------


async def test_read_whole_and_ranges(endpoint: WebDAVEndpoint, http: aiohttp.ClientSession) -> None:
    data = os.urandom(READ_CHUNK * 2 + 1234)
    assert await endpoint.mkcol("/d")
    await put(endpoint, http, "/d/f é.bin", data)

    sizes = [len(chunk) async for chunk in endpoint.read("/d/f é.bin")]
    assert sum(sizes) == len(data) and max(sizes) <= READ_CHUNK
    assert await read_all(endpoint, "/d/f é.bin") == data
    assert await read_all(endpoint, "/d/f é.bin", 100) == data[100:]
    assert await read_all(endpoint, "/d/f é.bin", 100, 50) == data[100:150]
    assert (
        await read_all(endpoint, "/d/f é.bin", READ_CHUNK + 7, READ_CHUNK)
        == data[READ_CHUNK + 7 : 2 * READ_CHUNK + 7]
    )
    assert await read_all(endpoint, "/d/f é.bin", len(data) - 2, 100) == data[-2:]  # clipped at the end
    assert await read_all(endpoint, "/d/f é.bin", len(data)) == b""  # 416: past the end, nothing
    assert await read_all(endpoint, "/d/f é.bin", 5, 0) == b""
    await put(endpoint, http, "/empty", b"")
    assert await read_all(endpoint, "/empty") == b""


async def test_read_missing_and_collection(endpoint: WebDAVEndpoint) -> None:
    assert await endpoint.mkcol("/dir")
    for path in ("/missing", "/dir", "/no/such/dir/f"):
        with pytest.raises(PathNotFound):
            await read_all(endpoint, path)
    with pytest.raises(PathNotFound):
        await read_all(endpoint, "/missing", 0, 0)


async def test_read_stopped_early_releases_the_connection(
    endpoint: WebDAVEndpoint, http: aiohttp.ClientSession
) -> None:
    await put(endpoint, http, "/big", b"x" * (READ_CHUNK * 8))
    for _ in range(3):
        async with contextlib.aclosing(endpoint.read("/big")) as chunks:
            async for _chunk in chunks:
                break
    assert await read_all(endpoint, "/big", 10, 5) == b"xxxxx"


# -- upload ---------------------------------------------------------------------------------------


async def test_upload_streams_to_disk_with_parents(endpoint: WebDAVEndpoint, disk: Path) -> None:
    parts = [os.urandom(300_000), b"", os.urandom(5), os.urandom(1 << 20)]
    await endpoint.upload("/sub dir/ünï/f 1.bin", chunks_of(*parts))
    assert (disk / "sub dir" / "ünï" / "f 1.bin").read_bytes() == b"".join(parts)
    await endpoint.upload("/sub dir/ünï/f 1.bin", chunks_of(b"replaced"))  # overwrite
    assert (disk / "sub dir" / "ünï" / "f 1.bin").read_bytes() == b"replaced"
    await endpoint.upload("/empty.bin", chunks_of())
    assert (disk / "empty.bin").read_bytes() == b""
    assert files_on_disk(disk) == ["empty.bin", "sub dir/ünï/f 1.bin"]  # no temporary left


async def test_failed_upload_leaves_no_file_and_no_temporary(
    endpoint: WebDAVEndpoint, http: aiohttp.ClientSession, disk: Path
) -> None:
    with pytest.raises(ConnectionResetError, match="client went away"):  # the client's error, unchanged
        await endpoint.upload("/f.bin", chunks_of(os.urandom(200_000), os.urandom(200_000), fail_after=1))
    await put(endpoint, http, "/kept.bin", b"original")
    with pytest.raises(ConnectionResetError):
        await endpoint.upload("/kept.bin", chunks_of(b"new" * 1000, b"more", fail_after=1))
    await asyncio.sleep(0.2)  # let the server notice the broken body and clean up after itself
    assert files_on_disk(disk) == ["kept.bin"]
    assert (disk / "kept.bin").read_bytes() == b"original"
    assert await endpoint.stat("/f.bin") is None
    assert [entry.name async for entry in endpoint.list("/")] == ["kept.bin"]


async def test_upload_onto_a_collection_is_refused(endpoint: WebDAVEndpoint, disk: Path) -> None:
    assert await endpoint.mkcol("/dir")
    for path in ("/dir", "/"):
        with pytest.raises(EndpointRefused) as refused:
            await endpoint.upload(path, chunks_of(b"data"))
        assert refused.value.status == 409
    assert (disk / "dir").is_dir() and files_on_disk(disk) == []


async def test_temporary_names_are_hidden_from_listings(
    endpoint: WebDAVEndpoint, http: aiohttp.ClientSession
) -> None:
    hidden = temporary_name("data.bin")
    assert is_temporary(hidden) and not is_temporary("data.bin") and not is_temporary(".data.bin")
    await put(endpoint, http, f"/{hidden}", b"partial")
    await put(endpoint, http, "/data.bin", b"whole")
    assert [entry.name async for entry in endpoint.list("/")] == ["data.bin"]
    long_name = "é" * 200
    assert len(temporary_name(long_name).encode()) < 255


# -- checksums --------------------------------------------------------------------------------------


async def test_store_and_read_back_checksums(
    dav_server: RunningServer, endpoint: WebDAVEndpoint, http: aiohttp.ClientSession
) -> None:
    await put(endpoint, http, "/f.txt", b"hello world")
    before = await stat_of(endpoint, "/f.txt")
    assert await endpoint.stored_checksums("/f.txt", before) == {}
    stored = await endpoint.store_checksums("/f.txt", {**ALL, "md5": MD5.upper(), "bogus": "00"})
    if dav_server.name == "nginx":
        assert stored is False  # dav-ext: PROPPATCH is 405 ...
        assert await endpoint.store_checksums("/f.txt", ALL) is False  # ... remembered
        assert await endpoint.stored_checksums("/f.txt", before) == {}
        return
    assert stored is True
    after = await stat_of(endpoint, "/f.txt")
    assert (after.size, after.mtime) == (before.size, before.mtime)  # properties do not touch the file
    assert (after.etag or "").removeprefix("W/") == (before.etag or "").removeprefix("W/")
    assert await endpoint.stored_checksums("/f.txt", after) == ALL
    assert [entry.name async for entry in endpoint.list("/")] == ["f.txt"]  # .DAV is not listed

    # A stat of another version than the current one gets nothing.
    other = StatResult(is_dir=False, size=11, etag='"something-else"')
    assert await endpoint.stored_checksums("/f.txt", other) == {}

    # The file is rewritten (Apache keeps the dead properties): the stamp no longer matches.
    time.sleep(0.01)
    await put(endpoint, http, "/f.txt", b"HELLO WORLD")
    assert await endpoint.stored_checksums("/f.txt", await stat_of(endpoint, "/f.txt")) == {}

    # Properties travel with a MOVE, and stay valid (same size and mtime, so the same ETag).
    assert await endpoint.store_checksums("/f.txt", {"adler32": ADLER})
    await endpoint.move("/f.txt", "/moved/f.txt")
    assert await endpoint.stored_checksums("/moved/f.txt", await stat_of(endpoint, "/moved/f.txt")) == {
        "adler32": ADLER
    }


async def test_checksums_of_missing_files_and_collections(
    dav_server: RunningServer, endpoint: WebDAVEndpoint
) -> None:
    assert await endpoint.mkcol("/dir")
    with pytest.raises(PathNotFound):
        await endpoint.stored_checksums("/missing", StatResult(is_dir=False))
    if dav_server.name == "apache":
        with pytest.raises(PathNotFound):
            await endpoint.store_checksums("/missing", ALL)
    assert await endpoint.store_checksums("/dir", ALL) is False
    assert await endpoint.stored_checksums("/dir", StatResult(is_dir=True)) == {}


def test_version_stamps() -> None:
    apache = StatResult(is_dir=False, size=11, mtime=1700000000.4, etag='W/"b-6612642b2d612"')
    assert version_stamp(apache) == 'size=11;etag="b-6612642b2d612";mtime=1700000000'
    strong = StatResult(is_dir=False, size=11, mtime=1700000000.0, etag='"b-6612642b2d612"')
    assert same_version(version_stamp(apache), strong)  # Apache's weak ETag turns strong later
    assert not same_version(version_stamp(apache), StatResult(is_dir=False, size=12, etag=strong.etag))
    assert not same_version(version_stamp(apache), StatResult(is_dir=False, size=11, etag='"other"'))
    no_etag = StatResult(is_dir=False, size=3, mtime=5.0)
    assert same_version(version_stamp(no_etag), no_etag)
    assert not same_version(version_stamp(no_etag), StatResult(is_dir=False, size=3, mtime=6.0))
    assert not same_version(version_stamp(no_etag), StatResult(is_dir=False, size=3))
    assert not same_version("garbage", no_etag)
    assert parse_checksums(f"adler32:{ADLER}, MD5:{MD5.upper()},sha1:00,crc32c:xyz,sha256,md5:ab") == {
        "adler32": ADLER,
        "md5": MD5,
    }
    assert parse_checksums("crc32c:1f") == {"crc32c": "0000001f"}


def test_parse_digest_forms() -> None:
    data = b"hello world"
    md5 = hashlib.md5(data).digest()
    sha = hashlib.sha256(data).digest()
    header = (
        f"ADLER32={zlib.adler32(data):x}, md5={base64.b64encode(md5).decode()}, "
        f"SHA-256={base64.b64encode(sha).decode()}, crc32c=yZRlqg==, UNIXcksum=123"
    )
    assert parse_digest(header) == {
        "adler32": f"{zlib.adler32(data):08x}",
        "md5": md5.hex(),
        "sha256": sha.hex(),
        "crc32c": "c99465aa",
    }
    assert parse_digest("crc32c=C99465AA, md5=" + md5.hex()) == {"crc32c": "c99465aa", "md5": md5.hex()}
    assert parse_digest("adler32=3da0195") == {"adler32": "03da0195"}  # unpadded
    assert parse_digest("md5=notbase64!, adler32=zz, sha-256=AAAA, crc32c=") == {}
    assert parse_digest(None) == {}


# -- move -------------------------------------------------------------------------------------------


async def test_move_files(endpoint: WebDAVEndpoint, http: aiohttp.ClientSession, disk: Path) -> None:
    await put(endpoint, http, "/a.txt", b"A")
    await put(endpoint, http, "/b.txt", b"B")
    await endpoint.move("/a.txt", "/x/y é/a.txt")  # parents created (Apache would answer 500)
    assert (disk / "x" / "y é" / "a.txt").read_bytes() == b"A" and not (disk / "a.txt").exists()

    with pytest.raises(EndpointRefused) as refused:
        await endpoint.move("/b.txt", "/x/y é/a.txt", overwrite=False)
    assert refused.value.status == 412
    assert (disk / "x" / "y é" / "a.txt").read_bytes() == b"A" and (disk / "b.txt").exists()
    await endpoint.move("/b.txt", "/x/y é/a.txt")
    assert (disk / "x" / "y é" / "a.txt").read_bytes() == b"B" and not (disk / "b.txt").exists()

    with pytest.raises(PathNotFound):
        await endpoint.move("/b.txt", "/c.txt")
    for source, destination in [("/", "/z"), ("/x", "/"), ("/x", "/x"), ("/x", "/x/inner")]:
        with pytest.raises(EndpointRefused) as refused:
            await endpoint.move(source, destination)
        assert refused.value.status == 403


async def test_move_collections(endpoint: WebDAVEndpoint, http: aiohttp.ClientSession, disk: Path) -> None:
    await endpoint.makedirs("/src/inner")
    await put(endpoint, http, "/src/inner/f", b"1")
    await endpoint.makedirs("/dst")
    await put(endpoint, http, "/dst/old", b"old")

    await endpoint.move("/src", "/moved/src")
    assert (disk / "moved" / "src" / "inner" / "f").read_bytes() == b"1" and not (disk / "src").exists()
    with pytest.raises(EndpointRefused) as refused:
        await endpoint.move("/moved/src", "/dst", overwrite=False)
    assert refused.value.status == 412
    await endpoint.move("/moved/src", "/dst")  # replaces the collection and its content
    assert files_on_disk(disk) == ["dst/inner/f"]
    entries = {entry.name async for entry in endpoint.list("/")}
    assert entries == {"dst", "moved"}


# -- space ------------------------------------------------------------------------------------------


async def test_space_is_unknown_on_both_servers(endpoint: WebDAVEndpoint) -> None:
    assert await endpoint.space() is None  # Apache 2.4: 404 propstat; nginx: empty 200 propstat


# -- what neither server does: a small aiohttp server -------------------------------------------------

PAYLOAD = b"hello world"


class FakeServer:
    """Answers HEAD with a Digest, GET ignoring Range, PROPFIND with 405 (plain HTTP), QUOTA props
    on demand, and a PUT that never reads its body."""

    def __init__(self) -> None:
        self.url = ""
        self.methods: list[str] = []
        self.quota: tuple[int | None, int | None] | None = None
        self.release = asyncio.Event()
        md5 = base64.b64encode(hashlib.md5(PAYLOAD).digest()).decode()
        self.digest = f"adler32={zlib.adler32(PAYLOAD):08x}, md5={md5}"

    async def handle(self, request: web.Request) -> web.StreamResponse:
        self.methods.append(request.method)
        if request.method == "PROPFIND":
            if self.quota is None:
                return web.Response(status=405)
            available, used = self.quota
            props = "".join(
                f"<D:{name}>{value}</D:{name}>"
                for name, value in (("quota-available-bytes", available), ("quota-used-bytes", used))
                if value is not None
            )
            body = (
                '<?xml version="1.0"?><D:multistatus xmlns:D="DAV:"><D:response><D:href>/base/</D:href>'
                f"<D:propstat><D:prop><D:resourcetype><D:collection/></D:resourcetype>{props}</D:prop>"
                "<D:status>HTTP/1.1 200 OK</D:status></D:propstat></D:response></D:multistatus>"
            )
            return web.Response(status=207, body=body.encode(), content_type="application/xml")
        if request.method == "PUT":
            await self.release.wait()  # never reads the body: the client's writes stall
            return web.Response(status=503)
        if request.path == "/base/file.bin" and request.method in ("GET", "HEAD"):
            headers = {"ETag": '"v1"'}
            if request.headers.get("Want-Digest"):
                headers["Digest"] = self.digest
            return web.Response(body=PAYLOAD, headers=headers)  # Range ignored: always 200
        return web.Response(status=404)


@pytest.fixture
async def fake() -> AsyncIterator[FakeServer]:
    state = FakeServer()
    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", state.handle)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    state.url = f"http://127.0.0.1:{runner.addresses[0][1]}/base"
    yield state
    state.release.set()
    await runner.cleanup()


async def test_server_digest_is_reported(fake: FakeServer) -> None:
    endpoint = make_endpoint(fake.url)
    try:
        stat = StatResult(is_dir=False, size=len(PAYLOAD), etag='"v1"')
        assert await endpoint.stored_checksums("/file.bin", stat) == {
            "adler32": f"{zlib.adler32(PAYLOAD):08x}",
            "md5": hashlib.md5(PAYLOAD).hexdigest(),
        }
        # A Digest of another version than the caller's stat is not reported.
        assert await endpoint.stored_checksums("/file.bin", StatResult(is_dir=False, size=99)) == {}
        assert await endpoint.stored_checksums("/file.bin", StatResult(is_dir=False, etag='"v0"')) == {}
        with pytest.raises(PathNotFound):
            await endpoint.stored_checksums("/missing", StatResult(is_dir=False))
        assert await endpoint.store_checksums("/file.bin", ALL) is False  # PROPFIND refused: no properties
    finally:
        await endpoint.aclose()


async def test_plain_server_stores_nothing(fake: FakeServer) -> None:
    endpoint = make_endpoint(fake.url)
    try:
        assert await endpoint.stat("/file.bin") is not None  # PROPFIND 405: HEAD from now on
        fake.methods.clear()
        assert await endpoint.store_checksums("/file.bin", ALL) is False
        assert await endpoint.space() is None
        assert fake.methods == []  # nothing asked of a server known not to speak WebDAV
    finally:
        await endpoint.aclose()


async def test_read_from_a_server_ignoring_range(fake: FakeServer) -> None:
    endpoint = make_endpoint(fake.url)
    try:
        assert await read_all(endpoint, "/file.bin", 6) == b"world"
        assert await read_all(endpoint, "/file.bin", 2, 3) == b"llo"
        assert await read_all(endpoint, "/file.bin") == PAYLOAD
    finally:
        await endpoint.aclose()


@pytest.mark.parametrize(
    ("quota", "expected"),
    [((1000, 24), (24, 1000)), ((1000, None), (None, 1000)), ((None, None), None)],
)
async def test_space_from_rfc4331_properties(
    fake: FakeServer, quota: tuple[int | None, int | None], expected: tuple[int | None, int | None] | None
) -> None:
    fake.quota = quota
    endpoint = make_endpoint(fake.url)
    try:
        space = await endpoint.space()
        assert (None if space is None else (space.used, space.available)) == expected
    finally:
        await endpoint.aclose()


async def test_upload_to_a_server_that_stops_reading_times_out(fake: FakeServer) -> None:
    endpoint = make_endpoint(fake.url, timeout=0.5)
    block = os.urandom(1 << 20)
    sent = 0

    async def endless() -> AsyncIterator[bytes]:
        nonlocal sent
        for _ in range(512):
            sent += 1
            yield block

    try:
        started = time.monotonic()
        with pytest.raises(EndpointUnavailable, match=r"timed out after 0\.5s"):
            await endpoint.upload("/f.bin", endless())
        assert time.monotonic() - started < 5
        assert sent < 512  # it stopped when the server stopped taking the body
        assert "DELETE" in fake.methods  # the temporary name was cleaned up
    finally:
        await endpoint.aclose()


async def test_slow_client_is_not_a_timeout(endpoint: WebDAVEndpoint, disk: Path) -> None:
    """Waiting for the client's next chunk does not count against the endpoint's timeout."""
    slow = make_endpoint(endpoint.url_for("/").rstrip("/"), timeout=0.3)

    async def dribble() -> AsyncIterator[bytes]:
        for part in (b"a", b"b", b"c"):
            await asyncio.sleep(0.4)
            yield part

    try:
        await slow.upload("/slow.bin", dribble())
    finally:
        await slow.aclose()
    assert (disk / "slow.bin").read_bytes() == b"abc"


# -- the PROPFIND/PROPPATCH bodies (pure) ----------------------------------------------------------


def test_proppatch_and_propfind_bodies_and_extra_properties() -> None:
    body = proppatch_body({CHECKSUMS_PROPERTY: "adler32:0a1b2c3d", STAMP_PROPERTY: 'etag="a&b"<'})
    tree = ElementTree.fromstring(body)
    texts = {element.tag: element.text for element in tree.iter() if element.tag.startswith("{https")}
    assert texts == {CHECKSUMS_PROPERTY: "adler32:0a1b2c3d", STAMP_PROPERTY: 'etag="a&b"<'}
    asked = {element.tag for element in ElementTree.fromstring(propfind_named_body([QUOTA_USED])).iter()}
    assert {QUOTA_USED, "{DAV:}getetag", "{DAV:}resourcetype"} <= asked
    with pytest.raises(ValueError):
        proppatch_body({"checksums": "no namespace"})

    answer = (
        b'<?xml version="1.0"?><D:multistatus xmlns:D="DAV:" xmlns:g="https://geofed.org/ns">'
        b"<D:response><D:href>/f</D:href>"
        b"<D:propstat><D:prop><g:checksums/></D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat>"
        b"<D:propstat><D:prop><g:checksum-stamp/></D:prop><D:status>HTTP/1.1 403 Forbidden</D:status>"
        b"</D:propstat></D:response></D:multistatus>"
    )
    (item,) = parse_multistatus(answer, [CHECKSUMS_PROPERTY, STAMP_PROPERTY])
    assert item.prop(CHECKSUMS_PROPERTY) == "" and item.prop(STAMP_PROPERTY) is None
    (plain,) = parse_multistatus(answer)
    assert plain.props == ()


async def test_concurrent_makedirs_of_one_new_folder_all_succeed(
    endpoint: WebDAVEndpoint, disk: Path
) -> None:
    """Two uploads into a new folder create it at the same moment: Apache answers 403 to the
    loser of the race, which must count as "already there" (else one upload fails)."""
    for attempt in range(5):
        target = f"/race{attempt}/a/b"
        results = await asyncio.gather(*(endpoint.makedirs(target) for _ in range(8)), return_exceptions=True)
        assert [r for r in results if isinstance(r, BaseException)] == []
        assert (disk / f"race{attempt}" / "a" / "b").is_dir()
