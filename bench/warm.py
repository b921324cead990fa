"""Benchmark 1: warm-cache GET -> 302 throughput of geofed against bare aiohttp and nginx.

Three servers, each one process on the same pinned CPU, answer the same GET with a 302:

* ``geofed serve`` with three local endpoints holding one sample file (access log on, uvloop);
* ``bench/bare_aiohttp.py``: a fixed 302 on the same stack (aiohttp + uvloop, access_log=None);
* nginx, ``worker_processes 1``, ``return 302`` to the same Location, ``access_log off``.

The references answer with geofed's own Location string, so the Location is the same length.
wrk (one thread, 32 connections) runs on the other CPU, in rounds whose server order rotates, once
with keep-alive and once with ``Connection: close`` (a new TCP connection per request).
"""

from __future__ import annotations

import contextlib
import secrets
import shlex
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bench.procs import (
    VENV_BIN,
    Pinning,
    WrkResult,
    curl_head_of,
    launch,
    require,
    run_wrk,
    wrk_command,
)
from bench.report import commands_and_problems, median, table, verdict
from tests.infra.servers import LOOPBACK, RunningServer

SAMPLE_PATH = "/bench/sample.dat"
CONNECTIONS = 32
TARGET_VS_AIOHTTP = 0.75
# Endpoint name -> (lat, lon): three far-apart sites; the client is placed next to the first.
SITES = {
    "geneva": (46.2330, 6.0557),
    "vancouver": (49.2480, -123.2320),
    "melbourne": (-37.8136, 144.9631),
}
CLIENT_LOCATION = {"lat": 46.20, "lon": 6.14}
NEAREST_SITE = "geneva"
SERVERS = ("geofed", "bare-aiohttp", "nginx")
MODES = ("keep-alive", "conn-close")


@dataclass(frozen=True)
class WarmOptions:
    duration_s: int
    rounds: int
    warmup_s: int


@dataclass
class WarmResults:
    options: WarmOptions
    pinning: str
    location: str
    geofed_headers: str
    commands: dict[str, str] = field(default_factory=dict)
    runs: dict[str, dict[str, list[WrkResult]]] = field(
        default_factory=lambda: {mode: {name: [] for name in SERVERS} for mode in MODES}
    )
    access_log_lines: int = 0
    geofed_requests: int = 0
    problems: list[str] = field(default_factory=list)

    def median_rps(self, mode: str, name: str) -> float:
        return median([r.rps for r in self.runs[mode][name]])

    def median_p50(self, mode: str, name: str) -> float:
        return median([r.p50_ms for r in self.runs[mode][name]])

    def median_p99(self, mode: str, name: str) -> float:
        return median([r.p99_ms for r in self.runs[mode][name]])

    def ratio(self, mode: str, reference: str) -> float:
        return self.median_rps(mode, "geofed") / self.median_rps(mode, reference)

    def paired_ratio(self, mode: str, reference: str) -> float:
        """Median over rounds of geofed / reference within the same round (run close in time)."""
        runs = self.runs[mode]
        pairs = zip(runs["geofed"], runs[reference], strict=True)
        return median([g.rps / r.rps for g, r in pairs])

    def render(self) -> str:
        opts = self.options
        rows: list[list[str]] = []
        for name in SERVERS:
            row = [name]
            for mode in MODES:
                runs = self.runs[mode][name]
                row += [
                    f"{self.median_rps(mode, name):,.0f}",
                    " ".join(f"{r.rps / 1000:.1f}k" for r in runs),
                    f"{self.median_p50(mode, name):.2f}",
                    f"{self.median_p99(mode, name):.2f}",
                ]
            rows.append(row)
        headers = ["server"]
        for mode in MODES:
            headers += [f"{mode} req/s", "rounds", "p50 ms", "p99 ms"]
        title = (
            f"Warm GET -> 302: wrk -t1 -c{CONNECTIONS} -d{opts.duration_s}s, {opts.rounds} rounds "
            f"(order rotated), medians; pinning: {self.pinning}"
        )
        lines = [table(headers, rows, title), ""]
        for mode in MODES:
            vs_bare = self.ratio(mode, "bare-aiohttp")
            vs_nginx = self.ratio(mode, "nginx")
            lines.append(
                f"  {mode:<11} geofed/bare-aiohttp = {vs_bare:.2f} "
                f"(per-round {self.paired_ratio(mode, 'bare-aiohttp'):.2f}; "
                f"{verdict(vs_bare, TARGET_VS_AIOHTTP, higher_is_better=True)})   "
                f"geofed/nginx = {vs_nginx:.2f} (per-round {self.paired_ratio(mode, 'nginx'):.2f})"
            )
        for mode in MODES:
            cost = {name: 1e6 / self.median_rps(mode, name) for name in SERVERS}
            lines.append(
                f"  {mode:<11} time per request at saturation (1 / req/s, one server core): "
                + ", ".join(f"{name} {us:.1f} us" for name, us in cost.items())
                + f" -> geofed's own work ~{cost['geofed'] - cost['bare-aiohttp']:.1f} us/request"
            )
        lines.append("")
        lines.append(
            f"  Location (all three servers, {len(self.location)} chars): {self.location}\n"
            "  geofed also sends a Link header with the two other replicas (see geofed_headers in --json)"
        )
        lines.append(
            f"  geofed access log: {self.access_log_lines:,} redirect lines for {self.geofed_requests:,} "
            "requests wrk counted (the log is on, as in production)"
        )
        lines += commands_and_problems(self.commands, self.problems)
        return "\n".join(lines)


