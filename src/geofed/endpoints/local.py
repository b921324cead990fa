"""The ``local`` endpoint kind: a directory on the geofed host, served by geofed's own data route.

Clients are redirected to HMAC-signed, expiring URLs of the data route
(:mod:`geofed.frontend.dataroute`), so a local directory behaves like any remote store. Filesystem
calls run in worker threads to keep the event loop free. Every path is resolved and checked to stay
inside the root, so a symlink cannot expose files outside it.
"""

from __future__ import annotations

import asyncio
import functools
import os
import shutil
import stat as stat_module
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import unquote, urlsplit

from geofed.config import EndpointSettings
from geofed.endpoints.base import Endpoint, Entry, StatResult
from geofed.errors import EndpointRefused, EndpointUnavailable, PathNotFound
from geofed.signing import URLSigner

T = TypeVar("T")
_LIST_BATCH = 512
UPLOAD_PREFIX = ".geofed-upload-"


def _stat_result(st: os.stat_result) -> StatResult:
    is_dir = stat_module.S_ISDIR(st.st_mode)
    etag = f'"{st.st_ino:x}-{st.st_size:x}-{st.st_mtime_ns:x}"'
    return StatResult(is_dir=is_dir, size=None if is_dir else st.st_size, mtime=st.st_mtime, etag=etag)


class LocalEndpoint(Endpoint):
    """A directory tree on this host."""

    def __init__(self, settings: EndpointSettings, signer: URLSigner) -> None:
        super().__init__(settings)
        self.root = Path(unquote(urlsplit(settings.url).path)).resolve()
        self._signer = signer
        self._slots = asyncio.Semaphore(settings.max_concurrency)

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
