"""The metrics' pure logic: counting request records, the collector over a federation's state, the
process counters, and the access-log formats fed by the same records.

A real ``Federation`` (two local endpoints, never started) and a real GeoIP database built for the
test stand in for a server; the scrape is rendered and parsed back with prometheus_client's parser,
as Prometheus would read it.
"""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from geofed import metrics
from geofed.config import settings_from_mapping
from geofed.frontend.accesslog import AccessLogWriter, Record, RequestEvents
from geofed.metrics import Metrics, country_code
from geofed.runtime import Federation
from tests.infra.geoip import build_city_db

CH_CLIENT, CA_CLIENT, NOWHERE_CLIENT = "10.1.0.5", "10.2.0.7", "192.0.2.1"


@pytest.fixture
def federation(tmp_path: Path) -> Iterator[Federation]:
    db = build_city_db(
        tmp_path / "city.mmdb",
        {
            "10.1.0.0/16": ("Geneva", "CH", 46.2, 6.14),
            "10.2.0.0/16": ("Vancouver", "CA", 49.28, -123.12),
        },
    )
    endpoints = []
    for name in ("geneva", "vancouver"):
        (tmp_path / name).mkdir()
        endpoints.append(
            {
                "name": name,
                "kind": "local",
                "url": (tmp_path / name).as_uri(),
                "prefixes": [{"federated": "/fed", "endpoint": "/"}],
            }
        )
    settings = settings_from_mapping(
        {"signing": {"secret": "s" * 20}, "geoip": {"database": str(db)}, "endpoints": endpoints},
        environ={},
    )
    fed = Federation(settings)
    yield fed
    if fed.geo_db is not None:
        fed.geo_db.close()


@pytest.fixture
def collected(federation: Federation) -> Iterator[Metrics]:
    m = Metrics(federation, process_collector=False)
    yield m
    m.close()