def _geofed_config(work: Path) -> Path:
    endpoints = []
    for name, (lat, lon) in SITES.items():
        site = work / "sites" / name
        target = site / SAMPLE_PATH.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"geofed benchmark sample\n" * 64)
        endpoints.append(
            {
                "name": name,
                "kind": "local",
                "url": site.resolve().as_uri(),
                "location": {"lat": lat, "lon": lon},
            }
        )
    config = {
        "server": {"host": LOOPBACK, "port": 0},  # the real port is given on the command line
        "signing": {"secret": secrets.token_urlsafe(32), "url_lifetime": "10m"},
        # The cache must stay warm for the whole run (default ttl 5 min); probes must not interfere.
        "cache": {"ttl": "6h"},
        "health": {"interval": "6h", "timeout": "5s"},
        "client_networks": [{"cidr": "127.0.0.0/8", "location": CLIENT_LOCATION}],
        "endpoints": endpoints,
    }
    path = work / "geofed.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


def _nginx_config(work: Path, port: int, location: str) -> Path:
    temp = work / "nginx-temp"
    temp.mkdir(exist_ok=True)
    escaped = location.replace("\\", "\\\\").replace('"', '\\"')
    text = f"""# generated by bench/warm.py: a fixed 302, nothing else
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {temp}/body;
  proxy_temp_path {temp}/proxy;
  fastcgi_temp_path {temp}/fastcgi;
  uwsgi_temp_path {temp}/uwsgi;
  scgi_temp_path {temp}/scgi;
  keepalive_requests 100000000;
  server {{
    listen {LOOPBACK}:{port};
    location / {{ return 302 "{escaped}"; }}
  }}
}}
"""
    path = work / "nginx.conf"
    path.write_text(text, encoding="utf-8")
    return path


def _verify_302(name: str, url: str, location: str) -> str:
    answer = curl_head_of(url)
    if answer.status != 302:
        raise RuntimeError(f"{name} answered {answer.status} instead of 302 to {url}:\n{answer.headers}")
    # geofed signs with an expiry time, so only the part before the query string is fixed.
    same = answer.location.split("?")[0] == location.split("?")[0] if name == "geofed" else None
    if not (same if same is not None else answer.location == location):
        raise RuntimeError(f"{name} redirected to {answer.location!r}, expected {location!r}")
    return answer.headers


