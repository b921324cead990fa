from __future__ import annotations

from pathlib import Path

import pytest

from geofed.config import ClientNetwork, Location
from geofed.frontend.clientaddr import ClientAddressResolver
from geofed.geo import ClientLocator, GeoDatabase, great_circle_km, normalise_ip
from tests.infra.geoip import build_city_db

GENEVA = Location(lat=46.2044, lon=6.1432)
VANCOUVER = Location(lat=49.2827, lon=-123.1207)


def test_great_circle_distances() -> None:
    assert great_circle_km(GENEVA, GENEVA) == 0
    assert 8250 < great_circle_km(GENEVA, VANCOUVER) < 8400
    victoria = Location(lat=48.4284, lon=-123.3656)
    assert 90 < great_circle_km(VANCOUVER, victoria) < 110


def test_forwarded_for_ignored_without_trusted_proxies() -> None:
    resolver = ClientAddressResolver([])
    assert resolver.resolve("203.0.113.9", "198.51.100.1") == "203.0.113.9"


def test_forwarded_for_believed_only_from_trusted_proxy() -> None:
    resolver = ClientAddressResolver(["10.0.0.0/8"])
    assert resolver.resolve("10.1.2.3", "198.51.100.7") == "198.51.100.7"
    assert resolver.resolve("203.0.113.9", "198.51.100.7") == "203.0.113.9"


def test_forwarded_for_takes_rightmost_untrusted_hop() -> None:
    resolver = ClientAddressResolver(["10.0.0.0/8"])
    # the client claimed to be 1.1.1.1; the proxy appended the real peer 198.51.100.7
    assert resolver.resolve("10.1.2.3", "1.1.1.1, 198.51.100.7, 10.9.9.9") == "198.51.100.7"
    assert resolver.resolve("10.1.2.3", "garbage") == "10.1.2.3"
    assert resolver.resolve("::ffff:10.1.2.3", "198.51.100.7") == "198.51.100.7"


def test_normalise_ip() -> None:
    assert str(normalise_ip("::ffff:127.0.0.1")) == "127.0.0.1"
    assert str(normalise_ip("2001:db8::1")) == "2001:db8::1"
    assert normalise_ip("not-an-ip") is None


@pytest.fixture
def geodb(tmp_path: Path) -> GeoDatabase:
    path = build_city_db(
        tmp_path / "city.mmdb",
        {
            "127.0.1.0/24": ("Geneva", "CH", GENEVA.lat, GENEVA.lon),
            "127.0.2.0/24": ("Vancouver", "CA", VANCOUVER.lat, VANCOUVER.lon),
            "2001:db8:1::/48": ("Vancouver", "CA", VANCOUVER.lat, VANCOUVER.lon),
        },
    )
    return GeoDatabase(path)


def test_geoip_placement_including_mapped_addresses(geodb: GeoDatabase) -> None:
    locator = ClientLocator([], geodb)
    placed = locator.place("127.0.1.5")
    assert placed.location is not None and abs(placed.location.lat - GENEVA.lat) < 1e-6
    assert placed.source == "geoip"
    assert locator.place("::ffff:127.0.2.9").location == locator.place("127.0.2.9").location
    assert locator.place("2001:db8:1::7").location is not None
    assert locator.place("127.0.9.1").location is None
    assert locator.place(None).location is None
    geodb.close()


def test_client_networks_take_precedence_over_geoip(geodb: GeoDatabase) -> None:
    networks = [
        ClientNetwork(cidr="127.0.1.128/25", endpoint="uvic"),
        ClientNetwork(cidr="127.0.2.0/24", location=GENEVA),
    ]
    locator = ClientLocator(networks, geodb)
    site_local = locator.place("127.0.1.200")
    assert site_local.preferred_endpoint == "uvic"
    assert site_local.source == "client network 127.0.1.128/25"
    assert locator.place("127.0.2.1").location == GENEVA
    assert locator.place("127.0.1.1").source == "geoip"
    geodb.close()
