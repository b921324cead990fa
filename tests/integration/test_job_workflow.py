"""The paper's workflow as one test: jobs at three sites read their inputs through the federation from
the nearest replica and write their outputs to the nearest writable healthy site, over HTTPS with
a VOMS proxy, with gfal2; then every output's adler32 is asked with ``HEAD Want-Digest``.

Layout (coordinates of the real cities):

==========================  ================  ===========================================
endpoint                    where             role
==========================  ================  ===========================================
``cern``   Apache WebDAV    Geneva            writable
``triumf`` Apache WebDAV    Vancouver         writable
``uvic``   Apache WebDAV    Victoria          read-only replicas
``uvic-scratch`` WebDAV     Victoria          writable, but its server is down
==========================  ================  ===========================================

A job is gfal2 in this process, with its own context, behind a :class:`SourceGateway` that
connects to geofed from its site's client address (127.0.1.10 Geneva, 127.0.2.10 Vancouver,
127.0.3.10 Victoria; ``client_networks`` places them): gfal2 cannot bind a source address itself.
Which replica served each read and where each write went is read from the endpoints' own state --
each Apache's access log (a read is a ``GET`` of the input there during that job; a write a
``PUT``), each Apache's folder, and the checksum property geofed stored on the output's Apache --
and cross-checked with geofed's access log (client address and chosen endpoint).
"""

from __future__ import annotations

import math
import os
import re
import shutil
import subprocess
import tempfile
import time
import urllib.request
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from xml.etree import ElementTree

import pytest

from tests.infra.geofed_server import GeofedServer
from tests.infra.pki import Pki
from tests.infra.servers import RunningServer, free_port, start_apache_dav
from tests.infra.sourcegateway import SourceGateway
from tests.integration.grid_endpoints import grid_settings, log_mark, logged_since, www_data_ids
from tests.integration.grid_federation import Proxies, make_proxies

try:
    import gfal2
except ImportError as exc:  # pragma: no cover - the environment is broken, not the test
    gfal2 = None
    _IMPORT_ERROR: ImportError | None = exc
else:
    _IMPORT_ERROR = None

pytestmark = pytest.mark.integration

GFAL_TIMEOUT_S = 30
USER_DN = "/DC=org/DC=test/OU=Users/CN=Test User"
FEDERATED = "/atlas"
GEOFED_NS = "https://geofed.org/ns"

# site -> (city, lat, lon, client network, job's client address)
CITIES: dict[str, tuple[str, float, float, str, str]] = {
    "cern": ("Geneva", 46.2044, 6.1432, "127.0.1.0/24", "127.0.1.10"),
    "triumf": ("Vancouver", 49.2827, -123.1207, "127.0.2.0/24", "127.0.2.10"),
    "uvic": ("Victoria", 48.4284, -123.3656, "127.0.3.0/24", "127.0.3.10"),
}
SITES = tuple(CITIES)
WRITABLE = {"cern": True, "triumf": True, "uvic": False}
SCRATCH = "uvic-scratch"  # writable, at Victoria, down

# input -> the sites holding a replica
REPLICAS: dict[str, tuple[str, ...]] = {
    "evgen.root": ("cern", "triumf", "uvic"),
    "calib.db": ("cern", "uvic"),
    "conditions.db": ("cern", "triumf"),
    "pileup.root": ("triumf", "uvic"),
}


