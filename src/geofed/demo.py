"""The embedded default federation: three local "sites" at real coordinates, no external service.

``geofed serve`` without ``--config`` (and ``make run``) builds this in a directory of sample
files so that a new user sees a working federation at once. Loopback sub-networks stand for clients
at each site, so ``curl --interface 127.0.2.1`` behaves like a client in Vancouver.
"""

from __future__ import annotations

import secrets
from pathlib import Path
from typing import Any

from geofed.config import Settings, settings_from_mapping

SITES = {
    "cern": ("Geneva", 46.2330, 6.0557),
    "triumf": ("Vancouver", 49.2480, -123.2320),
    "uvic": ("Victoria", 48.4634, -123.3117),
}

# (path, sites that hold a replica)
SAMPLE_FILES = {
    "/atlas/README.txt": ("cern", "triumf", "uvic"),
    "/atlas/data18/AOD.000123._0001.root": ("cern", "triumf"),
    "/atlas/data18/AOD.000123._0002.root": ("cern", "uvic"),
    "/atlas/mc20/EVNT.998877._0001.root": ("triumf",),
    "/belle/mdst/2024/run0042.mdst": ("uvic", "cern"),
    "/belle/mdst/2024/run0043.mdst": ("uvic",),
}

CLIENT_NETWORKS = {
    "127.0.1.0/24": "cern",
    "127.0.2.0/24": "triumf",
    "127.0.3.0/24": "uvic",
}


def prepare_demo_sites(base: Path) -> None:
    """Create each site's directory with its sample files (idempotent; existing files are kept)."""
    for path, sites in SAMPLE_FILES.items():
        for site in sites:
            target = base / site / path.lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            if not target.exists():
                content = f"geofed demo file {path}\nreplica at {site} ({SITES[site][0]})\n"
                target.write_text(content * (1 + len(path)), encoding="utf-8")


def demo_mapping(base: Path, host: str = "127.0.0.1", port: int = 8080) -> dict[str, Any]:
    return {
        "server": {"host": host, "port": port},
        "signing": {"secret": secrets.token_urlsafe(32), "url_lifetime": "10m"},
        "federation": {"locate_timeout": "3s", "fuzz_km": 50},
        "health": {"interval": "10s", "timeout": "2s"},
        # The demo runs on loopback with sample files only: everyone may do everything. A real
        # deployment lists who may do what (docs/configuration.md, `auth`).
        "auth": {"policy": [{"path": "/", "allow": ["all"], "to": ["anyone"]}]},
        "client_networks": [
            {"cidr": cidr, "location": {"lat": SITES[site][1], "lon": SITES[site][2]}}
            for cidr, site in CLIENT_NETWORKS.items()
        ],
        "endpoints": [
            {
                "name": site,
                "kind": "local",
                "url": (base / site).resolve().as_uri(),
                "prefixes": [{"federated": "/", "endpoint": "/"}],
                "writable": True,
                "location": {"lat": lat, "lon": lon},
            }
            for site, (_city, lat, lon) in SITES.items()
        ],
    }


def demo_settings(base: Path, host: str = "127.0.0.1", port: int = 8080) -> Settings:
    prepare_demo_sites(base)
    return settings_from_mapping(demo_mapping(base, host, port), environ={})
