"""Prometheus metrics at ``GET /_geofed/metrics``, at no cost on the warm redirect path.

Three sources, none of which adds work to a warm redirect:

* **Per-request figures** (requests by method and status, redirects by endpoint and client
  country, the locate latency histogram) are counted from the access-log records
  (:class:`~geofed.frontend.accesslog.RequestEvents`), in its background flush, in batches: one
  C-level count per batch of records, then a little Python per *distinct* (method, status,
  decision, endpoint, client). The client's country comes from the GeoIP database, looked up once
  per address (a bounded LRU), so neither many clients nor many scrapes hammer it.
* **State** (cache hit and miss counters, endpoint health and probe latency, L2 availability,
  checksum computations, the L1 sizes) is read from the federation when Prometheus scrapes.
* **Events counted where they happen, off the warm path**: fan-out answers and timeouts per
  endpoint (the locator), bytes streamed through geofed (upload and read proxies), transfers (the
  copy engine calls :func:`transfer_started` / :func:`transfer_finished`), and L2 lookups. These
  are process-wide plain counters (one process is one scrape target; ``--workers N`` are N).

Labels are bounded: methods outside the HTTP/WebDAV set are ``other``, countries are ISO 3166
alpha-2 codes or ``unknown``, endpoints are configured names.
"""

from __future__ import annotations

import functools
import logging
from bisect import bisect_left
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable, Iterator
from operator import itemgetter
from typing import TYPE_CHECKING, Any

import maxminddb
from aiohttp import web
from prometheus_client import CollectorRegistry, ProcessCollector
from prometheus_client.exposition import choose_encoder
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from geofed.federation.cache import TTLCache
from geofed.geo import normalise_ip

if TYPE_CHECKING:
    from geofed.federation.l2 import SharedCache
    from geofed.frontend.accesslog import Record, RequestEvents
    from geofed.runtime import Federation

log = logging.getLogger("geofed.metrics")

