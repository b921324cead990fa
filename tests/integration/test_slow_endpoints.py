"""A slow endpoint must not delay clients whose closest replica is elsewhere; the locate deadline
bounds everyone else, and an endpoint that cannot answer in time is "unknown" (503), not "absent".

triumf (Vancouver) is a real Apache reached through the test delay proxy; cern (Geneva) is a local
directory answering at once.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.infra.geofed_server import GeofedServer
from tests.infra.servers import RunningServer, start_delay_proxy
from tests.integration.federation_sites import Sites, client_ip, curl, redirect_of, three_sites

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sites() -> Iterator[Sites]:
    with three_sites() as made:
        for site in ("cern", "triumf"):
            made.put_file(site, "/data/both.dat", f"at {site}\n".encode())
        made.put_file("triumf", "/data/only-triumf.dat", b"far\n")
        yield made


def delayed(sites: Sites, one_way_ms: float) -> RunningServer:
    apache = sites.servers["triumf"]
    return start_delay_proxy("127.0.0.1", apache.port, one_way_ms)


def settings_with_proxy(sites: Sites, proxy: RunningServer, locate_timeout: str) -> object:
    original = sites.urls["triumf"]
    sites.urls["triumf"] = proxy.url
    try:
        settings = sites.settings(
            federation={"locate_timeout": locate_timeout, "fuzz_km": 0},
            health={"interval": "60s", "timeout": "10s"},
        )
    finally:
        sites.urls["triumf"] = original
    # uvic (nginx) is not part of these scenarios
    return settings.model_copy(update={"endpoints": tuple(e for e in settings.endpoints if e.name != "uvic")})


def timed_redirect(url: str, ip: str) -> tuple[int, str, float]:
    started = time.monotonic()
    status, location = redirect_of(url, ip)
    return status, location, time.monotonic() - started


def test_client_near_fast_site_does_not_wait_for_slow_one(sites: Sites) -> None:
    proxy = delayed(sites, 300)
    try:
        with GeofedServer(settings_with_proxy(sites, proxy, "3s"), probe_first=False) as server:  # type: ignore[arg-type]
            status, location, elapsed = timed_redirect(f"{server.url}/fed/data/both.dat", client_ip("cern"))
            assert status == 302 and "/_geofed/data/cern/" in location
            # triumf needs >= 4 x 300 ms through the proxy; Geneva's client must not wait for it
            assert elapsed < 0.5, elapsed
    finally:
        proxy.stop()


def test_client_near_slow_site_waits_for_it_within_the_deadline(sites: Sites) -> None:
    proxy = delayed(sites, 150)
    try:
        with GeofedServer(settings_with_proxy(sites, proxy, "3s"), probe_first=False) as server:  # type: ignore[arg-type]
            status, location, elapsed = timed_redirect(f"{server.url}/fed/data/both.dat", client_ip("triumf"))
            assert status == 302 and location.startswith(proxy.url), location
            assert 0.5 < elapsed < 3.0, elapsed
    finally:
        proxy.stop()


def test_deadline_bounds_the_wait_and_unknown_is_503_not_404(sites: Sites) -> None:
    proxy = delayed(sites, 2000)
    try:
        with GeofedServer(settings_with_proxy(sites, proxy, "0.5s"), probe_first=False) as server:  # type: ignore[arg-type]
            # the nearest (triumf) is too slow: after the deadline the client gets the replica in Geneva
            status, location, elapsed = timed_redirect(f"{server.url}/fed/data/both.dat", client_ip("triumf"))
            assert status == 302 and "/_geofed/data/cern/" in location
            assert 0.4 < elapsed < 1.5, elapsed
            # a file only the slow site has: the answer is unknown, so 503 with Retry-After
            started = time.monotonic()
            out = curl("-D", "-", "-o", "/dev/null", f"{server.url}/fed/data/only-triumf.dat")
            elapsed = time.monotonic() - started
            head = out.stdout.lower()
            assert head.startswith("http/1.1 503"), out.stdout
            assert "retry-after:" in head
            assert 0.4 < elapsed < 1.5, elapsed
            body = curl(f"{server.url}/fed/data/only-triumf.dat").stdout
            assert "triumf" in body and "no answer within 0.5 s" in body
    finally:
        proxy.stop()
