"""``/_geofed/metrics`` and JSON access logs on a real geofed, driven by curl from two "countries".

The federation: two local endpoints (geneva, vancouver) holding the same file, and a real nginx
dav-ext endpoint (victoria). A GeoIP database built for the test places clients bound to
127.0.1.x in Switzerland and 127.0.2.x in Canada (curl ``--interface``). The scrape is parsed with
prometheus_client's own parser, and its counts are compared with the requests curl made.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from geofed.config import Settings
from tests.infra.geofed_server import GeofedServer
from tests.infra.geoip import build_city_db
from tests.infra.servers import RunningServer, start_nginx_dav
from tests.integration.conftest import build_settings
from tests.integration.federation_sites import curl

pytestmark = pytest.mark.integration

CH, CA = "127.0.1.10", "127.0.2.10"
SCRAPER = "127.0.0.1"
COMMON = b"the same bytes everywhere\n" * 40
SITES = {"geneva": (46.2044, 6.1432), "vancouver": (49.2827, -123.1207), "victoria": (48.4284, -123.3656)}

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


@dataclass
class Layout:
    roots: dict[str, Path]
    geoip: Path
    nginx: RunningServer

    def settings(self, **sections: Any) -> Settings:
        endpoints = []
        for name, (lat, lon) in SITES.items():
            url = self.nginx.url if name == "victoria" else self.roots[name].as_uri()
            endpoints.append(
                {
                    "name": name,
                    "kind": "webdav" if name == "victoria" else "local",
                    "url": url,
                    "prefixes": [{"federated": "/fed", "endpoint": "/"}],
                    "writable": True,
                    "location": {"lat": lat, "lon": lon},
                    "timeout": "2s",
                }
            )
        mapping: dict[str, Any] = {
            "geoip": {"database": str(self.geoip)},
            "federation": {"locate_timeout": "3s", "fuzz_km": 0},
            "health": {"interval": "0.2s", "timeout": "0.5s"},
            **sections,
        }
        return build_settings(endpoints=endpoints, **mapping)


def place(root: Path, path: str, data: bytes, *, served_by_nginx: bool = False) -> None:
    target = root / path.lstrip("/")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    os.chmod(target, 0o644)
    if served_by_nginx and os.geteuid() == 0:  # nginx's workers run as www-data then
        for item in [target, *target.parents]:
            if item == root:
                break
            shutil.chown(item, "www-data", "www-data")


@pytest.fixture
def layout() -> Iterator[Layout]:
    base = Path(tempfile.mkdtemp(prefix="geofed-metrics-"))  # not pytest's 0700 tmp: nginx's workers read it
    os.chmod(base, 0o755)
    roots = {name: base / name for name in ("geneva", "vancouver")}
    for root in roots.values():
        root.mkdir()
        place(root, "/data/common.dat", COMMON)
    nginx: RunningServer | None = None
    try:
        nginx = start_nginx_dav(base / "victoria" / "dav", base / "victoria" / "work")
        assert nginx.root is not None
        roots["victoria"] = nginx.root
        place(nginx.root, "/data/west.dat", b"only in Victoria\n", served_by_nginx=True)
        geoip = build_city_db(
            base / "city.mmdb",
            {
                "127.0.1.0/24": ("Geneva", "CH", 46.2044, 6.1432),
                "127.0.2.0/24": ("Vancouver", "CA", 49.2827, -123.1207),
            },
        )
        yield Layout(roots, geoip, nginx)
    finally:
        if nginx is not None:
            nginx.stop()
        shutil.rmtree(base, ignore_errors=True)


def scrape(server: GeofedServer) -> Samples:
    out = curl("--interface", SCRAPER, "-f", f"{server.url}/_geofed/metrics")
    assert out.returncode == 0, out.stderr
    samples: Samples = {}
    for family in text_string_to_metric_families(out.stdout):
        assert family.name.startswith(("geofed_", "process_", "python_")), family.name
        assert family.documentation
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum over every other label (``sum by`` in PromQL)."""
    wanted = set(labels.items())
    return sum(v for (n, lab), v in samples.items() if n == name and wanted <= set(lab))


def get(server: GeofedServer, client: str, path: str, *args: str) -> tuple[int, str]:
    out = curl(
        "--interface",
        client,
        *args,
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{redirect_url}",
        server.url + path,
    )
    status, _, location = out.stdout.partition(" ")
    assert status.isdigit(), out.stderr
    return int(status), location


