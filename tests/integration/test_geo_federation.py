"""The federation's core promise, end to end with real servers and curl: each client goes to its
closest replica; with that site down it goes to the next one; a file only at a far site is found."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from tests.infra.geofed_server import GeofedServer
from tests.integration.federation_sites import Sites, client_ip, curl, redirect_of, three_sites

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sites() -> Iterator[Sites]:
    with three_sites() as made:
        for site in ("cern", "triumf", "uvic"):
            made.put_file(site, "/data/common.dat", f"replica at {site}\n".encode())
        made.put_file("cern", "/data/only-cern.dat", b"only in Geneva\n")
        made.put_file("triumf", "/data/triumf-uvic.dat", b"west coast triumf\n")
        made.put_file("uvic", "/data/triumf-uvic.dat", b"west coast uvic\n")
        yield made


@pytest.fixture(scope="module")
def geofed(sites: Sites) -> Iterator[GeofedServer]:
    with GeofedServer(sites.settings()) as server:
        yield server


def endpoint_of(location: str, sites: Sites) -> str:
    for name, url in sites.urls.items():
        if name != "cern" and location.startswith(url):
            return name
    if "/_geofed/data/cern/" in location:
        return "cern"
    raise AssertionError(f"redirect to an unknown place: {location}")


@pytest.mark.parametrize("site", ["cern", "triumf", "uvic"])
def test_each_client_is_sent_to_its_nearest_site(geofed: GeofedServer, sites: Sites, site: str) -> None:
    status, location = redirect_of(f"{geofed.url}/fed/data/common.dat", client_ip(site))
    assert status == 302
    assert endpoint_of(location, sites) == site
    body = curl("-L", "--interface", client_ip(site), f"{geofed.url}/fed/data/common.dat").stdout
    assert body == f"replica at {site}\n"


def test_alternatives_are_offered_in_link_headers(geofed: GeofedServer, sites: Sites) -> None:
    out = curl(
        "-D", "-", "-o", "/dev/null", "--interface", client_ip("uvic"), f"{geofed.url}/fed/data/common.dat"
    )
    links = [line for line in out.stdout.splitlines() if line.lower().startswith("link:")]
    assert len(links) == 1
    parts = links[0].split(":", 1)[1].split(",")
    assert [p.strip().split(";", 1)[1].strip() for p in parts] == [
        "rel=duplicate; pri=1",
        "rel=duplicate; pri=2",
        'rel=describedby; type="application/metalink4+xml"',
    ]
    assert parts[2].strip().startswith("</fed/data/common.dat?metalink>")
    # next nearest to Victoria is Vancouver, then Geneva
    assert sites.urls["triumf"] in parts[0]
    assert "/_geofed/data/cern/" in parts[1]


def test_file_only_at_the_far_site_is_still_found(geofed: GeofedServer, sites: Sites) -> None:
    status, location = redirect_of(f"{geofed.url}/fed/data/only-cern.dat", client_ip("uvic"))
    assert status == 302
    assert endpoint_of(location, sites) == "cern"
    body = curl("-L", "--interface", client_ip("uvic"), f"{geofed.url}/fed/data/only-cern.dat").stdout
    assert body == "only in Geneva\n"


def test_missing_everywhere_is_404(geofed: GeofedServer) -> None:
    out = curl("-o", "/dev/null", "-w", "%{http_code}", f"{geofed.url}/fed/data/nowhere.dat")
    assert out.stdout == "404"


def test_with_the_nearest_site_down_the_client_gets_the_next_nearest(sites: Sites) -> None:
    # A site of its own, so stopping it does not disturb the other tests.
    from tests.infra.servers import start_nginx_dav

    own = start_nginx_dav(sites.base / "uvic2" / "dav", sites.base / "uvic2" / "work")
    try:
        sites.servers["uvic"], original = own, sites.servers["uvic"]
        sites.roots["uvic"], original_root = own.root, sites.roots["uvic"]  # type: ignore[assignment]
        sites.urls["uvic"], original_url = own.url, sites.urls["uvic"]
        sites.put_file("uvic", "/data/triumf-uvic.dat", b"west coast uvic\n")
        with GeofedServer(sites.settings()) as server:
            url = f"{server.url}/fed/data/triumf-uvic.dat"
            assert endpoint_of(redirect_of(url, client_ip("uvic"))[1], sites) == "uvic"
            own.stop()
            state = wait_for_state(server, "uvic", "down")
            assert state["last_error"]
            status, location = redirect_of(url, client_ip("uvic"))
            assert status == 302
            assert endpoint_of(location, sites) == "triumf"
            assert curl("-L", "--interface", client_ip("uvic"), url).stdout == "west coast triumf\n"
            status_doc = server.run(lambda: server.federation.health.states["uvic"].as_json())
            assert status_doc["state"] == "down"
    finally:
        own.stop()
        sites.servers["uvic"], sites.roots["uvic"], sites.urls["uvic"] = original, original_root, original_url


def wait_for_state(server: GeofedServer, name: str, state: str, limit: float = 5.0) -> dict[str, object]:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        doc = server.run(lambda: server.federation.health.states[name].as_json())
        if doc["state"] == state:
            return doc
        time.sleep(0.05)
    raise AssertionError(f"{name} did not become {state} within {limit} s")


def test_forwarded_for_is_believed_only_from_trusted_proxies(sites: Sites) -> None:
    settings = sites.settings(server={"trusted_proxies": ["127.0.0.1/32"]})
    with GeofedServer(settings) as server:
        url = f"{server.url}/fed/data/common.dat"
        _, via_proxy = redirect_of(url, "127.0.0.1", "-H", f"X-Forwarded-For: {client_ip('uvic')}")
        assert endpoint_of(via_proxy, sites) == "uvic"
        _, spoofed = redirect_of(url, client_ip("triumf"), "-H", f"X-Forwarded-For: {client_ip('cern')}")
        assert endpoint_of(spoofed, sites) == "triumf"
