"""Benchmark 1: warm-cache GET -> 302 throughput of geofed against bare aiohttp and nginx.

Three servers, each one process on the same pinned CPU, answer the same GET with a 302:

* ``geofed serve`` with three endpoints holding one sample file (access log on, uvloop): local
  folders (``run_warm``), or S3 buckets of three sites on a real Ceph RGW (``run_warm_s3``), in
  which case the Location is a SigV4-presigned RGW URL;
* ``bench/bare_aiohttp.py``: a fixed 302 on the same stack (aiohttp + uvloop, access_log=None);
* nginx, ``worker_processes 1``, ``return 302`` to the same Location, ``access_log off``.

The references answer with geofed's own Location string, so the Location is the same length.
wrk (one thread, 32 connections) runs on the other CPU, in rounds whose server order rotates, once
with keep-alive and once with ``Connection: close`` (a new TCP connection per request). wrk does
not follow redirects, so the storage behind the Location is not under load.
"""

from __future__ import annotations

import contextlib
import secrets
import shlex
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bench.procs import (
    VENV_BIN,
    CurlAnswer,
    Pinning,
    WrkResult,
    curl_head_of,
    launch,
    require,
    run_wrk,
    wrk_command,
)
from bench.report import commands_and_problems, machine_busy, median, table, verdict
from bench.s3sites import RgwSites, check_presigned, link_urls, rgw_sites
from tests.infra.policies import OPEN_POLICY
from tests.infra.servers import LOOPBACK, RunningServer

SAMPLE_PATH = "/bench/sample.dat"
SAMPLE_BODY = b"geofed benchmark sample\n" * 64
CONNECTIONS = 32
WARM_UP_TIMEOUT_S = 10.0
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


@dataclass(frozen=True)
class Variant:
    """What geofed's three endpoints are, and how to tell that its redirect is the right one.

    ``check`` gets geofed's answer to a GET of the sample and raises when it is not a 302 to the
    nearest site (for S3: also when the store refuses the presigned URL).
    """

    label: str
    endpoints: list[dict[str, Any]]
    check: Callable[[CurlAnswer], None]
    notes: list[str] = field(default_factory=list)


@dataclass
class WarmResults:
    options: WarmOptions
    pinning: str
    location: str
    geofed_headers: str
    label: str = "geofed"
    """How geofed is named in the report ("geofed" with local endpoints, "geofed-s3"); the runs
    keep the key "geofed"."""
    commands: dict[str, str] = field(default_factory=dict)
    runs: dict[str, dict[str, list[WrkResult]]] = field(
        default_factory=lambda: {mode: {name: [] for name in SERVERS} for mode in MODES}
    )
    header_bytes: dict[str, int] = field(default_factory=dict)
    access_log_lines: int = 0
    geofed_requests: int = 0
    notes: list[str] = field(default_factory=list)
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

    def shown(self, name: str) -> str:
        return self.label if name == "geofed" else name

    def render(self) -> str:
        opts = self.options
        me = self.label
        rows: list[list[str]] = []
        for name in SERVERS:
            row = [self.shown(name)]
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
        endpoints = "S3 endpoints (Ceph RGW)" if me != "geofed" else "local endpoints"
        title = (
            f"Warm GET -> 302, {endpoints}: wrk -t1 -c{CONNECTIONS} -d{opts.duration_s}s, "
            f"{opts.rounds} rounds (order rotated), medians; pinning: {self.pinning}"
        )
        lines = [table(headers, rows, title), ""]
        for mode in MODES:
            vs_bare = self.ratio(mode, "bare-aiohttp")
            vs_nginx = self.ratio(mode, "nginx")
            lines.append(
                f"  {mode:<11} {me}/bare-aiohttp = {vs_bare:.2f} "
                f"(per-round {self.paired_ratio(mode, 'bare-aiohttp'):.2f}; "
                f"{verdict(vs_bare, TARGET_VS_AIOHTTP, higher_is_better=True)})   "
                f"{me}/nginx = {vs_nginx:.2f} (per-round {self.paired_ratio(mode, 'nginx'):.2f})"
            )
        for mode in MODES:
            cost = {self.shown(name): 1e6 / self.median_rps(mode, name) for name in SERVERS}
            lines.append(
                f"  {mode:<11} time per request at saturation (1 / req/s, one server core): "
                + ", ".join(f"{name} {us:.1f} us" for name, us in cost.items())
                + f" -> {me}'s own work ~{cost[me] - cost['bare-aiohttp']:.1f} us/request"
            )
        lines.append("")
        lines.append(
            f"  Location (all three servers, {len(self.location)} chars): {self.location}\n"
            f"  {me} also sends a Link header with the two other replicas (see geofed_headers in --json)"
        )
        if self.header_bytes:
            lines.append(
                "  response header bytes (status line included): "
                + ", ".join(f"{self.shown(name)} {size:,}" for name, size in self.header_bytes.items())
            )
        lines.append(
            f"  {me} access log: {self.access_log_lines:,} redirect lines for {self.geofed_requests:,} "
            "requests wrk counted (the log is on, as in production)"
        )
        lines += [f"  {note}" for note in self.notes]
        lines += commands_and_problems(self.commands, self.problems)
        return "\n".join(lines)


