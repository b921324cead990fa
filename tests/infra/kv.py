"""Start real memcached and Redis servers on 127.0.0.1 for the L2 cache tests.

Same ground rules as :mod:`tests.infra.servers` (reference ``test-infrastructure.md`` §2, §6):
each server runs in the foreground as our child, on a free loopback port, and is stopped by its
PID; a missing Debian package raises RuntimeError naming it. Daemon modes are not used: memcached
writes its pidfile only after dropping privileges, and silently writes none when it cannot.

A test that kills a server and starts it again passes ``port=`` to get the same address back
(both servers set SO_REUSEADDR, so the port is free again at once).

:func:`start_redis_cluster` starts several ``redis-server --cluster-enabled yes`` the same way and
joins them with ``redis-cli --cluster create`` (``redis-cli`` is in Debian's ``redis-tools``, a
dependency of ``redis-server``).
"""

from __future__ import annotations

import os
import pwd
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tests.infra.servers import (
    LOOPBACK,
    RunningServer,
    _kill_unready,
    _launch,
    _require_executable,
    _wait_ready,
    free_port,
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


# -- Redis Cluster ---------------------------------------------------------------------------------

CLUSTER_SLOTS = 16384
CLUSTER_READY_TIMEOUT_S = 30.0


def _redis_cli(*args: str, timeout: float = 10.0) -> str:
    """Run Debian's ``redis-cli`` (part of the redis-server package's dependencies) and return stdout."""
    redis_cli = _require_executable("redis-cli", "redis-tools")
    result = subprocess.run(
        [redis_cli, *args], stdin=subprocess.DEVNULL, capture_output=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        output = (result.stdout + result.stderr).decode(errors="replace")
        raise RuntimeError(f"redis-cli {' '.join(args)} failed ({result.returncode}):\n{output[-4000:]}")
    return result.stdout.decode(errors="replace")


def cluster_info(port: int) -> dict[str, str]:
    """``CLUSTER INFO`` of the node on 127.0.0.1:``port`` as a dict (raises if it does not answer)."""
    text = _redis_cli("-h", LOOPBACK, "-p", str(port), "cluster", "info", timeout=2.0)
    fields = (line.strip().split(":", 1) for line in text.splitlines() if ":" in line)
    return {name: value for name, value in fields}


@dataclass
class RedisClusterServers:
    """Redis Cluster masters we started, each a ``redis-server --cluster-enabled yes`` on loopback.

    ``seeds`` are the nodes' ``host:port`` (geofed's ``cache.l2.servers``), ``url`` is a
    ``redis://`` URL of the first node. Each node keeps its cluster identity in ``nodes.conf`` in
    its own folder (below ``workdir``, named by its port), so :meth:`restart` brings a stopped node
    back as the same cluster member with the same slots -- and, the data living in memory only,
    without its keys. The cluster bus uses a second free port per node (``cluster-port``), not
    port + 10000, which might be taken or above 65535.
    """

    workdir: Path
    nodes: list[RunningServer]
    bus_ports: dict[int, int]
    node_timeout_ms: int
    require_full_coverage: bool

    @property
    def seeds(self) -> list[str]:
        return [f"{LOOPBACK}:{node.port}" for node in self.nodes]

    @property
    def url(self) -> str:
        return f"redis://{LOOPBACK}:{self.nodes[0].port}"

    def index_of(self, port: int) -> int:
        return next(i for i, node in enumerate(self.nodes) if node.port == port)

    def stop_node(self, index: int) -> None:
        """Stop one node by its PID (the others keep running and notice within the node timeout)."""
        self.nodes[index].stop()

    def restart_node(self, index: int, *, wait: bool = True) -> RunningServer:
        """Start the stopped node ``index`` again on its ports with its ``nodes.conf``; with
        ``wait``, return once every node reports the cluster ok again."""
        port = self.nodes[index].port
        self.nodes[index] = _start_cluster_node(
            self.workdir, self.node_timeout_ms, self.require_full_coverage, self.bus_ports, port
        )
        if wait:
            self.wait_ok()
        return self.nodes[index]

    def wait_ok(self, timeout: float = CLUSTER_READY_TIMEOUT_S) -> None:
        """Wait until every node that runs says ``cluster_state:ok`` with all slots served and
        knows every other node; raise with the last answers (and the logs) otherwise."""
        deadline = time.monotonic() + timeout
        last: dict[int, object] = {}
        while True:
            ready = True
            for node in self.nodes:
                try:
                    info = cluster_info(node.port)
                except (RuntimeError, subprocess.TimeoutExpired) as exc:
                    last[node.port], ready = str(exc), False
                    continue
                last[node.port] = info
                if (
                    info.get("cluster_state") != "ok"
                    or info.get("cluster_slots_ok") != str(CLUSTER_SLOTS)
                    or info.get("cluster_known_nodes") != str(len(self.nodes))
                ):
                    ready = False
            if ready:
                return
            if time.monotonic() > deadline:
                logs = "\n".join(node.logs() for node in self.nodes)
                raise RuntimeError(f"redis cluster not ok within {timeout:.0f} s: {last}\n{logs}")
            time.sleep(0.1)

    def stop(self) -> None:
        for node in self.nodes:
            node.stop()


def _start_cluster_node(
    workdir: Path,
    node_timeout_ms: int,
    require_full_coverage: bool,
    bus_ports: dict[int, int],
    port: int | None = None,
) -> RunningServer:
    """One cluster-enabled redis-server; a new one gets a free port and a free bus port (recorded
    in ``bus_ports``), a restarted one (``port`` given) its old ones."""
    redis_server = _require_executable("redis-server", "redis-server")
    built: list[Path] = []  # the folder of the port build() was last called for

    def build(port: int) -> tuple[list[str], tuple[Path, ...]]:
        if port not in bus_ports:
            bus = free_port()
            while bus == port:
                bus = free_port()
            bus_ports[port] = bus
        folder = workdir / str(port)
        folder.mkdir(parents=True, exist_ok=True)
        built.append(folder)
        argv = [
            redis_server,
            "--bind", LOOPBACK,
            "--port", str(port),
            "--save", "",
            "--appendonly", "no",
            "--dir", str(folder),
            "--daemonize", "no",
            "--logfile", "",
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-port", str(bus_ports[port]),
            "--cluster-node-timeout", str(node_timeout_ms),
            "--cluster-require-full-coverage", "yes" if require_full_coverage else "no",
        ]  # fmt: skip
        return argv, ()

    def output() -> IO[bytes]:
        return (built[-1] / "redis.out").open("a+b")  # build() ran just before, for this port

    return _start("redis-cluster-node", build, output, port)


def start_redis_cluster(
    workdir: Path,
    masters: int = 3,
    *,
    replicas: int = 0,
    node_timeout_ms: int = 1000,
    require_full_coverage: bool = True,
) -> RedisClusterServers:
    """A Redis Cluster of ``masters`` (at least 3) masters with ``replicas`` replicas each on
    127.0.0.1, joined with ``redis-cli --cluster create`` (which decides which node serves as
    what); returns once every node reports the cluster ok.

    ``node_timeout_ms`` is short so that tests which stop a node see the cluster react within
    seconds; ``require_full_coverage`` is Redis's own default (a cluster missing a master refuses
    every key once it has declared it failed), ``False`` keeps the other slots served.
    """
    if masters < 3:
        raise ValueError("a Redis Cluster needs at least 3 masters")
    workdir.mkdir(parents=True, exist_ok=True)
    bus_ports: dict[int, int] = {}
    cluster = RedisClusterServers(workdir, [], bus_ports, node_timeout_ms, require_full_coverage)
    try:
        for _ in range(masters * (1 + replicas)):
            node = _start_cluster_node(workdir, node_timeout_ms, require_full_coverage, bus_ports)
            cluster.nodes.append(node)
        join = ["--cluster", "create", *cluster.seeds, "--cluster-replicas", str(replicas), "--cluster-yes"]
        _redis_cli(*join, timeout=60)
        cluster.wait_ok()
    except BaseException:
        cluster.stop()
        raise
    return cluster
