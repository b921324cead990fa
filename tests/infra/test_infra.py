"""Self-tests of the test infrastructure: if these fail, integration failures mean nothing.

They prove the real servers speak the WebDAV subset geofed relies on (checked with curl, an
independent client), that the delay proxy really adds latency and passes connection closes
through, and that the hand-made GeoIP database answers with the coordinates we put in.
"""

from __future__ import annotations

import http.client
import os
import re
import shutil
import socket
import subprocess
import time
import uuid
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import maxminddb
import pytest

from tests.infra import servers
from tests.infra.geoip import build_city_db, normalise_ip
from tests.infra.servers import RunningServer, free_port, start_apache_dav, start_delay_proxy

CURL_TIMEOUT_S = 10
ONE_WAY_MS = 50.0
# asyncio may wake a timer up to its clock resolution early; allow 2 ms of slack.
TIMER_SLACK_S = 0.002


@dataclass
class CurlResult:
    """Status, headers (lower-cased names) and body of one curl request."""

    status: int
    headers: dict[str, str]
    body: bytes


def curl(*args: str, data: bytes | None = None) -> CurlResult:
    """Run curl with ``args`` and return the final response; curl is the independent client."""
    argv = ["curl", "--silent", "--show-error", "--include", "--max-time", str(CURL_TIMEOUT_S)]
    if data is not None:
        argv += ["--data-binary", "@-"]
    completed = subprocess.run(
        [*argv, *args], input=data or b"", capture_output=True, check=False, timeout=CURL_TIMEOUT_S + 5
    )
    assert completed.returncode == 0, completed.stderr.decode(errors="replace")
    head, _, body = completed.stdout.partition(b"\r\n\r\n")
    lines = head.decode("iso-8859-1").split("\r\n")
    match = re.match(r"HTTP/[\d.]+ (\d{3})", lines[0])
    assert match is not None, lines[0]
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return CurlResult(int(match.group(1)), headers, body)


def propfind_entries(body: bytes) -> dict[str, dict[str, str]]:
    """Parse a 207 multistatus into {href: {property local name: text}} (prefixes differ per server)."""
    entries: dict[str, dict[str, str]] = {}
    for response in ET.fromstring(body).iter("{DAV:}response"):
        href = response.findtext("{DAV:}href")
        assert href is not None
        props: dict[str, str] = {}
        for prop in response.iter("{DAV:}prop"):
            for child in prop:
                props[child.tag.rpartition("}")[2]] = "".join(child.itertext()) or (
                    " ".join(sub.tag.rpartition("}")[2] for sub in child)
                )
        entries[href] = props
    return entries


@pytest.fixture(params=["apache_dav", "nginx_dav"])
def dav_server(request: pytest.FixtureRequest) -> RunningServer:
    """Each WebDAV server in turn, for the checks both must pass."""
    server: RunningServer = request.getfixturevalue(request.param)
    return server


def test_dav_server_basic_operations(dav_server: RunningServer) -> None:
    """MKCOL, PUT, PROPFIND Depth 0/1, HEAD, Range GET and DELETE behave as geofed expects."""
    assert dav_server.root is not None
    folder = f"infra-{uuid.uuid4().hex}"
    base = f"{dav_server.url}/{folder}"
    payload = b"0123456789abcdef" * 64

    assert curl("-X", "MKCOL", f"{base}/").status == 201
    assert (dav_server.root / folder).is_dir()

    assert curl("-X", "PUT", f"{base}/blob.bin", data=payload).status == 201
    assert (dav_server.root / folder / "blob.bin").read_bytes() == payload
    # Overwriting an existing resource is 204 (or 201 on some servers), never an error.
    assert curl("-X", "PUT", f"{base}/blob.bin", data=payload).status in (201, 204)

    depth0 = curl("-X", "PROPFIND", "-H", "Depth: 0", f"{base}/blob.bin")
    assert depth0.status == 207
    assert propfind_entries(depth0.body)[f"/{folder}/blob.bin"]["getcontentlength"] == str(len(payload))

    depth1 = curl("-X", "PROPFIND", "-H", "Depth: 1", f"{base}/")
    assert depth1.status == 207
    listing = propfind_entries(depth1.body)
    assert set(listing) == {f"/{folder}/", f"/{folder}/blob.bin"}
    assert listing[f"/{folder}/"]["resourcetype"] == "collection"
    assert listing[f"/{folder}/blob.bin"]["resourcetype"] == ""
    assert listing[f"/{folder}/blob.bin"]["getcontentlength"] == str(len(payload))

    head = curl("--head", f"{base}/blob.bin")
    assert head.status == 200
    assert head.headers["content-length"] == str(len(payload))
    assert head.body == b""

    ranged = curl("-H", "Range: bytes=10-25", f"{base}/blob.bin")
    assert ranged.status == 206
    assert ranged.body == payload[10:26]
    assert ranged.headers["content-range"] == f"bytes 10-25/{len(payload)}"

    assert curl("-X", "DELETE", f"{base}/blob.bin").status == 204
    assert curl(f"{base}/blob.bin").status == 404
    assert curl("-X", "DELETE", f"{base}/").status == 204
    assert not (dav_server.root / folder).exists()