def test_counts_match_the_requests_and_json_lines_carry_the_fields(layout: Layout) -> None:
    settings = layout.settings(server={"host": "127.0.0.1", "port": 0, "access_log_format": "json"})
    with GeofedServer(settings) as server:
        before = scrape(server)
        assert total(before, "geofed_requests_total") == 0
        assert value(before, "geofed_endpoint_up", endpoint="victoria") == 1
        assert value(before, "geofed_endpoint_probe_latency_seconds", endpoint="victoria") > 0

        for _ in range(3):
            status, location = get(server, CH, "/fed/data/common.dat")
            assert status == 302 and "/_geofed/data/geneva/" in location
        for _ in range(2):
            status, location = get(server, CA, "/fed/data/common.dat")
            assert status == 302 and "/_geofed/data/vancouver/" in location
        status, location = get(server, CA, "/fed/data/west.dat")
        assert status == 302 and location.startswith(layout.nginx.url)
        assert get(server, CH, "/fed/data/common.dat", "-I")[0] == 200
        assert get(server, CH, "/fed/data/missing.dat")[0] == 404

        s = scrape(server)
        assert value(s, "geofed_requests_total", method="GET", status="302") == 6
        assert value(s, "geofed_requests_total", method="HEAD", status="200") == 1
        assert value(s, "geofed_requests_total", method="GET", status="404") == 1
        assert total(s, "geofed_requests_total") == 8, "the scrapes themselves are not counted"
        assert value(s, "geofed_redirects_total", method="GET", endpoint="geneva", country="CH") == 3
        assert value(s, "geofed_redirects_total", method="GET", endpoint="vancouver", country="CA") == 2
        assert value(s, "geofed_redirects_total", method="GET", endpoint="victoria", country="CA") == 1
        assert total(s, "geofed_redirects_total") == 6
        assert total(s, "geofed_redirects_total", country="CH") == 3
        assert total(s, "geofed_redirects_total", country="CA") == 3

        # three paths were located on the endpoints (common.dat, west.dat, missing.dat)
        assert value(s, "geofed_locate_seconds_count") >= 3
        assert value(s, "geofed_locate_seconds_sum") > 0

        def grew(name: str, **labels: str) -> float:
            return value(s, name, **labels) - value(before, name, **labels)

        assert grew("geofed_fanout_answers_total", endpoint="geneva", answer="found") >= 1
        assert grew("geofed_fanout_answers_total", endpoint="vancouver", answer="found") >= 1
        assert grew("geofed_fanout_answers_total", endpoint="victoria", answer="found") >= 1
        assert grew("geofed_fanout_answers_total", endpoint="victoria", answer="absent") >= 2
        assert grew("geofed_fanout_answers_total", endpoint="geneva", answer="absent") >= 2

        # repeats are answered from the cache: the L1 hits grow by at least one per request
        hits = value(s, "geofed_cache_hits_total", level="l1_locate")
        for _ in range(5):
            assert get(server, CH, "/fed/data/common.dat")[0] == 302
        again = scrape(server)
        assert value(again, "geofed_cache_hits_total", level="l1_locate") >= hits + 5
        assert value(again, "geofed_cache_entries", level="l1_locate") >= 2
        assert value(again, "geofed_redirects_total", method="GET", endpoint="geneva", country="CH") == 8

        lines = server.flush_access_log().splitlines()
    assert len(lines) == 13
    records = [json.loads(line) for line in lines]
    fields = {"time", "client", "identity", "method", "path", "status", "decision", "endpoint", "locate_ms"}
    assert all(set(record) == fields for record in records)
    first = records[0]
    assert first["client"] == CH and first["method"] == "GET" and first["path"] == "/fed/data/common.dat"
    assert first["status"] == 302 and first["decision"] == "redirect" and first["endpoint"] == "geneva"
    assert isinstance(first["locate_ms"], float) and first["locate_ms"] > 0
    assert first["time"].endswith("Z") and time.strptime(first["time"][:19], "%Y-%m-%dT%H:%M:%S")
    assert records[3]["client"] == CA and records[3]["endpoint"] == "vancouver"
    head = records[6]
    assert (head["method"], head["status"], head["decision"], head["endpoint"]) == ("HEAD", 200, "stat", None)
    assert (records[7]["status"], records[7]["decision"]) == (404, "error")
    assert [r["locate_ms"] for r in records[8:]] == [0.0] * 5  # warm redirects


