"""Benchmark 2: cold locate -- time to the 302 for paths geofed has not seen, against the nearest site.

One nginx (dav + dav-ext) serves N files; three delay proxies in front of it make three "sites"
10, 50 and 150 ms (one way) away, configured in geofed as three webdav endpoints at far-apart
locations. Loopback clients are placed next to the 10 ms site, so a GET for an uncached path only
has to wait for that site's answer (``Want.CLOSEST``): the other two are farther than the best
replica plus ``fuzz_km`` and are not waited for.

The reference is the 10 ms site's own round trip for the request geofed's webdav endpoint makes
(PROPFIND Depth 0 without a trailing slash, same headers and body), measured directly through the
same proxy: on a fresh connection (TCP connect included, ~4 x 10 ms through the proxy) and on a
kept-alive one (~2 x 10 ms). geofed's endpoint pools connections, so the kept-alive round trip is
the like-for-like reference; both are reported. A design that waits for every site would need at
least the 150 ms site's round trip (2 x 150 ms = 300 ms) per cold path.
"""

from __future__ import annotations

import contextlib
import http.client
import re
import secrets
import shlex
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from bench.procs import VENV_BIN, curl_head_of, launch
from bench.report import commands_and_problems, median, percentile, table, verdict
from geofed import __version__
from geofed.endpoints.davxml import propfind_body
from tests.infra.policies import OPEN_POLICY
from tests.infra.servers import LOOPBACK, RunningServer, start_delay_proxy, start_nginx_dav

TARGET_RATIO = 1.2
# name -> (one-way delay in ms, (lat, lon)); loopback clients are placed at the first one.
SITES: dict[str, tuple[float, tuple[float, float]]] = {
    "near10": (10.0, (46.2330, 6.0557)),  # Geneva
    "mid50": (50.0, (41.8781, -87.6298)),  # Chicago
    "far150": (150.0, (-33.8688, 151.2093)),  # Sydney
}
NEAREST = "near10"
CLIENT_LOCATION = {"lat": 46.20, "lon": 6.14}
WAIT_FOR_ALL_BOUND_MS = 2 * max(delay for delay, _ in SITES.values())
# The request geofed's webdav endpoint sends for a stat (endpoints/webdav.py: _propfind(path, "0")).
PROPFIND_HEADERS = {
    "Depth": "0",
    "Content-Type": "application/xml; charset=utf-8",
    "User-Agent": f"geofed/{__version__}",
}
FAR_SAMPLES = 3
MAX_PATHS = 5000
CHECK_INDEX = MAX_PATHS  # a path outside the measured ones, for the set-up check
REQUEST_TIMEOUT_S = 10.0
_LOCATE_FIELD = re.compile(r" GET (/bench/cold/\S+) 302 redirect (\S+) ([\d.]+)ms$")


@dataclass(frozen=True)
class ColdOptions:
    paths: int


