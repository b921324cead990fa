"""``geofed serve --workers N`` as real processes: a supervisor and its forked workers on one port.

Each test starts the real command (``.venv/bin/geofed serve --workers 2 --config <yaml>``) in its
own session on a free loopback port, with two local endpoints in the test's folder, and talks to it
over TCP. Linux's /proc tells which process holds which socket: the listening sockets (one per
worker, in a ``SO_REUSEPORT`` group, each also held by the supervisor) and the accepted connections,
so a test knows which worker answered each of its kept-open connections. The fallback where the
workers share one socket is run too (where a frozen worker -- SIGSTOP -- leaves the other to
accept everything). Every process is stopped by PID (the supervisor, then its session as a last
resort), never by name.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
import yaml

from geofed.endpoints.local import UPLOAD_PREFIX
from geofed.workers import RestartBudget
from tests.infra.policies import OPEN_POLICY
from tests.infra.servers import LOOPBACK, free_port

pytestmark = pytest.mark.integration

READY_TIMEOUT_S = 20.0
STOP_BOUND_S = 20.0
"""A supervisor must be gone this long after SIGTERM (workers' 10 s shutdown timeout + cleanup)."""
SAMPLE = "/data/sample.txt"
_SERVING = re.compile(r"worker (\d+) serving http://")


def _geofed_argv() -> list[str]:
    script = Path(sys.executable).with_name("geofed")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from geofed.cli import main; main()"]


def _write_config(tmp: Path) -> tuple[Path, dict[str, Path]]:
    """Two writable local endpoints (Geneva, Vancouver) holding SAMPLE; returns (yaml, site folders)."""
    sites = {"geneva": tmp / "sites" / "geneva", "vancouver": tmp / "sites" / "vancouver"}
    coordinates = {"geneva": (46.23, 6.05), "vancouver": (49.25, -123.23)}
    for name, folder in sites.items():
        target = folder / SAMPLE.lstrip("/")
        target.parent.mkdir(parents=True)
        target.write_text(f"sample at {name}\n", encoding="utf-8")
    config = {
        "server": {"host": LOOPBACK, "port": 0},  # the port comes from --port
        "signing": {"secret": secrets.token_urlsafe(32), "url_lifetime": "10m"},
        "auth": OPEN_POLICY,
        "health": {"interval": "60s", "timeout": "3s"},
        "client_networks": [{"cidr": "127.0.0.0/8", "location": {"lat": 46.2, "lon": 6.1}}],
        "endpoints": [
            {
                "name": name,
                "kind": "local",
                "url": folder.resolve().as_uri(),
                "writable": True,
                "location": {"lat": coordinates[name][0], "lon": coordinates[name][1]},
            }
            for name, folder in sites.items()
        ],
    }
    path = tmp / "geofed.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path, sites


# -- /proc ----------------------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    """Whether ``pid`` exists and is not a zombie."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return False
    return stat.rpartition(")")[2].split()[0] != "Z"


def _children(pid: int) -> set[int]:
    """Live processes whose parent is ``pid`` (from /proc/*/stat)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        if int(fields[1]) == pid and fields[0] != "Z":
            found.add(int(entry.name))
    return found


def _inodes(port: int, state: str) -> set[str]:
    """Inodes of the sockets on 127.0.0.1:``port`` (local side) in ``state`` (0A listen, 01 established)."""
    wanted = f"0100007F:{port:04X}"
    return {
        fields[9]
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]
        if (fields := line.split())[1] == wanted and fields[3] == state
    }


def _held(pid: int, inodes: set[str]) -> set[str]:
    """Which of the socket ``inodes`` process ``pid`` holds among its open files."""
    try:
        targets = {os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()}
    except OSError:
        return set()
    return {inode for inode in inodes if f"socket:[{inode}]" in targets}


def _listening(port: int, pids: list[int]) -> dict[int, set[str]]:
    """The listening sockets of the port that each of ``pids`` holds."""
    inodes = _inodes(port, "0A")
    return {pid: _held(pid, inodes) for pid in pids}


# -- the server under test ------------------------------------------------------------------------


@dataclass
class Served:
    """A running ``geofed serve --workers N`` that this test started."""

    process: subprocess.Popen[bytes]
    port: int
    output: Path
    sites: dict[str, Path]

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def url(self) -> str:
        return f"http://{LOOPBACK}:{self.port}"

    def log(self) -> str:
        return self.output.read_text(errors="replace")

    def serving_pids(self) -> list[int]:
        """Worker PIDs in the order they logged "worker <pid> serving"."""
        return [int(m.group(1)) for m in _SERVING.finditer(self.log())]

    def wait_serving(self, count: int, timeout: float = READY_TIMEOUT_S) -> list[int]:
        """Wait (bounded) until ``count`` workers have logged that they serve; their PIDs."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            pids = self.serving_pids()
            if len(pids) >= count:
                return pids
            assert self.process.poll() is None, f"geofed exited ({self.process.returncode}):\n{self.log()}"
            time.sleep(0.05)
        raise AssertionError(f"fewer than {count} workers serving after {timeout:.0f} s:\n{self.log()}")

    def stop(self) -> None:
        """SIGTERM the supervisor; if it is still there after the bound, SIGKILL its session."""
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            try:
                self.process.wait(STOP_BOUND_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.pid, signal.SIGKILL)  # its own session: only what it forked
                self.process.wait(5)


# The same command, with the fallback of platforms where SO_REUSEPORT does not balance.
_SHARED_SOCKET = [
    sys.executable,
    "-c",
    "import geofed.workers as w; w.reuse_port_balances = lambda: False; from geofed.cli import main; main()",
]


@contextlib.contextmanager
def serve(tmp_path: Path, workers: int = 2, *, shared: bool = False) -> Iterator[Served]:
    config, sites = _write_config(tmp_path)
    last = ""
    for _attempt in range(3):
        port = free_port()
        output = tmp_path / f"geofed-{port}.out"
        command = _SHARED_SOCKET if shared else _geofed_argv()
        argv = [*command, "serve", "--workers", str(workers), "--config", str(config)]
        with output.open("wb") as out:
            process = subprocess.Popen(
                [*argv, "--port", str(port)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        served = Served(process, port, output, sites)
        try:
            if workers > 1:
                served.wait_serving(workers)
            else:
                _wait_accepting(served)
        except AssertionError:
            served.stop()
            last = served.log()
            if "address already in use" in last.lower():
                continue
            raise
        try:
            yield served
        finally:
            served.stop()
        return
    raise AssertionError(f"no free port after 3 attempts:\n{last}")


def _wait_accepting(served: Served) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        assert served.process.poll() is None, f"geofed exited:\n{served.log()}"
        with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, served.port), timeout=0.5):
            return
        time.sleep(0.05)
    raise AssertionError(f"geofed did not listen within {READY_TIMEOUT_S:.0f} s:\n{served.log()}")


def get(served: Served, path: str = SAMPLE) -> tuple[int, str, bytes]:
    """GET on a fresh connection (``Connection: close``): status, Location, body."""
    connection = http.client.HTTPConnection(LOOPBACK, served.port, timeout=10)
    try:
        connection.request("GET", path, headers={"Connection": "close"})
        response = connection.getresponse()
        return response.status, response.getheader("Location") or "", response.read()
    finally:
        connection.close()


def get_redirected(served: Served) -> str:
    """GET SAMPLE, check it is a 302 to the Geneva data route, follow it; the body."""
    status, location, _ = get(served)
    assert status == 302, (status, served.log())
    assert location.startswith(f"{served.url}/_geofed/data/geneva{SAMPLE}?"), location
    status, _, body = get(served, location.removeprefix(served.url))
    assert status == 200, status
    return body.decode()


@contextlib.contextmanager
def kept_open(served: Served, count: int = 16) -> Iterator[list[http.client.HTTPConnection]]:
    """``count`` new connections, each answered 302 once and then kept open."""
    connections = []
    try:
        for _ in range(count):
            connection = http.client.HTTPConnection(LOOPBACK, served.port, timeout=10)
            connections.append(connection)
            connection.request("GET", SAMPLE)
            response = connection.getresponse()
            response.read()
            assert response.status == 302, (response.status, served.log())
        yield connections
    finally:
        for connection in connections:
            connection.close()


def answered_by(served: Served, workers: list[int]) -> dict[int, int]:
    """How many of the port's established connections each worker holds."""
    inodes = _inodes(served.port, "01")
    return {pid: len(_held(pid, inodes)) for pid in workers}


@contextlib.contextmanager
def only(worker: int, others: list[int]) -> Iterator[None]:
    """Freeze every worker but ``worker`` (SIGSTOP), so that only it can accept connections."""
    frozen = [pid for pid in others if pid != worker]
    for pid in frozen:
        os.kill(pid, signal.SIGSTOP)
    try:
        yield
    finally:
        for pid in frozen:
            os.kill(pid, signal.SIGCONT)


def _curl() -> str:
    found = shutil.which("curl")
    if found is None:
        pytest.fail("curl is not installed: run scripts/install-test-deps.sh", pytrace=False)
    return found


# -- tests ----------------------------------------------------------------------------------------


def test_two_workers_each_with_its_own_socket_both_answer(tmp_path: Path) -> None:
    with serve(tmp_path) as served:
        workers = served.serving_pids()
        assert len(set(workers)) == 2, served.log()
        assert served.pid not in workers
        assert _children(served.pid) == set(workers)
        # One listening socket per worker (a SO_REUSEPORT group); the supervisor holds both.
        listening = _listening(served.port, [served.pid, *workers])
        assert [len(listening[pid]) for pid in workers] == [1, 1], listening
        assert listening[workers[0]] != listening[workers[1]]
        assert listening[served.pid] == listening[workers[0]] | listening[workers[1]]
        # The kernel spreads new connections over both: each worker answered some of these.
        with kept_open(served) as connections:
            held = answered_by(served, workers)
            assert sum(held.values()) == len(connections), held
            assert min(held.values()) >= 1, held  # all 16 on one worker: a 2 x 2**-16 chance
        for _ in range(4):  # a redirect signed by one worker is honoured by whichever serves it
            assert get_redirected(served) == "sample at geneva\n"
        os.kill(served.pid, signal.SIGTERM)
        assert served.process.wait(STOP_BOUND_S) == 0, served.log()
        log = served.log()  # complete now: each worker flushed its access log as it stopped
        assert len(re.findall(r"open http://", log)) == 1, log  # the URL is printed once
        assert f"open {served.url}/" in log
        assert "(a SO_REUSEPORT socket each)" in log
        assert log.count(f" GET {SAMPLE} 302 redirect geneva ") == 20, log


def test_shared_socket_fallback_both_workers_answer(tmp_path: Path) -> None:
    with serve(tmp_path, shared=True) as served:
        workers = served.serving_pids()
        assert _children(served.pid) == set(workers)
        # One listening socket, held by the supervisor and both workers.
        listening = _listening(served.port, [served.pid, *workers])
        assert len(listening[served.pid]) == 1 and len(set(map(frozenset, listening.values()))) == 1
        # Each worker on its own (the other frozen, so it cannot accept) answers and serves.
        for worker in workers:
            with only(worker, workers):
                for _ in range(3):
                    assert get_redirected(served) == "sample at geneva\n"
        os.kill(served.pid, signal.SIGTERM)
        assert served.process.wait(STOP_BOUND_S) == 0, served.log()
        assert "(one shared socket)" in served.log()


def test_a_second_geofed_on_the_same_port_is_refused(tmp_path: Path) -> None:
    with serve(tmp_path) as served:
        config = tmp_path / "geofed.yaml"
        for workers in ("2", "1"):
            # (SO_REUSEPORT alone would let a second group join the first one's port)
            argv = [*_geofed_argv(), "serve", "--workers", workers, "--config", str(config)]
            second = subprocess.run(
                [*argv, "--port", str(served.port)], capture_output=True, text=True, timeout=30, check=False
            )
            assert second.returncode != 0, second
            assert "address already in use" in (second.stdout + second.stderr).lower(), second
        assert len(_inodes(served.port, "0A")) == 2  # still only the first one's two sockets
        assert get(served)[0] == 302


def test_sigterm_finishes_in_flight_request_and_refuses_new_connections(tmp_path: Path) -> None:
    with serve(tmp_path) as served:
        workers = served.serving_pids()
        # An idle kept-alive connection must not hold the shutdown up: it is closed at once.
        idle = http.client.HTTPConnection(LOOPBACK, served.port, timeout=10)
        idle.request("GET", SAMPLE)
        assert idle.getresponse().read() == b"" and idle.sock is not None
        source = tmp_path / "upload.bin"
        data = secrets.token_bytes(400_000)
        source.write_bytes(data)
        # A PUT through geofed: a 307 at "Expect: 100-continue", then the body streamed slowly to
        # the data route (400 kB at 100 kB/s: about 4 s in flight).
        upload = subprocess.Popen(
            [
                _curl(),
                "--silent",
                "--show-error",
                "--location",
                "--max-time",
                "30",
                "--upload-file",
                str(source),
                "--limit-rate",
                "100K",
                "--header",
                "Expect: 100-continue",
                "--output",
                os.devnull,
                "--write-out",
                "%{http_code}",
                f"{served.url}/data/upload.bin",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            # The upload is in flight once its hidden temporary file exists on an endpoint.
            folders = [site / "data" for site in served.sites.values()]
            deadline = time.monotonic() + 10
            while not any(p.name.startswith(UPLOAD_PREFIX) for f in folders for p in f.iterdir()):
                assert time.monotonic() < deadline, f"the upload never started:\n{served.log()}"
                assert upload.poll() is None, upload.communicate()
                time.sleep(0.02)
            stopped_at = time.monotonic()
            os.kill(served.pid, signal.SIGTERM)
            # New connections are refused while the upload is still running.
            deadline = stopped_at + 3
            while True:
                try:
                    with socket.create_connection((LOOPBACK, served.port), timeout=1):
                        pass
                except ConnectionRefusedError:
                    break
                assert time.monotonic() < deadline, f"still accepting after SIGTERM:\n{served.log()}"
                time.sleep(0.02)
            assert upload.poll() is None, "the upload ended before new connections were refused"
            assert idle.sock.recv(1) == b"", "the idle connection was not closed"
            out, err = upload.communicate(timeout=30)
            uploaded_at = time.monotonic()
        finally:
            idle.close()
            if upload.poll() is None:
                upload.kill()
                upload.wait()
        assert upload.returncode == 0, err.decode()
        assert out.decode() == "201", (out, err, served.log())
        stored = [site / "data" / "upload.bin" for site in served.sites.values()]
        assert [p.read_bytes() == data for p in stored if p.exists()] == [True], served.log()
        # Everything exits, cleanly, soon after the last request (not at the shutdown timeout).
        assert served.process.wait(STOP_BOUND_S) == 0, served.log()
        assert time.monotonic() - uploaded_at < 3, served.log()
        assert uploaded_at - stopped_at > 1  # the upload really was in flight for a while
        assert not any(_alive(pid) for pid in workers)
        log = served.log()
        for worker in workers:
            assert f"worker {worker} stopped" in log, log
        assert " PUT /_geofed/data/" in log and " 201 data " in log, log  # the access log was flushed


def test_killed_worker_is_replaced_and_the_port_keeps_answering(tmp_path: Path) -> None:
    with serve(tmp_path) as served:
        first, second = served.serving_pids()
        (socket_of_first,) = _listening(served.port, [first])[first]
        os.kill(first, signal.SIGKILL)
        # No request fails while the worker is down and replaced: connections hashed to its socket
        # wait in that socket's queue (the supervisor keeps it open) for the replacement.
        deadline = time.monotonic() + 1.0
        while time.monotonic() < deadline:
            assert get(served)[0] == 302
        pids = served.wait_serving(3, timeout=10)
        replacement = pids[2]
        assert replacement not in (first, second)
        assert f"worker {first} exited unexpectedly (killed by SIGKILL); restarting it" in served.log()
        assert not _alive(first)
        assert _children(served.pid) == {second, replacement}
        # The replacement took over the dead worker's socket, and answers on it.
        assert _listening(served.port, [replacement])[replacement] == {socket_of_first}
        with kept_open(served):
            held = answered_by(served, [second, replacement])
            assert min(held.values()) >= 1, held
        assert get_redirected(served) == "sample at geneva\n"
        os.kill(served.pid, signal.SIGTERM)
        assert served.process.wait(STOP_BOUND_S) == 0, served.log()


def test_supervisor_gives_up_when_workers_keep_dying(tmp_path: Path) -> None:
    with serve(tmp_path) as served:
        killed: set[int] = set()
        deadline = time.monotonic() + 30
        while served.process.poll() is None:
            assert time.monotonic() < deadline, f"the supervisor never gave up:\n{served.log()}"
            for pid in _children(served.pid) - killed:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
                killed.add(pid)
            time.sleep(0.02)
        assert served.process.returncode == 1, served.log()
        assert "giving up" in served.log()
        assert not any(_alive(pid) for pid in killed)


def test_ctrl_c_to_the_process_group_stops_everything_cleanly(tmp_path: Path) -> None:
    with serve(tmp_path) as served:
        workers = served.serving_pids()
        assert get(served)[0] == 302
        os.killpg(served.pid, signal.SIGINT)  # what a terminal's Ctrl-C does: every process gets it
        assert served.process.wait(STOP_BOUND_S) == 0, served.log()
        assert not any(_alive(pid) for pid in workers)
        log = served.log()
        assert "SIGINT received, stopping 2 workers" in log, log
        for worker in workers:
            assert f"worker {worker} stopped" in log, log


def test_workers_stop_by_themselves_when_the_supervisor_is_killed(tmp_path: Path) -> None:
    with serve(tmp_path) as served:
        workers = served.serving_pids()
        os.kill(served.pid, signal.SIGKILL)
        served.process.wait(5)
        deadline = time.monotonic() + 5  # the orphan check runs every second
        while any(_alive(pid) for pid in workers):
            assert time.monotonic() < deadline, f"orphaned workers still running:\n{served.log()}"
            time.sleep(0.05)
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection((LOOPBACK, served.port), timeout=1).close()
        log = served.log()
        for worker in workers:
            assert f"worker {worker}: supervisor {served.pid} has gone; stopping" in log, log
            assert f"worker {worker} stopped" in log, log


def test_one_worker_is_the_plain_single_process(tmp_path: Path) -> None:
    with serve(tmp_path, workers=1) as served:
        assert get_redirected(served) == "sample at geneva\n"
        assert _children(served.pid) == set()
        assert len(_listening(served.port, [served.pid])[served.pid]) == 1
        assert "supervisor" not in served.log()
        os.kill(served.pid, signal.SIGTERM)
        assert served.process.wait(STOP_BOUND_S) == 0


def test_restart_budget_backs_off_and_runs_out() -> None:
    budget = RestartBudget(limit=3, window=10.0, first_backoff=0.5, max_backoff=0.75)
    assert [budget.take(100.0) for _ in range(4)] == [0.0, 0.5, 0.75, None]
    assert budget.take(109.9) is None  # all three still within the window
    assert budget.take(110.0) == 0.0  # the window has passed: a fresh budget