def test_metrics_are_counted_with_the_access_log_off(layout: Layout) -> None:
    with GeofedServer(
        layout.settings(server={"host": "127.0.0.1", "port": 0, "access_log": False})
    ) as server:
        for client in (CH, CA, CA):
            assert get(server, client, "/fed/data/common.dat")[0] == 302
        s = scrape(server)
        assert server.flush_access_log() == ""
    assert value(s, "geofed_requests_total", method="GET", status="302") == 3
    assert value(s, "geofed_redirects_total", method="GET", endpoint="geneva", country="CH") == 1
    assert value(s, "geofed_redirects_total", method="GET", endpoint="vancouver", country="CA") == 2


def test_bytes_streamed_through_geofed_are_counted(layout: Layout, tmp_path: Path) -> None:
    settings = layout.settings(proxy={"url_prefix": "/proxy", "reads": True})
    upload = tmp_path / "upload.bin"
    upload.write_bytes(os.urandom(300_000))
    with GeofedServer(settings) as server:
        before = scrape(server)
        body = curl("--interface", CH, "-f", f"{server.url}/proxy/fed/data/common.dat")
        assert body.returncode == 0 and body.stdout.encode() == COMMON
        put = curl("--interface", CH, "-f", "-T", str(upload), f"{server.url}/proxy/fed/data/uploaded.bin")
        assert put.returncode == 0, put.stderr
        s = scrape(server)
    assert (layout.roots["geneva"] / "data/uploaded.bin").read_bytes() == upload.read_bytes()

    def grew(name: str, **labels: str) -> float:
        return value(s, name, **labels) - value(before, name, **labels)

    assert grew("geofed_proxied_bytes_total", direction="download", endpoint="geneva") == len(COMMON)
    assert grew("geofed_proxied_bytes_total", direction="upload", endpoint="geneva") == 300_000
    assert value(s, "geofed_requests_total", method="GET", status="200") == 1
    assert value(s, "geofed_requests_total", method="PUT", status="201") == 1
    assert total(s, "geofed_redirects_total") == 0, "streamed, not redirected"


def test_a_stopped_endpoint_goes_down_in_the_metrics(layout: Layout) -> None:
    with GeofedServer(layout.settings()) as server:
        s = scrape(server)
        assert value(s, "geofed_endpoint_up", endpoint="victoria") == 1
        assert value(s, "geofed_endpoint_state", endpoint="victoria", state="up") == 1
        layout.nginx.stop()
        deadline = time.monotonic() + 10
        while value(s, "geofed_endpoint_up", endpoint="victoria") != 0 and time.monotonic() < deadline:
            time.sleep(0.1)
            s = scrape(server)
    assert value(s, "geofed_endpoint_up", endpoint="victoria") == 0
    assert value(s, "geofed_endpoint_state", endpoint="victoria", state="down") == 1
    assert value(s, "geofed_endpoint_up", endpoint="geneva") == 1
    assert value(s, "geofed_endpoint_up", endpoint="vancouver") == 1


def test_l2_hits_and_state_with_two_front_ends(layout: Layout, redis_server: RunningServer) -> None:
    l2 = {
        "kind": "redis",
        "url": f"redis://127.0.0.1:{redis_server.port}/0",
        "namespace": f"m{time.time_ns()}:",
    }
    settings = layout.settings(cache={"ttl": "300s", "l2": l2})
    with GeofedServer(settings) as first, GeofedServer(settings) as second:
        assert get(first, CH, "/fed/data/common.dat")[0] == 302
        time.sleep(0.3)  # the complete answer is written to L2 in the background
        assert get(second, CH, "/fed/data/common.dat")[0] == 302
        by_first, by_second = scrape(first), scrape(second)
    assert value(by_first, "geofed_l2_up") == 1
    assert value(by_first, "geofed_cache_misses_total", level="l2") >= 1
    assert value(by_second, "geofed_cache_hits_total", level="l2") >= 1, "the second front end read L2"
    assert value(by_second, "geofed_redirects_total", method="GET", endpoint="geneva", country="CH") == 1
