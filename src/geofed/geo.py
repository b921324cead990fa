"""Where clients and endpoints are: GeoIP lookups, configured client networks, distances.

A client is placed, in this order, by the first configured client network that contains its
address (a location, or a preferred endpoint for site-local clients), then by the GeoIP database,
else it stays unplaced (and selection picks a random healthy replica). Placements are cached per
address in a bounded dict because the lookup sits on the request hot path.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import maxminddb

from geofed.config import ClientNetwork, Location

EARTH_RADIUS_KM = 6371.0088
_PLACEMENT_CACHE_SIZE = 65536


def great_circle_km(a: Location, b: Location) -> float:
    """Haversine distance between two points in kilometres."""
    lat1, lat2 = math.radians(a.lat), math.radians(b.lat)
    dlat = lat2 - lat1
    dlon = math.radians(b.lon - a.lon)
    h = math.sin(dlat / 2) ** 2 + math.cos(lat1) * math.cos(lat2) * math.sin(dlon / 2) ** 2
    return 2 * EARTH_RADIUS_KM * math.asin(min(1.0, math.sqrt(h)))


@dataclass(frozen=True, slots=True)
class ClientPlacement:
    """Where a client is believed to be, and why."""

    location: Location | None
    preferred_endpoint: str | None = None
    source: str = "unknown"
    key: int = 0
    """Equal for placements that rank replicas identically, so rankings can be cached by it;
    assigned by :class:`ClientLocator` (0 is the unplaced client)."""


UNPLACED = ClientPlacement(None, None, "unknown")


def normalise_ip(address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address as an object, with IPv4-mapped IPv6 (``::ffff:1.2.3.4``) turned back into IPv4."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


class GeoDatabase:
    """A MaxMind-format City database (GeoLite2-City or one the tests build)."""

    def __init__(self, path: Path) -> None:
        self._reader = maxminddb.open_database(str(path))

    def location(self, ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> Location | None:
        record: Any = self._reader.get(ip)
        if not isinstance(record, dict):
            return None
        loc = record.get("location")
        if not isinstance(loc, dict) or "latitude" not in loc or "longitude" not in loc:
            return None
        return Location(lat=float(loc["latitude"]), lon=float(loc["longitude"]))

    def close(self) -> None:
        self._reader.close()


class ClientLocator:
    """Places client addresses; cheap to call repeatedly for the same address."""

    def __init__(self, networks: Iterable[ClientNetwork], database: GeoDatabase | None) -> None:
        self._networks = [(ipaddress.ip_network(n.cidr), n) for n in networks]
        self._database = database
        self._cache: dict[str, ClientPlacement] = {}
        self._keys: dict[object, int] = {(None, None): 0}

    def place(self, address: str | None) -> ClientPlacement:
        if not address:
            return UNPLACED
        cached = self._cache.get(address)
        if cached is not None:
            return cached
        placement = self._intern(self._lookup(address))
        if len(self._cache) >= _PLACEMENT_CACHE_SIZE:
            self._cache.clear()
        self._cache[address] = placement
        return placement

    def _intern(self, placement: ClientPlacement) -> ClientPlacement:
        """Give placements that rank alike one shared small-integer key."""
        identity = (
            None if placement.location is None else (placement.location.lat, placement.location.lon),
            placement.preferred_endpoint,
        )
        key = self._keys.get(identity)
        if key is None:
            key = self._keys[identity] = len(self._keys) + 1
        return dataclasses.replace(placement, key=key)

    def _lookup(self, address: str) -> ClientPlacement:
        ip = normalise_ip(address)
        if ip is None:
            return UNPLACED
        for network, rule in self._networks:
            if ip.version == network.version and ip in network:
                return ClientPlacement(rule.location, rule.endpoint, f"client network {rule.cidr}")
        if self._database is not None:
            location = self._database.location(ip)
            if location is not None:
                return ClientPlacement(location, None, "geoip")
        return UNPLACED
