"""Three geofed front ends sharing one L2 (real memcached or real Redis) act as one federation:
a write through any of them is seen at once through the others, and L2 trouble never stops them."""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import pytest

from geofed.config import settings_from_mapping
from tests.infra.geofed_server import GeofedServer
from tests.infra.policies import OPEN_POLICY
from tests.infra.servers import RunningServer
from tests.integration.federation_sites import curl

pytestmark = pytest.mark.integration


def l2_settings(kind: str, server: RunningServer) -> dict[str, Any]:
    if kind == "memcached":
        return {
            "kind": "memcached",
            "servers": [f"127.0.0.1:{server.port}"],
            "namespace": f"t{secrets.token_hex(4)}:",
        }
    return {
        "kind": "redis",
        "url": f"redis://127.0.0.1:{server.port}/0",
        "namespace": f"t{secrets.token_hex(4)}:",
    }


@pytest.fixture(params=["memcached", "redis"])
def front_ends(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    memcached_server: RunningServer,
    redis_server: RunningServer,
) -> Iterator[list[GeofedServer]]:
    server = memcached_server if request.param == "memcached" else redis_server
    (tmp_path / "site" / "data").mkdir(parents=True)
    (tmp_path / "site" / "data" / "old.txt").write_text("old\n")
    settings = settings_from_mapping(
        {
            "signing": {"secret": secrets.token_urlsafe(24)},
            "auth": OPEN_POLICY,
            "cache": {"ttl": "300s", "negative_ttl": "300s", "l2": l2_settings(request.param, server)},
            "health": {"interval": "2s"},
            "endpoints": [
                {
                    "name": "site",
                    "kind": "local",
                    "url": (tmp_path / "site").as_uri(),
                    "prefixes": [{"federated": "/fed", "endpoint": "/"}],
                    "writable": True,
                }
            ],
        },
        environ={},
    )
    with ExitStack() as stack:
        yield [stack.enter_context(GeofedServer(settings)) for _ in range(3)]


def code(*args: str) -> str:
    return curl("-o", "/dev/null", "-w", "%{http_code}", *args).stdout


def names(front: GeofedServer, path: str) -> list[str]:
    body = curl("-X", "PROPFIND", "-H", "Depth: 1", f"{front.url}{path}").stdout
    return [chunk.split("</D:href>")[0].rsplit("/", 1)[-1] for chunk in body.split("<D:href>")[2:]]


def test_write_through_one_is_seen_at_once_through_the_others(
    front_ends: list[GeofedServer], tmp_path: Path
) -> None:
    one, two, three = front_ends
    # the other front ends learn (and cache, for 300 s) that the file is absent and what the listing is
    for front in (two, three):
        assert code(f"{front.url}/fed/data/new.txt") == "404"
        assert names(front, "/fed/data/") == ["old.txt"]
    source = tmp_path / "new.txt"
    source.write_text("new\n")
    assert code("-L", "-T", str(source), f"{one.url}/fed/data/new.txt") == "201"
    for front in (two, three):
        assert code(f"{front.url}/fed/data/new.txt") == "302"
        assert sorted(names(front, "/fed/data/")) == ["new.txt", "old.txt"]
    # and a DELETE through the third is seen at once through the first two
    assert code("-X", "DELETE", f"{three.url}/fed/data/new.txt") == "204"
    for front in (one, two):
        assert code(f"{front.url}/fed/data/new.txt") == "404"
        assert names(front, "/fed/data/") == ["old.txt"]


def test_mkcol_through_one_is_seen_through_the_others(front_ends: list[GeofedServer]) -> None:
    one, two, _ = front_ends
    assert code(f"{two.url}/fed/data/newdir") == "404"
    assert code("-X", "MKCOL", f"{one.url}/fed/data/newdir") == "201"
    assert code("-X", "PROPFIND", "-H", "Depth: 0", f"{two.url}/fed/data/newdir") == "207"


def test_answers_are_shared_through_l2(front_ends: list[GeofedServer], tmp_path: Path) -> None:
    one, two, _ = front_ends
    (tmp_path / "site" / "data" / "shared.txt").write_text("s\n")
    assert code(f"{one.url}/fed/data/shared.txt") == "302"
    time.sleep(0.1)  # the first front end writes its answer to L2 in the background
    # removed behind geofed's back: only an answer shared through L2 can still say "it is there"
    (tmp_path / "site" / "data" / "shared.txt").unlink()
    assert code(f"{two.url}/fed/data/shared.txt") == "302"


def test_status_shows_l2(front_ends: list[GeofedServer]) -> None:
    doc = json.loads(curl(f"{front_ends[0].url}/_geofed/status").stdout)
    assert doc["cache"]["l2"]["available"] is True
    assert doc["cache"]["l2"]["kind"] in ("memcached", "redis")


@pytest.mark.parametrize("kind", ["memcached", "redis"])
def test_l2_outage_is_survived_reported_and_recovered(kind: str, tmp_path: Path) -> None:
    from tests.infra.kv import start_memcached, start_redis

    def start(port: int | None = None) -> RunningServer:
        return start_memcached(port) if kind == "memcached" else start_redis(tmp_path / "redis", port)

    (tmp_path / "redis").mkdir()
    (tmp_path / "site").mkdir()
    (tmp_path / "site" / "a.txt").write_text("a\n")
    server = start()
    port = server.port
    settings = settings_from_mapping(
        {
            "signing": {"secret": secrets.token_urlsafe(24)},
            "auth": OPEN_POLICY,
            "cache": {"l2": l2_settings(kind, server)},
            "endpoints": [{"name": "site", "kind": "local", "url": (tmp_path / "site").as_uri()}],
        },
        environ={},
    )
    try:
        with GeofedServer(settings) as front:
            assert code(f"{front.url}/a.txt") == "302"
            server.stop()
            assert code(f"{front.url}/a.txt") == "302"  # L1 and the endpoints keep serving
            assert code(f"{front.url}/missing.txt") == "404"
            assert wait_for_l2(front, available=False)["last_error"]
            server = start(port)
            assert wait_for_l2(front, available=True)["available"] is True
            assert code(f"{front.url}/a.txt") == "302"
    finally:
        server.stop()


def wait_for_l2(front: GeofedServer, *, available: bool, limit: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        l2 = json.loads(curl(f"{front.url}/_geofed/status").stdout)["cache"]["l2"]
        if l2["available"] is available:
            return dict(l2)
        code(f"{front.url}/probe-{time.monotonic()}")  # traffic that touches L2
        time.sleep(0.2)
    raise AssertionError(f"L2 never became available={available}")
