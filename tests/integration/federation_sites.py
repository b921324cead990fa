"""Three federation "sites" at real coordinates, each a different real endpoint kind.

cern (Geneva) is a local directory, triumf (Vancouver) a real Apache mod_dav, uvic (Victoria) a
real nginx dav-ext. A GeoIP database built for the test places loopback sub-networks at each
city, so a client bound to 127.0.2.x is "in Vancouver".
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from geofed.config import Settings, settings_from_mapping
from tests.infra.geoip import build_city_db
from tests.infra.policies import OPEN_POLICY
from tests.infra.servers import RunningServer, start_apache_dav, start_nginx_dav

CITIES = {
    "cern": ("Geneva", "CH", 46.2044, 6.1432, "127.0.1.0/24", "127.0.1.10"),
    "triumf": ("Vancouver", "CA", 49.2827, -123.1207, "127.0.2.0/24", "127.0.2.10"),
    "uvic": ("Victoria", "CA", 48.4284, -123.3656, "127.0.3.0/24", "127.0.3.10"),
}


def client_ip(site: str) -> str:
    """A loopback address the test GeoIP database places in ``site``'s city."""
    return CITIES[site][5]


@dataclass
class Sites:
    base: Path
    roots: dict[str, Path]
    urls: dict[str, str]
    servers: dict[str, RunningServer]
    geoip: Path

    def put_file(self, site: str, path: str, content: bytes) -> None:
        target = self.roots[site] / path.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content)
        os.chmod(target, 0o644)
        if site in self.servers and os.geteuid() == 0:
            shutil.chown(target, "www-data", "www-data")
            for parent in target.parents:
                if parent == self.roots[site]:
                    break
                shutil.chown(parent, "www-data", "www-data")

    def settings(self, **overrides: Any) -> Settings:
        endpoints = []
        for name, (_city, _cc, lat, lon, _net, _ip) in CITIES.items():
            kind = "local" if name not in self.servers else "webdav"
            endpoints.append(
                {
                    "name": name,
                    "kind": kind,
                    "url": self.urls[name],
                    "prefixes": [{"federated": "/fed", "endpoint": "/"}],
                    "writable": True,
                    "location": {"lat": lat, "lon": lon},
                    "timeout": "2s",
                }
            )
        mapping: dict[str, Any] = {
            "signing": {"secret": secrets.token_urlsafe(24)},
            "auth": OPEN_POLICY,
            "geoip": {"database": str(self.geoip)},
            "federation": {"locate_timeout": "2s", "fuzz_km": 0},
            "health": {"interval": "0.2s", "timeout": "0.5s"},
            "endpoints": endpoints,
        }
        for key, value in overrides.items():
            if isinstance(value, Mapping) and isinstance(mapping.get(key), Mapping):
                mapping[key] = {**mapping[key], **value}
            else:
                mapping[key] = value
        return settings_from_mapping(mapping, environ={})


@contextmanager
def three_sites() -> Iterator[Sites]:
    base = Path(tempfile.mkdtemp(prefix="geofed-sites-"))
    os.chmod(base, 0o755)
    servers: dict[str, RunningServer] = {}
    try:
        roots = {"cern": base / "cern"}
        roots["cern"].mkdir()
        servers["triumf"] = start_apache_dav(base / "triumf" / "dav", base / "triumf" / "work")
        servers["uvic"] = start_nginx_dav(base / "uvic" / "dav", base / "uvic" / "work")
        for name, server in servers.items():
            assert server.root is not None
            roots[name] = server.root
        urls = {"cern": roots["cern"].as_uri(), **{n: s.url for n, s in servers.items()}}
        geoip = build_city_db(
            base / "city.mmdb",
            {net: (city, cc, lat, lon) for city, cc, lat, lon, net, _ip in CITIES.values()},
        )
        yield Sites(base, roots, urls, servers, geoip)
    finally:
        for server in servers.values():
            server.stop()
        shutil.rmtree(base, ignore_errors=True)


def curl(*args: str, timeout: float = 20) -> subprocess.CompletedProcess[str]:
    """Run curl (the real client); never through a proxy from the environment."""
    return subprocess.run(
        ["curl", "--noproxy", "*", "-sS", *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def redirect_of(url: str, source_ip: str, *curl_args: str) -> tuple[int, str]:
    """The status and Location geofed answers a GET from ``source_ip`` with."""
    out = curl(
        "--interface", source_ip, *curl_args, "-o", "/dev/null", "-w", "%{http_code} %{redirect_url}", url
    )
    status, _, location = out.stdout.partition(" ")
    return int(status), location
