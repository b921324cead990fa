"""Disabling, draining and enabling endpoints at runtime: the admin API and ``geofed endpoints``.

A real geofed (the full application on loopback) over two local endpoints: ``near`` (Geneva, where
the loopback client is placed) and ``far`` (Vancouver). Reads and writes go to ``near`` until an
administrator marks it. Authorization is tested over HTTPS with client certificates from the test
PKI: the admin API answers only an identity the policy grants every privilege on ``/``.
"""

from __future__ import annotations

import http.client
import json
import secrets
import ssl
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from click.testing import CliRunner

from geofed.cli import main
from geofed.config import Settings, settings_from_mapping
from tests.infra.geofed_server import GeofedServer
from tests.infra.pki import OTHER_DN, USER_DN, Credential, Pki
from tests.infra.policies import OPEN_POLICY

pytestmark = pytest.mark.integration

BOTH = "/data/both.txt"
NEAR_ONLY = "/data/near-only.txt"
ADMIN = "/_geofed/admin"


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def location(self) -> str:
        return self.headers.get("location", "")

    def json(self) -> Any:
        return json.loads(self.body)


def _sites(tmp: Path) -> dict[str, Path]:
    roots = {"near": tmp / "near", "far": tmp / "far"}
    for root in roots.values():
        (root / "data").mkdir(parents=True)
        (root / BOTH.lstrip("/")).write_text(f"both at {root.name}\n")
    (roots["near"] / NEAR_ONLY.lstrip("/")).write_text("only near\n")
    return roots


def _settings(roots: dict[str, Path], *, auth: dict[str, Any] | None = None, tls: Any = None) -> Settings:
    places = {"near": (46.2, 6.1), "far": (49.3, -123.1)}
    server: dict[str, Any] = {"host": "127.0.0.1", "port": 0}
    if tls is not None:
        server["tls"] = tls
    return settings_from_mapping(
        {
            "server": server,
            "signing": {"secret": secrets.token_urlsafe(24)},
            "auth": auth or OPEN_POLICY,
            "health": {"interval": "60s", "timeout": "3s"},
            "federation": {"fuzz_km": 0},
            "client_networks": [{"cidr": "127.0.0.0/8", "location": {"lat": 46.2, "lon": 6.1}}],
            "endpoints": [
                {
                    "name": name,
                    "kind": "local",
                    "url": root.resolve().as_uri(),
                    "writable": True,
                    "location": {"lat": places[name][0], "lon": places[name][1]},
                }
                for name, root in roots.items()
            ],
        },
        environ={},
    )


def request(
    url: str,
    method: str,
    path: str,
    body: bytes | None = None,
    headers: dict[str, str] | None = None,
    *,
    context: ssl.SSLContext | None = None,
) -> Answer:
    """One request on a fresh connection, redirects not followed."""
    parts = urlsplit(url)
    assert parts.hostname is not None
    connection: http.client.HTTPConnection
    if parts.scheme == "https":
        connection = http.client.HTTPSConnection(parts.hostname, parts.port, timeout=15, context=context)
    else:
        connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=15)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        connection.close()


def mark(server: GeofedServer, name: str, action: str, reason: str | None = None) -> Answer:
    body = json.dumps({"reason": reason}).encode() if reason else None
    headers = {"Content-Type": "application/json"} if body else {}
    return request(server.url, "POST", f"{ADMIN}/endpoints/{name}/{action}", body, headers)


def redirected_to(answer: Answer) -> str:
    """The endpoint of a data-route redirect (``/_geofed/data/<endpoint>/...``)."""
    assert answer.status in (302, 307), (answer.status, answer.body)
    return urlsplit(answer.location).path.split("/")[3]


def listing(server: GeofedServer, path: str = "/data/") -> list[str]:
    answer = request(server.url, "GET", path, headers={"Accept": "application/json"})
    assert answer.status == 200, answer.body
    return sorted(entry["name"] for entry in answer.json()["entries"])


def put(server: GeofedServer, path: str, content: bytes = b"new bytes\n") -> Answer:
    return request(server.url, "PUT", path, content, {"Content-Type": "application/octet-stream"})