@dataclass
class ColdResults:
    options: ColdOptions
    geofed_ms: list[float] = field(default_factory=list)
    fresh_ms: list[float] = field(default_factory=list)
    warm_ms: list[float] = field(default_factory=list)
    site_warm_ms: dict[str, list[float]] = field(default_factory=dict)
    internal_locate_ms: list[float] = field(default_factory=list)
    redirected_to: dict[str, int] = field(default_factory=dict)
    commands: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def render(self) -> str:
        def stats(values: list[float]) -> list[str]:
            return [
                f"{median(values):.1f}",
                f"{percentile(values, 0.1):.1f}",
                f"{percentile(values, 0.9):.1f}",
                f"{min(values, default=float('nan')):.1f}",
                f"{max(values, default=float('nan')):.1f}",
            ]

        rows = [
            ["geofed GET -> 302 (uncached path)", *stats(self.geofed_ms)],
            ["  geofed's own locate time (access log)", *stats(self.internal_locate_ms)],
            [f"{NEAREST} PROPFIND Depth 0, fresh connection", *stats(self.fresh_ms)],
            [f"{NEAREST} PROPFIND Depth 0, kept-alive connection", *stats(self.warm_ms)],
        ]
        for name, values in self.site_warm_ms.items():
            rows.append([f"{name} PROPFIND Depth 0, kept-alive ({len(values)} samples)", *stats(values)])
        title = (
            f"Cold locate: {len(self.geofed_ms)} distinct uncached paths, sites 10/50/150 ms one way "
            f"behind delay proxies, client placed at {NEAREST}"
        )
        lines = [table(["measurement (ms)", "median", "p10", "p90", "min", "max"], rows, title), ""]
        geo = median(self.geofed_ms)
        warm_ratio = geo / median(self.warm_ms)
        fresh_ratio = geo / median(self.fresh_ms)
        paired = median([g / w for g, w in zip(self.geofed_ms, self.warm_ms, strict=True)])
        lines.append(
            f"  geofed / {NEAREST} kept-alive round trip = {warm_ratio:.2f}x "
            f"(paired median {paired:.2f}x; {verdict(warm_ratio, TARGET_RATIO, higher_is_better=False)})"
        )
        lines.append(
            f"  geofed / {NEAREST} fresh-connection round trip = {fresh_ratio:.2f}x "
            f"({verdict(fresh_ratio, TARGET_RATIO, higher_is_better=False)})"
        )
        far = self.site_warm_ms.get("far150", [])
        lines.append(
            f"  wait-for-all lower bound: {WAIT_FOR_ALL_BOUND_MS:.0f} ms nominal "
            f"({median(far):.1f} ms measured on far150); "
            f"geofed median is {geo / WAIT_FOR_ALL_BOUND_MS:.2f}x of it"
        )
        if geo < median(self.fresh_ms):
            lines.append(
                f"  geofed answered faster than one fresh-connection round trip to {NEAREST}: its webdav "
                "endpoint reused a pooled connection, so the kept-alive ratio is the like-for-like one"
            )
        lines.append(f"  redirect targets: {self.redirected_to}")
        lines += commands_and_problems(self.commands, self.problems)
        return "\n".join(lines)


def _file_path(index: int) -> str:
    return f"/bench/cold/f{index:04d}.dat"


def _propfind(conn: http.client.HTTPConnection, path: str) -> float:
    """One PROPFIND Depth 0 as geofed sends it, body read to the end; milliseconds."""
    started = time.perf_counter()
    conn.request("PROPFIND", path, body=propfind_body(), headers=PROPFIND_HEADERS)
    response = conn.getresponse()
    response.read()
    elapsed = (time.perf_counter() - started) * 1000
    if response.status != 207:
        raise RuntimeError(f"PROPFIND {path} answered {response.status}, not 207")
    return elapsed


def _get(conn: http.client.HTTPConnection, path: str) -> tuple[float, int, str]:
    started = time.perf_counter()
    conn.request("GET", path)
    response = conn.getresponse()
    response.read()
    elapsed = (time.perf_counter() - started) * 1000
    return elapsed, response.status, response.getheader("Location") or ""


def _geofed_config(work: Path, proxies: dict[str, RunningServer]) -> Path:
    config = {
        "server": {"host": LOOPBACK, "port": 0},  # the real port is given on the command line
        "signing": {"secret": secrets.token_urlsafe(32)},
        "auth": OPEN_POLICY,
        "health": {"interval": "6h", "timeout": "5s"},  # one probe at start, none while measuring
        "client_networks": [{"cidr": "127.0.0.0/8", "location": CLIENT_LOCATION}],
        "endpoints": [
            {
                "name": name,
                "kind": "webdav",
                "url": proxies[name].url + "/",
                "location": {"lat": lat, "lon": lon},
            }
            for name, (_delay, (lat, lon)) in SITES.items()
        ],
    }
    path = work / "geofed-cold.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


