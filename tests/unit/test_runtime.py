from __future__ import annotations

from pathlib import Path

from geofed.config import settings_from_mapping
from geofed.runtime import Federation
from tests.infra.geoip import build_city_db


def test_endpoint_without_coordinates_is_placed_by_geoip_of_its_host(tmp_path: Path) -> None:
    db = build_city_db(tmp_path / "c.mmdb", {"127.0.2.0/24": ("Vancouver", "CA", 49.28, -123.12)})
    settings = settings_from_mapping(
        {
            "signing": {"secret": "s" * 20},
            "geoip": {"database": str(db)},
            "endpoints": [
                {"name": "placed", "kind": "webdav", "url": "http://127.0.2.5:9/dav"},
                {
                    "name": "configured",
                    "kind": "webdav",
                    "url": "http://127.0.2.6:9/",
                    "location": {"lat": 1, "lon": 2},
                },
                {"name": "unknown", "kind": "webdav", "url": "http://127.0.9.9:9/"},
            ],
        },
        environ={},
    )
    federation = Federation(settings)
    placed = federation.locations["placed"]
    assert placed is not None and (placed.lat, placed.lon) == (49.28, -123.12)
    configured = federation.locations["configured"]
    assert configured is not None and (configured.lat, configured.lon) == (1, 2)
    assert federation.locations["unknown"] is None
    assert federation.geo_db is not None
    federation.geo_db.close()