def states(server: GeofedServer) -> dict[str, dict[str, Any]]:
    answer = request(server.url, "GET", f"{ADMIN}/endpoints")
    assert answer.status == 200, answer.body
    return {row["name"]: row for row in answer.json()["endpoints"]}


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[GeofedServer, dict[str, Path]]]:
    roots = _sites(tmp_path)
    with GeofedServer(_settings(roots)) as server:
        yield server, roots


# -- disable, drain, enable -----------------------------------------------------------------------


def test_disable_takes_an_endpoint_out_of_reads_writes_and_listings(
    served: tuple[GeofedServer, dict[str, Path]],
) -> None:
    server, _roots = served
    assert redirected_to(request(server.url, "GET", BOTH)) == "near"
    assert listing(server) == ["both.txt", "near-only.txt"]

    answer = mark(server, "near", "disable", "disk replacement")
    assert answer.status == 200, answer.body
    row = answer.json()["endpoint"]
    assert answer.json()["previous"] == "up"
    assert row["state"] == "disabled" and row["admin"] == "disabled"
    assert row["reason"] == "endpoint disabled by an administrator: disk replacement"

    read = request(server.url, "GET", BOTH)
    assert redirected_to(read) == "far"
    assert "/_geofed/data/near/" not in read.headers.get("link", "")  # not offered as an alternative
    assert redirected_to(put(server, "/data/new.txt")) == "far"
    assert listing(server) == ["both.txt"]  # near's own file is not listed (the cache was dropped)
    only_near = request(server.url, "GET", NEAR_ONLY)
    assert only_near.status == 503 and b"disabled by an administrator" in only_near.body
    metalink = request(server.url, "GET", BOTH, headers={"Accept": "application/metalink4+xml"})
    assert b"/_geofed/data/far/" in metalink.body and b"/_geofed/data/near/" not in metalink.body

    answer = mark(server, "near", "enable")
    assert answer.status == 200 and answer.json()["endpoint"]["state"] == "up"
    assert answer.json()["previous"] == "disabled"
    assert redirected_to(request(server.url, "GET", BOTH)) == "near"
    assert listing(server) == ["both.txt", "near-only.txt"]
    assert request(server.url, "GET", NEAR_ONLY).status == 302


def test_drain_keeps_reads_and_places_new_data_elsewhere(
    served: tuple[GeofedServer, dict[str, Path]],
) -> None:
    server, roots = served
    assert redirected_to(put(server, "/data/before.txt")) == "near"

    answer = mark(server, "near", "drain")
    assert answer.status == 200, answer.body
    assert answer.json()["endpoint"]["state"] == "draining"
    assert answer.json()["endpoint"]["reason"] == "endpoint being drained by an administrator"

    # Reads and listings as before: the data on a draining endpoint can still be read (and moved).
    assert redirected_to(request(server.url, "GET", BOTH)) == "near"
    assert redirected_to(request(server.url, "GET", NEAR_ONLY)) == "near"
    assert listing(server) == ["both.txt", "near-only.txt"]
    # New data goes elsewhere: new files, overwrites, new collections.
    assert redirected_to(put(server, "/data/during.txt")) == "far"
    assert redirected_to(put(server, NEAR_ONLY)) == "far"
    assert request(server.url, "MKCOL", "/data/made").status == 201
    assert (roots["far"] / "data" / "made").is_dir() and not (roots["near"] / "data" / "made").exists()
    status = request(server.url, "GET", "/_geofed/status").json()
    assert {e["name"]: e["draining"] for e in status["endpoints"]} == {"near": True, "far": False}
    assert states(server)["near"]["state"] == "draining"

    assert mark(server, "near", "enable").json()["endpoint"]["state"] == "up"
    assert redirected_to(put(server, "/data/after.txt")) == "near"


def test_a_disabled_endpoint_stays_disabled_when_probes_pass(
    served: tuple[GeofedServer, dict[str, Path]],
) -> None:
    server, _roots = served
    assert mark(server, "far", "disable").status == 200
    server.call(server.federation.health.check("far"))  # a passing probe does not override an administrator
    row = states(server)["far"]
    assert row["state"] == "disabled" and row["health"] == "up"