@contextlib.contextmanager
def _servers(work: Path, pin: Pinning) -> Iterator[tuple[dict[str, RunningServer], str, str, dict[str, str]]]:
    """Start the three servers; yield them, geofed's Location and headers, and their commands."""
    commands: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        config = _geofed_config(work)

        def geofed_argv(port: int) -> list[str]:
            argv = [str(VENV_BIN / "geofed"), "serve", "--config", str(config), "--port", str(port)]
            commands["geofed"] = shlex.join(argv)
            return pin.server(argv)

        geofed = launch("geofed", geofed_argv, work / "geofed.out")
        stack.callback(geofed.stop)
        # This first request also warms geofed's cache (locate on the three local endpoints).
        first = curl_head_of(geofed.url + SAMPLE_PATH)
        if first.status != 302 or f"/_geofed/data/{NEAREST_SITE}/" not in first.location:
            raise RuntimeError(
                f"geofed did not redirect to {NEAREST_SITE}: {first.status}\n{first.headers}\n{geofed.logs()}"
            )
        location = first.location
        headers = _verify_302("geofed", geofed.url + SAMPLE_PATH, location)

        def bare_argv(port: int) -> list[str]:
            script = Path(__file__).with_name("bare_aiohttp.py")
            argv = [sys.executable, str(script), "--port", str(port), "--location", location]
            commands["bare-aiohttp"] = shlex.join(argv)
            return pin.server(argv)

        bare = launch("bare-aiohttp", bare_argv, work / "bare.out")
        stack.callback(bare.stop)

        def nginx_argv(port: int) -> list[str]:
            conf = _nginx_config(work, port, location)
            argv = [require("nginx"), "-p", str(work), "-e", str(work / "nginx-error.log"), "-c", str(conf)]
            argv += ["-g", "daemon off;"]
            commands["nginx"] = shlex.join(argv)
            return pin.server(argv)

        nginx = launch("nginx", nginx_argv, work / "nginx.out")
        stack.callback(nginx.stop)
        servers = {"geofed": geofed, "bare-aiohttp": bare, "nginx": nginx}
        for name, server in servers.items():
            _verify_302(name, server.url + SAMPLE_PATH, location)
        yield servers, location, headers, commands


def run_warm(work: Path, options: WarmOptions, log: Callable[[str], None]) -> WarmResults:
    pin = Pinning.detect()
    with _servers(work, pin) as (servers, location, headers, commands):
        results = WarmResults(options, pin.describe(), location, headers)
        urls = {name: server.url + SAMPLE_PATH for name, server in servers.items()}
        results.commands.update(commands)
        results.commands["wrk"] = (
            shlex.join(
                wrk_command("URL", connections=CONNECTIONS, duration_s=options.duration_s, close=False)
            )
            + "   (conn-close adds -H 'Connection: close')"
        )
        for mode in MODES:
            close = mode == "conn-close"
            for name in SERVERS:  # unrecorded warm-up: let caches, the allocator and TCP settle
                argv = wrk_command(
                    urls[name], connections=CONNECTIONS, duration_s=options.warmup_s, close=close
                )
                warmup = run_wrk(pin.client(argv), options.warmup_s)
                if name == "geofed":
                    results.geofed_requests += warmup.requests
            for round_no in range(options.rounds):
                shift = round_no % len(SERVERS)
                order = SERVERS[shift:] + SERVERS[:shift]
                for name in order:
                    argv = wrk_command(
                        urls[name], connections=CONNECTIONS, duration_s=options.duration_s, close=close
                    )
                    result = run_wrk(pin.client(argv), options.duration_s)
                    results.runs[mode][name].append(result)
                    log(
                        f"  warm {mode:<10} round {round_no + 1}/{options.rounds} "
                        f"{name:<12} {result.rps:>9,.0f} req/s"
                    )
                    if not result.clean:
                        results.problems.append(
                            f"{mode} {name} round {round_no + 1}: {result.socket_errors} socket errors, "
                            f"{result.non_3xx} non-2xx/3xx answers"
                        )
        for name, server in servers.items():  # still answering 302 after the load?
            try:
                _verify_302(name, server.url + SAMPLE_PATH, location)
            except RuntimeError as exc:
                results.problems.append(f"after the load: {exc}")
    # geofed has stopped (its access log is flushed on shutdown): count its redirect lines.
    marker = f" GET {SAMPLE_PATH} 302 redirect {NEAREST_SITE} "
    with (work / "geofed.out").open(encoding="utf-8", errors="replace") as out:
        results.access_log_lines = sum(1 for line in out if marker in line)
    results.geofed_requests += sum(r.requests for mode in MODES for r in results.runs[mode]["geofed"])
    return results
