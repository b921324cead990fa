"""S3Endpoint against a real Ceph RGW, which checks SigV4 (s3rver and moto do not).

Each test works under a key prefix of its own in the ``cern`` site's bucket, because the cluster is
shared by the session; ground truth is read and written with boto3 (the reference client). The
endpoint's root is the bucket; endpoint paths here are ``/<prefix>/...``.
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
import time
import uuid
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from yarl import URL

from geofed.config import CredentialSettings, EndpointSettings
from geofed.endpoints.base import Entry
from geofed.endpoints.s3 import S3Endpoint
from geofed.endpoints.s3xml import complete_multipart_body, parse_upload_id
from geofed.errors import EndpointRefused, EndpointUnavailable, PathNotFound
from tests.infra.ceph import CephCluster, S3Site

pytestmark = pytest.mark.integration

ODD_NAMES = ["with space.txt", "ünïcødé €.dat", "plus+sign.bin", "100% #1 [x].bin", "tilde~x", "a&b=c?d"]
MiB = 1024 * 1024


def make_endpoint(
    site: S3Site, *, bucket: str | None = None, secret: str | None = None, **extra: Any
) -> S3Endpoint:
    credentials = CredentialSettings(
        access_key=site.access_key,  # type: ignore[arg-type]  # pydantic turns str into SecretStr
        secret_key=secret or site.secret_key,  # type: ignore[arg-type]
    )
    settings = EndpointSettings(
        name="rgw",
        kind="s3",
        url=extra.pop("url", site.url),
        bucket=bucket or site.bucket,
        credentials=credentials,
        timeout=extra.pop("timeout", 10.0),
        **extra,
    )
    return S3Endpoint(settings)


@pytest.fixture
def site(ceph_rgw: CephCluster) -> S3Site:
    return ceph_rgw.sites["cern"]


@pytest.fixture
def s3(ceph_rgw: CephCluster, site: S3Site) -> Any:
    """boto3, the reference client, with the site's own keys."""
    return ceph_rgw.client(site.access_key, site.secret_key, site.url)


@pytest.fixture
def prefix() -> str:
    """This test's own key prefix (with a space, so that every request path is percent-encoded)."""
    return f"t {uuid.uuid4().hex[:10]}"


@pytest.fixture
async def endpoint(site: S3Site) -> AsyncIterator[S3Endpoint]:
    ep = make_endpoint(site)
    yield ep
    await ep.aclose()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def put_many(s3: Any, bucket: str, keys: list[str], body: bytes = b"x") -> None:
    """Write ``keys`` with boto3, 16 at a time (RGW takes a few ms per PUT)."""
    with ThreadPoolExecutor(16) as pool:
        list(pool.map(lambda key: s3.put_object(Bucket=bucket, Key=key, Body=body), keys))


def keys_under(s3: Any, bucket: str, prefix: str) -> list[str]:
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [obj["Key"] for obj in page.get("Contents", [])]
    return keys


async def listing(endpoint: S3Endpoint, path: str) -> dict[str, Entry]:
    entries: dict[str, Entry] = {}
    async for entry in endpoint.list(path):
        assert entry.name not in entries, f"{entry.name} listed twice"
        entries[entry.name] = entry
    return entries


async def fetch(
    http: aiohttp.ClientSession, method: str, url: str, data: bytes | None = None
) -> tuple[int, bytes]:
    """Send a presigned URL exactly as given (no re-encoding by yarl)."""
    async with http.request(method, URL(url, encoded=True), data=data) as resp:
        return resp.status, await resp.read()


# -- stat -------------------------------------------------------------------------------------


async def test_stat_file_dir_marker_and_missing(
    endpoint: S3Endpoint, s3: Any, site: S3Site, prefix: str
) -> None:
    s3.put_object(Bucket=site.bucket, Key=f"{prefix}/d/f.txt", Body=b"hello world", ContentType="text/plain")
    s3.put_object(Bucket=site.bucket, Key=f"{prefix}/empty/", Body=b"")

    stat = await endpoint.stat(f"/{prefix}/d/f.txt")
    assert stat is not None
    assert (stat.is_dir, stat.size, stat.content_type) == (False, 11, "text/plain")
    assert stat.etag == f'"{hashlib.md5(b"hello world").hexdigest()}"'
    assert stat.mtime is not None and abs(stat.mtime - time.time()) < 120

    children_only = await endpoint.stat(f"/{prefix}/d")
    assert children_only is not None and children_only.is_dir and children_only.mtime is None
    marker_only = await endpoint.stat(f"/{prefix}/empty")
    assert marker_only is not None and marker_only.is_dir
    assert marker_only.mtime is not None and abs(marker_only.mtime - time.time()) < 120
    root = await endpoint.stat("/")
    assert root is not None and root.is_dir
    assert await endpoint.stat(f"/{prefix}/d/missing") is None
    assert await endpoint.stat(f"/{prefix}/no/such/dir") is None
    assert await endpoint.stat(f"/{prefix}/d/f.tx") is None  # a key prefix is not a directory


