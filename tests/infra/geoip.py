"""Build tiny GeoIP2-City databases for tests, so geo-redirection is tested against real mmdb files.

Real GeoLite2 data is large, licensed and changes; a hand-made database maps the test's own
addresses (e.g. loopback sub-nets 127.0.1.0/24, 127.0.2.0/24, ...) to known cities, so one machine
can play clients "in" different places and the expected closest replica is known exactly.

The files are written with PyPI ``mmdb-writer`` in the layout MaxMind uses (IPv6 tree with IPv4 at
``::/96``, ``database_type`` "GeoIP2-City", float64 coordinates), and read back by geofed with
``maxminddb.open_database(path).get(ip)["location"]["latitude" | "longitude"]``.

Gotcha (reference section 9.1): IPv4-mapped IPv6 addresses (``::ffff:127.0.0.1``, as reported by
dual-stack sockets) are not found in such a database; normalise with :func:`normalise_ip` first.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from mmdb_writer import MmdbF64, MmdbU16, MMDBWriter
from netaddr import IPSet  # type: ignore[import-untyped]  # netaddr ships no stubs

CityRecord = tuple[str, str, float, float]
"""(city name, ISO 3166-1 alpha-2 country code, latitude, longitude)."""

ACCURACY_RADIUS_KM = 10


def _city_record(city: str, country: str, latitude: float, longitude: float) -> dict[str, Any]:
    """A GeoIP2-City record; geoip2 requires doubles for coordinates and uint16 for the radius."""
    return {
        "city": {"names": {"en": city}},
        "country": {"iso_code": country, "names": {"en": country}},
        "location": {
            "latitude": MmdbF64(latitude),
            "longitude": MmdbF64(longitude),
            "accuracy_radius": MmdbU16(ACCURACY_RADIUS_KM),
        },
    }


def build_city_db(path: Path, networks: Mapping[str, CityRecord]) -> Path:
    """Write a GeoIP2-City mmdb at ``path`` mapping each CIDR to (city, country, lat, lon).

    IPv4 and IPv6 networks may be mixed. Returns ``path`` so fixtures can ``return build_city_db(...)``.
    """
    for cidr in networks:
        ipaddress.ip_network(cidr)  # fail with a clear ValueError on a typo, before writing
    writer = MMDBWriter(
        ip_version=6,
        ipv4_compatible=True,
        database_type="GeoIP2-City",
        languages=["en"],
        description={"en": "geofed test city database"},
    )
    for cidr, (city, country, latitude, longitude) in networks.items():
        writer.insert_network(IPSet([cidr]), _city_record(city, country, latitude, longitude))
    path.parent.mkdir(parents=True, exist_ok=True)
    writer.to_db_file(str(path))
    return path


def normalise_ip(address: str) -> str:
    """Turn an IPv4-mapped IPv6 address (``::ffff:a.b.c.d``) into plain IPv4; others unchanged."""
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return str(ip.ipv4_mapped)
    return str(ip)