def scrape(m: Metrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a rendered scrape: (sample name, sorted labels) -> value."""
    body, content_type = m.render()
    assert content_type.startswith("text/plain")
    samples: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(body.decode()):
        assert family.documentation, f"{family.name} has no HELP text"
        for sample in family.samples:
            samples[sample.name, tuple(sorted(sample.labels.items()))] = sample.value
    return samples


def value(samples: dict[tuple[str, tuple[tuple[str, str], ...]], float], name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def rec(
    method: str = "GET",
    status: int = 302,
    decision: str = "redirect",
    endpoint: str | None = "geneva",
    client: str | None = CH_CLIENT,
    locate: float | None = 0.0,
    path: str = "/fed/a",
) -> Record:
    return (time.time(), method, path, client, "-", status, decision, endpoint, locate)


def test_requests_and_redirects_are_counted_from_the_records(collected: Metrics) -> None:
    collected.consume([rec() for _ in range(3)] + [rec(endpoint="vancouver", client=CA_CLIENT)])
    collected.consume(
        [
            rec(method="PUT", status=307, endpoint="vancouver", client=f"::ffff:{CA_CLIENT}"),
            rec(client=NOWHERE_CLIENT),
            rec(client=None),
            rec(method="HEAD", status=200, decision="stat", endpoint=None),
            rec(status=404, decision="error", endpoint=None),
            rec(method="BREW", status=405, decision="error", endpoint=None),
            rec(status=200, decision="data", endpoint="geneva", locate=None),
        ]
    )
    s = scrape(collected)
    assert value(s, "geofed_requests_total", method="GET", status="302") == 6
    assert value(s, "geofed_requests_total", method="PUT", status="307") == 1
    assert value(s, "geofed_requests_total", method="HEAD", status="200") == 1
    assert value(s, "geofed_requests_total", method="GET", status="404") == 1
    assert value(s, "geofed_requests_total", method="GET", status="200") == 1
    # an arbitrary method is counted, under a bounded label
    assert value(s, "geofed_requests_total", method="other", status="405") == 1
    assert ("geofed_requests_total", (("method", "BREW"), ("status", "405"))) not in s

    assert value(s, "geofed_redirects_total", method="GET", endpoint="geneva", country="CH") == 3
    assert value(s, "geofed_redirects_total", method="GET", endpoint="vancouver", country="CA") == 1
    assert value(s, "geofed_redirects_total", method="PUT", endpoint="vancouver", country="CA") == 1
    assert value(s, "geofed_redirects_total", method="GET", endpoint="geneva", country="unknown") == 2
    redirects = sum(v for (name, _), v in s.items() if name == "geofed_redirects_total")
    assert redirects == 7, "only redirect decisions are redirects (not data, stat or errors)"


def test_country_is_looked_up_once_per_client_address(collected: Metrics) -> None:
    for _ in range(50):
        collected.consume([rec(client=CH_CLIENT), rec(client=CA_CLIENT), rec(client=CH_CLIENT)])
    info = collected.country.cache_info()
    assert info.misses == 2
    assert info.maxsize == metrics.COUNTRY_CACHE_SIZE
    assert (
        value(scrape(collected), "geofed_redirects_total", method="GET", endpoint="geneva", country="CH")
        == 100
    )


def test_country_code_reads_country_then_registered_country() -> None:
    assert country_code({"country": {"iso_code": "ch"}}) == "CH"
    assert country_code({"registered_country": {"iso_code": "DE"}}) == "DE"
    assert country_code({"country": {"iso_code": "FR"}, "registered_country": {"iso_code": "DE"}}) == "FR"
    for record in (None, {}, {"country": {}}, {"country": {"iso_code": "EU1"}}, {"country": "CH"}, [1]):
        assert country_code(record) == "unknown"


def test_without_a_geoip_database_every_country_is_unknown(tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    settings = settings_from_mapping(
        {
            "signing": {"secret": "s" * 20},
            "endpoints": [{"name": "d", "kind": "local", "url": (tmp_path / "d").as_uri()}],
        },
        environ={},
    )
    m = Metrics(Federation(settings), process_collector=False)
    m.consume([rec(endpoint="d")])
    assert value(scrape(m), "geofed_redirects_total", method="GET", endpoint="d", country="unknown") == 1


def test_locate_histogram_counts_real_locates_only(collected: Metrics) -> None:
    collected.consume(
        [
            rec(locate=0.0),  # an in-process cache hit
            rec(locate=None),  # no locate at all
            rec(locate=0.003),
            rec(locate=0.2),
            rec(method="HEAD", status=200, decision="stat", locate=0.2),
            rec(locate=50.0),
        ]
    )
    s = scrape(collected)
    assert value(s, "geofed_locate_seconds_count") == 4
    assert value(s, "geofed_locate_seconds_sum") == pytest.approx(50.403)
    assert value(s, "geofed_locate_seconds_bucket", le="0.001") == 0
    assert value(s, "geofed_locate_seconds_bucket", le="0.005") == 1
    assert value(s, "geofed_locate_seconds_bucket", le="0.25") == 3
    assert value(s, "geofed_locate_seconds_bucket", le="30.0") == 3
    assert value(s, "geofed_locate_seconds_bucket", le="+Inf") == 4


def test_cache_and_endpoint_state_are_read_at_scrape_time(federation: Federation, collected: Metrics) -> None:
    s = scrape(collected)
    assert value(s, "geofed_endpoint_state", endpoint="geneva", state="unknown") == 1
    assert value(s, "geofed_endpoint_up", endpoint="geneva") == 0

    cache = federation.locations_cache
    cache.put("/fed/a", "answer", 60)  # type: ignore[arg-type]  # the collector only counts
    for _ in range(4):
        cache.get("/fed/a")
    cache.get("/fed/missing")
    federation.listings_cache.get("/fed")
    health = federation.health
    health._record("geneva", 0.0125, None)
    health._record("vancouver", 0.5, "connection refused")
    s = scrape(collected)
    assert value(s, "geofed_cache_hits_total", level="l1_locate") == 4
    assert value(s, "geofed_cache_misses_total", level="l1_locate") == 1
    assert value(s, "geofed_cache_misses_total", level="l1_listing") == 1
    assert value(s, "geofed_cache_hits_total", level="checksum") == 0
    assert ("geofed_cache_hits_total", (("level", "l2"),)) not in s, "no L2 configured"
    assert value(s, "geofed_cache_entries", level="l1_locate") == 1
    assert value(s, "geofed_endpoint_up", endpoint="geneva") == 1
    assert value(s, "geofed_endpoint_up", endpoint="vancouver") == 0
    assert value(s, "geofed_endpoint_state", endpoint="vancouver", state="down") == 1
    assert value(s, "geofed_endpoint_state", endpoint="vancouver", state="up") == 0
    assert value(s, "geofed_endpoint_probe_latency_seconds", endpoint="geneva") == 0.0125
    assert value(s, "geofed_endpoint_last_probe_timestamp_seconds", endpoint="geneva") > 0

    health.set_disabled("geneva", True)
    s = scrape(collected)
    assert value(s, "geofed_endpoint_up", endpoint="geneva") == 0
    assert value(s, "geofed_endpoint_state", endpoint="geneva", state="disabled") == 1


def test_process_counters_and_the_transfer_api(collected: Metrics) -> None:
    before = scrape(collected)

    def grew(after: dict[Any, float], name: str, **labels: str) -> float:
        return value(after, name, **labels) - value(before, name, **labels)

    metrics.fanout_answer("geneva", "found")
    metrics.fanout_answer("geneva", "absent")
    metrics.fanout_answer("vancouver", "error")
    metrics.fanout_timeout("vancouver")
    metrics.bytes_proxied("upload", "geneva", 1000)
    metrics.bytes_proxied("download", "vancouver", 250)
    metrics.bytes_proxied("download", "vancouver", 0)
    metrics.transfer_started()
    metrics.transfer_started()
    mid = scrape(collected)
    assert grew(mid, "geofed_transfers_running") == 2
    metrics.transfer_finished(True, 4096)
    metrics.transfer_finished(False, 10)
    after = scrape(collected)
    assert grew(after, "geofed_fanout_answers_total", endpoint="geneva", answer="found") == 1
    assert grew(after, "geofed_fanout_answers_total", endpoint="geneva", answer="absent") == 1
    assert grew(after, "geofed_fanout_answers_total", endpoint="vancouver", answer="error") == 1
    assert grew(after, "geofed_fanout_timeouts_total", endpoint="vancouver") == 1
    assert grew(after, "geofed_proxied_bytes_total", direction="upload", endpoint="geneva") == 1000
    assert grew(after, "geofed_proxied_bytes_total", direction="download", endpoint="vancouver") == 250
    assert grew(after, "geofed_transfers_running") == 0
    assert grew(after, "geofed_transfers_finished_total", result="ok") == 1
    assert grew(after, "geofed_transfers_finished_total", result="failed") == 1
    assert grew(after, "geofed_copied_bytes_total") == 4106


async def test_l2_lookups_are_counted_on_the_instance() -> None:
    class FakeL2:
        def __init__(self) -> None:
            self.values = {"loc:/a": b"x", "health:e": b"h"}

        async def get(self, key: str) -> bytes | None:
            return self.values.get(key)

    cache = FakeL2()
    lookups: Any = metrics.Counter()
    metrics._count_lookups(cache, lookups)  # type: ignore[arg-type]
    assert await cache.get("loc:/a") == b"x"
    assert await cache.get("loc:/b") is None
    assert await cache.get("list:/") is None
    assert await cache.get("health:e") == b"h"  # probe sharing is not a cache lookup
    assert lookups == {"hit": 1, "miss": 2}


def test_process_collector_is_in_the_scrape(federation: Federation) -> None:
    m = Metrics(federation)
    names = {f.name for f in text_string_to_metric_families(m.render()[0].decode())}
    assert "process_cpu_seconds" in names
    assert {"geofed_requests", "geofed_redirects", "geofed_locate_seconds", "geofed_endpoint_up"} <= names
    m.close()


def test_openmetrics_is_served_when_asked(collected: Metrics) -> None:
    body, content_type = collected.render("application/openmetrics-text; version=1.0.0")
    assert content_type.startswith("application/openmetrics-text")
    assert body.rstrip().endswith(b"# EOF")


# -- the record stream and the access log ---------------------------------------------------------


def test_every_consumer_gets_every_batch_even_when_one_fails() -> None:
    got: list[list[Record]] = []

    def broken(records: list[Record]) -> None:
        raise RuntimeError("a bug")

    events = RequestEvents([broken, lambda records: got.append(list(records))])
    append = events.appender()
    append(rec())
    events.record("HEAD", "/fed/b", CH_CLIENT, None, 200, "stat", None, 0.001)
    events.flush()
    events.flush()  # nothing pending: consumers are not called
    assert len(got) == 1 and [r[1] for r in got[0]] == ["GET", "HEAD"]
    append(rec(method="PUT"))  # the appender handed out earlier still feeds the stream
    events.flush()
    assert [r[1] for r in got[1]] == ["PUT"]


def test_text_lines_are_unchanged() -> None:
    out = io.StringIO()
    when = 1795669500.25
    AccessLogWriter(out)(
        [
            (when, "GET", "/fed/a b", CH_CLIENT, "-", 302, "redirect", "geneva", 0.0018),
            (when, "GET", "/_geofed/data/x", None, None, 200, "data", None, None),
        ]
    )
    stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))
    assert out.getvalue().splitlines() == [
        f"{stamp} {CH_CLIENT} - GET /fed/a%20b 302 redirect geneva 1.8ms",
        f"{stamp} - - GET /_geofed/data/x 200 data - -",
    ]


def test_json_lines_carry_every_field() -> None:
    out = io.StringIO()
    when = 1795669500.042
    odd_path = '/fed/a "quoted" b\\c\u00e9\n'
    AccessLogWriter(out, "json")(
        [
            (when, "GET", odd_path, CH_CLIENT, "-", 302, "redirect", "geneva", 0.0018),
            (when, "PROPFIND", "/fed", None, "/DC=org/CN=Jane", 207, "propfind", None, None),
        ]
    )
    lines = out.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(when))
    assert first == {
        "time": f"{stamp}.042Z",
        "client": CH_CLIENT,
        "identity": None,
        "method": "GET",
        "path": odd_path,
        "status": 302,
        "decision": "redirect",
        "endpoint": "geneva",
        "locate_ms": 1.8,
    }
    assert second["identity"] == "/DC=org/CN=Jane"
    assert second["client"] is None and second["endpoint"] is None and second["locate_ms"] is None
    assert second["status"] == 207


def test_a_closed_stream_loses_lines_not_requests() -> None:
    out = io.StringIO()
    out.close()
    AccessLogWriter(out, "json")([rec()])  # no exception