async def test_odd_names_stat_and_list(endpoint: S3Endpoint, s3: Any, site: S3Site, prefix: str) -> None:
    """Spaces, UTF-8, '+', '%', '~' survive path signing and the URL-encoded listing."""
    put_many(s3, site.bucket, [f"{prefix}/{name}" for name in ODD_NAMES] + [f"{prefix}/sub dir+1/x"], b"abc")
    for name in ODD_NAMES:
        stat = await endpoint.stat(f"/{prefix}/{name}")
        assert stat is not None and stat.size == 3, name
    entries = await listing(endpoint, f"/{prefix}")
    assert sorted(entries) == sorted([*ODD_NAMES, "sub dir+1"])
    assert entries["sub dir+1"].stat.is_dir
    assert list(await listing(endpoint, f"/{prefix}/sub dir+1")) == ["x"]


# -- list -------------------------------------------------------------------------------------


async def test_listing_paginates_and_hides_markers(
    endpoint: S3Endpoint, s3: Any, site: S3Site, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A file "dup" and keys under "dup/": "dup-0000".."dup-1202" sort between them ('-' < '/'), so the
    # file is on the first page and the directory on the second.
    files = [f"dup-{i:04d}" for i in range(1203)]
    keys = [f"{prefix}/big/{name}" for name in files]
    keys += [f"{prefix}/big/", f"{prefix}/big/sub/a", f"{prefix}/big/sub/b", f"{prefix}/big/marked/"]
    keys += [f"{prefix}/big/dup", f"{prefix}/big/dup.txt", f"{prefix}/big/dup/child"]
    put_many(s3, site.bucket, keys)

    pages = 0
    original = endpoint._list_page

    async def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal pages
        pages += 1
        return await original(*args, **kwargs)

    monkeypatch.setattr(endpoint, "_list_page", counting)
    entries = await listing(endpoint, f"/{prefix}/big")
    assert pages == 2  # 1205 files and 3 prefixes: two pages of at most 1000
    assert sorted(entries) == sorted([*files, "sub", "marked", "dup", "dup.txt"])
    assert entries["sub"].stat.is_dir and entries["marked"].stat.is_dir
    assert not entries["dup"].stat.is_dir  # the file wins, as in stat, across pages too
    assert (entries["dup-0007"].stat.is_dir, entries["dup-0007"].stat.size) == (False, 1)
    assert entries["dup-0007"].stat.etag and entries["dup-0007"].stat.mtime
    assert await listing(endpoint, f"/{prefix}/big/marked") == {}  # only its marker: empty, not missing


async def test_listing_streams_page_by_page(endpoint: S3Endpoint, s3: Any, site: S3Site, prefix: str) -> None:
    """The first entries arrive before the second page is requested."""
    put_many(s3, site.bucket, [f"{prefix}/s/k{i:04d}" for i in range(1001)])
    seen_before_second_page = 0
    calls = 0
    original = endpoint._list_page

    async def counting(*args: Any, **kwargs: Any) -> Any:
        nonlocal calls, seen_before_second_page
        calls += 1
        if calls == 2:
            seen_before_second_page = yielded
        return await original(*args, **kwargs)

    endpoint._list_page = counting  # type: ignore[method-assign]
    yielded = 0
    async for _ in endpoint.list(f"/{prefix}/s"):
        yielded += 1
    assert (yielded, seen_before_second_page) == (1001, 1000)


async def test_list_missing_file_and_root(endpoint: S3Endpoint, s3: Any, site: S3Site, prefix: str) -> None:
    s3.put_object(Bucket=site.bucket, Key=f"{prefix}/file", Body=b"1")
    with pytest.raises(PathNotFound):
        await listing(endpoint, f"/{prefix}/missing")
    with pytest.raises(PathNotFound):
        await listing(endpoint, f"/{prefix}/file")
    root = await listing(endpoint, "/")
    assert root[prefix].stat.is_dir


# -- changes ----------------------------------------------------------------------------------


async def test_delete_file_and_directory(endpoint: S3Endpoint, s3: Any, site: S3Site, prefix: str) -> None:
    keys = [f"{prefix}/d/k{i:04d}" for i in range(1005)] + [
        f"{prefix}/d/",
        f"{prefix}/d/sub/x y",
        f"{prefix}/keep",
    ]
    put_many(s3, site.bucket, keys)
    s3.put_object(Bucket=site.bucket, Key=f"{prefix}/d/ctl\x01char", Body=b"")  # XML cannot carry it

    await endpoint.delete(f"/{prefix}/keep")
    assert await endpoint.stat(f"/{prefix}/keep") is None
    await endpoint.delete(f"/{prefix}/d")  # more than one page of keys, the marker, a nested dir
    assert keys_under(s3, site.bucket, f"{prefix}/") == []
    with pytest.raises(PathNotFound):
        await endpoint.delete(f"/{prefix}/d")
    with pytest.raises(EndpointRefused) as refused:
        await endpoint.delete("/")
    assert refused.value.status == 403


async def test_mkcol_and_makedirs(endpoint: S3Endpoint, s3: Any, site: S3Site, prefix: str) -> None:
    assert await endpoint.mkcol(f"/{prefix}/new") is True
    marker = s3.head_object(Bucket=site.bucket, Key=f"{prefix}/new/")
    assert marker["ContentLength"] == 0
    assert await endpoint.mkcol(f"/{prefix}/new") is False
    assert await endpoint.mkcol(f"/{prefix}/no/parent/needed") is True  # parents are virtual
    parent = await endpoint.stat(f"/{prefix}/no")
    assert parent is not None and parent.is_dir
    s3.put_object(Bucket=site.bucket, Key=f"{prefix}/file", Body=b"1")
    assert await endpoint.mkcol(f"/{prefix}/file") is False  # something is there already
    assert await endpoint.mkcol("/") is False
    await endpoint.makedirs(f"/{prefix}/a/b")
    await endpoint.makedirs(f"/{prefix}/a/b")  # idempotent
    assert list(await listing(endpoint, f"/{prefix}/a")) == ["b"]
    assert await listing(endpoint, f"/{prefix}/a/b") == {}


# -- presigned URLs ---------------------------------------------------------------------------


async def test_presigned_get_head_put_delete(
    endpoint: S3Endpoint, s3: Any, site: S3Site, prefix: str, http: aiohttp.ClientSession
) -> None:
    path = f"/{prefix}/ünï code+%~.bin"
    key = path[1:]
    s3.put_object(Bucket=site.bucket, Key=key, Body=b"payload bytes")

    assert await fetch(http, "GET", endpoint.sign_url("GET", path, 60)) == (200, b"payload bytes")
    assert (await fetch(http, "HEAD", endpoint.sign_url("HEAD", path, 60)))[0] == 200
    assert (await fetch(http, "HEAD", endpoint.sign_url("GET", path, 60)))[0] == 403  # the method is signed
    assert (await fetch(http, "PUT", endpoint.sign_url("GET", path, 60), b"evil"))[0] == 403

    status, _ = await fetch(http, "PUT", endpoint.sign_url("PUT", f"/{prefix}/put me", 60), b"stored")
    assert status == 200
    assert s3.get_object(Bucket=site.bucket, Key=f"{prefix}/put me")["Body"].read() == b"stored"

    assert (await fetch(http, "DELETE", endpoint.sign_url("DELETE", f"/{prefix}/put me", 60)))[0] == 204
    assert await endpoint.stat(f"/{prefix}/put me") is None


async def test_tampered_and_expired_urls_are_refused(
    endpoint: S3Endpoint, s3: Any, site: S3Site, prefix: str, http: aiohttp.ClientSession
) -> None:
    s3.put_object(Bucket=site.bucket, Key=f"{prefix}/f", Body=b"data")
    url = endpoint.sign_url("GET", f"/{prefix}/f", 60)
    signature = url.rsplit("=", 1)[1]
    flipped = "0" if signature[-1] != "0" else "1"
    assert (await fetch(http, "GET", url[:-1] + flipped))[0] == 403
    assert (await fetch(http, "GET", url.replace("X-Amz-Expires=60", "X-Amz-Expires=61")))[0] == 403
    other_key = url.replace(f"/{quote(prefix)}/f?", f"/{quote(prefix)}/g?")
    assert other_key != url and (await fetch(http, "GET", other_key))[0] == 403

    short = endpoint.sign_url("GET", f"/{prefix}/f", 1)
    assert (await fetch(http, "GET", short))[0] == 200
    await asyncio.sleep(2.5)
    assert (await fetch(http, "GET", short))[0] == 403


async def test_multipart_upload_through_signed_urls(
    endpoint: S3Endpoint, s3: Any, site: S3Site, prefix: str, http: aiohttp.ClientSession
) -> None:
    """The Dynafed/davix flow: POST the create URL, PUT the parts, POST the CompleteMultipartUpload."""
    path = f"/{prefix}/big file+ü.dat"
    parts = [bytes([65 + i]) * size for i, size in enumerate((5 * MiB, 1 * MiB + 17))]

    async with http.post(URL(endpoint.sign_multipart_create(path, 300), encoded=True)) as resp:
        assert resp.status == 200, await resp.text()
        upload_id = parse_upload_id(await resp.read())

    part_urls = endpoint.sign_multipart_parts(path, upload_id, len(parts), 300)
    etags = []
    for url, data in zip(part_urls, parts, strict=True):
        async with http.put(URL(url, encoded=True), data=data) as resp:
            assert resp.status == 200, await resp.text()
            etags.append(resp.headers["ETag"])

    commit = endpoint.sign_multipart_complete(path, upload_id, 300)
    async with http.post(URL(commit, encoded=True), data=complete_multipart_body(etags)) as resp:
        assert resp.status == 200, await resp.text()

    stored = s3.get_object(Bucket=site.bucket, Key=path[1:])["Body"].read()
    assert stored == b"".join(parts)
    stat = await endpoint.stat(path)
    assert stat is not None and stat.size == len(stored)


# -- probe and errors -------------------------------------------------------------------------


async def test_probe(ceph_rgw: CephCluster, site: S3Site) -> None:
    good = make_endpoint(site)
    wrong_secret = make_endpoint(site, secret="not-the-secret-0123456789")
    missing_bucket = make_endpoint(site, bucket="no-such-bucket-here")
    foreign_bucket = make_endpoint(ceph_rgw.sites["triumf"], bucket=site.bucket)
    try:
        await good.probe()
        with pytest.raises(EndpointUnavailable) as wrong:
            await wrong_secret.probe()
        assert "SignatureDoesNotMatch" in str(wrong.value) or "403" in str(wrong.value)
        assert "not-the-secret" not in str(wrong.value)
        with pytest.raises(EndpointUnavailable, match="NoSuchBucket"):
            await missing_bucket.probe()
        with pytest.raises(EndpointUnavailable, match="403"):
            await foreign_bucket.probe()
    finally:
        for ep in (good, wrong_secret, missing_bucket, foreign_bucket):
            await ep.aclose()


async def test_refusals_and_missing_bucket(site: S3Site, prefix: str) -> None:
    """Wrong credentials on a request: a definite 403 refusal; a missing bucket: unavailable."""
    wrong_secret = make_endpoint(site, secret="not-the-secret-0123456789")
    missing_bucket = make_endpoint(site, bucket="no-such-bucket-here")
    try:
        with pytest.raises(EndpointRefused) as refused:
            await wrong_secret.stat(f"/{prefix}/x")
        assert refused.value.status == 403
        with pytest.raises(EndpointRefused, match="SignatureDoesNotMatch"):
            await listing(wrong_secret, f"/{prefix}")
        with pytest.raises(EndpointUnavailable, match="NoSuchBucket"):
            await missing_bucket.stat(f"/{prefix}/x")
        with pytest.raises(EndpointUnavailable, match="NoSuchBucket"):
            await listing(missing_bucket, "/")
    finally:
        await wrong_secret.aclose()
        await missing_bucket.aclose()


async def test_dead_port_is_unavailable_fast(site: S3Site) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed again before use: nothing listens there
    dead = make_endpoint(site, url=f"http://127.0.0.1:{port}", timeout=5.0)
    try:
        started = time.monotonic()
        with pytest.raises(EndpointUnavailable):
            await dead.probe()
        with pytest.raises(EndpointUnavailable):
            await dead.stat("/x")
        with pytest.raises(EndpointUnavailable):
            await listing(dead, "/")
        assert time.monotonic() - started < 2.0
    finally:
        await dead.aclose()
