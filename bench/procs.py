"""Processes the benchmarks start: launching on a free loopback port, CPU pinning, wrk, curl.

Every server is our direct child in its own session, started on 127.0.0.1 and stopped by its PID
through :class:`tests.infra.servers.RunningServer` (never by name). Readiness is a bounded poll.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.infra.servers import LOOPBACK, RunningServer, free_port

ROOT = Path(__file__).resolve().parent.parent
VENV_BIN = ROOT / ".venv" / "bin"
READY_TIMEOUT_S = 20.0
READY_POLL_S = 0.05
START_ATTEMPTS = 3
WRK_TIMEOUT_MARGIN_S = 30.0


def require(name: str) -> str:
    """The path of an executable (also looked up in /usr/sbin), or a clear error."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if found is None:
        raise RuntimeError(f"{name} is not installed (scripts/install-test-deps.sh installs it)")
    return found


@dataclass(frozen=True)
class Pinning:
    """Which CPU the servers run on and which one wrk runs on (None: no pinning)."""

    server_cpu: int | None
    client_cpu: int | None

    @staticmethod
    def detect() -> Pinning:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) >= 2 and shutil.which("taskset"):
            return Pinning(server_cpu=cpus[-1], client_cpu=cpus[0])
        return Pinning(None, None)

    def server(self, argv: Sequence[str]) -> list[str]:
        return _pinned(self.server_cpu, argv)

    def client(self, argv: Sequence[str]) -> list[str]:
        return _pinned(self.client_cpu, argv)

    def describe(self) -> str:
        if self.server_cpu is None:
            return "none (fewer than 2 CPUs or no taskset)"
        return f"servers on CPU {self.server_cpu}, wrk on CPU {self.client_cpu} (taskset)"


def _pinned(cpu: int | None, argv: Sequence[str]) -> list[str]:
    # taskset execs the command, so the PID we hold is the server's own.
    return list(argv) if cpu is None else ["taskset", "-c", str(cpu), *argv]


@contextlib.contextmanager
def shared_tmpdir(prefix: str) -> Iterator[Path]:
    """A 0755 temporary folder (nginx workers run as www-data when we are root), removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix=prefix))
    os.chmod(base, 0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _accepts(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5):
            return True
    except OSError:
        return False


def launch(
    name: str, build: Callable[[int], list[str]], output: Path, ready_timeout: float = READY_TIMEOUT_S
) -> RunningServer:
    """Start ``build(port)`` on a free port; wait (bounded) until it accepts; retry if the port was taken.

    stdout and stderr go to ``output``, which is shown when the server fails to start.
    """
    last = ""
    for _ in range(START_ATTEMPTS):
        port = free_port()
        argv = build(port)
        with output.open("wb") as out:
            process = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        server = RunningServer(
            name=name, url=f"http://{LOOPBACK}:{port}", port=port, pid=process.pid, process=process,
            log_paths=(output,),
        )  # fmt: skip
        deadline = time.monotonic() + ready_timeout
        while process.poll() is None and time.monotonic() < deadline:
            if _accepts(port):
                return server
            time.sleep(READY_POLL_S)
        server.stop()
        last = server.logs()
        if "address already in use" not in last.lower():
            break
    raise RuntimeError(f"{name} did not start listening on {LOOPBACK}:{port}:\n{last}")


# -- curl ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class CurlAnswer:
    status: int
    location: str
    headers: str


def curl_head_of(url: str) -> CurlAnswer:
    """GET ``url`` with curl (no redirect following); the status, Location and raw headers."""
    proc = subprocess.run(
        [require("curl"), "-sS", "-o", "/dev/null", "-D", "-", "--max-time", "10", url],
        capture_output=True,
        text=True,
        timeout=20,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"curl {url} failed: {proc.stderr.strip()}")
    lines = proc.stdout.splitlines()  # text mode already turned CRLF into LF
    status = int(lines[0].split()[1])
    location = ""
    for line in lines[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == "location":
            location = value.strip()
    return CurlAnswer(status, location, proc.stdout)


# -- wrk ----------------------------------------------------------------------------------------

_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0, "m": 60000.0}


def _ms(text: str) -> float:
    match = re.fullmatch(r"([\d.]+)(us|ms|s|m)", text)
    if match is None:
        raise ValueError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * _UNITS[match.group(2)]


@dataclass(frozen=True)
class WrkResult:
    requests: int
    rps: float
    p50_ms: float
    p99_ms: float
    socket_errors: int
    non_3xx: int

    @property
    def clean(self) -> bool:
        return self.socket_errors == 0 and self.non_3xx == 0 and self.requests > 0


def wrk_command(url: str, *, connections: int, duration_s: int, close: bool) -> list[str]:
    argv = [require("wrk"), "-t1", f"-c{connections}", f"-d{duration_s}s", "--latency"]
    if close:
        argv += ["-H", "Connection: close"]
    return [*argv, url]


def run_wrk(argv: Sequence[str], duration_s: int) -> WrkResult:
    proc = subprocess.run(
        list(argv),
        capture_output=True,
        text=True,
        timeout=duration_s + WRK_TIMEOUT_MARGIN_S,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr or proc.stdout}")
    return parse_wrk(proc.stdout)


def parse_wrk(text: str) -> WrkResult:
    def find(pattern: str) -> re.Match[str]:
        match = re.search(pattern, text, re.MULTILINE)
        if match is None:
            raise ValueError(f"unexpected wrk output (no {pattern!r}):\n{text}")
        return match

    errors = 0
    if found := re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text):
        errors = sum(int(x) for x in found.groups())
    non_3xx = 0
    if found := re.search(r"Non-2xx or 3xx responses: (\d+)", text):
        non_3xx = int(found.group(1))
    return WrkResult(
        requests=int(find(r"^\s*(\d+) requests in").group(1)),
        rps=float(find(r"^Requests/sec:\s*([\d.]+)").group(1)),
        p50_ms=_ms(find(r"^\s*50%\s+(\S+)").group(1)),
        p99_ms=_ms(find(r"^\s*99%\s+(\S+)").group(1)),
        socket_errors=errors,
        non_3xx=non_3xx,
    )
