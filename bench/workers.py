"""Benchmark: warm-cache GET -> 302 throughput of ``geofed serve --workers 2`` against ``--workers 1``.

Three servers run at the same time with the configuration of the warm benchmark (three local
endpoints, cache and health intervals of 6 h, access log on, uvloop) and answer the same GET with
the same 302:

* ``1 worker``: ``geofed serve --workers 1``, the plain single process;
* ``2 workers``: ``geofed serve --workers 2``, one ``SO_REUSEPORT`` socket per worker;
* ``2 shared``: the same, with the fallback where both workers accept from one shared socket
  (``geofed.workers.reuse_port_balances`` patched to False). It is here because the choice between
  the two designs rests on this comparison (see the docstring of ``geofed.workers``).

wrk (one thread, 32 connections) drives one server at a time, in rounds whose order rotates, once
with keep-alive and once with ``Connection: close``.

Nothing is pinned, unlike the warm benchmark: two workers need both CPUs of a two-CPU machine, so
wrk shares the CPUs with them, and the one-worker server runs under the same scheduler for a
like-for-like ratio. Each run records the CPU time of every server process (from /proc) and of wrk
(``RUSAGE_CHILDREN``), and, half-way through a keep-alive run, how many of wrk's connections each
worker holds (from /proc: which process has each established socket of the port).

Run with ``.venv/bin/python bench/run.py --only workers`` or ``.venv/bin/python bench/workers.py``.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import shlex
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

if __name__ == "__main__":  # run as a script: make bench.* and tests.infra.* importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.procs import (
    VENV_BIN,
    WRK_TIMEOUT_MARGIN_S,
    WrkResult,
    curl_head_of,
    launch,
    parse_wrk,
    wrk_command,
)
from bench.report import commands_and_problems, median, table
from bench.warm import CONNECTIONS, NEAREST_SITE, SAMPLE_PATH, WarmOptions, _geofed_config
from tests.infra.servers import RunningServer

SERVERS = ("1 worker", "2 workers", "2 shared")
MODES = ("keep-alive", "conn-close")
READY_TIMEOUT_S = 20.0
NOISY_CPUS = 0.1
"""More CPU than this (in CPUs) used by other processes during a run makes the report warn."""
_SERVING = re.compile(r"worker (\d+) serving http://")
_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")  # /proc/<pid>/stat counts CPU time in these ticks
_SHARED_SOCKET = (
    "import geofed.workers as w; w.reuse_port_balances = lambda: False; from geofed.cli import main; main()"
)


@dataclass
class Run:
    """One wrk run against one server, with what each process did meanwhile."""

    wrk: WrkResult
    server_cpu: dict[int, float]
    """CPU seconds per server process (the supervisor too) during the run."""
    wrk_cpu: float
    seconds: float
    connections: list[int]
    """wrk's connections held by each worker half-way through the run."""
    others_cpu: float = 0.0
    """User CPU seconds that other processes used during the run (they make it noisy)."""