def compare_variants(local: WarmResults, s3: WarmResults) -> str:
    """geofed-s3 against geofed with local endpoints, both measured in this invocation.

    The two ran one after the other, not interleaved, so besides the plain ratio of medians this
    also gives the ratio of each one's ratio to its own bare-aiohttp reference, which cancels a
    machine that got faster or slower between the two benchmarks.
    """
    me, local_name = s3.label, f"{local.label}-local"
    lines = [f"{me} against geofed with local endpoints (same invocation, one benchmark after the other)"]
    for mode in MODES:
        direct = s3.median_rps(mode, "geofed") / local.median_rps(mode, "geofed")
        normalised = s3.ratio(mode, "bare-aiohttp") / local.ratio(mode, "bare-aiohttp")
        lines.append(
            f"  {mode:<11} {me}/{local_name} = {direct:.2f} (medians)   "
            f"({me}/bare-aiohttp) / ({local_name}/bare-aiohttp) = {normalised:.2f}"
        )
    return "\n".join(lines)


def _geofed_config(work: Path, endpoints: list[dict[str, Any]] | None = None) -> Path:
    """Write geofed's configuration; ``endpoints`` default to the local ones (profile_warm.py uses that)."""
    placed = []
    for endpoint in _local_variant(work).endpoints if endpoints is None else endpoints:
        lat, lon = SITES[endpoint["name"]]
        placed.append(endpoint | {"location": {"lat": lat, "lon": lon}})
    config = {
        "server": {"host": LOOPBACK, "port": 0},  # the real port is given on the command line
        "signing": {"secret": secrets.token_urlsafe(32), "url_lifetime": "10m"},
        "auth": OPEN_POLICY,
        # The cache must stay warm for the whole run (default ttl 5 min); probes must not interfere.
        "cache": {"ttl": "6h"},
        "health": {"interval": "6h", "timeout": "5s"},
        "client_networks": [{"cidr": "127.0.0.0/8", "location": CLIENT_LOCATION}],
        "endpoints": placed,
    }
    path = work / "geofed.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    path.chmod(0o600)  # S3 keys inside
    return path


def _local_variant(work: Path) -> Variant:
    endpoints = []
    for name in SITES:
        site = work / "sites" / name
        target = site / SAMPLE_PATH.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(SAMPLE_BODY)
        endpoints.append({"name": name, "kind": "local", "url": site.resolve().as_uri()})

    def check(answer: CurlAnswer) -> None:
        if answer.status != 302 or f"/_geofed/data/{NEAREST_SITE}/" not in answer.location:
            raise RuntimeError(
                f"geofed did not redirect to {NEAREST_SITE}: {answer.status}\n{answer.headers}"
            )

    return Variant("geofed", endpoints, check)


def _s3_variant(rgw: RgwSites) -> Variant:
    key = SAMPLE_PATH.lstrip("/")
    by_url = {f"{site.url}/{site.bucket}/": site for site in rgw.sites.values()}

    def check(answer: CurlAnswer) -> None:
        if answer.status != 302:
            raise RuntimeError(f"geofed-s3 answered {answer.status} instead of 302:\n{answer.headers}")
        check_presigned(answer.location, rgw.sites[NEAREST_SITE], key, SAMPLE_BODY)
        others = link_urls(answer.headers)
        if len(others) != len(SITES) - 1:
            raise RuntimeError(f"geofed-s3's Link header lists {len(others)} replicas:\n{answer.headers}")
        for url in others:  # the alternatives must work too
            site = next((s for prefix, s in by_url.items() if url.startswith(prefix)), None)
            if site is None or site is rgw.sites[NEAREST_SITE]:
                raise RuntimeError(f"geofed-s3's Link URL {url!r} is not one of the other sites")
            check_presigned(url, site, key, SAMPLE_BODY)

    sites = ", ".join(f"{name} {site.url}/{site.bucket}" for name, site in rgw.sites.items())
    notes = [
        f"S3 sites (Ceph RGW {rgw.version}): {sites}",
        "before and after the load, curl checked that geofed's Location and both Link URLs are presigned"
        " URLs of the right sites, each answered 200 with the sample by RGW",
    ]
    return Variant("geofed-s3", [rgw.endpoint(name) for name in SITES], check, notes)


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


def _verify_302(name: str, url: str, location: str) -> CurlAnswer:
    answer = curl_head_of(url)
    if answer.status != 302:
        raise RuntimeError(f"{name} answered {answer.status} instead of 302 to {url}:\n{answer.headers}")
    # geofed signs with an expiry time, so only the part before the query string is fixed.
    same = answer.location.split("?")[0] == location.split("?")[0] if name == "geofed" else None
    if not (same if same is not None else answer.location == location):
        raise RuntimeError(f"{name} redirected to {answer.location!r}, expected {location!r}")
    return answer