def test_apache_is_rfc_strict(apache_dav: RunningServer) -> None:
    """Apache refuses a PUT below a missing collection (409) and sends ETags: the strict endpoint."""
    folder = f"infra-{uuid.uuid4().hex}"
    assert curl("-X", "PUT", f"{apache_dav.url}/{folder}/sub/file", data=b"x").status == 409
    assert curl("-X", "PUT", f"{apache_dav.url}/{folder}.txt", data=b"x").status == 201
    propfind = curl("-X", "PROPFIND", "-H", "Depth: 0", f"{apache_dav.url}/{folder}.txt")
    # Weak (W/"...") while the file is younger than a second, strong afterwards.
    assert re.fullmatch(r'(W/)?"[^"]+"', propfind_entries(propfind.body)[f"/{folder}.txt"]["getetag"])
    # Without a Depth header Apache refuses (DavDepthInfinity off) instead of walking the tree.
    assert curl("-X", "PROPFIND", f"{apache_dav.url}/").status == 403
    assert curl("-X", "DELETE", f"{apache_dav.url}/{folder}.txt").status == 204


def test_nginx_creates_missing_parents(nginx_dav: RunningServer) -> None:
    """nginx (``create_full_put_path on``) creates parents on PUT: the lenient endpoint."""
    assert nginx_dav.root is not None
    folder = f"infra-{uuid.uuid4().hex}"
    assert curl("-X", "PUT", f"{nginx_dav.url}/{folder}/a/b.txt", data=b"deep").status == 201
    assert (nginx_dav.root / folder / "a" / "b.txt").read_bytes() == b"deep"
    assert curl("-X", "DELETE", f"{nginx_dav.url}/{folder}/").status == 204


def _listening_addresses(port: int) -> set[str]:
    """Local addresses in LISTEN state on ``port``, from /proc/net/tcp{,6} (hex, as the kernel shows)."""
    found: set[str] = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as handle:
            next(handle)
            for line in handle:
                fields = line.split()
                address, _, hex_port = fields[1].partition(":")
                if fields[3] == "0A" and int(hex_port, 16) == port:
                    found.add(address)
    return found


def test_servers_bind_loopback_only(apache_dav: RunningServer, nginx_dav: RunningServer) -> None:
    """Both servers listen on 127.0.0.1 only (not 0.0.0.0 or ::) and are our own child processes."""
    for server in (apache_dav, nginx_dav):
        assert server.url == f"http://127.0.0.1:{server.port}"
        assert server.process.poll() is None
        assert server.pid == server.process.pid
        assert _listening_addresses(server.port) == {"0100007F"}  # 127.0.0.1, little-endian hex


def test_missing_apache_names_the_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No apache2 binary: a RuntimeError telling which Debian package to install, not a skip."""
    monkeypatch.setattr(shutil, "which", lambda *_args, **_kwargs: None)
    with pytest.raises(RuntimeError, match="'apache2'"):
        start_apache_dav(tmp_path / "dav", tmp_path / "work")


def test_startup_failure_reports_the_log(monkeypatch: pytest.MonkeyPatch, server_tmp_dir: Path) -> None:
    """A server that cannot start raises at once, with its own error output in the message."""
    real_config = servers._apache_config
    monkeypatch.setattr(servers, "_apache_config", lambda *args: real_config(*args) + "NoSuchDirective on\n")
    workdir = server_tmp_dir / f"broken-{uuid.uuid4().hex}"
    with pytest.raises(RuntimeError, match=r"(?s)exited with status \d+.*NoSuchDirective"):
        start_apache_dav(workdir / "dav", workdir / "work")


def test_port_taken_meanwhile_is_retried(monkeypatch: pytest.MonkeyPatch) -> None:
    """If free_port()'s port is grabbed before the server binds, start on another port.

    The stranger's socket accepts connections, so a bare TCP poll would call the server ready.
    """
    with socket.socket() as stranger:
        stranger.bind(("127.0.0.1", 0))
        stranger.listen()
        taken: int = stranger.getsockname()[1]
        ports = iter([taken, free_port()])
        monkeypatch.setattr(servers, "free_port", lambda: next(ports))
        proxy = start_delay_proxy("127.0.0.1", 9, 0)
        try:
            assert proxy.port != taken
            assert proxy.process.poll() is None
        finally:
            proxy.stop()


@pytest.mark.skipif(os.geteuid() != 0, reason="the www-data traversal check applies only as root")
def test_untraversable_root_fails_early(tmp_path: Path) -> None:
    """pytest's 0700 tmp dirs are unreachable for www-data: fail at start, not with 403s later."""
    with pytest.raises(RuntimeError, match="cannot traverse"):
        start_apache_dav(tmp_path / "dav", tmp_path / "work")


def _timed_get(conn: http.client.HTTPConnection, path: str) -> tuple[float, int, bytes]:
    started = time.monotonic()
    conn.request("GET", path)
    response = conn.getresponse()
    body = response.read()
    return time.monotonic() - started, response.status, body


