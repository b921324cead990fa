"""geofed's own data route for local endpoints: every method only with a matching signature."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from pathlib import Path

import pytest

from geofed.config import settings_from_mapping
from tests.infra.geofed_server import GeofedServer
from tests.infra.policies import OPEN_POLICY
from tests.integration.federation_sites import curl

pytestmark = pytest.mark.integration


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[GeofedServer, Path]]:
    root = tmp_path / "site"
    (root / "dir").mkdir(parents=True)
    (root / "dir" / "f.bin").write_bytes(bytes(range(256)) * 4)
    settings = settings_from_mapping(
        {
            "signing": {"secret": secrets.token_urlsafe(24)},
            "auth": OPEN_POLICY,
            "endpoints": [{"name": "site", "kind": "local", "url": root.as_uri(), "writable": True}],
        },
        environ={},
    )
    with GeofedServer(settings) as server:
        yield server, root


def signed(server: GeofedServer, method: str, path: str, lifetime: float = 60) -> str:
    return server.url + server.federation.endpoints["site"].sign_url(method, path, lifetime)


def code(*args: str) -> str:
    return curl("-o", "/dev/null", "-w", "%{http_code}", *args).stdout


def test_range_get_and_head(served: tuple[GeofedServer, Path]) -> None:
    server, root = served
    url = signed(server, "GET", "/dir/f.bin")
    part = root.parent / "part.bin"
    out = curl("-r", "10-19", "-D", "-", "-o", str(part), url)
    assert out.stdout.startswith("HTTP/1.1 206")
    assert "Content-Range: bytes 10-19/1024" in out.stdout
    assert part.read_bytes() == bytes(range(10, 20))
    head = curl("-I", url).stdout
    assert head.startswith("HTTP/1.1 200") and "Content-Length: 1024" in head


def test_mkcol_and_delete_need_their_own_signatures(served: tuple[GeofedServer, Path]) -> None:
    server, root = served
    assert code("-X", "MKCOL", signed(server, "GET", "/new")) == "403"
    assert code("-X", "MKCOL", signed(server, "MKCOL", "/new")) == "201"
    assert (root / "new").is_dir()
    assert code("-X", "MKCOL", signed(server, "MKCOL", "/new")) == "405"
    assert code("-X", "MKCOL", signed(server, "MKCOL", "/a/b")) == "409"
    assert code("-X", "DELETE", signed(server, "PUT", "/dir/f.bin")) == "403"
    assert code("-X", "DELETE", signed(server, "DELETE", "/dir/f.bin")) == "204"
    assert not (root / "dir" / "f.bin").exists()
    assert code("-X", "DELETE", signed(server, "DELETE", "/dir/f.bin")) == "404"


def test_put_creates_parents_replaces_atomically_and_expires(served: tuple[GeofedServer, Path]) -> None:
    server, root = served
    source = root.parent / "upload.bin"
    source.write_bytes(b"x" * 100_000)
    assert code("-T", str(source), signed(server, "PUT", "/p/q/up.bin")) == "201"
    assert (root / "p" / "q" / "up.bin").read_bytes() == source.read_bytes()
    source.write_bytes(b"y" * 10)
    assert code("-T", str(source), signed(server, "PUT", "/p/q/up.bin")) == "204"
    assert (root / "p" / "q" / "up.bin").read_bytes() == b"y" * 10
    expired = signed(server, "PUT", "/p/q/late.bin", lifetime=-5)
    out = curl("-T", str(source), "-w", "\n%{http_code}", expired).stdout
    assert out.endswith("403") and "expired" in out
    assert not (root / "p" / "q" / "late.bin").exists()