LOCATE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Upper bounds (seconds) of the locate latency histogram; ``+Inf`` is added."""
COUNTRY_CACHE_SIZE = 16384
UNKNOWN_COUNTRY = "unknown"
METHODS = frozenset(
    {
        *("GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS", "PATCH", "TRACE", "CONNECT"),
        *("PROPFIND", "PROPPATCH", "MKCOL", "COPY", "MOVE", "LOCK", "UNLOCK"),
    }
)
"""Methods counted under their own name; any other is counted as ``other`` (labels stay bounded)."""
_REQUEST_KEY = itemgetter(1, 5, 6, 7, 3)  # method, status, decision, endpoint, client


# -- counted where they happen (process-wide) --------------------------------------------------


class _ProcessCounters:
    """Plain counters incremented by the code that sees the event; read at scrape time."""

    def __init__(self) -> None:
        self.fanout_answers: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.fanout_timeouts: defaultdict[str, int] = defaultdict(int)
        self.proxied_bytes: defaultdict[tuple[str, str], int] = defaultdict(int)
        self.transfers_started = 0
        self.transfers_finished: defaultdict[str, int] = defaultdict(int)
        self.copied_bytes = 0


COUNTERS = _ProcessCounters()


def fanout_answer(endpoint: str, answer: str) -> None:
    """An endpoint answered a locate fan-out: ``found``, ``absent`` or ``error``."""
    COUNTERS.fanout_answers[endpoint, answer] += 1


def fanout_timeout(endpoint: str) -> None:
    """An endpoint did not answer a locate fan-out within the deadline."""
    COUNTERS.fanout_timeouts[endpoint] += 1


def bytes_proxied(direction: str, endpoint: str, count: int) -> None:
    """``count`` bytes streamed through geofed to (``upload``) or from (``download``) ``endpoint``."""
    if count:
        COUNTERS.proxied_bytes[direction, endpoint] += count


def transfer_started() -> None:
    """A copy (third-party or COPY) started running: call once per copy, then :func:`transfer_finished`."""
    COUNTERS.transfers_started += 1


def transfer_finished(ok: bool, nbytes: int) -> None:
    """A copy ended, successfully or not (failed or cancelled), having moved ``nbytes`` bytes."""
    COUNTERS.transfers_finished["ok" if ok else "failed"] += 1
    COUNTERS.copied_bytes += max(0, nbytes)


# -- the per-app metrics -----------------------------------------------------------------------


class Metrics:
    """The metrics of one application: the request counters fed by its records, the collector
    reading its federation, and the registry the scrape renders."""

    def __init__(self, federation: Federation, *, process_collector: bool = True) -> None:
        self.federation = federation
        self.requests: Counter[tuple[str, int]] = Counter()
        self.redirects: Counter[tuple[str, str, str]] = Counter()
        """(method, endpoint, country) → count."""
        self.locate_buckets = [0] * (len(LOCATE_BUCKETS) + 1)
        self.locate_sum = 0.0
        self.l2_lookups: Counter[str] = Counter()
        """``hit`` / ``miss`` → count of L2 value lookups (probe sharing excluded)."""
        self._geo: Any = None
        database = federation.settings.geoip.database
        if database is not None:  # a reader of its own: geo.GeoDatabase gives locations only
            self._geo = maxminddb.open_database(str(database))
        self.country = functools.lru_cache(maxsize=COUNTRY_CACHE_SIZE)(self._lookup_country)
        """The ISO country code of a client address (LRU-cached; ``unknown`` when none)."""
        self.adopt(federation)
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(_FederationCollector(self))
        if process_collector:
            ProcessCollector(registry=self.registry)

    def adopt(self, federation: Federation) -> None:
        """Read the state of ``federation`` from now on (after a configuration reload); every
        counter carries on. The GeoIP reader of the country label stays the one opened at start."""
        self.federation = federation
        if federation.shared is not None:
            _count_lookups(federation.shared.cache, self.l2_lookups)

    def close(self) -> None:
        if self._geo is not None:
            self._geo.close()
            self._geo = None
        self.country.cache_clear()

    # -- the records consumer (background, every 20 ms) ----------------------------------------

    def consume(self, records: list[Record]) -> None:
        """Count a batch of request records (a :class:`RequestEvents` consumer)."""
        batch = Counter(map(_REQUEST_KEY, records))
        requests, redirects, country = self.requests, self.redirects, self.country
        for (method, status, decision, endpoint, client), count in batch.items():
            if method not in METHODS:
                method = "other"
            requests[method, status] += count
            if decision == "redirect" and endpoint is not None:
                redirects[method, endpoint, country(client)] += count
        buckets = self.locate_buckets
        for seconds in filter(None, map(itemgetter(8), records)):  # 0.0 (a cache hit) and None skipped
            buckets[bisect_left(LOCATE_BUCKETS, seconds)] += 1
            self.locate_sum += seconds

    def _lookup_country(self, address: str | None) -> str:
        if self._geo is None or not address:
            return UNKNOWN_COUNTRY
        ip = normalise_ip(address)
        if ip is None:
            return UNKNOWN_COUNTRY
        try:
            record = self._geo.get(ip)
        except ValueError:
            return UNKNOWN_COUNTRY
        return country_code(record)

    # -- the scrape ------------------------------------------------------------------------------

    def render(self, accept: str = "") -> tuple[bytes, str]:
        """The exposition (body, content type) for a scrape with this ``Accept`` header."""
        encoder, content_type = choose_encoder(accept)
        return encoder(self.registry), content_type


def country_code(record: object) -> str:
    """The ISO 3166-1 alpha-2 code of a GeoIP2/GeoLite2 City or Country record: its ``country``,
    else its ``registered_country``; ``unknown`` when neither has a two-letter code."""
    if isinstance(record, dict):
        for key in ("country", "registered_country"):
            part = record.get(key)
            code = part.get("iso_code") if isinstance(part, dict) else None
            if isinstance(code, str) and len(code) == 2 and code.isascii() and code.isalpha():
                return code.upper()
    return UNKNOWN_COUNTRY


def _count_lookups(cache: SharedCache, lookups: Counter[str]) -> None:
    """Count hits and misses of ``cache.get`` on this instance (the L2 classes keep no counters;
    every L2 reader -- locator, listings, checksums -- goes through ``get``)."""
    inner = cache.get

    async def get(key: str) -> bytes | None:
        value = await inner(key)
        if not key.startswith("health:"):  # probe sharing, not a cache lookup
            lookups["miss" if value is None else "hit"] += 1
        return value

    cache.get = get  # type: ignore[method-assign]


class _FederationCollector:
    """Builds every ``geofed_*`` family when Prometheus scrapes."""

    def __init__(self, metrics: Metrics) -> None:
        self._metrics = metrics

    def collect(self) -> Iterator[Metric]:
        m = self._metrics
        fed = m.federation
        yield from _request_families(m)
        yield from _cache_families(m, fed)
        yield from _endpoint_families(fed)
        yield from _process_families()
        checksums = fed.checksums
        yield CounterMetricFamily(
            "geofed_checksum_computations",
            "Checksums geofed computed by reading a replica (each pass computes every algorithm).",
            value=checksums.computations,
        )
        yield CounterMetricFamily(
            "geofed_checksum_hashed_bytes",
            "Bytes read and hashed to compute checksums.",
            value=checksums.bytes_hashed,
        )


def _request_families(m: Metrics) -> Iterator[Metric]:
    requests = CounterMetricFamily(
        "geofed_requests",
        "Requests answered, by method and status (namespace and data route; not /_geofed/ pages).",
        labels=["method", "status"],
    )
    for (method, status), count in sorted(m.requests.items()):
        requests.add_metric([method, str(status)], count)
    yield requests
    redirects = CounterMetricFamily(
        "geofed_redirects",
        "Redirects to an endpoint (GET 302, PUT 307), by endpoint and by the client's country "
        "(ISO 3166 code from GeoIP, 'unknown' without one).",
        labels=["method", "endpoint", "country"],
    )
    for (method, endpoint, country), count in sorted(m.redirects.items()):
        redirects.add_metric([method, endpoint, country], count)
    yield redirects
    cumulative, buckets = 0, []
    for bound, count in zip((*LOCATE_BUCKETS, float("inf")), m.locate_buckets, strict=True):
        cumulative += count
        buckets.append((_bound(bound), cumulative))
    yield HistogramMetricFamily(
        "geofed_locate_seconds",
        "Time a request waited for a path to be located (fan-out to the endpoints, or L2); "
        "answers from the in-process cache are not counted.",
        buckets=buckets,
        sum_value=m.locate_sum,
    )


def _bound(value: float) -> str:
    return "+Inf" if value == float("inf") else repr(value)


def _cache_families(m: Metrics, fed: Federation) -> Iterator[Metric]:
    levels: list[tuple[str, int, int]] = [
        ("l1_locate", fed.locations_cache.hits, fed.locations_cache.misses),
        ("l1_listing", fed.listings_cache.hits, fed.listings_cache.misses),
    ]
    if fed.shared is not None:
        levels.append(("l2", m.l2_lookups["hit"], m.l2_lookups["miss"]))
    checksum_cache = getattr(fed.checksums, "_cache", None)  # the service's L1, built by the runtime
    if isinstance(checksum_cache, TTLCache):
        levels.append(("checksum", checksum_cache.hits, checksum_cache.misses))
    hits = CounterMetricFamily(
        "geofed_cache_hits",
        "Cache lookups that found a live entry, per level: l1_locate (replica lists), l1_listing "
        "(merged listings), l2 (the shared cache, every kind of value), checksum (checksums in memory).",
        labels=["level"],
    )
    misses = CounterMetricFamily(
        "geofed_cache_misses",
        "Cache lookups that found nothing or an expired entry, per level (as geofed_cache_hits); "
        "one request may look up a level more than once.",
        labels=["level"],
    )
    for level, hit, miss in levels:
        hits.add_metric([level], hit)
        misses.add_metric([level], miss)
    yield hits
    yield misses
    entries = GaugeMetricFamily(
        "geofed_cache_entries", "Entries held now by an in-process cache.", labels=["level"]
    )
    entries.add_metric(["l1_locate"], len(fed.locations_cache))
    entries.add_metric(["l1_listing"], len(fed.listings_cache))
    yield entries
    if fed.shared is not None:
        yield GaugeMetricFamily(
            "geofed_l2_up",
            "1 while the shared (L2) cache is available, 0 while geofed serves without it.",
            value=1 if fed.shared.cache.state.available else 0,
        )


def _endpoint_families(fed: Federation) -> Iterator[Metric]:
    up = GaugeMetricFamily(
        "geofed_endpoint_up",
        "1 when the endpoint's last probes passed, 0 when it is down, disabled, or not probed yet.",
        labels=["endpoint"],
    )
    state = GaugeMetricFamily(
        "geofed_endpoint_state",
        "The endpoint's health state (1 for the current one): up, down, disabled or unknown.",
        labels=["endpoint", "state"],
    )
    latency = GaugeMetricFamily(
        "geofed_endpoint_probe_latency_seconds",
        "Duration of the endpoint's last passing health probe.",
        labels=["endpoint"],
    )
    checked = GaugeMetricFamily(
        "geofed_endpoint_last_probe_timestamp_seconds",
        "When the endpoint was last probed (Unix time).",
        labels=["endpoint"],
    )
    for name, health in sorted(fed.health.states.items()):
        current = health.state
        up.add_metric([name], 1 if current == "up" else 0)
        for candidate in ("up", "down", "disabled", "unknown"):
            state.add_metric([name, candidate], 1 if candidate == current else 0)
        if health.latency is not None:
            latency.add_metric([name], health.latency)
        if health.last_check is not None:
            checked.add_metric([name], health.last_check)
    yield from (up, state, latency, checked)


def _process_families() -> Iterator[Metric]:
    c = COUNTERS
    answers = CounterMetricFamily(
        "geofed_fanout_answers",
        "Answers of endpoints to locate fan-outs: found, absent, or error (could not say).",
        labels=["endpoint", "answer"],
    )
    for (endpoint, answer), count in sorted(c.fanout_answers.items()):
        answers.add_metric([endpoint, answer], count)
    yield answers
    timeouts = CounterMetricFamily(
        "geofed_fanout_timeouts",
        "Locate fan-outs an endpoint did not answer within federation.locate_timeout.",
        labels=["endpoint"],
    )
    for endpoint, count in sorted(c.fanout_timeouts.items()):
        timeouts.add_metric([endpoint], count)
    yield timeouts
    proxied = CounterMetricFamily(
        "geofed_proxied_bytes",
        "Bytes streamed through geofed instead of redirected: upload (client to endpoint) or "
        "download (endpoint to client).",
        labels=["direction", "endpoint"],
    )
    for (direction, endpoint), count in sorted(c.proxied_bytes.items()):
        proxied.add_metric([direction, endpoint], count)
    yield proxied
    yield CounterMetricFamily(
        "geofed_copied_bytes",
        "Bytes moved by finished copies (COPY, third-party copy).",
        value=c.copied_bytes,
    )
    finished_total = sum(c.transfers_finished.values())
    yield GaugeMetricFamily(
        "geofed_transfers_running",
        "Copies running now.",
        value=max(0, c.transfers_started - finished_total),
    )
    finished = CounterMetricFamily(
        "geofed_transfers_finished", "Copies finished, by result: ok or failed.", labels=["result"]
    )
    for result in ("ok", "failed"):
        finished.add_metric([result], c.transfers_finished[result])
    yield finished


# -- the route --------------------------------------------------------------------------------


def metrics_handler(
    metrics: Metrics, events: RequestEvents | None = None
) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
    """``GET /_geofed/metrics``: the records still pending are counted first, so a scrape is current."""

    async def handle(request: web.Request) -> web.StreamResponse:
        if events is not None:
            events.flush()
        body, content_type = metrics.render(request.headers.get("Accept", ""))
        return web.Response(body=body, headers={"Content-Type": content_type})

    return handle