def test_unknown_endpoints_and_actions_are_refused(served: tuple[GeofedServer, dict[str, Path]]) -> None:
    server, _roots = served
    answer = mark(server, "nowhere", "disable")
    assert answer.status == 404 and "no endpoint named 'nowhere'" in answer.json()["error"]
    answer = mark(server, "near", "explode")
    assert answer.status == 404 and "unknown action" in answer.json()["error"]
    assert request(server.url, "GET", f"{ADMIN}/endpoints/near/disable").status == 405
    assert request(server.url, "DELETE", f"{ADMIN}/endpoints").status == 405
    bad = request(server.url, "POST", f"{ADMIN}/endpoints/near/disable", b"not json")
    assert bad.status == 400
    assert states(server)["near"]["state"] == "up"


def test_reload_without_a_configuration_file_is_refused(served: tuple[GeofedServer, dict[str, Path]]) -> None:
    server, _roots = served
    answer = request(server.url, "POST", f"{ADMIN}/reload")
    assert answer.status == 400
    assert answer.json()["reloaded"] is False
    assert "without --config" in answer.json()["error"]


# -- geofed endpoints ---------------------------------------------------------------------------


COLUMNS = ("NAME", "KIND", "STATE", "LATENCY", "USED", "AVAILABLE", "REASON")


def _table(output: str) -> dict[str, dict[str, str]]:
    """The rows of ``geofed endpoints``, by name, cut at the header's column positions."""
    lines = output.splitlines()
    header = lines[0]
    assert header.split() == list(COLUMNS), header
    starts = [header.index(column) for column in COLUMNS]
    rows = {}
    for line in lines[1:]:
        cells = [line[a:b].strip() for a, b in zip(starts, [*starts[1:], None], strict=True)]
        rows[cells[0]] = dict(zip(COLUMNS, cells, strict=True))
    return rows


def test_the_cli_prints_the_table_and_marks_endpoints(served: tuple[GeofedServer, dict[str, Path]]) -> None:
    server, _roots = served
    runner = CliRunner()
    shown = runner.invoke(main, ["endpoints", "--url", server.url])
    assert shown.exit_code == 0, shown.output
    table = _table(shown.output)
    assert set(table) == {"near", "far"}
    assert (table["near"]["KIND"], table["near"]["STATE"], table["near"]["REASON"]) == ("local", "up", "")
    assert table["near"]["LATENCY"].endswith(" ms")
    assert table["near"]["AVAILABLE"].endswith("iB")  # the local file system's free space

    done = runner.invoke(main, ["endpoints", "disable", "far", "--reason", "disk swap", "--url", server.url])
    assert done.exit_code == 0, done.output
    assert done.output == "far: up -> disabled (endpoint disabled by an administrator: disk swap)\n"
    # the options may also come before the subcommand
    done = runner.invoke(main, ["endpoints", "--url", server.url, "drain", "near"])
    assert done.exit_code == 0, done.output
    assert done.output == "near: up -> draining (endpoint being drained by an administrator)\n"

    table = _table(runner.invoke(main, ["endpoints", "--url", server.url]).output)
    assert table["far"]["STATE"] == "disabled"
    assert table["far"]["REASON"] == "endpoint disabled by an administrator: disk swap"
    assert table["near"]["STATE"] == "draining"
    document = json.loads(runner.invoke(main, ["endpoints", "--json", "--url", server.url]).output)
    assert {row["name"]: row["admin"] for row in document["endpoints"]} == {
        "near": "draining",
        "far": "disabled",
    }
    assert document["configuration"]["generation"] == 1

    for name in ("near", "far"):
        assert runner.invoke(main, ["endpoints", "enable", name, "--url", server.url]).exit_code == 0
    assert redirected_to(request(server.url, "GET", BOTH)) == "near"

    missing = runner.invoke(main, ["endpoints", "disable", "nowhere", "--url", server.url])
    assert missing.exit_code == 1 and "404 no endpoint named 'nowhere'" in missing.output