def _warm_up(url: str) -> CurlAnswer:
    """GET ``url`` until geofed answers from its cache with all three replicas; its last answer.

    The first GET starts the locate on the three endpoints and is answered as soon as the nearest
    site has answered (geofed does not wait for farther ones); the complete answer is cached when
    the last endpoint has answered. Local endpoints answer at once, S3 endpoints take a few ms, so
    poll (bounded) until the Link header lists the two other replicas.
    """
    deadline = time.monotonic() + WARM_UP_TIMEOUT_S
    while True:
        answer = curl_head_of(url)
        if len(link_urls(answer.headers)) == len(SITES) - 1 or time.monotonic() > deadline:
            return answer
        time.sleep(0.05)


@dataclass
class _Running:
    servers: dict[str, RunningServer]
    location: str
    headers: str
    header_bytes: dict[str, int]
    commands: dict[str, str]


@contextlib.contextmanager
def _servers(work: Path, pin: Pinning, variant: Variant) -> Iterator[_Running]:
    """Start the three servers; yield them, geofed's Location and headers, and their commands."""
    commands: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        config = _geofed_config(work, variant.endpoints)

        def geofed_argv(port: int) -> list[str]:
            argv = [str(VENV_BIN / "geofed"), "serve", "--config", str(config), "--port", str(port)]
            commands["geofed"] = shlex.join(argv)
            return pin.server(argv)

        geofed = launch("geofed", geofed_argv, work / "geofed.out")
        stack.callback(geofed.stop)
        first = _warm_up(geofed.url + SAMPLE_PATH)
        try:
            variant.check(first)
        except RuntimeError as exc:
            raise RuntimeError(f"{exc}\n{geofed.logs()}") from None
        location = first.location
        headers = _verify_302("geofed", geofed.url + SAMPLE_PATH, location).headers

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
        header_bytes = {}
        for name, server in servers.items():
            answer = _verify_302(name, server.url + SAMPLE_PATH, location)
            # curl's text: the status line and headers, CRLF turned into LF; count the CRs back in.
            header_bytes[name] = len(answer.headers.encode()) + answer.headers.count("\n")
        yield _Running(servers, location, headers, header_bytes, commands)


def _measure(work: Path, options: WarmOptions, log: Callable[[str], None], variant: Variant) -> WarmResults:
    pin = Pinning.detect()
    with _servers(work, pin, variant) as running:
        servers = running.servers
        results = WarmResults(options, pin.describe(), running.location, running.headers, variant.label)
        results.header_bytes = running.header_bytes
        results.notes += variant.notes
        urls = {name: server.url + SAMPLE_PATH for name, server in servers.items()}
        results.commands.update(running.commands)
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
                        f"{results.shown(name):<12} {result.rps:>9,.0f} req/s"
                    )
                    if not result.clean:
                        results.problems.append(
                            f"{mode} {results.shown(name)} round {round_no + 1}: {result.socket_errors} "
                            f"socket errors, {result.non_3xx} non-2xx/3xx answers"
                        )
        for name, server in servers.items():  # still answering 302 after the load?
            try:
                _verify_302(name, server.url + SAMPLE_PATH, running.location)
                if name == "geofed":  # and geofed's current redirect still works
                    variant.check(curl_head_of(server.url + SAMPLE_PATH))
            except RuntimeError as exc:
                results.problems.append(f"after the load: {exc}")
    # geofed has stopped (its access log is flushed on shutdown): count its redirect lines.
    marker = f" GET {SAMPLE_PATH} 302 redirect {NEAREST_SITE} "
    with (work / "geofed.out").open(encoding="utf-8", errors="replace") as out:
        results.access_log_lines = sum(1 for line in out if marker in line)
    results.geofed_requests += sum(r.requests for mode in MODES for r in results.runs[mode]["geofed"])
    return results


def run_warm(work: Path, options: WarmOptions, log: Callable[[str], None]) -> WarmResults:
    """geofed with three local endpoints."""
    return _measure(work, options, log, _local_variant(work))


def run_warm_s3(work: Path, options: WarmOptions, log: Callable[[str], None]) -> WarmResults:
    """geofed with three S3 endpoints on a Ceph RGW started (and always stopped) here."""
    with rgw_sites(work, list(SITES), SAMPLE_PATH.lstrip("/"), SAMPLE_BODY, log) as rgw:
        idle = machine_busy()
        results = _measure(work, options, log, _s3_variant(rgw))
        results.notes.append(
            f"load with RGW idle, before the measurement: {idle:.0%} of all CPUs busy "
            "(mon, OSD and three radosgw stay up during the run; wrk does not follow the redirects)"
        )
        return results
