"""Hostile or broken requests get a clear 4xx, nothing outside the namespace is served or written,
and the server keeps serving."""

from __future__ import annotations

import secrets
import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from geofed.config import settings_from_mapping
from tests.infra.geofed_server import GeofedServer
from tests.infra.policies import OPEN_POLICY
from tests.integration.federation_sites import curl

pytestmark = pytest.mark.integration

BOMB = """<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol1 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
<!ENTITY lol2 "&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;&lol1;">]>
<D:propfind xmlns:D="DAV:"><D:prop><D:displayname>&lol2;</D:displayname></D:prop></D:propfind>"""


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("badinput")
    (base / "site" / "data").mkdir(parents=True)
    (base / "site" / "data" / "ok.txt").write_text("fine\n")
    (base / "secret.txt").write_text("outside the namespace\n")
    return base


@pytest.fixture(scope="module")
def server(tree: Path) -> Iterator[GeofedServer]:
    settings = settings_from_mapping(
        {
            "signing": {"secret": secrets.token_urlsafe(24)},
            "auth": OPEN_POLICY,
            "server": {"max_propfind_body": 4096},
            "endpoints": [
                {
                    "name": "site",
                    "kind": "local",
                    "url": (tree / "site").as_uri(),
                    "prefixes": [{"federated": "/fed", "endpoint": "/"}],
                    "writable": True,
                }
            ],
        },
        environ={},
    )
    with GeofedServer(settings) as running:
        yield running


def status_and_body(*args: str) -> tuple[int, str]:
    out = curl("-w", "\n%{http_code}", *args)
    body, _, code = out.stdout.rpartition("\n")
    return int(code), body


@pytest.mark.parametrize(
    "path",
    [
        "/fed/../secret.txt",
        "/fed/data/../../secret.txt",
        "/fed/%2e%2e/secret.txt",
        "/fed/data%2f..%2f..%2fsecret.txt",
    ],
)
def test_dot_dot_and_encoded_slashes_are_refused(server: GeofedServer, path: str) -> None:
    for method in ("GET", "PUT", "DELETE", "PROPFIND"):
        status, body = status_and_body("--path-as-is", "-X", method, f"{server.url}{path}")
        assert status == 400, (method, path, status, body)
        assert "outside the namespace" not in body


def test_nul_byte_is_refused(server: GeofedServer) -> None:
    status, body = status_and_body(f"{server.url}/fed/data/ok.txt%00.jpg")
    assert status == 400 and "NUL" in body


def test_data_route_refuses_traversal_and_unsigned_access(server: GeofedServer, tree: Path) -> None:
    status, _ = status_and_body("--path-as-is", f"{server.url}/_geofed/data/site/../secret.txt")
    assert status in (400, 403, 404)
    status, body = status_and_body(f"{server.url}/_geofed/data/site/data/ok.txt")
    assert status == 403 and "signature" in body
    status, body = status_and_body(
        "-X", "PUT", "--data-binary", "x", f"{server.url}/_geofed/data/site/evil.txt"
    )
    assert status == 403
    assert not (tree / "site" / "evil.txt").exists()


def test_symlink_out_of_the_endpoint_is_not_followed(server: GeofedServer, tree: Path) -> None:
    link = tree / "site" / "data" / "escape.txt"
    link.symlink_to(tree / "secret.txt")
    try:
        status, body = status_and_body("-L", f"{server.url}/fed/data/escape.txt")
        assert status in (403, 404, 503), (status, body)
        assert "outside the namespace" not in body
    finally:
        link.unlink()


@pytest.mark.parametrize(
    ("headers", "body", "status", "message"),
    [
        (["Depth: 1"], BOMB, 400, "DTD"),
        (["Depth: 1"], "<propfind", 400, "well-formed"),
        (["Depth: 1"], "<D:propfind xmlns:D='DAV:'>" + "<D:prop/>" * 1000 + "</D:propfind>", 413, "larger"),
        (["Depth: 7"], "", 400, "invalid Depth"),
        (["Depth: infinity"], "", 403, "infinity"),
    ],
)
def test_bad_propfind_requests(
    server: GeofedServer, headers: list[str], body: str, status: int, message: str
) -> None:
    args = ["-X", "PROPFIND"]
    for header in headers:
        args += ["-H", header]
    if body:
        args += ["-H", "Content-Type: application/xml", "--data-binary", body]
    got, text = status_and_body(*args, f"{server.url}/fed/data")
    assert got == status, text
    assert message in text


def test_oversized_header_and_request_line(server: GeofedServer) -> None:
    status, _ = status_and_body("-H", "X-Big: " + "a" * 20000, f"{server.url}/fed/data/ok.txt")
    assert status in (400, 431)
    status, _ = status_and_body(f"{server.url}/fed/" + "a" * 20000)
    assert status in (400, 414)


def test_garbage_on_the_socket_then_server_keeps_serving(server: GeofedServer) -> None:
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"\x16\x03\x01\x00\xa5garbage that is not HTTP\r\n\r\n")
        reply = sock.recv(1024)
    assert reply.startswith(b"HTTP/1.") and b" 400 " in reply.split(b"\r\n", 1)[0]
    status, body = status_and_body("-L", f"{server.url}/fed/data/ok.txt")
    assert (status, body) == (200, "fine\n")


def test_unsupported_method_is_405_with_allow(server: GeofedServer) -> None:
    out = curl("-D", "-", "-o", "/dev/null", "-X", "PATCH", f"{server.url}/fed/data/ok.txt")
    assert out.stdout.startswith("HTTP/1.1 405")
    assert "Allow: OPTIONS, GET, HEAD, PUT, DELETE, MKCOL, MOVE, PROPFIND" in out.stdout


def test_truncated_upload_leaves_nothing(server: GeofedServer, tree: Path) -> None:
    out = curl(
        "-D",
        "-",
        "-o",
        "/dev/null",
        "-X",
        "PUT",
        "-H",
        "Expect: 100-continue",
        "-H",
        "Content-Length: 10",
        f"{server.url}/fed/data/partial.bin",
    )
    location = next(
        line.split(":", 1)[1].strip()
        for line in out.stdout.splitlines()
        if line.lower().startswith("location:")
    )
    # send 4 of the 10 declared bytes, then close the connection
    host_port, _, rest = location.removeprefix("http://").partition("/")
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(f"PUT /{rest} HTTP/1.1\r\nHost: {host_port}\r\nContent-Length: 10\r\n\r\nabcd".encode())
    # the server notices the closed connection and removes its temporary file (bounded wait)
    deadline = time.monotonic() + 5
    while True:
        leftovers = [p.name for p in (tree / "site" / "data").iterdir()]
        if not [n for n in leftovers if n.startswith(".geofed-upload-")] or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert "partial.bin" not in leftovers
    assert not [n for n in leftovers if n.startswith(".geofed-upload-")]
    status, _ = status_and_body(f"{server.url}/fed/data/partial.bin")
    assert status == 404