@dataclass
class WorkersResults:
    options: WarmOptions
    location: str
    cpus: int
    worker_pids: dict[str, list[int]] = field(default_factory=dict)
    commands: dict[str, str] = field(default_factory=dict)
    runs: dict[str, dict[str, list[Run]]] = field(
        default_factory=lambda: {mode: {name: [] for name in SERVERS} for mode in MODES}
    )
    access_log_lines: int = 0
    requests_2_workers: int = 0
    problems: list[str] = field(default_factory=list)

    def median_rps(self, mode: str, name: str) -> float:
        return median([r.wrk.rps for r in self.runs[mode][name]])

    def ratio(self, mode: str, name: str) -> float:
        return self.median_rps(mode, name) / self.median_rps(mode, "1 worker")

    def paired_ratio(self, mode: str, name: str) -> float:
        """Median over rounds of ``name`` / 1 worker within the same round (close in time)."""
        pairs = zip(self.runs[mode][name], self.runs[mode]["1 worker"], strict=True)
        return median([other.wrk.rps / one.wrk.rps for other, one in pairs])

    def cpu_use(self, mode: str, name: str) -> str:
        """Median CPUs busy during the runs: the workers' total (each worker) | wrk."""
        runs = self.runs[mode][name]
        total = median([sum(r.server_cpu.values()) / r.seconds for r in runs])
        wrk = median([r.wrk_cpu / r.seconds for r in runs])
        pids = self.worker_pids[name]
        each = [median([r.server_cpu.get(pid, 0.0) / r.seconds for r in runs]) for pid in pids]
        split = f" ({' + '.join(f'{c:.2f}' for c in each)})" if len(each) > 1 else ""
        return f"{total:.2f}{split} | {wrk:.2f}"

    def render(self) -> str:
        opts = self.options
        headers = ["server"]
        for mode in MODES:
            headers += [f"{mode} req/s", "rounds (k)", "p50/p99 ms", "CPUs: server | wrk"]
        rows = []
        for name in SERVERS:
            row = [name]
            for mode in MODES:
                runs = self.runs[mode][name]
                row += [
                    f"{self.median_rps(mode, name):,.0f}",
                    " ".join(f"{r.wrk.rps / 1000:.1f}" for r in runs),
                    f"{median([r.wrk.p50_ms for r in runs]):.2f}/{median([r.wrk.p99_ms for r in runs]):.2f}",
                    self.cpu_use(mode, name),
                ]
            rows.append(row)
        title = (
            f"geofed serve --workers 1 / 2 / 2 on a shared socket, warm GET -> 302: wrk -t1 "
            f"-c{CONNECTIONS} -d{opts.duration_s}s, {opts.rounds} rounds (order rotated), medians; "
            f"no pinning, {self.cpus} CPUs"
        )
        lines = [table(headers, rows, title), ""]
        for mode in MODES:
            lines.append(
                f"  {mode:<11} "
                + "   ".join(
                    f"{name} / 1 worker = {self.ratio(mode, name):.2f} "
                    f"(per-round {self.paired_ratio(mode, name):.2f})"
                    for name in SERVERS[1:]
                )
            )
        for name in SERVERS[1:]:
            splits = " ".join("/".join(map(str, r.connections)) for r in self.runs["keep-alive"][name])
            lines.append(
                f"  {name}: wrk's {CONNECTIONS} keep-alive connections per worker, each round: {splits}"
            )
        lines.append("  CPUs: CPU seconds per second of run, of all server processes (each worker) | of wrk")
        others = [
            r.others_cpu / r.seconds for mode in MODES for name in SERVERS for r in self.runs[mode][name]
        ]
        lines.append(
            f"  other processes during the runs (user time): median {median(others):.2f} CPUs, "
            f"most {max(others):.2f}"
            + ("  -- WARNING: busy machine, noisy figures" if max(others) > NOISY_CPUS else "")
        )
        lines.append(
            f"  2 workers' access log: {self.access_log_lines:,} redirect lines for "
            f"{self.requests_2_workers:,} requests wrk counted"
        )
        lines.append(f"  Location: {self.location}")
        lines += commands_and_problems(self.commands, self.problems)
        return "\n".join(lines)


# -- /proc ----------------------------------------------------------------------------------------


def _cpu_seconds(pid: int, user_only: bool = False) -> float:
    """CPU time of ``pid`` so far, user + system or user only (0 once it has gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + (0 if user_only else int(fields[12]))) / _CLOCK_TICKS


def _machine_user_cpu() -> float:
    """User CPU seconds of the whole machine so far (/proc/stat: user + nice)."""
    with open("/proc/stat", encoding="ascii") as stat:
        user, nice = stat.readline().split()[1:3]
    return (int(user) + int(nice)) / _CLOCK_TICKS


def _children_cpu(user_only: bool = False) -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + (0.0 if user_only else usage.ru_stime)


def _connections_held(port: int, pids: Sequence[int]) -> list[int]:
    """How many established sockets of 127.0.0.1:``port`` (server side) each of ``pids`` holds."""
    wanted = f"0100007F:{port:04X}"
    inodes = set()
    with open("/proc/net/tcp", encoding="ascii") as tcp:
        for line in tcp.readlines()[1:]:
            fields = line.split()
            if fields[1] == wanted and fields[3] == "01":  # 01: ESTABLISHED
                inodes.add(f"socket:[{fields[9]}]")
    counts = []
    for pid in pids:
        try:
            targets = [os.readlink(fd) for fd in Path(f"/proc/{pid}/fd").iterdir()]
        except OSError:
            targets = []
        counts.append(sum(1 for target in targets if target in inodes))
    return counts


# -- running --------------------------------------------------------------------------------------


def _wait_workers(output: Path, count: int) -> list[int]:
    """Worker PIDs from their "worker <pid> serving" lines (bounded wait)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        pids = [int(m.group(1)) for m in _SERVING.finditer(output.read_text(errors="replace"))]
        if len(pids) >= count:
            return pids[:count]
        time.sleep(0.05)
    raise RuntimeError(f"fewer than {count} workers serving:\n{output.read_text(errors='replace')}")


def _check(name: str, url: str) -> str:
    answer = curl_head_of(url)
    if answer.status != 302 or f"/_geofed/data/{NEAREST_SITE}/" not in answer.location:
        raise RuntimeError(f"{name} did not redirect to {NEAREST_SITE}: {answer.status}\n{answer.headers}")
    return answer.location