def km(a: tuple[float, float], b: tuple[float, float]) -> float:
    """Great-circle distance (haversine, mean Earth radius) -- the test's own expectation."""
    lat1, lon1, lat2, lon2 = map(math.radians, (*a, *b))
    h = math.sin((lat2 - lat1) / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin((lon2 - lon1) / 2) ** 2
    return 2 * 6371.0 * math.asin(math.sqrt(h))


def where(site: str) -> tuple[float, float]:
    return CITIES[site][1], CITIES[site][2]


def nearest(job: str, candidates: tuple[str, ...] | list[str]) -> str:
    return min(candidates, key=lambda site: km(where(job), where(site)))


# -- the sites -------------------------------------------------------------------------------------


@dataclass
class Site:
    name: str
    server: RunningServer
    root: Path
    log: Path

    def put(self, path: str, data: bytes) -> None:
        """A replica written straight into the site's folder (what a transfer service left)."""
        target = self.root / path.removeprefix(FEDERATED).lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        owner = www_data_ids()
        if owner is not None:
            for made in (target, *[p for p in target.parents if self.root in p.parents]):
                os.chown(made, *owner)

    def holds(self, path: str) -> bytes | None:
        target = self.root / path.removeprefix(FEDERATED).lstrip("/")
        return target.read_bytes() if target.is_file() else None

    def log_size(self) -> int:
        return self.log.stat().st_size if self.log.exists() else 0

    def requests_since(self, offset: int) -> list[tuple[str, str, int]]:
        """(method, path, status) of the Apache access-log lines written after ``offset``."""
        text = self.log.read_bytes()[offset:].decode(errors="replace") if self.log.exists() else ""
        found = []
        for line in text.splitlines():
            match = _APACHE_LINE.match(line)
            if match:
                found.append((match["method"], match["path"], int(match["status"])))
        return found

    def checksums_property(self, path: str) -> str | None:
        """geofed's checksums dead property of ``path``, asked from Apache itself (PROPFIND)."""
        body = (
            f'<?xml version="1.0"?><D:propfind xmlns:D="DAV:" xmlns:G="{GEOFED_NS}">'
            "<D:prop><G:checksums/></D:prop></D:propfind>"
        ).encode()
        url = self.server.url + path.removeprefix(FEDERATED)
        request = urllib.request.Request(url, data=body, method="PROPFIND", headers={"Depth": "0"})
        with urllib.request.urlopen(request, timeout=10) as response:
            tree = ElementTree.fromstring(response.read())
        for propstat in tree.iter("{DAV:}propstat"):
            status = propstat.findtext("{DAV:}status") or ""
            value = propstat.find(f"{{DAV:}}prop/{{{GEOFED_NS}}}checksums")
            if value is not None and " 200 " in status:
                return value.text or ""
        return None


_APACHE_LINE = re.compile(r'^\S+ \[[^\]]+\] "(?P<method>[A-Z]+) (?P<path>\S+) [^"]*" (?P<status>\d{3}) ')


@pytest.fixture(scope="module")
def sites() -> Iterator[dict[str, Site]]:
    base = Path(tempfile.mkdtemp(prefix="geofed-jobs-"))
    os.chmod(base, 0o755)
    started: dict[str, Site] = {}
    try:
        for name in SITES:
            work = base / name / "work"
            server = start_apache_dav(base / name / "dav", work)
            assert server.root is not None
            started[name] = Site(name, server, server.root, work / "access.log")
        yield started
    finally:
        for site in started.values():
            site.server.stop()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def proxies(grid_pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Proxies:
    return make_proxies(grid_pki, tmp_path_factory.mktemp("job-proxies"))


def settings_for(grid_pki: Pki, sites: dict[str, Site], dead_url: str) -> Any:
    endpoints: list[dict[str, Any]] = []
    for name, site in sites.items():
        _city, lat, lon, _net, _ip = CITIES[name]
        endpoints.append(
            {
                "name": name,
                "kind": "webdav",
                "url": site.server.url,
                "prefixes": [{"federated": FEDERATED, "endpoint": "/"}],
                "writable": WRITABLE[name],
                "location": {"lat": lat, "lon": lon},
                "timeout": "5s",
            }
        )
    endpoints.append(
        {
            "name": SCRATCH,
            "kind": "webdav",
            "url": dead_url,
            "prefixes": [{"federated": FEDERATED, "endpoint": "/"}],
            "writable": True,
            # write-only: a landing area geofed never locates files on. (A *readable* endpoint
            # that is down makes every "absent" answer under its prefix unknown: HEAD/PROPFIND of
            # a new path is 503, and gfal2, which stats the destination first, cannot upload.)
            "readable": False,
            "location": {"lat": CITIES["uvic"][1], "lon": CITIES["uvic"][2]},
            "timeout": "2s",
        }
    )
    networks = [
        {"cidr": net, "location": {"lat": lat, "lon": lon}} for _c, lat, lon, net, _ip in CITIES.values()
    ]
    return grid_settings(
        grid_pki,
        endpoints,
        [{"path": FEDERATED, "allow": ["all"], "to": [{"vo": "testvo"}]}],
        client_networks=networks,
        federation={"fuzz_km": 0, "locate_timeout": "3s", "max_alternatives": 0},
        health={"interval": "60s", "timeout": "2s"},
    )


# -- gfal2 -----------------------------------------------------------------------------------------


def gfal_context(monkeypatch: pytest.MonkeyPatch, grid_pki: Pki, proxies: Proxies) -> Any:
    if gfal2 is None:
        pytest.fail(
            f"cannot import gfal2 ({_IMPORT_ERROR}): install python3-gfal2 and gfal2-plugin-http, "
            "then run `bash scripts/venv.sh test` to link the module into the venv",
            pytrace=False,
        )
    monkeypatch.setenv("X509_CERT_DIR", str(grid_pki.ca_dir))
    monkeypatch.setenv("X509_USER_PROXY", str(proxies.voms.cert_path))
    for name in ("X509_USER_CERT", "X509_USER_KEY", "BEARER_TOKEN", "BEARER_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    ctx = gfal2.creat_context()  # reads the two variables now
    ctx.set_opt_integer("HTTP PLUGIN", "OPERATION_TIMEOUT", GFAL_TIMEOUT_S)
    ctx.set_opt_integer("CORE", "NAMESPACE_TIMEOUT", GFAL_TIMEOUT_S)
    ctx.set_opt_boolean("HTTP PLUGIN", "RETRIEVE_BEARER_TOKEN", False)  # as Rucio and pilots do
    return ctx


def transfer(ctx: Any, checksum: str | None) -> Any:
    params = ctx.transfer_parameters()
    params.overwrite = True
    params.timeout = GFAL_TIMEOUT_S
    if checksum:
        params.set_checksum(gfal2.checksum_mode.both, checksum, "")
    else:
        params.set_checksum(gfal2.checksum_mode.none, "", "")
    return params


def adler32_hex(data: bytes) -> str:
    return f"{zlib.adler32(data) & 0xFFFFFFFF:08x}"


def head_digest(fed: GeofedServer, grid_pki: Pki, proxies: Proxies, path: str) -> tuple[str, str]:
    """(status, Digest header) of ``HEAD`` + ``Want-Digest: ADLER32`` (curl with the VOMS proxy)."""
    proxy = str(proxies.voms.cert_path)
    done = subprocess.run(
        [
            "curl", "-sS", "--noproxy", "*", "--max-time", "20", "--cacert", str(grid_pki.ca.cert_path),
            "--cert", proxy, "--key", proxy, "-I", "-H", "Want-Digest: ADLER32",
            "-o", "/dev/stdout", "-w", "\n%{http_code}", fed.url + path,
        ],
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    headers, _, status = done.stdout.rpartition("\n")
    digest = next(
        (
            line.split(":", 1)[1].strip()
            for line in headers.splitlines()
            if line.lower().startswith("digest:")
        ),
        "",
    )
    return status.strip(), digest


# -- the workflow ----------------------------------------------------------------------------------


def test_jobs_read_nearest_replicas_and_write_to_nearest_writable_healthy_site(
    sites: dict[str, Site],
    grid_pki: Pki,
    proxies: Proxies,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    run = uuid.uuid4().hex[:10]
    inputs: dict[str, bytes] = {}
    for index, (name, holders) in enumerate(REPLICAS.items()):
        path = f"{FEDERATED}/{run}/inputs/{name}"
        inputs[path] = os.urandom(20_000 + 7_000 * index)
        for site in holders:
            sites[site].put(path, inputs[path])
    holders_of = {f"{FEDERATED}/{run}/inputs/{n}": h for n, h in REPLICAS.items()}
    dead_url = f"http://127.0.0.1:{free_port()}"  # nothing listens: uvic-scratch is down

    reads: dict[tuple[str, str], list[str]] = {}  # (job, input) -> sites whose Apache served it
    writes: dict[str, list[str]] = {}  # job -> sites whose Apache got the output's PUT
    outputs: dict[str, tuple[str, bytes]] = {}  # job -> (path, bytes)
    geofed_saw: dict[str, list[Any]] = {}

    with GeofedServer(settings_for(grid_pki, sites, dead_url)) as fed:
        assert SCRATCH in fed.federation.health.unavailable, "uvic-scratch must start as down"
        for job in SITES:
            client_ip = CITIES[job][4]
            ctx = gfal_context(monkeypatch, grid_pki, proxies)
            offsets = {name: site.log_size() for name, site in sites.items()}
            mark = log_mark(fed)
            with SourceGateway("127.0.0.1", fed.port, client_ip) as gateway:
                base = f"https://127.0.0.1:{gateway.port}"
                work = tmp_path / job
                work.mkdir()
                # stage in
                for path, data in inputs.items():
                    local = work / path.rsplit("/", 1)[1]
                    ctx.filecopy(transfer(ctx, None), base + path, local.as_uri())
                    assert local.read_bytes() == data, f"{job}: {path} arrived corrupted"
                # "run": the output depends on every input
                produced = (
                    b"".join((work / p.rsplit("/", 1)[1]).read_bytes()[::-1] for p in sorted(inputs))
                    + job.encode()
                )
                out_path = f"{FEDERATED}/{run}/outputs/{job}.out"
                local_out = work / f"{job}.out"
                local_out.write_bytes(produced)
                # stage out, gfal2 comparing its own adler32 with the federation's afterwards
                ctx.filecopy(transfer(ctx, "ADLER32"), local_out.as_uri(), base + out_path)
                outputs[job] = (out_path, produced)
                assert gateway.connections > 0
            del ctx
            geofed_saw[job] = logged_since(fed, mark)
            seen = {name: site.requests_since(offsets[name]) for name, site in sites.items()}
            for path in inputs:
                reads[(job, path)] = [
                    name
                    for name, lines in seen.items()
                    for method, logged, status in lines
                    if (method, logged, status) == ("GET", path.removeprefix(FEDERATED), 200)
                ]
            writes[job] = [
                name
                for name, lines in seen.items()
                for method, logged, status in lines
                if method == "PUT"
                and logged == out_path.removeprefix(FEDERATED)
                and status in (200, 201, 204)
            ]

        digests = {job: head_digest(fed, grid_pki, proxies, path) for job, (path, _data) in outputs.items()}

    for job in SITES:
        print(f"\njob at {CITIES[job][0]} ({CITIES[job][4]}):")
        for path in inputs:
            print(
                f"  read  {path.rsplit('/', 1)[1]:14} from {reads[(job, path)]} (replicas {holders_of[path]})"
            )
        print(f"  wrote {outputs[job][0].rsplit('/', 1)[1]:14} to {writes[job]}; digest {digests[job]}")
        print("  geofed: " + "\n          ".join(e.brief() for e in geofed_saw[job] if run in e.path))

    # every read came from the nearest replica, by the endpoints' own access logs
    wrong_reads = {
        key: (served, nearest(key[0], holders_of[key[1]]))
        for key, served in reads.items()
        if served != [nearest(key[0], holders_of[key[1]])]
    }
    assert not wrong_reads, f"(job, input): (served by, nearest replica) {wrong_reads}"

    # every write went to the nearest writable healthy site, and only there
    writable_healthy = [s for s in SITES if WRITABLE[s]]  # uvic-scratch is down, uvic read-only
    for job, (path, data) in outputs.items():
        expected = nearest(job, writable_healthy)
        assert writes[job] == [expected], f"{job}'s output was PUT on {writes[job]}, expected {expected}"
        assert {s: sites[s].holds(path) == data for s in SITES} == {s: s == expected for s in SITES}
    assert writes["uvic"] == ["triumf"], "Victoria's job writes to Vancouver (uvic read-only, scratch down)"

    # geofed's own account agrees: each job seen at its site's address, redirected as above
    for job, entries in geofed_saw.items():
        mine = [e for e in entries if e.path.startswith(f"{FEDERATED}/{run}/")]
        assert mine and {e.client for e in mine} == {CITIES[job][4]}, {e.client for e in mine}
        assert {e.identity for e in mine} == {USER_DN}
        assert not any(e.method == "POST" for e in mine), "no macaroon requests"
        for path in inputs:
            redirects = [e.endpoint for e in mine if (e.method, e.path, e.status) == ("GET", path, 302)]
            assert redirects == reads[(job, path)], (job, path, redirects)
        put = [e for e in mine if e.method == "PUT" and e.path == outputs[job][0]]
        assert [(e.status, e.endpoint) for e in put] == [(307, writes[job][0])], put

    # HEAD Want-Digest: ADLER32 on each output gives its adler32, recorded on the output's site
    for job, (path, data) in outputs.items():
        expected = adler32_hex(data)
        assert digests[job] == ("200", f"ADLER32={expected}"), (job, digests[job])
        holder = sites[nearest(job, writable_healthy)]
        deadline = time.monotonic() + 5
        recorded = holder.checksums_property(path)
        while (recorded is None or f"adler32:{expected}" not in recorded) and time.monotonic() < deadline:
            time.sleep(0.1)
            recorded = holder.checksums_property(path)
        assert recorded is not None and f"adler32:{expected}" in recorded, (job, holder.name, recorded)