def test_delay_proxy_adds_latency(nginx_dav: RunningServer) -> None:
    """A fresh request costs >= 4 one-way delays (connect + request + response), a kept-alive one >= 2."""
    assert nginx_dav.root is not None
    name = f"infra-{uuid.uuid4().hex}.txt"
    (nginx_dav.root / name).write_bytes(b"far away")
    proxy = start_delay_proxy("127.0.0.1", nginx_dav.port, ONE_WAY_MS)
    delay = ONE_WAY_MS / 1000
    try:
        direct = http.client.HTTPConnection("127.0.0.1", nginx_dav.port, timeout=5)
        direct_s, status, body = _timed_get(direct, f"/{name}")
        direct.close()
        assert (status, body) == (200, b"far away")

        conn = http.client.HTTPConnection("127.0.0.1", proxy.port, timeout=5)
        first_s, status, body = _timed_get(conn, f"/{name}")
        assert (status, body) == (200, b"far away")
        second_s, status, body = _timed_get(conn, f"/{name}")
        assert (status, body) == (200, b"far away")
        conn.close()

        assert direct_s < delay, direct_s
        assert first_s >= 4 * delay - TIMER_SLACK_S, first_s
        assert second_s >= 2 * delay - TIMER_SLACK_S, second_s
        assert second_s < 2 * delay + 0.5, second_s
        assert proxy.process.poll() is None
    finally:
        proxy.stop()
        (nginx_dav.root / name).unlink()
    assert proxy.process.returncode == 0, proxy.logs()


def test_delay_proxy_passes_closes(nginx_dav: RunningServer) -> None:
    """Server-side close reaches the client (EOF after the response); a dead upstream closes the client."""
    assert nginx_dav.root is not None
    name = f"infra-{uuid.uuid4().hex}.txt"
    (nginx_dav.root / name).write_bytes(b"bye")
    proxy = start_delay_proxy("127.0.0.1", nginx_dav.port, 10)
    dead_port = free_port()
    to_nowhere = start_delay_proxy("127.0.0.1", dead_port, 10)
    try:
        with socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock:
            sock.sendall(f"GET /{name} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            received = b""
            while chunk := sock.recv(65536):  # ends only when the proxy forwards nginx's close
                received += chunk
        assert received.startswith(b"HTTP/1.1 200")
        assert received.endswith(b"\r\n\r\nbye")

        with socket.create_connection(("127.0.0.1", to_nowhere.port), timeout=5) as sock:
            assert sock.recv(1) == b""

        assert proxy.process.poll() is None
        assert to_nowhere.process.poll() is None
    finally:
        proxy.stop()
        to_nowhere.stop()
        (nginx_dav.root / name).unlink()
    assert proxy.process.returncode == 0, proxy.logs()
    assert to_nowhere.process.returncode == 0, to_nowhere.logs()


def _location(record: Any) -> tuple[float, float]:
    return record["location"]["latitude"], record["location"]["longitude"]


def test_geoip_city_db_lookups(tmp_path: Path) -> None:
    """Inserted networks come back with exact coordinates; misses are None; mapped IPv4 normalises."""
    db = build_city_db(
        tmp_path / "geo" / "city.mmdb",
        {
            "127.0.1.0/24": ("Batavia", "US", 41.85, -88.3126),
            "10.20.0.0/16": ("Hamburg", "DE", 53.5511, 9.9937),
            "2001:db8:1::/48": ("Tokyo", "JP", 35.6762, 139.6503),
        },
    )
    assert db == tmp_path / "geo" / "city.mmdb"
    with maxminddb.open_database(str(db)) as reader:
        assert reader.metadata().database_type == "GeoIP2-City"
        assert reader.metadata().ip_version == 6

        batavia: Any = reader.get("127.0.1.42")
        assert _location(batavia) == (41.85, -88.3126)
        assert batavia["city"]["names"]["en"] == "Batavia"
        assert batavia["country"]["iso_code"] == "US"
        assert _location(reader.get("10.20.255.1")) == (53.5511, 9.9937)
        assert _location(reader.get("2001:db8:1:ffff::1")) == (35.6762, 139.6503)

        assert reader.get("127.0.2.1") is None
        assert reader.get("2001:db8:2::1") is None

        # Dual-stack servers report IPv4 clients as ::ffff:a.b.c.d, which this database misses.
        mapped = "::ffff:127.0.1.42"
        assert reader.get(mapped) is None
        assert normalise_ip(mapped) == "127.0.1.42"
        assert _location(reader.get(normalise_ip(mapped))) == (41.85, -88.3126)
        assert normalise_ip("2001:db8:1::1") == "2001:db8:1::1"


def test_geoip_rejects_bad_cidr(tmp_path: Path) -> None:
    """A typo in a test's network table fails loudly instead of building a wrong database."""
    with pytest.raises(ValueError):
        build_city_db(tmp_path / "bad.mmdb", {"127.0.1.0/33": ("X", "XX", 0.0, 0.0)})