@contextlib.contextmanager
def _servers(work: Path, results: WorkersResults) -> Iterator[dict[str, RunningServer]]:
    config = _geofed_config(work)
    commands = {
        "1 worker": [str(VENV_BIN / "geofed")],
        "2 workers": [str(VENV_BIN / "geofed")],
        "2 shared": [str(VENV_BIN / "python"), "-c", _SHARED_SOCKET],
    }
    with contextlib.ExitStack() as stack:
        servers: dict[str, RunningServer] = {}
        for name in SERVERS:
            count = 1 if name == "1 worker" else 2
            output = work / f"geofed-{name.replace(' ', '-')}.out"

            def argv(port: int, name: str = name, count: int = count) -> list[str]:
                command = [*commands[name], "serve", "--config", str(config), "--port", str(port)]
                command += ["--workers", str(count)]
                results.commands[name] = shlex.join(command)
                return command

            server = launch(f"geofed ({name})", argv, output)
            stack.callback(server.stop)
            results.worker_pids[name] = _wait_workers(output, count) if count > 1 else [server.pid]
            servers[name] = server
        yield servers


def _measure(argv: list[str], duration_s: int, port: int, pids: list[int], workers: list[int]) -> Run:
    """Run wrk; half-way through, sample which worker holds its connections."""
    before = {pid: _cpu_seconds(pid) for pid in pids}
    wrk_before = _children_cpu()
    # Noise: user time spent by anything else (the kernel's network work is system time).
    ours_user_before = sum(_cpu_seconds(pid, user_only=True) for pid in pids) + _children_cpu(True)
    machine_user_before = _machine_user_cpu()
    started = time.monotonic()
    with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) as process:
        time.sleep(duration_s / 2)
        connections = _connections_held(port, workers)
        out, err = process.communicate(timeout=duration_s + WRK_TIMEOUT_MARGIN_S)
    if process.returncode != 0:
        raise RuntimeError(f"wrk failed ({process.returncode}): {err or out}")
    seconds = time.monotonic() - started
    cpu = {pid: _cpu_seconds(pid) - before[pid] for pid in pids}
    wrk_cpu = _children_cpu() - wrk_before
    ours_user = sum(_cpu_seconds(pid, user_only=True) for pid in pids) + _children_cpu(True)
    others = (_machine_user_cpu() - machine_user_before) - (ours_user - ours_user_before)
    return Run(parse_wrk(out), cpu, wrk_cpu, seconds, connections, others)


def run_workers(work: Path, options: WarmOptions, log: Callable[[str], None]) -> WorkersResults:
    """Measure; every process started here is stopped (by PID) before this returns."""
    results = WorkersResults(options, location="", cpus=len(os.sched_getaffinity(0)))
    with _servers(work, results) as servers:
        urls = {name: server.url + SAMPLE_PATH for name, server in servers.items()}
        for name, url in urls.items():
            results.location = _check(name, url)
        shown = wrk_command("URL", connections=CONNECTIONS, duration_s=options.duration_s, close=False)
        results.commands["wrk"] = shlex.join(shown) + "   (conn-close adds -H 'Connection: close')"
        for mode in MODES:
            close = mode == "conn-close"
            for name in SERVERS:  # unrecorded warm-up; it also warms every worker's own cache
                argv = wrk_command(
                    urls[name], connections=CONNECTIONS, duration_s=options.warmup_s, close=close
                )
                warmup = _measure(argv, options.warmup_s, servers[name].port, [], [])
                if name == "2 workers":
                    results.requests_2_workers += warmup.wrk.requests
            for round_no in range(options.rounds):
                shift = round_no % len(SERVERS)
                for name in SERVERS[shift:] + SERVERS[:shift]:
                    server = servers[name]
                    workers = results.worker_pids[name]
                    pids = sorted({server.pid, *workers})
                    argv = wrk_command(
                        urls[name], connections=CONNECTIONS, duration_s=options.duration_s, close=close
                    )
                    run = _measure(argv, options.duration_s, server.port, pids, workers)
                    results.runs[mode][name].append(run)
                    log(
                        f"  workers {mode:<10} round {round_no + 1}/{options.rounds} {name:<9} "
                        f"{run.wrk.rps:>9,.0f} req/s  connections {'/'.join(map(str, run.connections))}"
                    )
                    if not run.wrk.clean:
                        results.problems.append(
                            f"{mode} {name} round {round_no + 1}: {run.wrk.socket_errors} socket errors, "
                            f"{run.wrk.non_3xx} non-2xx/3xx answers"
                        )
        for name, url in urls.items():  # still right after the load, and nothing died?
            try:
                _check(name, url)
            except RuntimeError as exc:
                results.problems.append(f"after the load: {exc}")
            if any(_cpu_seconds(pid) == 0.0 for pid in results.worker_pids[name]):
                results.problems.append(f"{name}: a worker is gone ({results.worker_pids[name]})")
    # The servers have stopped; their access logs are flushed.
    marker = f" GET {SAMPLE_PATH} 302 redirect {NEAREST_SITE} "
    with (work / "geofed-2-workers.out").open(encoding="utf-8", errors="replace") as out:
        results.access_log_lines = sum(1 for line in out if marker in line)
    measured = [run for mode in MODES for run in results.runs[mode]["2 workers"]]
    results.requests_2_workers += sum(run.wrk.requests for run in measured)
    return results


if __name__ == "__main__":
    from bench.main import main

    sys.exit(main(["--only", "workers", *sys.argv[1:]]))
