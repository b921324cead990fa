"""Start real memcached and Redis servers on 127.0.0.1 for the L2 cache tests.

Same ground rules as :mod:`tests.infra.servers` (reference ``test-infrastructure.md`` §2, §6):
each server runs in the foreground as our child, on a free loopback port, and is stopped by its
PID; a missing Debian package raises RuntimeError naming it. Daemon modes are not used: memcached
writes its pidfile only after dropping privileges, and silently writes none when it cannot.

A test that kills a server and starts it again passes ``port=`` to get the same address back
(both servers set SO_REUSEADDR, so the port is free again at once).
"""

from __future__ import annotations

import os
import pwd
import subprocess
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO

from tests.infra.servers import (
    LOOPBACK,
    RunningServer,
    _kill_unready,
    _launch,
    _require_executable,
    _wait_ready,
)

MEMCACHED_MEMORY_MB = 64


def _memcached_user() -> list[str]:
    """memcached refuses to run as root without ``-u``; Debian's package creates ``memcache``."""
    if os.geteuid() != 0:
        return []
    for user in ("memcache", "nobody"):
        try:
            pwd.getpwnam(user)
        except KeyError:
            continue
        return ["-u", user]
    raise RuntimeError("no 'memcache' or 'nobody' user to run memcached as")


def _start(
    name: str,
    build: Callable[[int], tuple[list[str], tuple[Path, ...]]],
    output: Callable[[], IO[bytes]],
    port: int | None,
) -> RunningServer:
    if port is None:
        return _launch(name, build, output, None)
    argv, log_paths = build(port)
    out = output()
    process = subprocess.Popen(
        argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )
    try:
        _wait_ready(name, process, port, log_paths, [out])
    except BaseException:
        _kill_unready(process)
        out.close()
        raise
    return RunningServer(name=name, url="", port=port, pid=process.pid, process=process, _owned_files=[out])


def start_memcached(port: int | None = None, memory_mb: int = MEMCACHED_MEMORY_MB) -> RunningServer:
    """memcached on 127.0.0.1 (TCP only); ``.url`` is its ``host:port`` as geofed's config takes it."""
    memcached = _require_executable("memcached", "memcached")

    def build(port: int) -> tuple[list[str], tuple[Path, ...]]:
        argv = [memcached, "-l", LOOPBACK, "-p", str(port), "-U", "0", "-m", str(memory_mb), "-c", "1024"]
        return [*argv, *_memcached_user()], ()

    def output() -> IO[bytes]:
        return tempfile.TemporaryFile(prefix="geofed-memcached-")

    server = _start("memcached", build, output, port)
    server.url = f"{LOOPBACK}:{server.port}"
    return server


def start_redis(workdir: Path, port: int | None = None) -> RunningServer:
    """redis-server on 127.0.0.1, purely in memory; ``.url`` is ``redis://127.0.0.1:PORT/0``."""
    redis_server = _require_executable("redis-server", "redis-server")
    workdir.mkdir(parents=True, exist_ok=True)

    def build(port: int) -> tuple[list[str], tuple[Path, ...]]:
        argv = [
            redis_server,
            "--bind", LOOPBACK,
            "--port", str(port),
            "--save", "",
            "--appendonly", "no",
            "--dir", str(workdir),
            "--daemonize", "no",
            "--logfile", "",
        ]  # fmt: skip
        return argv, ()

    def output() -> IO[bytes]:
        return (workdir / "redis.out").open("a+b")

    server = _start("redis", build, output, port)
    server.url = f"redis://{LOOPBACK}:{server.port}/0"
    return server


def restart(server: RunningServer, workdir: Path | None = None) -> RunningServer:
    """A fresh, empty instance of a stopped ``server`` on the same port (same ``.url``)."""
    if server.name == "redis":
        assert workdir is not None, "redis needs its workdir"
        return start_redis(workdir, port=server.port)
    return start_memcached(port=server.port)
