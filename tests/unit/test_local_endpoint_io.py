"""LocalEndpoint's streamed reads and uploads, checksums in xattrs, move and space."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import os
import shutil
import tempfile
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from geofed.config import EndpointSettings
from geofed.endpoints import local
from geofed.endpoints.base import StatResult
from geofed.endpoints.local import READ_CHUNK, UPLOAD_PREFIX, XATTR_STAMP, LocalEndpoint
from geofed.errors import EndpointRefused, EndpointUnavailable, PathNotFound
from geofed.signing import URLSigner

ADLER = "0a1b2c3d"
MD5 = "5eb63bbbe01eeed093cb22bb8f5acdc3"
SHA = "b94d27b9934d3e08a52e52d7da7dabfac484efe37a5380ee9088f7ace2efcde9"


def endpoint(root: Path, **settings: object) -> LocalEndpoint:
    return LocalEndpoint(
        EndpointSettings(name="disk", kind="local", url=root.as_uri(), **settings),  # type: ignore[arg-type]
        URLSigner("x" * 32),
    )


def _xattrs_work(directory: Path) -> bool:
    probe = directory / ".xattr-probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.geofed.probe", b"1")
    except OSError as exc:
        if exc.errno in (errno.ENOTSUP, errno.EOPNOTSUPP):
            return False
        raise
    finally:
        probe.unlink()
    return True


@pytest.fixture
def root(tmp_path: Path) -> Iterator[Path]:
    """A folder on a filesystem with user xattrs: pytest's tmp_path (ext4 here; tmpfs has them too
    since Linux 6.6), else a folder below the test sources."""
    if _xattrs_work(tmp_path):
        yield tmp_path
        return
    fallback = Path(tempfile.mkdtemp(prefix=".xattr-tmp-", dir=Path(__file__).parent))
    try:
        assert _xattrs_work(fallback), "no filesystem with user xattrs for these tests"
        yield fallback
    finally:
        shutil.rmtree(fallback, ignore_errors=True)


async def read_all(ep: LocalEndpoint, path: str, offset: int = 0, length: int | None = None) -> bytes:
    async with contextlib.aclosing(ep.read(path, offset, length)) as chunks:
        return b"".join([chunk async for chunk in chunks])


async def chunks_of(*parts: bytes, fail_after: int | None = None) -> AsyncIterator[bytes]:
    for index, part in enumerate(parts):
        if fail_after is not None and index == fail_after:
            raise ConnectionResetError("client went away")
        await asyncio.sleep(0)
        yield part


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*") if p.name.startswith(UPLOAD_PREFIX))


def test_capabilities() -> None:
    caps = LocalEndpoint.capabilities
    assert (caps.read_stream, caps.upload_stream, caps.store_checksums, caps.move) == (True,) * 4
    assert not caps.multipart_upload


# -- read ---------------------------------------------------------------------------------------


async def test_read_whole_file_and_ranges(root: Path) -> None:
    data = os.urandom(READ_CHUNK * 2 + 1000)
    (root / "d").mkdir()
    (root / "d" / "f.bin").write_bytes(data)
    ep = endpoint(root)

    sizes = [len(chunk) async for chunk in ep.read("/d/f.bin")]
    assert sizes == [READ_CHUNK, READ_CHUNK, 1000]  # bounded chunks
    assert await read_all(ep, "/d/f.bin") == data
    assert await read_all(ep, "/d/f.bin", 10) == data[10:]
    assert await read_all(ep, "/d/f.bin", 10, 20) == data[10:30]
    assert (
        await read_all(ep, "/d/f.bin", READ_CHUNK - 5, READ_CHUNK + 10)
        == data[READ_CHUNK - 5 : 2 * READ_CHUNK + 5]
    )
    assert await read_all(ep, "/d/f.bin", len(data) - 3, 100) == data[-3:]  # clipped at the end
    assert await read_all(ep, "/d/f.bin", len(data) + 10) == b""  # past the end: nothing
    assert await read_all(ep, "/d/f.bin", 5, 0) == b""
    (root / "empty").write_bytes(b"")
    assert await read_all(ep, "/empty") == b""
    with pytest.raises(ValueError):
        await read_all(ep, "/d/f.bin", -1)


async def test_read_missing_collection_and_escape(root: Path) -> None:
    (root / "inside").mkdir()
    (root / "inside" / "dir").mkdir()
    (root / "secret").write_text("s")
    (root / "inside" / "link").symlink_to(root / "secret")
    ep = endpoint(root / "inside")
    with pytest.raises(PathNotFound):
        await read_all(ep, "/missing")
    with pytest.raises(PathNotFound):
        await read_all(ep, "/missing/below")
    with pytest.raises(PathNotFound, match="collection"):
        await read_all(ep, "/dir")
    with pytest.raises(EndpointRefused) as refused:
        await read_all(ep, "/link")
    assert refused.value.status == 403


def open_fds() -> int:
    return len(os.listdir("/proc/self/fd"))


async def test_read_stopped_early_closes_the_file(root: Path) -> None:
    (root / "big").write_bytes(b"x" * (READ_CHUNK * 3))
    ep = endpoint(root)
    before = open_fds()
    async with contextlib.aclosing(ep.read("/big")) as chunks:
        async for _chunk in chunks:
            assert open_fds() == before + 1
            break
    assert open_fds() == before


async def test_read_of_a_hung_filesystem_times_out(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (root / "f").write_bytes(b"data")
    ep = endpoint(root, timeout=0.1)
    real_pread = os.pread

    def slow_pread(fd: int, size: int, offset: int) -> bytes:
        time.sleep(0.5)
        return real_pread(fd, size, offset)

    monkeypatch.setattr(os, "pread", slow_pread)
    started = time.monotonic()
    with pytest.raises(EndpointUnavailable, match="timed out"):
        await read_all(ep, "/f")
    assert time.monotonic() - started < 0.4  # neither the read nor closing the file waited for it


# -- upload ---------------------------------------------------------------------------------------


async def test_upload_creates_parents_and_replaces_atomically(root: Path) -> None:
    ep = endpoint(root)
    await ep.upload("/a/b/new.bin", chunks_of(b"hello ", b"", b"world"))
    assert (root / "a" / "b" / "new.bin").read_bytes() == b"hello world"
    old_inode = (root / "a" / "b" / "new.bin").stat().st_ino
    await ep.upload("/a/b/new.bin", chunks_of(b"second"))
    target = root / "a" / "b" / "new.bin"
    assert target.read_bytes() == b"second"
    assert target.stat().st_ino != old_inode  # a new file renamed into place, not rewritten
    await ep.upload("/empty", chunks_of())
    assert (root / "empty").read_bytes() == b""
    assert leftovers(root) == []


async def test_failed_upload_leaves_nothing(root: Path) -> None:
    ep = endpoint(root)
    with pytest.raises(ConnectionResetError, match="client went away"):  # the client's error, unchanged
        await ep.upload("/d/f.bin", chunks_of(b"a" * 1000, b"b" * 1000, fail_after=1))
    assert not (root / "d" / "f.bin").exists()
    assert leftovers(root) == []

    (root / "d" / "kept.bin").write_bytes(b"original")
    with pytest.raises(ConnectionResetError):
        await ep.upload("/d/kept.bin", chunks_of(b"new", b"more", fail_after=1))
    assert (root / "d" / "kept.bin").read_bytes() == b"original"
    assert leftovers(root) == []
    assert [e.name async for e in ep.list("/d")] == ["kept.bin"]


async def test_cancelled_upload_leaves_nothing(root: Path) -> None:
    ep = endpoint(root)
    started = asyncio.Event()

    async def stalled() -> AsyncIterator[bytes]:
        yield b"first part"
        started.set()
        await asyncio.sleep(3600)
        yield b"never"

    task = asyncio.create_task(ep.upload("/f.bin", stalled()))
    await started.wait()
    await asyncio.sleep(0.05)
    assert len(leftovers(root)) == 1  # the temporary file exists while the upload runs
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert leftovers(root) == []
    assert not (root / "f.bin").exists()


async def test_upload_onto_a_collection_or_below_a_file_is_refused(root: Path) -> None:
    (root / "dir").mkdir()
    (root / "file").write_text("x")
    ep = endpoint(root)
    for path in ("/dir", "/file/below", "/"):
        with pytest.raises(EndpointRefused) as refused:
            await ep.upload(path, chunks_of(b"data"))
        assert refused.value.status == 409, path
    assert (root / "dir").is_dir() and (root / "file").read_text() == "x"
    assert leftovers(root) == []


async def test_upload_to_a_full_disk_is_507(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ep = endpoint(root)

    def full(self: object, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(local._File, "write_all", full)
    with pytest.raises(EndpointRefused) as refused:
        await ep.upload("/f", chunks_of(b"data"))
    assert refused.value.status == 507
    assert leftovers(root) == [] and not (root / "f").exists()


# -- checksums in xattrs --------------------------------------------------------------------------


async def stat_of(ep: LocalEndpoint, path: str) -> StatResult:
    stat = await ep.stat(path)
    assert stat is not None
    return stat


async def test_store_and_read_back_checksums_without_touching_mtime(root: Path) -> None:
    (root / "f").write_bytes(b"hello world")
    ep = endpoint(root)
    before = os.stat(root / "f")
    assert await ep.stored_checksums("/f", await stat_of(ep, "/f")) == {}
    assert await ep.store_checksums("/f", {"adler32": ADLER.upper(), "md5": MD5, "sha256": SHA}) is True
    after = os.stat(root / "f")
    assert after.st_mtime_ns == before.st_mtime_ns  # xattrs change the ctime only
    assert os.getxattr(root / "f", "user.geofed.adler32") == ADLER.encode()
    assert os.getxattr(root / "f", XATTR_STAMP) == f"{before.st_size}:{before.st_mtime_ns}".encode()
    stat = await stat_of(ep, "/f")
    assert await ep.stored_checksums("/f", stat) == {"adler32": ADLER, "md5": MD5, "sha256": SHA}

    # A later store with fewer algorithms does not leave the old ones under the new stamp.
    assert await ep.store_checksums("/f", {"crc32c": "e3069283", "bogus": "ff", "md5": "not hex"}) is True
    assert await ep.stored_checksums("/f", stat) == {"crc32c": "e3069283"}
    assert await ep.store_checksums("/f", {"md5": "xyz"}) is False  # nothing valid to store


async def test_in_place_rewrite_invalidates_stored_checksums(root: Path) -> None:
    target = root / "f"
    target.write_bytes(b"hello world")
    ep = endpoint(root)
    assert await ep.store_checksums("/f", {"adler32": ADLER})
    time.sleep(0.02)  # past the kernel's coarse timestamp granularity
    with target.open("r+b") as handle:  # same size, same inode, xattrs kept
        handle.write(b"HELLO")
    assert os.getxattr(target, "user.geofed.adler32") == ADLER.encode()
    assert await ep.stored_checksums("/f", await stat_of(ep, "/f")) == {}


async def test_atomic_replacement_and_stale_caller_stat(root: Path) -> None:
    target = root / "f"
    target.write_bytes(b"one")
    ep = endpoint(root)
    old_stat = await stat_of(ep, "/f")
    assert await ep.store_checksums("/f", {"adler32": ADLER})
    # The caller's stat of another version of the file: values of the current one are not its.
    other = StatResult(is_dir=False, size=3, etag='"other"')
    assert await ep.stored_checksums("/f", other) == {}
    assert await ep.stored_checksums("/f", StatResult(is_dir=False)) == {"adler32": ADLER}
    replacement = root / "new"
    replacement.write_bytes(b"two")
    os.replace(replacement, target)  # a new inode: no xattrs at all
    assert await ep.stored_checksums("/f", await stat_of(ep, "/f")) == {}
    assert await ep.stored_checksums("/f", old_stat) == {}


async def test_checksums_of_missing_paths_and_collections(root: Path) -> None:
    (root / "dir").mkdir()
    ep = endpoint(root)
    with pytest.raises(PathNotFound):
        await ep.stored_checksums("/missing", StatResult(is_dir=False))
    with pytest.raises(PathNotFound):
        await ep.store_checksums("/missing", {"adler32": ADLER})
    assert await ep.store_checksums("/dir", {"adler32": ADLER}) is False
    assert await ep.stored_checksums("/dir", StatResult(is_dir=True)) == {}


async def test_trusted_mode_also_reads_plain_xattrs(root: Path) -> None:
    target = root / "f"
    target.write_bytes(b"x")
    os.setxattr(target, "user.adler32", b"00000001")
    os.setxattr(target, "user.md5", b"not a checksum")
    plain = endpoint(root)
    trusted = endpoint(root, checksum_metadata="trusted")
    stat = await stat_of(plain, "/f")
    assert await plain.stored_checksums("/f", stat) == {}
    assert await trusted.stored_checksums("/f", stat) == {"adler32": "00000001"}
    assert await trusted.store_checksums("/f", {"adler32": ADLER})
    assert await trusted.stored_checksums("/f", stat) == {"adler32": ADLER}  # geofed's own value wins


async def test_filesystem_without_xattrs_is_remembered(root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (root / "f").write_bytes(b"x")
    ep = endpoint(root)
    calls = 0

    def unsupported(*args: object) -> None:
        nonlocal calls
        calls += 1
        raise OSError(errno.ENOTSUP, "Operation not supported")

    monkeypatch.setattr(os, "setxattr", unsupported)
    monkeypatch.setattr(os, "removexattr", unsupported)
    monkeypatch.setattr(os, "getxattr", unsupported)
    assert await ep.store_checksums("/f", {"adler32": ADLER}) is False
    first = calls
    assert first >= 1
    assert await ep.store_checksums("/f", {"adler32": ADLER}) is False
    assert await ep.stored_checksums("/f", StatResult(is_dir=False)) == {}
    assert calls == first  # no retry storm


async def test_xattrs_refused_by_permissions_return_false(
    root: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (root / "f").write_bytes(b"x")
    ep = endpoint(root)

    def denied(*args: object) -> None:
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(os, "setxattr", denied)
    assert await ep.store_checksums("/f", {"adler32": ADLER}) is False
    monkeypatch.undo()
    assert await ep.store_checksums("/f", {"adler32": ADLER}) is True  # not remembered as unsupported


# -- move -----------------------------------------------------------------------------------------


async def test_move_file_with_parents_and_overwrite(root: Path) -> None:
    (root / "a.txt").write_text("A")
    (root / "b.txt").write_text("B")
    ep = endpoint(root)
    await ep.move("/a.txt", "/x/y/a.txt")
    assert not (root / "a.txt").exists() and (root / "x" / "y" / "a.txt").read_text() == "A"

    with pytest.raises(EndpointRefused) as refused:
        await ep.move("/b.txt", "/x/y/a.txt", overwrite=False)
    assert refused.value.status == 412
    assert (root / "b.txt").read_text() == "B" and (root / "x" / "y" / "a.txt").read_text() == "A"

    await ep.move("/b.txt", "/x/y/a.txt", overwrite=True)
    assert not (root / "b.txt").exists() and (root / "x" / "y" / "a.txt").read_text() == "B"
    with pytest.raises(PathNotFound):
        await ep.move("/b.txt", "/c.txt")


async def test_move_collections(root: Path) -> None:
    (root / "src" / "inner").mkdir(parents=True)
    (root / "src" / "inner" / "f").write_text("1")
    (root / "dst").mkdir()
    (root / "dst" / "old").write_text("old")
    (root / "file").write_text("F")
    ep = endpoint(root)

    with pytest.raises(EndpointRefused) as refused:
        await ep.move("/src", "/dst", overwrite=False)
    assert refused.value.status == 412
    await ep.move("/src", "/dst")  # a non-empty collection replaced, as WebDAV's MOVE does
    assert (root / "dst" / "inner" / "f").read_text() == "1"
    assert not (root / "dst" / "old").exists() and not (root / "src").exists()

    await ep.move("/file", "/dst")  # a file replacing a collection
    assert (root / "dst").read_text() == "F"
    await ep.move("/dst", "/deep/er/moved")
    assert (root / "deep" / "er" / "moved").read_text() == "F"
    assert leftovers(root) == []


async def test_move_refusals(root: Path) -> None:
    (root / "inside" / "dir").mkdir(parents=True)
    (root / "inside" / "file").write_text("x")
    (root / "outside").mkdir()
    (root / "inside" / "out").symlink_to(root / "outside")
    ep = endpoint(root / "inside")
    for source, destination in [("/", "/x"), ("/file", "/"), ("/dir", "/dir"), ("/dir", "/dir/sub")]:
        with pytest.raises(EndpointRefused) as refused:
            await ep.move(source, destination)
        assert refused.value.status == 403, (source, destination)
    with pytest.raises(EndpointRefused) as refused:
        await ep.move("/file", "/out/stolen")  # the destination's parent escapes the root
    assert refused.value.status == 403
    with pytest.raises(EndpointRefused) as refused:
        await ep.move("/dir", "/file/below")  # a file is in the way of the parent
    assert refused.value.status == 409
    assert (root / "inside" / "file").read_text() == "x" and list((root / "outside").iterdir()) == []


async def test_move_a_symlink_moves_the_link(root: Path) -> None:
    (root / "target").write_text("T")
    (root / "link").symlink_to("target")
    ep = endpoint(root)
    await ep.move("/link", "/moved")
    assert (root / "moved").is_symlink() and (root / "target").read_text() == "T"


# -- space ----------------------------------------------------------------------------------------


async def test_space_is_the_free_space_of_the_filesystem(root: Path) -> None:
    space = await endpoint(root).space()
    assert space is not None and space.used is None
    assert space.available is not None
    assert abs(space.available - shutil.disk_usage(root).free) < 64 << 20
    with pytest.raises(EndpointUnavailable):
        await endpoint(root / "gone").space()
