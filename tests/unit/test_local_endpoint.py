from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import pytest

from geofed.config import EndpointSettings
from geofed.endpoints.local import UPLOAD_PREFIX, LocalEndpoint
from geofed.errors import EndpointRefused, EndpointUnavailable, PathNotFound
from geofed.signing import URLSigner


def endpoint(root: Path, **settings: object) -> LocalEndpoint:
    return LocalEndpoint(
        EndpointSettings(name="disk", kind="local", url=root.as_uri(), **settings),  # type: ignore[arg-type]
        URLSigner("x" * 32),
    )


async def test_stat_list_mkcol_delete(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "f.txt").write_text("hello")
    (tmp_path / "d" / f"{UPLOAD_PREFIX}123").write_text("partial")
    ep = endpoint(tmp_path)
    stat = await ep.stat("/d/f.txt")
    assert stat is not None and not stat.is_dir and stat.size == 5 and stat.etag
    assert (await ep.stat("/d")).is_dir  # type: ignore[union-attr]
    assert await ep.stat("/missing") is None
    assert [e.name async for e in ep.list("/d")] == ["f.txt"]  # uploads in progress are hidden
    with pytest.raises(PathNotFound):
        [e async for e in ep.list("/nope")]
    assert await ep.mkcol("/d/sub") is True
    assert await ep.mkcol("/d/sub") is False
    with pytest.raises(EndpointRefused) as refused:
        await ep.mkcol("/x/y")
    assert refused.value.status == 409
    await ep.makedirs("/x/y/z")
    assert (tmp_path / "x" / "y" / "z").is_dir()
    await ep.delete("/d")
    assert not (tmp_path / "d").exists()
    with pytest.raises(PathNotFound):
        await ep.delete("/d")
    with pytest.raises(EndpointRefused):
        await ep.delete("/")


async def test_symlink_escaping_the_root_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "root"
    root.mkdir()
    (tmp_path / "secret").write_text("s")
    (root / "link").symlink_to(tmp_path / "secret")
    ep = endpoint(root)
    with pytest.raises(EndpointRefused) as refused:
        await ep.stat("/link")
    assert refused.value.status == 403


async def test_probe_fails_for_a_missing_directory(tmp_path: Path) -> None:
    await endpoint(tmp_path).probe()
    with pytest.raises(EndpointUnavailable, match="missing or unreadable"):
        await endpoint(tmp_path / "gone").probe()


async def test_concurrency_is_bounded(tmp_path: Path) -> None:
    ep = endpoint(tmp_path, max_concurrency=2)
    active = 0
    peak = 0
    lock = threading.Lock()

    def slow() -> None:
        nonlocal active, peak
        with lock:
            active += 1
            peak = max(peak, active)
        time.sleep(0.05)
        with lock:
            active -= 1

    await asyncio.gather(*(ep._run(slow) for _ in range(6)))
    assert peak == 2


async def test_a_hung_filesystem_call_times_out(tmp_path: Path) -> None:
    ep = endpoint(tmp_path, timeout=0.1)
    started = time.monotonic()
    with pytest.raises(EndpointUnavailable, match=r"timed out after 0\.1 s"):
        await ep._run(time.sleep, 0.5)
    assert time.monotonic() - started < 0.4