def test_the_cli_finds_the_server_from_its_configuration(
    served: tuple[GeofedServer, dict[str, Path]], tmp_path: Path
) -> None:
    server, _roots = served
    config = tmp_path / "geofed.yaml"
    config.write_text(
        'signing: {secret: "${GEOFED_TEST_UNSET_SECRET}"}\n'  # finding the server needs no secret
        f"server: {{host: 0.0.0.0, port: {server.port}}}\n"
        "endpoints: [{name: x, kind: local, url: 'file:///tmp'}]\n"
    )
    shown = CliRunner().invoke(main, ["endpoints", "--config", str(config)])
    assert shown.exit_code == 0, shown.output
    assert set(_table(shown.output)) == {"near", "far"}
    gone = CliRunner().invoke(main, ["endpoints", "--url", "http://127.0.0.1:9/"])
    assert gone.exit_code == 1 and "cannot reach http://127.0.0.1:9/_geofed/admin/endpoints" in gone.output


# -- who may -------------------------------------------------------------------------------------


def _client(pki: Pki, credential: Credential | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca.cert_path))
    if credential is not None:
        context.load_cert_chain(credential.cert_path, credential.key_path)
    return context


def test_only_an_identity_granted_everything_on_root_may_administer(tmp_path: Path, grid_pki: Pki) -> None:
    roots = _sites(tmp_path)
    policy = {
        "policy": [
            {"path": "/", "allow": ["all"], "to": [{"dn": USER_DN}]},
            # everything but copy, and everything on a subtree: not an administrator
            {"path": "/", "allow": ["read", "list", "write", "modify", "delete"], "to": [{"dn": OTHER_DN}]},
            {"path": "/data", "allow": ["all"], "to": [{"dn": OTHER_DN}]},
            {"path": "/", "allow": ["read", "list"], "to": ["anyone"]},
        ]
    }
    tls = {
        "cert": str(grid_pki.host.cert_path),
        "key": str(grid_pki.host.key_path),
        "ca_dir": str(grid_pki.ca_dir),
    }
    with GeofedServer(_settings(roots, auth=policy, tls=tls), host="localhost") as server:
        url = server.url
        path = f"{ADMIN}/endpoints"
        anonymous = request(url, "GET", path, context=_client(grid_pki, None))
        assert anonymous.status == 401, anonymous.body
        assert "authentication required" in anonymous.json()["error"]
        assert request(url, "POST", f"{path}/near/disable", context=_client(grid_pki, None)).status == 401
        other = request(url, "POST", f"{path}/near/disable", context=_client(grid_pki, grid_pki.other_user))
        assert other.status == 403, other.body
        assert f"{OTHER_DN} is not an administrator" in other.json()["error"]
        assert (
            request(url, "POST", f"{ADMIN}/reload", context=_client(grid_pki, grid_pki.other_user)).status
            == 403
        )
        assert redirected_to(request(url, "GET", BOTH, context=_client(grid_pki, None))) == "near"

        admin = request(url, "POST", f"{path}/near/disable", context=_client(grid_pki, grid_pki.user))
        assert admin.status == 200, admin.body
        assert redirected_to(request(url, "GET", BOTH, context=_client(grid_pki, None))) == "far"

        runner = CliRunner()
        common = ["--url", url, "--cafile", str(grid_pki.ca.cert_path)]
        refused = runner.invoke(main, ["endpoints", *common])
        assert refused.exit_code == 1 and "401 authentication required" in refused.output
        refused = runner.invoke(
            main,
            [
                "endpoints",
                *common,
                "--cert",
                str(grid_pki.other_user.cert_path),
                "--key",
                str(grid_pki.other_user.key_path),
            ],
        )
        assert refused.exit_code == 1 and "403" in refused.output
        allowed = runner.invoke(
            main,
            [
                "endpoints",
                "enable",
                "near",
                *common,
                "--cert",
                str(grid_pki.user.cert_path),
                "--key",
                str(grid_pki.user.key_path),
            ],
        )
        assert allowed.exit_code == 0, allowed.output
        assert allowed.output == "near: disabled -> up\n"
