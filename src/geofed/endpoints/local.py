"""The ``local`` endpoint kind: a directory on the geofed host, served by geofed's own data route.

Clients are redirected to HMAC-signed, expiring URLs of the data route
(:mod:`geofed.frontend.dataroute`), so a local directory behaves like any remote store. Filesystem
calls run in worker threads to keep the event loop free. Every path is resolved and checked to stay
inside the root, so a symlink cannot expose files outside it.

Streamed access (what the federation does itself, not through the data route):

* ``read`` yields chunks of at most :data:`READ_CHUNK` bytes, each read in a worker thread. A
  collection is not a file: PathNotFound (as ``list`` answers PathNotFound for a file).
* ``upload`` writes a hidden temporary file (``UPLOAD_PREFIX``, hidden from listings, as the data
  route's PUT does) in the destination's directory, fsyncs it and renames it into place; on any
  error or cancellation the temporary file is removed, so nothing partial is ever visible.
* ``store_checksums`` keeps the values in extended attributes ``user.geofed.<alg>`` with a stamp
  ``user.geofed.checksum-stamp`` = ``<size>:<mtime_ns>`` of the file when they were stored.
  ``stored_checksums`` believes them only while the file still has that size and mtime: an
  in-place overwrite keeps the inode and so its xattrs, but changes the mtime (an atomic
  replacement brings a new inode without any). Setting xattrs changes the ctime, not the mtime,
  which is why the stamp cannot use the ctime. A filesystem without user xattrs (ENOTSUP) is
  remembered: no further attempts, ``store_checksums`` answers False.
* ``move`` renames within the root; a collection on either side is replaced as RFC 4918's MOVE
  does (the destination is deleted first), otherwise the rename is atomic.
* ``space`` is the free space of the root's filesystem (``used`` None: summing a tree is too
  expensive; the caller combines ``available`` with ``endpoints[].quota``).
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import logging
import os
import re
import secrets
import shutil
import stat as stat_module
import threading
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from geofed.config import EndpointSettings
from geofed.endpoints.base import CHECKSUM_ALGORITHMS, Capabilities, Endpoint, Entry, Space, StatResult
from geofed.errors import EndpointRefused, EndpointUnavailable, PathNotFound
from geofed.signing import URLSigner

T = TypeVar("T")
logger = logging.getLogger(__name__)
_LIST_BATCH = 512
UPLOAD_PREFIX = ".geofed-upload-"
#: Bytes per chunk of ``read`` (one worker-thread call each).
READ_CHUNK = 256 * 1024
#: Extended attributes of stored checksums: ``user.geofed.adler32`` and so on, and the stamp.
XATTR_PREFIX = "user.geofed."
XATTR_STAMP = XATTR_PREFIX + "checksum-stamp"
_HAS_XATTRS = hasattr(os, "setxattr")
_HEX = re.compile(r"[0-9a-f]{1,128}")
_NO_XATTRS = frozenset({errno.ENOTSUP, errno.EOPNOTSUPP})
_NO_SPACE = frozenset({errno.ENOSPC, errno.EDQUOT})


def _stat_result(st: os.stat_result) -> StatResult:
    is_dir = stat_module.S_ISDIR(st.st_mode)
    etag = f'"{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}"'
    return StatResult(is_dir=is_dir, size=None if is_dir else st.st_size, mtime=st.st_mtime, etag=etag)


def _stamp(st: os.stat_result) -> str:
    """What ties stored checksums to one content of a file: its size and mtime in nanoseconds."""
    return f"{st.st_size}:{st.st_mtime_ns}"


class _File:
    """A file descriptor used from worker threads, closed only once no call on it is running.

    Cancelling an await does not stop the worker thread; were the descriptor closed under it, its
    number could be reused by another open and the pending write would land in that file.
    """

    __slots__ = ("_fd", "_lock")

    def __init__(self, fd: int) -> None:
        self._fd = fd
        self._lock = threading.Lock()

    def pread(self, size: int, offset: int) -> bytes:
        with self._lock:
            return os.pread(self._fd, size, offset)

    def write_all(self, data: bytes) -> None:
        with self._lock:
            view = memoryview(data)
            while view:
                view = view[os.write(self._fd, view) :]

    def fsync(self) -> None:
        with self._lock:
            os.fsync(self._fd)

    def close(self) -> None:
        with self._lock:
            fd, self._fd = self._fd, -1
            if fd >= 0:
                os.close(fd)


async def _finish(limit: float, fn: Callable[..., object], *args: Any) -> None:
    """Run a clean-up ``fn`` in a worker thread and wait for it at most ``limit`` seconds. It
    completes even if the caller is cancelled or stops waiting (a call on a hung filesystem it
    has to wait for): then it finishes in the background."""
    task = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    task.add_done_callback(_log_failure)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(asyncio.shield(task), limit)


def _log_failure(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and (exc := task.exception()) is not None:
        logger.error("clean-up of a local endpoint file failed: %s", exc)


class LocalEndpoint(Endpoint):
    """A directory tree on this host."""

    capabilities = Capabilities(upload_stream=True, read_stream=True, store_checksums=_HAS_XATTRS, move=True)

    def __init__(self, settings: EndpointSettings, signer: URLSigner) -> None:
        super().__init__(settings)
        self.root = Path(unquote(urlsplit(settings.url).path)).resolve()
        self._signer = signer
        self._slots = asyncio.Semaphore(settings.max_concurrency)
        self._xattrs = _HAS_XATTRS

    async def _run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run a filesystem call in a worker thread, at most ``max_concurrency`` at once and within
        the endpoint's timeout (a hung network filesystem must not hang the federation)."""
        try:
            async with asyncio.timeout(self.settings.timeout), self._slots:
                return await asyncio.to_thread(fn, *args)
        except TimeoutError as exc:
            raise EndpointUnavailable(
                self.name, f"filesystem call timed out after {self.settings.timeout:g} s"
            ) from exc

    def resolve(self, path: str) -> Path:
        """The filesystem path for an endpoint path, refusing anything that escapes the root."""
        candidate = self.root / path.lstrip("/")
        real = Path(os.path.realpath(candidate))
        if real != self.root and self.root not in real.parents:
            raise EndpointRefused(self.name, "path resolves outside the endpoint's directory", 403)
        return real

    def _entry(self, path: str) -> Path:
        """The filesystem path of the entry ``path`` itself: its parents are resolved (and must
        stay inside the root) but a symlink at ``path`` is the entry, not what it points to."""
        if path == "/":
            return self.root
        parent, _, name = path.rpartition("/")
        if name in ("", ".", ".."):
            raise EndpointRefused(self.name, f"not a file or collection name: {path!r}", 403)
        return self.resolve(parent or "/") / name

    def _os_error(self, action: str, exc: OSError) -> EndpointRefused | EndpointUnavailable:
        """The contract's error for a failed filesystem call other than a missing path."""
        reason = exc.strerror or type(exc).__name__
        if isinstance(exc, PermissionError):
            return EndpointRefused(self.name, f"{action}: permission denied", 403)
        if exc.errno in _NO_SPACE:
            return EndpointRefused(self.name, f"{action}: {reason}", 507)
        return EndpointUnavailable(self.name, f"{action} failed: {reason}")

    async def stat(self, path: str) -> StatResult | None:
        return await self._run(self._stat_sync, path)

    def _stat_sync(self, path: str) -> StatResult | None:
        try:
            return _stat_result(os.stat(self.resolve(path)))
        except (FileNotFoundError, NotADirectoryError):
            return None
        except PermissionError as exc:
            raise EndpointRefused(self.name, f"permission denied: {exc.strerror}", 403) from exc
        except OSError as exc:
            raise EndpointUnavailable(self.name, f"stat failed: {exc.strerror}") from exc

    async def list(self, path: str) -> AsyncIterator[Entry]:
        directory = self.resolve(path)
        try:
            iterator = await self._run(os.scandir, directory)
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise PathNotFound(self.name, "no such collection") from exc
        except OSError as exc:
            raise EndpointUnavailable(self.name, f"listing failed: {exc.strerror}") from exc
        try:
            while batch := await self._run(_next_batch, iterator):
                for entry in batch:
                    yield entry
        finally:
            iterator.close()

    def sign_url(self, method: str, path: str, lifetime: float) -> str:
        return self._signer.sign(method, self.name, path, lifetime)

    async def delete(self, path: str) -> None:
        await self._run(self._delete_sync, path)

    def _delete_sync(self, path: str) -> None:
        target = self.resolve(path)
        if target == self.root:
            raise EndpointRefused(self.name, "refusing to delete the endpoint's root", 403)
        try:
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            else:
                target.unlink()
        except FileNotFoundError as exc:
            raise PathNotFound(self.name, "no such file") from exc
        except OSError as exc:
            raise EndpointUnavailable(self.name, f"delete failed: {exc.strerror}") from exc

    async def mkcol(self, path: str) -> bool:
        return await self._run(self._mkcol_sync, path)

    def _mkcol_sync(self, path: str) -> bool:
        target = self.resolve(path)
        try:
            target.mkdir()
        except FileExistsError:
            return False
        except FileNotFoundError as exc:
            raise EndpointRefused(self.name, "parent collection does not exist", 409) from exc
        except OSError as exc:
            raise EndpointUnavailable(self.name, f"mkdir failed: {exc.strerror}") from exc
        return True

    async def makedirs(self, path: str) -> None:
        target = self.resolve(path)
        try:
            await self._run(functools.partial(target.mkdir, parents=True, exist_ok=True))
        except FileExistsError as exc:
            raise EndpointRefused(self.name, "a file is in the way of the collection", 409) from exc
        except OSError as exc:
            raise EndpointUnavailable(self.name, f"mkdir failed: {exc.strerror}") from exc

    async def probe(self) -> None:
        ok = await self._run(os.access, self.root, os.R_OK | os.X_OK)
        if not ok:
            raise EndpointUnavailable(self.name, f"directory {self.root} is missing or unreadable")

    # -- streamed reads and uploads -------------------------------------------------------------

    async def read(self, path: str, offset: int = 0, length: int | None = None) -> AsyncIterator[bytes]:
        """The file's bytes in chunks of at most READ_CHUNK; PathNotFound for a missing path or a
        collection. Reading past the end yields nothing (as a file read does)."""
        if offset < 0 or (length is not None and length < 0):
            raise ValueError(f"invalid range: offset {offset}, length {length}")
        handle = await self._run(self._open_for_read, path)
        try:
            position = offset
            remaining = length
            while remaining is None or remaining > 0:
                size = READ_CHUNK if remaining is None else min(READ_CHUNK, remaining)
                chunk = await self._run(self._pread, handle, size, position)
                if not chunk:
                    break
                position += len(chunk)
                if remaining is not None:
                    remaining -= len(chunk)
                yield chunk
        finally:
            await _finish(self.settings.timeout, handle.close)

    def _open_for_read(self, path: str) -> _File:
        target = self.resolve(path)
        try:
            fd = os.open(target, os.O_RDONLY | os.O_CLOEXEC)
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise PathNotFound(self.name, "no such file") from exc
        except OSError as exc:
            raise self._os_error("open", exc) from exc
        try:
            is_dir = stat_module.S_ISDIR(os.fstat(fd).st_mode)
        except OSError as exc:
            os.close(fd)
            raise self._os_error("stat", exc) from exc
        if is_dir:
            os.close(fd)
            raise PathNotFound(self.name, f"{path} is a collection, not a file")
        return _File(fd)

    def _pread(self, handle: _File, size: int, offset: int) -> bytes:
        try:
            return handle.pread(size, offset)
        except OSError as exc:
            raise self._os_error("read", exc) from exc

    async def upload(self, path: str, chunks: AsyncIterator[bytes]) -> None:
        """Write ``chunks`` to a hidden temporary file next to ``path``, fsync, rename into place.

        Parents are created. EndpointRefused 409 when ``path`` is a collection (or a file is in
        the way of a parent), 507 when the disk is full. Whatever goes wrong -- the endpoint, or
        the ``chunks`` iterator (its exception is passed on unchanged) -- the temporary file is
        removed and nothing appears at ``path``.
        """
        if path == "/":
            raise EndpointRefused(self.name, "cannot upload to the endpoint's root", 409)
        await self.makedirs(path.rsplit("/", 1)[0] or "/")
        target, temporary, handle = await self._run(self._create_temporary, path)
        try:
            async for chunk in chunks:
                if chunk:
                    await self._run(self._write, handle, chunk)
            await self._run(self._commit, handle, temporary, target)
        except BaseException:
            await _finish(self.settings.timeout, _abandon, handle, temporary)
            raise

    def _create_temporary(self, path: str) -> tuple[Path, Path, _File]:
        target = self.resolve(path)
        if target.is_dir():
            raise EndpointRefused(self.name, f"{path} is a collection", 409)
        temporary = target.parent / f"{UPLOAD_PREFIX}{secrets.token_hex(8)}"
        try:
            fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o666)
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise EndpointRefused(self.name, "the parent collection does not exist", 409) from exc
        except OSError as exc:
            raise self._os_error("create", exc) from exc
        return target, temporary, _File(fd)

    def _write(self, handle: _File, chunk: bytes) -> None:
        try:
            handle.write_all(chunk)
        except OSError as exc:
            raise self._os_error("write", exc) from exc

    def _commit(self, handle: _File, temporary: Path, target: Path) -> None:
        try:
            handle.fsync()
            handle.close()
            os.replace(temporary, target)
        except IsADirectoryError as exc:
            raise EndpointRefused(self.name, "a collection is in the way of the file", 409) from exc
        except OSError as exc:
            raise self._os_error("store", exc) from exc
        _fsync_directory(target.parent)

    # -- checksums in extended attributes ---------------------------------------------------------

    async def stored_checksums(self, path: str, stat: StatResult) -> dict[str, str]:
        """The ``user.geofed.<alg>`` xattrs, if their stamp matches the file as it is now (and the
        caller's ``stat``, when it carries this endpoint's ETag); with ``checksum_metadata:
        trusted`` also plain ``user.<alg>`` xattrs that the site's own tools wrote."""
        found = await super().stored_checksums(path, stat)
        if not self._xattrs:
            return found
        return {**found, **await self._run(self._read_xattrs, path, stat)}

    def _read_xattrs(self, path: str, stat: StatResult) -> dict[str, str]:
        target = self.resolve(path)
        try:
            st = os.stat(target)
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise PathNotFound(self.name, "no such file") from exc
        except OSError as exc:
            raise self._os_error("stat", exc) from exc
        if stat_module.S_ISDIR(st.st_mode):
            return {}
        values: dict[str, str] = {}
        if self.settings.checksum_metadata == "trusted":
            values.update(self._xattr_values(target, "user."))
        stamp = self._getxattr(target, XATTR_STAMP)
        current = _stat_result(st)
        if stamp == _stamp(st) and stat.etag in (None, current.etag):
            values.update(self._xattr_values(target, XATTR_PREFIX))
        return values

    def _xattr_values(self, target: Path, prefix: str) -> dict[str, str]:
        values: dict[str, str] = {}
        for algorithm in CHECKSUM_ALGORITHMS:
            value = self._getxattr(target, prefix + algorithm)
            if value is not None and _HEX.fullmatch(value.strip().lower()):
                values[algorithm] = value.strip().lower()
        return values

    def _getxattr(self, target: Path, name: str) -> str | None:
        """One xattr as text; None when absent, unreadable or not text."""
        try:
            return os.getxattr(target, name).decode("ascii")
        except UnicodeDecodeError:
            return None
        except OSError as exc:
            self._note_xattr_error(exc)
            return None

    def _note_xattr_error(self, exc: OSError) -> None:
        if exc.errno in _NO_XATTRS and self._xattrs:
            self._xattrs = False
            logger.warning(
                "endpoint %s: the filesystem of %s has no user xattrs; checksums will not be kept",
                self.name,
                self.root,
            )

    async def store_checksums(self, path: str, values: dict[str, str]) -> bool:
        """Set ``user.geofed.<alg>`` for each valid value (and remove the other algorithms' old
        ones), then the stamp of the file as it is now. False when xattrs are not supported or
        refused, or when the file changed while they were written (then the stamp is removed)."""
        checked = {
            algorithm: value.strip().lower()
            for algorithm, value in values.items()
            if algorithm in CHECKSUM_ALGORITHMS and _HEX.fullmatch(value.strip().lower())
        }
        if not self._xattrs or not checked:
            return False
        return await self._run(self._write_xattrs, path, checked)

    def _write_xattrs(self, path: str, values: dict[str, str]) -> bool:
        target = self.resolve(path)
        try:
            before = os.stat(target)
            if stat_module.S_ISDIR(before.st_mode):
                return False
            _remove_xattr(target, XATTR_STAMP)  # never a stamp over a half-written set
            for algorithm in CHECKSUM_ALGORITHMS:
                if algorithm in values:
                    os.setxattr(target, XATTR_PREFIX + algorithm, values[algorithm].encode("ascii"))
                else:
                    _remove_xattr(target, XATTR_PREFIX + algorithm)
            os.setxattr(target, XATTR_STAMP, _stamp(before).encode("ascii"))
            if _stamp(os.stat(target)) != _stamp(before):
                _remove_xattr(target, XATTR_STAMP)  # written to meanwhile: the values may be stale
                return False
        except (FileNotFoundError, NotADirectoryError) as exc:
            raise PathNotFound(self.name, "no such file") from exc
        except OSError as exc:
            self._note_xattr_error(exc)
            if exc.errno in _NO_XATTRS or isinstance(exc, PermissionError):
                return False
            raise self._os_error("setxattr", exc) from exc
        return True

    # -- move and space ---------------------------------------------------------------------------

    async def move(self, source: str, destination: str, overwrite: bool = True) -> None:
        """Rename ``source`` (file or collection) to ``destination``, creating its parents.

        EndpointRefused 412 when the destination exists and ``overwrite`` is False, 403 for the
        root, the same path, or a collection moved into itself; PathNotFound when ``source`` is
        absent. Replacing a file by a file is one atomic rename. When a collection is on either
        side, the destination is first renamed aside (hidden) and deleted after the move, as
        RFC 4918 says MOVE with ``Overwrite: T`` does. The overwrite check and the rename are not
        one atomic step: a destination created in between by another process is replaced.
        """
        await self._run(self._move_sync, source, destination, overwrite)

    def _move_sync(self, source: str, destination: str, overwrite: bool) -> None:
        if "/" in (source, destination):
            raise EndpointRefused(self.name, "refusing to move the endpoint's root", 403)
        if source == destination:
            raise EndpointRefused(self.name, "source and destination are the same", 403)
        if destination.startswith(source + "/"):
            raise EndpointRefused(self.name, "cannot move a collection into itself", 403)
        src = self._entry(source)
        dst = self._entry(destination)
        if not os.path.lexists(src):
            raise PathNotFound(self.name, f"{source}: no such file or collection")
        try:
            dst.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError) as exc:
            raise EndpointRefused(self.name, "a file is in the way of the destination's parent", 409) from exc
        except OSError as exc:
            raise self._os_error("mkdir", exc) from exc
        try:
            self._rename(src, dst, overwrite)
        except FileNotFoundError as exc:
            raise PathNotFound(self.name, f"{source}: no such file or collection") from exc
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.EXDEV):
                raise EndpointRefused(self.name, f"cannot move: {exc.strerror}", 403) from exc
            raise self._os_error("rename", exc) from exc

    def _rename(self, src: Path, dst: Path, overwrite: bool) -> None:
        if not os.path.lexists(dst):
            os.rename(src, dst)
            return
        if not overwrite:
            raise EndpointRefused(self.name, "the destination exists and overwrite is off", 412)
        src_dir = src.is_dir() and not src.is_symlink()
        dst_dir = dst.is_dir() and not dst.is_symlink()
        if not src_dir and not dst_dir:
            os.replace(src, dst)
            return
        aside = dst.parent / f"{UPLOAD_PREFIX}{secrets.token_hex(8)}"
        os.rename(dst, aside)
        try:
            os.rename(src, dst)
        except BaseException:
            os.rename(aside, dst)
            raise
        if dst_dir:
            shutil.rmtree(aside, ignore_errors=True)
        else:
            aside.unlink(missing_ok=True)

    async def space(self) -> Space:
        """Free bytes of the root's filesystem for unprivileged users; ``used`` is None (summing
        the tree would be too expensive: the caller combines ``available`` with a quota)."""
        try:
            usage = await self._run(shutil.disk_usage, self.root)
        except OSError as exc:
            raise self._os_error("statvfs", exc) from exc
        return Space(used=None, available=usage.free)


def _abandon(handle: _File, temporary: Path) -> None:
    """Close and remove the temporary file of a failed upload (run in a worker thread)."""
    try:
        handle.close()
    finally:
        temporary.unlink(missing_ok=True)


def _fsync_directory(directory: Path) -> None:
    """Make a rename in ``directory`` durable; some filesystems cannot, which is not an error."""
    try:
        fd = os.open(directory, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _remove_xattr(target: Path, name: str) -> None:
    try:
        os.removexattr(target, name)
    except OSError as exc:
        if exc.errno != errno.ENODATA:
            raise


def _next_batch(iterator: object) -> list[Entry]:
    """Up to _LIST_BATCH entries from an os.scandir iterator (run in a worker thread)."""
    batch: list[Entry] = []
    for dir_entry in iterator:  # type: ignore[attr-defined]
        if dir_entry.name.startswith(UPLOAD_PREFIX):
            continue
        try:
            st = dir_entry.stat()
        except OSError:
            continue
        batch.append(Entry(dir_entry.name, _stat_result(st)))
        if len(batch) >= _LIST_BATCH:
            break
    return batch
