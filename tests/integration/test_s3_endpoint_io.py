"""S3Endpoint's read, upload, checksums, move and space against a real Ceph RGW (16.2).

What RGW does, as asserted here: a multipart object's ETag is ``"<hex>-<parts>"``, and CopyObject
keeps it (onto the object itself with new metadata, or to another key), so a multipart ETag never
turns into something that looks like an MD5; a single-part object keeps its MD5 ETag through a
self-copy. RGW 16 ignores AWS's ``x-amz-copy-source-if-match`` and reads ``x-amz-copy-if-match``
instead (the endpoint sends both). Any range of an empty object, and a range starting at or past
the end, is 416 InvalidRange. HeadBucket answers ``X-RGW-Bytes-Used`` and the quota headers.

Each test works under a key prefix of its own in the shared ``cern`` bucket; boto3 is the reference
client for ground truth.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import os
import random
import shutil
import subprocess
import uuid
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from aiohttp import web

from geofed.checksums.algorithms import compute
from geofed.config import CredentialSettings, EndpointSettings
from geofed.endpoints import s3 as s3_module
from geofed.endpoints.base import StatResult
from geofed.endpoints.s3 import PART_SIZE, READ_CHUNK, S3Endpoint, _Parts, etag_md5
from geofed.endpoints.s3xml import S3XMLError, parse_copy_etag, parse_list_page
from geofed.errors import EndpointRefused, EndpointUnavailable, PathNotFound
from tests.infra.ceph import CephCluster, S3Site

pytestmark = pytest.mark.integration

MiB = 1024 * 1024


def make_endpoint(site: S3Site, *, bucket: str | None = None, **extra: Any) -> S3Endpoint:
    credentials = CredentialSettings(
        access_key=site.access_key,  # type: ignore[arg-type]  # pydantic turns str into SecretStr
        secret_key=site.secret_key,  # type: ignore[arg-type]
    )
    settings = EndpointSettings(
        name="rgw",
        kind="s3",
        url=site.url,
        bucket=bucket or site.bucket,
        credentials=credentials,
        timeout=extra.pop("timeout", 20.0),
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
    return f"io {uuid.uuid4().hex[:10]}"


@pytest.fixture
async def endpoint(site: S3Site) -> AsyncIterator[S3Endpoint]:
    ep = make_endpoint(site)
    yield ep
    await ep.aclose()


def keys_under(s3: Any, bucket: str, prefix: str) -> list[str]:
    keys: list[str] = []
    for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
        keys += [obj["Key"] for obj in page.get("Contents", [])]
    return keys


def pending_uploads(s3: Any, bucket: str, prefix: str) -> list[str]:
    """Keys of the multipart uploads started and neither completed nor aborted (ListMultipartUploads)."""
    answer = s3.list_multipart_uploads(Bucket=bucket, Prefix=prefix)
    return [upload["Key"] for upload in answer.get("Uploads", [])]


def generated(total: int, chunk: int = 1 * MiB, seed: int = 7) -> Iterator[bytes]:
    """``total`` pseudo-random bytes in ``chunk``-sized pieces, the same for the same seed."""
    rng = random.Random(seed)
    left = total
    while left:
        size = min(chunk, left)
        yield rng.randbytes(size)
        left -= size


async def lazily(pieces: Iterator[bytes], fail_after: int | None = None) -> AsyncIterator[bytes]:
    """``pieces`` as an async iterator, raising RuntimeError once ``fail_after`` bytes have gone."""
    sent = 0
    for piece in pieces:
        if fail_after is not None and sent >= fail_after:
            raise RuntimeError("the client went away")
        await asyncio.sleep(0)
        yield piece
        sent += len(piece)


async def read_all(endpoint: S3Endpoint, path: str, offset: int = 0, length: int | None = None) -> bytes:
    chunks = [chunk async for chunk in endpoint.read(path, offset, length)]
    assert all(0 < len(chunk) <= READ_CHUNK for chunk in chunks)
    return b"".join(chunks)


async def stat_of(endpoint: S3Endpoint, path: str) -> StatResult:
    stat = await endpoint.stat(path)
    assert stat is not None and not stat.is_dir, path
    return stat


def put_multipart(s3: Any, bucket: str, key: str, parts: list[bytes], **extra: Any) -> None:
    upload = s3.create_multipart_upload(Bucket=bucket, Key=key, **extra)
    etags = [
        s3.upload_part(Bucket=bucket, Key=key, UploadId=upload["UploadId"], PartNumber=n, Body=part)["ETag"]
        for n, part in enumerate(parts, start=1)
    ]
    s3.complete_multipart_upload(
        Bucket=bucket,
        Key=key,
        UploadId=upload["UploadId"],
        MultipartUpload={"Parts": [{"ETag": e, "PartNumber": n} for n, e in enumerate(etags, start=1)]},
    )


# -- pure helpers (no server) ------------------------------------------------------------------


def test_etag_md5() -> None:
    md5 = hashlib.md5(b"x").hexdigest()
    assert etag_md5(f'"{md5}"') == md5
    assert etag_md5(md5.upper()) == md5
    assert etag_md5(f'"{md5}-2"') is None
    assert etag_md5('W/"abc"') is None
    assert etag_md5(None) is None and etag_md5("") is None


def test_parts_are_cut_exactly_and_lazily() -> None:
    def md5(data: bytes) -> str:
        return base64.b64encode(hashlib.md5(data).digest()).decode()

    parts = _Parts(10)
    assert parts.feed(b"0123456789") == []  # full, but nothing beyond it yet: may stay one PUT
    cut = parts.feed(b"abcdefghijklmnopqrst")
    assert [(bytes(data), digest) for data, digest in cut] == [
        (b"0123456789", md5(b"0123456789")),
        (b"abcdefghij", md5(b"abcdefghij")),
    ]
    data, digest = parts.finish()  # the last part is full: it waited for more that never came
    assert (bytes(data), digest) == (b"klmnopqrst", md5(b"klmnopqrst"))
    assert parts.finish() == (bytearray(), md5(b""))


def test_copy_results_and_storage_classes() -> None:
    rgw = (
        b"<CopyObjectResult><LastModified>x</LastModified>"
        b"<ETag>0cc175b9c0f1b6a831c399e269772661-2</ETag></CopyObjectResult>"
    )
    aws = (
        b'<CopyPartResult xmlns="http://s3.amazonaws.com/doc/2006-03-01/"><ETag>"abc"</ETag></CopyPartResult>'
    )
    assert parse_copy_etag(rgw) == '"0cc175b9c0f1b6a831c399e269772661-2"'
    assert parse_copy_etag(aws) == '"abc"'
    with pytest.raises(S3XMLError):
        parse_copy_etag(b"<Error><Code>InternalError</Code></Error>")
    page = parse_list_page(
        b"<ListBucketResult><Contents><Key>a</Key><StorageClass>GLACIER</StorageClass></Contents>"
        b"<Contents><Key>b</Key><StorageClass>STANDARD</StorageClass></Contents></ListBucketResult>"
    )
    assert page.storage_classes == {"a": "GLACIER"}


# -- read -------------------------------------------------------------------------------------


async def test_read_whole_and_ranges(endpoint: S3Endpoint, s3: Any, site: S3Site, prefix: str) -> None:
    data = b"".join(generated(1 * MiB + 4321, 100_000))
    path = f"/{prefix}/ünï data+%.bin"
    s3.put_object(Bucket=site.bucket, Key=path[1:], Body=data)
    s3.put_object(Bucket=site.bucket, Key=f"{prefix}/empty", Body=b"")

    assert await read_all(endpoint, path) == data
    assert await read_all(endpoint, path, 1000) == data[1000:]
    assert await read_all(endpoint, path, 5, 10) == data[5:15]
    assert (
        await read_all(endpoint, path, READ_CHUNK - 3, READ_CHUNK + 7)
        == data[READ_CHUNK - 3 : 2 * READ_CHUNK + 4]
    )
    assert await read_all(endpoint, path, len(data) - 4, 100) == data[-4:]  # past the end: what there is
    assert await read_all(endpoint, path, len(data)) == b""  # at the end: 416, nothing
    assert await read_all(endpoint, path, len(data) + 10, 5) == b""
    assert await read_all(endpoint, path, 3, 0) == b""
    assert await read_all(endpoint, f"/{prefix}/empty") == b""
    assert await read_all(endpoint, f"/{prefix}/empty", 0, 10) == b""  # RGW: 416 for any range

    s3.put_object(Bucket=site.bucket, Key=f"{prefix}/dir/child", Body=b"x")
    for missing in (f"/{prefix}/missing", f"/{prefix}/dir", "/"):
        with pytest.raises(PathNotFound):
            await read_all(endpoint, missing)
        with pytest.raises(PathNotFound):
            await read_all(endpoint, missing, 0, 0)
    with pytest.raises(ValueError):
        await read_all(endpoint, path, -1)


async def test_read_stops_early_and_reuses_the_session(
    endpoint: S3Endpoint, s3: Any, site: S3Site, prefix: str
) -> None:
    """A reader that stops after the first chunk closes the stream; the endpoint goes on working."""
    s3.put_object(Bucket=site.bucket, Key=f"{prefix}/big", Body=b"z" * (4 * MiB))
    stream = endpoint.read(f"/{prefix}/big")
    first = await anext(stream)  # type: ignore[arg-type]
    assert 0 < len(first) <= READ_CHUNK
    await stream.aclose()  # type: ignore[attr-defined]
    assert await read_all(endpoint, f"/{prefix}/big", 4 * MiB - 2) == b"zz"


# -- upload -----------------------------------------------------------------------------------


async def test_upload_single_put(endpoint: S3Endpoint, s3: Any, site: S3Site, prefix: str) -> None:
    """Up to PART_SIZE: one PutObject (a plain MD5 ETag, which S3 checked against Content-MD5)."""
    data = b"".join(generated(3 * MiB + 5, 70_001))
    path = f"/{prefix}/small file ü+.dat"
    await endpoint.upload(path, lazily(generated(3 * MiB + 5, 70_001)))
    assert s3.get_object(Bucket=site.bucket, Key=path[1:])["Body"].read() == data
    stat = await stat_of(endpoint, path)
    assert etag_md5(stat.etag) == hashlib.md5(data).hexdigest()
    assert stat.content_type == "application/octet-stream"

    exact = f"/{prefix}/exactly one part"
    await endpoint.upload(exact, lazily(generated(PART_SIZE, 3 * MiB)))
    stat = await stat_of(endpoint, exact)
    assert stat.size == PART_SIZE and etag_md5(stat.etag) is not None  # still one PutObject

    await endpoint.upload(f"/{prefix}/empty", lazily(iter([b"", b""])))
    stat = await stat_of(endpoint, f"/{prefix}/empty")
    assert stat.size == 0 and etag_md5(stat.etag) == hashlib.md5(b"").hexdigest()

    await endpoint.upload(path, lazily(iter([b"replaced"])))  # an overwrite
    assert s3.get_object(Bucket=site.bucket, Key=path[1:])["Body"].read() == b"replaced"


async def test_upload_multipart(endpoint: S3Endpoint, s3: Any, site: S3Site, prefix: str) -> None:
    """40 MiB arrive lazily: parts of 16, 16 and 8 MiB; the object reads back byte for byte."""
    total = 40 * MiB
    path = f"/{prefix}/big one.bin"
    sizes: list[int] = []
    original = endpoint._upload_part

    async def recording(*args: Any, **kwargs: Any) -> str:
        sizes.append(len(args[4]))
        return await original(*args, **kwargs)

    endpoint._upload_part = recording  # type: ignore[method-assign]
    await endpoint.upload(path, lazily(generated(total, 1 * MiB + 3)))
    assert sizes == [PART_SIZE, PART_SIZE, 8 * MiB]

    expected = hashlib.md5()
    for piece in generated(total, 1 * MiB + 3):
        expected.update(piece)
    actual = hashlib.md5()
    async for chunk in endpoint.read(path):
        actual.update(chunk)
    assert actual.hexdigest() == expected.hexdigest()
    whole = b"".join(generated(total, 1 * MiB + 3))
    boundary = await read_all(endpoint, path, PART_SIZE - 100, 200)  # across the first part boundary
    assert boundary == whole[PART_SIZE - 100 : PART_SIZE + 100]

    stat = await stat_of(endpoint, path)
    assert stat.size == total and stat.etag is not None and stat.etag.strip('"').endswith("-3")
    assert etag_md5(stat.etag) is None
    assert "md5" not in await endpoint.stored_checksums(path, stat)  # a multipart ETag is no MD5

    sizes.clear()  # chunks larger than a part are cut the same way
    await endpoint.upload(f"/{prefix}/big chunks", lazily(generated(total, 20 * MiB)))
    assert sizes == [PART_SIZE, PART_SIZE, 8 * MiB]
    assert s3.get_object(Bucket=site.bucket, Key=f"{prefix}/big chunks")["Body"].read() == b"".join(
        generated(total, 20 * MiB)
    )
    assert pending_uploads(s3, site.bucket, prefix) == []


async def test_failed_uploads_leave_nothing(endpoint: S3Endpoint, s3: Any, site: S3Site, prefix: str) -> None:
    """The client's body failing midway (after a part went), the store refusing a part (bad
    Content-MD5), a cancellation, a small upload failing: no object, no pending multipart upload."""
    with pytest.raises(RuntimeError, match="went away"):
        await endpoint.upload(f"/{prefix}/a", lazily(generated(40 * MiB), fail_after=35 * MiB))

    with pytest.raises(RuntimeError, match="went away"):
        await endpoint.upload(f"/{prefix}/b", lazily(generated(40 * MiB), fail_after=2 * MiB))

    original = endpoint._upload_part

    async def corrupting(what: str, key: str, upload_id: str, number: int, data: bytearray, md5: str) -> str:
        if number == 2:
            md5 = "1B2M2Y8AsgTpgAmY7PhCfg=="  # the MD5 of nothing: S3 must refuse the bytes
        return await original(what, key, upload_id, number, data, md5)

    endpoint._upload_part = corrupting  # type: ignore[method-assign]
    with pytest.raises(EndpointUnavailable, match="BadDigest"):
        await endpoint.upload(f"/{prefix}/c", lazily(generated(40 * MiB)))
    endpoint._upload_part = original  # type: ignore[method-assign]

    gate = asyncio.Event()

    async def stalling() -> AsyncIterator[bytes]:
        for piece in generated(20 * MiB):
            yield piece
        gate.set()
        await asyncio.sleep(3600)  # the client stalls after the first part went out
        yield b"never"

    task = asyncio.create_task(endpoint.upload(f"/{prefix}/d", stalling()))
    await asyncio.wait_for(gate.wait(), 30)
    await asyncio.sleep(0.5)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    # Cancelled while CreateMultipartUpload is answered: the upload it made is aborted all the same.
    original_create = endpoint._create_multipart
    created = asyncio.Event()

    async def slow_create(*args: Any) -> str:
        upload_id = await original_create(*args)
        created.set()
        await asyncio.sleep(0.5)
        return upload_id

    endpoint._create_multipart = slow_create  # type: ignore[method-assign]
    task = asyncio.create_task(endpoint.upload(f"/{prefix}/e", lazily(generated(20 * MiB))))
    await asyncio.wait_for(created.wait(), 30)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    await endpoint.aclose()  # waits for the aborts still running
    assert keys_under(s3, site.bucket, f"{prefix}/") == []
    assert pending_uploads(s3, site.bucket, f"{prefix}/") == []


async def test_upload_refusals(endpoint: S3Endpoint, s3: Any, site: S3Site, prefix: str) -> None:
    s3.put_object(Bucket=site.bucket, Key=f"{prefix}/dir/child", Body=b"x")
    with pytest.raises(EndpointRefused) as in_the_way:
        await endpoint.upload(f"/{prefix}/dir", lazily(iter([b"data"])))
    assert in_the_way.value.status == 409
    with pytest.raises(EndpointRefused) as root:
        await endpoint.upload("/", lazily(iter([b"data"])))
    assert root.value.status == 409
    assert keys_under(s3, site.bucket, f"{prefix}/") == [f"{prefix}/dir/child"]


# -- checksums --------------------------------------------------------------------------------


async def test_checksums_round_trip(endpoint: S3Endpoint, s3: Any, site: S3Site, prefix: str) -> None:
    data = b"hello checksum world"
    path = f"/{prefix}/sum me+ü.txt"
    s3.put_object(
        Bucket=site.bucket,
        Key=path[1:],
        Body=data,
        ContentType="text/x-test",
        CacheControl="max-age=60",
        Metadata={"keep": "me", "Mixed-Case": "Value"},
    )
    values = compute(data)
    stat = await stat_of(endpoint, path)
    assert await endpoint.stored_checksums(path, stat) == {"md5": values["md5"]}  # the ETag

    assert await endpoint.store_checksums(path, {**values, "md5": "0" * 32}) is False  # not these bytes
    assert await endpoint.store_checksums(path, values) is True
    after = await stat_of(endpoint, path)
    assert await endpoint.stored_checksums(path, after) == values
    assert after.etag == stat.etag and after.size == len(data)  # RGW keeps the ETag
    assert after.content_type == "text/x-test"
    assert dict(after.metadata) == {
        "keep": "me",
        "mixed-case": "Value",
        **{f"geofed-{algorithm}": value for algorithm, value in values.items()},
    }
    head = s3.head_object(Bucket=site.bucket, Key=path[1:])
    assert head["CacheControl"] == "max-age=60"
    assert s3.get_object(Bucket=site.bucket, Key=path[1:])["Body"].read() == data

    # Storing what is there already is no copy at all.
    copies = 0
    original = endpoint._copy_object

    async def counting(*args: Any, **kwargs: Any) -> str:
        nonlocal copies
        copies += 1
        return await original(*args, **kwargs)

    endpoint._copy_object = counting  # type: ignore[method-assign]
    assert await endpoint.store_checksums(path, {"adler32": values["adler32"]}) is True
    assert copies == 0

    with pytest.raises(PathNotFound):
        await endpoint.store_checksums(f"/{prefix}/missing", values)
    assert await endpoint.store_checksums(path, {}) is False


async def test_multipart_etag_is_not_md5(endpoint: S3Endpoint, s3: Any, site: S3Site, prefix: str) -> None:
    """A multipart object: no MD5 from its ETag, before or after the self-copy that stores ours
    (RGW keeps the ``-N`` ETag through the copy)."""
    parts = [b"a" * (5 * MiB), b"b" * (1 * MiB + 3)]
    data = b"".join(parts)
    path = f"/{prefix}/multi"
    put_multipart(s3, site.bucket, path[1:], parts, ContentType="text/x-multi", Metadata={"keep": "me"})
    stat = await stat_of(endpoint, path)
    assert stat.etag is not None and stat.etag.endswith('-2"')
    assert await endpoint.stored_checksums(path, stat) == {}

    values = compute(data)
    without_md5 = {a: v for a, v in values.items() if a != "md5"}
    assert await endpoint.store_checksums(path, without_md5) is False  # see store_checksums
    assert await endpoint.store_checksums(path, values) is True
    after = await stat_of(endpoint, path)
    assert after.etag == stat.etag  # RGW: a copy keeps the multipart ETag
    assert etag_md5(after.etag) is None
    assert await endpoint.stored_checksums(path, after) == values
    assert after.content_type == "text/x-multi" and ("keep", "me") in after.metadata

    # RGW's copy of a multipart object to another key keeps the "-N" form too.
    s3.copy_object(
        Bucket=site.bucket, Key=f"{prefix}/copied", CopySource={"Bucket": site.bucket, "Key": path[1:]}
    )
    copied = await stat_of(endpoint, f"/{prefix}/copied")
    assert copied.etag == stat.etag


async def test_trusted_plain_metadata(site: S3Site, s3: Any, prefix: str) -> None:
    """Plain ``x-amz-meta-adler32`` (as a site's own tools write it) counts only when trusted; the
    single-part ETag wins over any md5 in metadata."""
    data = b"trusted or not"
    key = f"{prefix}/plain"
    s3.put_object(Bucket=site.bucket, Key=key, Body=data, Metadata={"adler32": "0ABCDEF1", "md5": "f" * 32})
    default, trusted = make_endpoint(site), make_endpoint(site, checksum_metadata="trusted")
    try:
        stat = await stat_of(default, f"/{key}")
        md5 = hashlib.md5(data).hexdigest()
        assert await default.stored_checksums(f"/{key}", stat) == {"md5": md5}
        assert await trusted.stored_checksums(f"/{key}", stat) == {"adler32": "0abcdef1", "md5": md5}
        # A geofed- value injected by a client (a presigned PUT takes unsigned x-amz-meta-*) does
        # not beat the ETag either.
        s3.put_object(Bucket=site.bucket, Key=key, Body=data, Metadata={"geofed-md5": "0" * 32})
        stat = await stat_of(default, f"/{key}")
        assert (await default.stored_checksums(f"/{key}", stat))["md5"] == md5
    finally:
        await default.aclose()
        await trusted.aclose()


@pytest.mark.parametrize("multipart", [False, True])
async def test_store_checksums_does_not_clobber_an_overwrite(
    endpoint: S3Endpoint, s3: Any, site: S3Site, prefix: str, multipart: bool
) -> None:
    """The object is replaced between the HEAD and the self-copy: the copy's ETag condition fails
    (412), store_checksums says False, and the new object keeps its bytes and metadata."""
    path = f"/{prefix}/raced"
    old = [b"o" * (5 * MiB), b"l" * 100] if multipart else [b"old bytes"]
    new = [b"n" * (5 * MiB), b"e" * 200] if multipart else [b"new bytes!"]
    if multipart:
        put_multipart(s3, site.bucket, path[1:], old)
    else:
        s3.put_object(Bucket=site.bucket, Key=path[1:], Body=old[0])
    original = endpoint._head

    async def overwritten_after_head(*args: Any) -> Any:
        headers = await original(*args)
        if multipart:
            put_multipart(s3, site.bucket, path[1:], new, Metadata={"theirs": "yes"})
        else:
            s3.put_object(Bucket=site.bucket, Key=path[1:], Body=new[0], Metadata={"theirs": "yes"})
        return headers

    endpoint._head = overwritten_after_head  # type: ignore[method-assign]
    assert await endpoint.store_checksums(path, compute(b"".join(old))) is False
    endpoint._head = original  # type: ignore[method-assign]
    head = s3.head_object(Bucket=site.bucket, Key=path[1:])
    assert head["Metadata"] == {"theirs": "yes"}
    assert s3.get_object(Bucket=site.bucket, Key=path[1:])["Body"].read() == b"".join(new)


async def test_store_checksums_gives_up_on_large_objects(
    endpoint: S3Endpoint, s3: Any, site: S3Site, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(s3_module, "COPY_LIMIT", 10)
    s3.put_object(Bucket=site.bucket, Key=f"{prefix}/large", Body=b"more than ten bytes")
    assert await endpoint.store_checksums(f"/{prefix}/large", compute(b"more than ten bytes")) is False
    assert s3.head_object(Bucket=site.bucket, Key=f"{prefix}/large")["Metadata"] == {}


# -- move -------------------------------------------------------------------------------------


async def test_move_file(endpoint: S3Endpoint, s3: Any, site: S3Site, prefix: str) -> None:
    source, destination = f"/{prefix}/from ü+%.txt", f"/{prefix}/sub/to [1].txt"
    s3.put_object(
        Bucket=site.bucket, Key=source[1:], Body=b"moving", ContentType="text/x-m", Metadata={"a": "b"}
    )
    await endpoint.move(source, destination)
    assert await endpoint.stat(source) is None
    moved = await stat_of(endpoint, destination)
    assert (moved.content_type, dict(moved.metadata)) == ("text/x-m", {"a": "b"})
    assert await read_all(endpoint, destination) == b"moving"

    s3.put_object(Bucket=site.bucket, Key=f"{prefix}/other", Body=b"other")
    with pytest.raises(EndpointRefused) as exists:
        await endpoint.move(f"/{prefix}/other", destination, overwrite=False)
    assert exists.value.status == 412
    assert await read_all(endpoint, destination) == b"moving"
    assert await read_all(endpoint, f"/{prefix}/other") == b"other"
    await endpoint.move(f"/{prefix}/other", destination, overwrite=True)
    assert await read_all(endpoint, destination) == b"other"
    assert await endpoint.stat(f"/{prefix}/other") is None

    # A file onto a directory (with overwrite) replaces the directory.
    s3.put_object(Bucket=site.bucket, Key=f"{prefix}/d/x", Body=b"x")
    await endpoint.move(destination, f"/{prefix}/d")
    assert keys_under(s3, site.bucket, f"{prefix}/") == [f"{prefix}/d"]

    with pytest.raises(PathNotFound):
        await endpoint.move(f"/{prefix}/missing", f"/{prefix}/anywhere")
    for bad_source, bad_destination in (("/", f"/{prefix}/x"), (f"/{prefix}/d", f"/{prefix}/d")):
        with pytest.raises(EndpointRefused) as refused:
            await endpoint.move(bad_source, bad_destination)
        assert refused.value.status == 403


async def test_move_directory(endpoint: S3Endpoint, s3: Any, site: S3Site, prefix: str) -> None:
    names = [f"k{i:04d}" for i in range(1010)] + ["", "sub/", "sub/deep x", "ü+%"]
    for name in names:
        s3.put_object(Bucket=site.bucket, Key=f"{prefix}/tree/{name}", Body=name.encode())
    s3.put_object(Bucket=site.bucket, Key=f"{prefix}/treetop", Body=b"not below tree/")

    with pytest.raises(EndpointRefused) as into:
        await endpoint.move(f"/{prefix}/tree", f"/{prefix}/tree/sub/inside")
    assert into.value.status == 403
    with pytest.raises(EndpointRefused) as onto_parent:
        await endpoint.move(f"/{prefix}/tree/sub", f"/{prefix}/tree")
    assert onto_parent.value.status == 403

    await endpoint.move(f"/{prefix}/tree", f"/{prefix}/moved")  # two listing pages
    assert sorted(keys_under(s3, site.bucket, f"{prefix}/")) == sorted(
        [f"{prefix}/moved/{name}" for name in names] + [f"{prefix}/treetop"]
    )
    assert await read_all(endpoint, f"/{prefix}/moved/sub/deep x") == b"sub/deep x"

    # Onto an existing directory: merged (an interrupted move can be finished by running it again).
    s3.put_object(Bucket=site.bucket, Key=f"{prefix}/more/k0000", Body=b"newer")
    s3.put_object(Bucket=site.bucket, Key=f"{prefix}/more/extra", Body=b"extra")
    with pytest.raises(EndpointRefused) as exists:
        await endpoint.move(f"/{prefix}/more", f"/{prefix}/moved", overwrite=False)
    assert exists.value.status == 412
    await endpoint.move(f"/{prefix}/more", f"/{prefix}/moved")
    assert await read_all(endpoint, f"/{prefix}/moved/k0000") == b"newer"
    assert await read_all(endpoint, f"/{prefix}/moved/extra") == b"extra"
    assert await read_all(endpoint, f"/{prefix}/moved/k0001") == b"k0001"
    assert await endpoint.stat(f"/{prefix}/more") is None


async def test_move_large_object_part_by_part(
    endpoint: S3Endpoint, s3: Any, site: S3Site, prefix: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Above COPY_LIMIT (lowered here) a move copies with UploadPartCopy; headers and metadata kept."""
    monkeypatch.setattr(s3_module, "COPY_LIMIT", 6 * MiB)
    monkeypatch.setattr(s3_module, "COPY_PART_SIZE", 5 * MiB)
    data = b"".join(generated(12 * MiB + 11))
    s3.put_object(
        Bucket=site.bucket,
        Key=f"{prefix}/huge",
        Body=data,
        ContentType="text/x-huge",
        Metadata={"geofed-md5": "ab"},
    )
    await endpoint.move(f"/{prefix}/huge", f"/{prefix}/huge moved")
    moved = await stat_of(endpoint, f"/{prefix}/huge moved")
    assert moved.size == len(data) and moved.etag is not None and moved.etag.endswith('-3"')
    assert moved.content_type == "text/x-huge" and dict(moved.metadata) == {"geofed-md5": "ab"}
    assert (
        hashlib.md5(await read_all(endpoint, f"/{prefix}/huge moved")).digest() == hashlib.md5(data).digest()
    )
    assert await endpoint.stat(f"/{prefix}/huge") is None
    assert pending_uploads(s3, site.bucket, f"{prefix}/") == []

    # The source replaced while its parts are copied: the copy fails and is aborted.
    s3.put_object(Bucket=site.bucket, Key=f"{prefix}/changing", Body=data)
    original = endpoint._create_multipart

    async def replace_source(*args: Any) -> str:
        upload_id = await original(*args)
        s3.put_object(Bucket=site.bucket, Key=f"{prefix}/changing", Body=data[::-1])
        return upload_id

    endpoint._create_multipart = replace_source  # type: ignore[method-assign]
    with pytest.raises(EndpointUnavailable, match="changed"):
        await endpoint.move(f"/{prefix}/changing", f"/{prefix}/changed")
    assert await endpoint.stat(f"/{prefix}/changed") is None
    assert pending_uploads(s3, site.bucket, f"{prefix}/") == []


# -- space ------------------------------------------------------------------------------------


async def test_space_from_rgw_headers(ceph_rgw: CephCluster, site: S3Site, s3: Any) -> None:
    """HeadBucket's X-RGW-Bytes-Used, and what is left of a bucket quota."""
    bucket = f"space-{uuid.uuid4().hex[:12]}"
    s3.create_bucket(Bucket=bucket)
    endpoint = make_endpoint(site, bucket=bucket)
    try:
        s3.put_object(Bucket=bucket, Key="a", Body=b"x" * 1000)
        assert await endpoint.space() == s3_module.Space(used=1000, available=None)

        admin = shutil.which("radosgw-admin")
        assert admin is not None
        env = {**os.environ, **ceph_rgw.env()}
        for argv in (
            ["quota", "set", "--quota-scope=bucket", f"--bucket={bucket}", "--max-size=1048576"],
            ["quota", "enable", "--quota-scope=bucket", f"--bucket={bucket}"],
        ):
            subprocess.run([admin, "-c", str(ceph_rgw.conf), *argv], env=env, check=True, timeout=60)
        assert await endpoint.space() == s3_module.Space(used=1000, available=1048576 - 1000)

        missing = make_endpoint(site, bucket="no-such-bucket-here")
        with pytest.raises(EndpointUnavailable, match="does not exist"):
            await missing.space()
        await missing.aclose()
    finally:
        await endpoint.aclose()
        s3.delete_object(Bucket=bucket, Key="a")
        s3.delete_bucket(Bucket=bucket)


# -- stalled servers --------------------------------------------------------------------------


@pytest.fixture
async def stalling_s3() -> AsyncIterator[str]:
    """A fake S3 on loopback: lists an empty bucket, then never reads a PUT's body, and sends a
    GET's headers and a few bytes before going silent."""

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.method == "GET" and "list-type" in request.query:
            body = b"<ListBucketResult><KeyCount>0</KeyCount></ListBucketResult>"
            return web.Response(body=body, content_type="application/xml")
        if request.method == "GET":
            response = web.StreamResponse(headers={"Content-Length": str(10 * MiB)})
            await response.prepare(request)
            await response.write(b"x" * 1000)
            await asyncio.sleep(3600)
            return response
        await asyncio.sleep(3600)  # takes nothing of the body
        return web.Response()

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, shutdown_timeout=0.1)
    await runner.setup()
    tcp = web.TCPSite(runner, "127.0.0.1", 0)
    await tcp.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_stalled_transfers_time_out(stalling_s3: str) -> None:
    """The endpoint's timeout bounds each step of a transfer, not the whole: a server that stops
    taking an upload's body, or stops sending a read's, is EndpointUnavailable within ~timeout."""
    site = S3Site("bucket", "AKIDEXAMPLE", "secret", stalling_s3)
    endpoint = make_endpoint(site, timeout=1.0)
    try:
        started = asyncio.get_running_loop().time()
        with pytest.raises(EndpointUnavailable, match="timed out") as stuck:
            await endpoint.upload("/stuck", lazily(generated(PART_SIZE, 4 * MiB)))
        assert type(stuck.value.__cause__) is TimeoutError  # the send deadline, not sock_read
        with pytest.raises(EndpointUnavailable, match=r"timed out|Timeout"):
            await read_all(endpoint, "/stuck")
        assert asyncio.get_running_loop().time() - started < 10
    finally:
        await endpoint.aclose()