@contextlib.contextmanager
def _federation(
    work: Path, paths: int
) -> Iterator[tuple[RunningServer, dict[str, RunningServer], dict[str, str]]]:
    commands: dict[str, str] = {}
    with contextlib.ExitStack() as stack:
        root = work / "dav"
        for index in [*range(paths), CHECK_INDEX]:
            target = root / _file_path(index).lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(b"geofed cold-locate sample\n" * 16)
        nginx = start_nginx_dav(root, work / "nginx-dav")
        stack.callback(nginx.stop)
        commands["nginx dav"] = f"{nginx.url} serving {root} (tests/infra/servers.py start_nginx_dav)"
        proxies: dict[str, RunningServer] = {}
        for name, (delay, _where) in SITES.items():
            proxy = start_delay_proxy(LOOPBACK, nginx.port, delay)
            stack.callback(proxy.stop)
            proxies[name] = proxy
            commands[f"proxy {name}"] = f"{proxy.url} -> {nginx.url}, +{delay:g} ms one way (delayproxy.py)"
        config = _geofed_config(work, proxies)

        def geofed_argv(port: int) -> list[str]:
            argv = [str(VENV_BIN / "geofed"), "serve", "--config", str(config), "--port", str(port)]
            commands["geofed"] = shlex.join(argv)
            return argv

        geofed = launch("geofed (cold)", geofed_argv, work / "geofed-cold.out")
        stack.callback(geofed.stop)
        check = curl_head_of(geofed.url + _file_path(CHECK_INDEX))
        expected = proxies[NEAREST].url + _file_path(CHECK_INDEX)
        if check.status != 302 or check.location != expected:
            raise RuntimeError(
                f"geofed did not redirect to {expected}: {check.status}\n{check.headers}\n{geofed.logs()}"
            )
        yield geofed, proxies, commands


def run_cold(work: Path, options: ColdOptions, log: Callable[[str], None]) -> ColdResults:
    results = ColdResults(options)
    with _federation(work, options.paths) as (geofed, proxies, commands):
        results.commands.update(commands)
        near = proxies[NEAREST]
        geo_conn = http.client.HTTPConnection(LOOPBACK, geofed.port, timeout=REQUEST_TIMEOUT_S)
        warm_conn = http.client.HTTPConnection(LOOPBACK, near.port, timeout=REQUEST_TIMEOUT_S)
        try:
            _propfind(warm_conn, _file_path(CHECK_INDEX))  # open the kept-alive connection
            _get(geo_conn, "/_geofed/status")  # and the client's own connection to geofed
            for index in range(options.paths):
                path = _file_path(index)
                elapsed, status, location = _get(geo_conn, path)
                if status != 302:
                    results.problems.append(f"GET {path}: HTTP {status}")
                    continue
                target = next((n for n, p in proxies.items() if location.startswith(p.url + "/")), location)
                results.redirected_to[target] = results.redirected_to.get(target, 0) + 1
                results.geofed_ms.append(elapsed)
                fresh = http.client.HTTPConnection(LOOPBACK, near.port, timeout=REQUEST_TIMEOUT_S)
                try:
                    results.fresh_ms.append(_propfind(fresh, path))
                finally:
                    fresh.close()
                results.warm_ms.append(_propfind(warm_conn, path))
                if index % 10 == 9 or index == options.paths - 1:
                    log(
                        f"  cold {index + 1:>4}/{options.paths}  medians: "
                        f"geofed {median(results.geofed_ms):6.1f} ms  "
                        f"fresh {median(results.fresh_ms):6.1f} ms  "
                        f"kept-alive {median(results.warm_ms):6.1f} ms"
                    )
            for name in ("mid50", "far150"):
                conn = http.client.HTTPConnection(LOOPBACK, proxies[name].port, timeout=REQUEST_TIMEOUT_S)
                try:
                    _propfind(conn, _file_path(CHECK_INDEX))
                    results.site_warm_ms[name] = [
                        _propfind(conn, _file_path(CHECK_INDEX)) for _ in range(FAR_SAMPLES)
                    ]
                finally:
                    conn.close()
        finally:
            geo_conn.close()
            warm_conn.close()
    # geofed has stopped and flushed its access log: its own view of each locate.
    if results.redirected_to.get(NEAREST, 0) != len(results.geofed_ms):
        results.problems.append(f"not every redirect went to {NEAREST}: {results.redirected_to}")
    for line in (work / "geofed-cold.out").read_text(encoding="utf-8", errors="replace").splitlines():
        if (match := _LOCATE_FIELD.search(line)) and match.group(1) != _file_path(CHECK_INDEX):
            results.internal_locate_ms.append(float(match.group(3)))
    return results
