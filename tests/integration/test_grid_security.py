"""Grid security end to end: geofed over HTTPS with X509 proxies, VOMS, a member list, WLCG tokens
and a deny-by-default policy, driven by curl, davix and gfal2 with real certificates.

Every refusal is checked for its status and for what it left behind: the local endpoint's folder
must not hold the file a refused client tried to write.
"""

from __future__ import annotations

import os
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from cryptography.hazmat.primitives import serialization

from tests.infra.geofed_server import GeofedServer
from tests.infra.pki import Credential, Pki
from tests.integration.grid_federation import GridLayout, make_layout

pytestmark = pytest.mark.integration

CURL_TIMEOUT_S = 20
USER_DN = "/DC=org/DC=test/OU=Users/CN=Test User"


@pytest.fixture(scope="module")
def grid(grid_pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> GridLayout:
    return make_layout(grid_pki, tmp_path_factory.mktemp("grid"))


@pytest.fixture(scope="module")
def fed(grid: GridLayout) -> Iterator[GeofedServer]:
    with GeofedServer(grid.settings()) as server:
        yield server


def curl(
    grid: GridLayout, url: str, *args: str, cred: Credential | None = None, out: Path | None = None
) -> tuple[int, str, bytes]:
    """(curl exit code, HTTP status or "000", body) of one curl call with the test CA trusted."""
    command = ["curl", "-sS", "--max-time", str(CURL_TIMEOUT_S), "--cacert", str(grid.pki.ca.cert_path)]
    if cred is not None:
        command += ["--cert", str(cred.cert_path), "--key", str(cred.key_path)]
    body = out or Path(f"/tmp/geofed-curl-{uuid.uuid4().hex}")
    command += ["-o", str(body), "-w", "%{http_code}", *args, url]
    done = subprocess.run(command, capture_output=True, timeout=CURL_TIMEOUT_S + 10, check=False)
    data = body.read_bytes() if body.exists() else b""
    if out is None:
        body.unlink(missing_ok=True)
    return done.returncode, done.stdout.decode(), data


def upload(grid: GridLayout, fed: GeofedServer, path: str, data: bytes, cred: Credential | None) -> str:
    source = Path(f"/tmp/geofed-up-{uuid.uuid4().hex}")
    source.write_bytes(data)
    try:
        rc, status, _ = curl(grid, fed.url + path, "-L", "-T", str(source), cred=cred)
    finally:
        source.unlink()
    assert rc == 0, f"curl exit {rc}"
    return status


def stored(grid: GridLayout, path: str) -> Path:
    """Where the local endpoint keeps federated ``path`` (mounted at /fed)."""
    return grid.store / path.removeprefix("/fed/")


def unique(area: str, suffix: str = ".dat") -> str:
    return f"/fed/{area}/{uuid.uuid4().hex}{suffix}"


# -- curl with VOMS proxies ------------------------------------------------------------------------


def test_voms_proxy_writes_reads_lists_and_deletes_with_curl(grid: GridLayout, fed: GeofedServer) -> None:
    path = unique("testvo")
    data = os.urandom(70_000)
    assert upload(grid, fed, path, data, grid.proxies.voms) == "201"
    assert stored(grid, path).read_bytes() == data
    rc, status, body = curl(grid, fed.url + path, "-L", cred=grid.proxies.voms)
    assert (rc, status, body) == (0, "200", data)
    rc, status, listing = curl(
        grid, fed.url + "/fed/testvo/", "-X", "PROPFIND", "-H", "Depth: 1", cred=grid.proxies.voms
    )
    assert status == "207" and path.rsplit("/", 1)[1].encode() in listing
    assert curl(grid, fed.url + path, "-X", "DELETE", cred=grid.proxies.voms)[1] == "204"
    assert not stored(grid, path).exists()
    log = fed.flush_access_log()
    assert USER_DN in log, "the access log names the end-entity DN"
    assert "CN=Test User/CN=" not in log, "never a proxy's DN"


def test_fqan_role_grants_the_production_area(grid: GridLayout, fed: GeofedServer) -> None:
    path = unique("prod")
    assert upload(grid, fed, path, b"production output\n", grid.proxies.voms) == "201"
    denied = unique("prod")
    assert upload(grid, fed, denied, b"x", grid.proxies.member) == "403"
    assert not stored(grid, denied).exists()


def test_a_proxy_of_a_proxy_carries_the_identity(grid: GridLayout, fed: GeofedServer) -> None:
    path = unique("testvo")
    assert upload(grid, fed, path, b"delegated twice\n", grid.proxies.proxy_of_proxy) == "201"


def test_member_list_admits_a_plain_certificate(grid: GridLayout, fed: GeofedServer) -> None:
    path = unique("testvo")
    assert upload(grid, fed, path, b"member data\n", grid.proxies.member) == "201"
    assert curl(grid, fed.url + path, "-L", cred=grid.proxies.member)[1:] == ("200", b"member data\n")


def test_member_of_another_vo_is_refused(grid: GridLayout, fed: GeofedServer) -> None:
    path = unique("testvo")
    assert upload(grid, fed, path, b"secret\n", grid.proxies.voms) == "201"
    _rc, status, body = curl(grid, fed.url + path, "-L", cred=grid.proxies.other_vo)
    assert status == "403" and b"othervo" in body and b"may not read" in body
    target = unique("testvo")
    assert upload(grid, fed, target, b"intruder\n", grid.proxies.other_vo) == "403"
    assert not stored(grid, target).exists()


def test_plain_certificate_outside_every_vo_is_refused(grid: GridLayout, fed: GeofedServer) -> None:
    _rc, status, body = curl(grid, fed.url + "/fed/testvo/", "-X", "PROPFIND", cred=grid.proxies.plain)
    assert status == "403" and USER_DN.encode() in body


def test_anonymous_reads_public_and_gets_401_elsewhere(grid: GridLayout, fed: GeofedServer) -> None:
    (grid.store / "public" / "readme.txt").write_bytes(b"open data\n")
    assert curl(grid, fed.url + "/fed/public/readme.txt", "-L")[1:] == ("200", b"open data\n")
    _rc, status, _body = curl(grid, fed.url + "/fed/testvo/", "-X", "PROPFIND", "-i")
    assert status == "401"
    assert upload(grid, fed, unique("public"), b"x", None) == "401"


def test_limited_proxy_reads_but_does_not_write(grid: GridLayout, fed: GeofedServer) -> None:
    path = unique("testvo")
    assert upload(grid, fed, path, b"for the limited proxy\n", grid.proxies.voms) == "201"
    assert curl(grid, fed.url + path, "-L", cred=grid.proxies.limited)[1] == "200"
    target = unique("testvo")
    assert upload(grid, fed, target, b"x", grid.proxies.limited) == "403"
    assert curl(grid, fed.url + path, "-X", "DELETE", cred=grid.proxies.limited)[1] == "403"
    assert not stored(grid, target).exists() and stored(grid, path).exists()


def test_listing_shows_only_what_the_client_may_see(grid: GridLayout, fed: GeofedServer) -> None:
    def names(cred: Credential | None) -> set[str]:
        _rc, status, body = curl(grid, fed.url + "/fed/", "-X", "PROPFIND", "-H", "Depth: 1", cred=cred)
        assert status == "207", body
        return {
            area
            for area in ("public", "testvo", "prod", "tokens", "groups")
            if f"/fed/{area}/" in body.decode()
        }

    assert names(grid.proxies.voms) == {"public", "testvo", "prod"}
    assert names(grid.proxies.member) == {"public", "testvo"}
    assert names(None) == {"public"}
    assert names(grid.proxies.admin) == {"public", "testvo", "prod", "tokens", "groups"}


def test_refused_put_is_answered_before_the_body(grid: GridLayout, fed: GeofedServer) -> None:
    """curl -T sends Expect: 100-continue; the 403 comes from the expect handler, no byte sent."""
    source = Path(f"/tmp/geofed-up-{uuid.uuid4().hex}")
    source.write_bytes(os.urandom(1 << 20))
    target = unique("testvo")
    try:
        _rc, status, _ = curl(grid, fed.url + target, "-T", str(source), "-v", cred=grid.proxies.other_vo)
    finally:
        source.unlink()
    assert status == "403"
    assert not stored(grid, target).exists()


# -- refusals at the TLS layer -------------------------------------------------------------------


@pytest.mark.parametrize("which", ["untrusted", "expired", "revoked", "foreign_key", "voms"])
def test_bad_certificates_fail_the_handshake(grid: GridLayout, fed: GeofedServer, which: str) -> None:
    """OpenSSL refuses these chains during the handshake: no request reaches geofed at all. With
    TLS 1.3 the client learns it after its own Finished, so curl reports an alert (35, 56) or an
    empty reply (52). ``voms`` is the control: the same command with a good proxy gets an answer."""
    target = unique("testvo")
    source = Path(f"/tmp/geofed-up-{uuid.uuid4().hex}")
    source.write_bytes(b"never stored\n")
    try:
        command = [
            "curl", "-sS", "--max-time", "10", "--cacert", str(grid.pki.ca.cert_path),
            "--cert", str(getattr(grid.proxies, which).cert_path),
            "-T", str(source), "-o", "/dev/null", "-w", "%{http_code}", fed.url + target,
        ]  # fmt: skip
        done = subprocess.run(command, capture_output=True, timeout=20, check=False)
    finally:
        source.unlink()
    if which == "voms":
        assert (done.returncode, done.stdout) == (0, b"307")
        return
    assert done.returncode in (35, 52, 56), (done.returncode, done.stderr)
    assert done.stdout == b"000"
    assert not stored(grid, target).exists()
    log = fed.flush_access_log()
    assert target not in log, "the request never reached the federation"
    # and the server goes on serving
    assert curl(grid, fed.url + "/fed/public/", "-X", "PROPFIND")[1] == "207"


def test_forged_voms_ac_gives_no_vo(grid: GridLayout, fed: GeofedServer) -> None:
    target = unique("testvo")
    assert upload(grid, fed, target, b"x", grid.proxies.forged_ac) == "403"
    assert not stored(grid, target).exists()
    _rc, status, body = curl(grid, fed.url + target, cred=grid.proxies.forged_ac)
    assert status == "403" and b"signature" in body


# -- tokens ----------------------------------------------------------------------------------------


def bearer(token: str) -> tuple[str, str]:
    return "-H", f"Authorization: Bearer {token}"


def test_token_scopes_read_create_modify(grid: GridLayout, fed: GeofedServer) -> None:
    issuer = grid.issuer
    name = f"{uuid.uuid4().hex}.dat"
    path = f"/fed/tokens/run1/{name}"
    creator = issuer.mint(scope="storage.create:/run1 storage.read:/run1")
    reader = issuer.mint(scope="storage.read:/run1")
    modifier = issuer.mint(scope="storage.modify:/run1")
    source = Path(f"/tmp/geofed-up-{uuid.uuid4().hex}")
    source.write_bytes(b"token data\n")
    try:
        assert curl(grid, fed.url + path, "-L", "-T", str(source), *bearer(reader))[1] == "403"
        assert not stored(grid, path).exists()
        assert curl(grid, fed.url + path, "-L", "-T", str(source), *bearer(creator))[1] == "201"
        assert curl(grid, fed.url + path, "-L", *bearer(reader))[1:] == ("200", b"token data\n")
        # create does not include overwrite or delete (WLCG profile); modify does
        assert curl(grid, fed.url + path, "-L", "-T", str(source), *bearer(creator))[1] == "403"
        assert curl(grid, fed.url + path, "-X", "DELETE", *bearer(creator))[1] == "403"
        assert curl(grid, fed.url + path, "-L", "-T", str(source), *bearer(modifier))[1] == "204"
        assert curl(grid, fed.url + path, "-X", "DELETE", *bearer(modifier))[1] == "204"
    finally:
        source.unlink()
    # the scope is relative to the issuer's base path: nothing outside /fed/tokens/run1
    assert curl(grid, fed.url + "/fed/testvo/", "-X", "PROPFIND", *bearer(reader))[1] == "403"


def test_token_groups_match_policy_rules(grid: GridLayout, fed: GeofedServer) -> None:
    (grid.store / "groups" / "g.txt").write_bytes(b"group data\n")
    token = grid.issuer.mint(scope="openid", wlcg_groups=["/testvo/analysis"])
    assert curl(grid, fed.url + "/fed/groups/g.txt", "-L", *bearer(token))[1:] == ("200", b"group data\n")


@pytest.mark.parametrize(
    ("which", "status", "words"),
    [
        ("foreign", "401", "signature"),
        ("audience", "401", "audience"),
        ("issuer", "401", "issuer"),
        ("expired", "401", "expired"),
        ("none", "401", "none"),
        ("scope", "403", "may not write"),
    ],
)
def test_bad_tokens_are_refused(
    grid: GridLayout, fed: GeofedServer, which: str, status: str, words: str
) -> None:
    issuer = grid.issuer
    tokens: dict[str, Any] = {
        "foreign": issuer.mint_foreign,
        "audience": lambda: issuer.mint(aud="https://elsewhere.test"),
        "issuer": lambda: issuer.mint(iss="https://rogue.test"),
        "expired": lambda: issuer.mint(exp=int(time.time()) - 3600, iat=int(time.time()) - 7200),
        "none": issuer.mint_alg_none,
        "scope": lambda: issuer.mint(scope="storage.read:/"),
    }
    token = tokens[which]()
    target = f"/fed/tokens/{uuid.uuid4().hex}.dat"
    source = Path(f"/tmp/geofed-up-{uuid.uuid4().hex}")
    source.write_bytes(b"x")
    try:
        _rc, got, body = curl(grid, fed.url + target, "-T", str(source), *bearer(token))
    finally:
        source.unlink()
    assert got == status and words in body.decode(), body
    assert token.encode() not in body and not stored(grid, target).exists()


# -- identity headers from a TLS-terminating proxy ---------------------------------------------------


def header_fed(grid: GridLayout, trusted: str) -> GeofedServer:
    settings = grid.settings(identity_headers={"trusted": [trusted], "dn": "X-SSL-Client-S-DN"})
    plain = settings.model_copy(update={"server": settings.server.model_copy(update={"tls": None})})
    return GeofedServer(plain)


def test_identity_headers_only_from_trusted_addresses(grid: GridLayout) -> None:
    dn_header = (
        "-H",
        "X-SSL-Client-S-DN: CN=Other User,OU=Users,DC=test,DC=org",
        "-H",
        "X-SSL-Client-Verify: SUCCESS",
    )
    with header_fed(grid, "127.0.0.1/32") as trusted:
        assert curl(grid, trusted.url + "/fed/tokens/", "-X", "PROPFIND", *dn_header)[1] == "207"
        assert curl(grid, trusted.url + "/fed/tokens/", "-X", "PROPFIND")[1] == "401"
        failed = (
            "-H",
            "X-SSL-Client-S-DN: CN=Other User,OU=Users,DC=test,DC=org",
            "-H",
            "X-SSL-Client-Verify: FAILED",
        )
        assert curl(grid, trusted.url + "/fed/tokens/", "-X", "PROPFIND", *failed)[1] == "401"
    with header_fed(grid, "192.0.2.0/24") as untrusted:
        assert curl(grid, untrusted.url + "/fed/tokens/", "-X", "PROPFIND", *dn_header)[1] == "401"


@pytest.mark.parametrize("style", ["nginx", "apache"])
def test_certificate_chain_header_carries_voms(grid: GridLayout, style: str) -> None:
    """The proxy chain forwarded by a front end (URL-escaped as nginx does, or with blanks for line
    breaks as Apache does) gives the same identity, VOMS attributes included, as a direct client."""
    chain = b"".join(c.public_bytes(serialization.Encoding.PEM) for c in grid.proxies.voms.chain).decode()
    value = quote(chain, safe="") if style == "nginx" else chain.replace("\n", " ")
    settings = grid.settings(
        identity_headers={"trusted": ["127.0.0.1"], "cert": "X-SSL-Client-Cert", "dn": None},
        voms_ca_dir=str(grid.pki.ca_dir),  # without TLS settings, the CAs that issue VOMS servers
    )
    plain = settings.model_copy(update={"server": settings.server.model_copy(update={"tls": None})})
    with GeofedServer(plain) as server:
        headers = ("-H", f"X-SSL-Client-Cert: {value}", "-H", "X-SSL-Client-Verify: SUCCESS")
        assert curl(grid, server.url + "/fed/testvo/", "-X", "PROPFIND", *headers)[1] == "207"
        assert curl(grid, server.url + "/fed/prod/", "-X", "PROPFIND", *headers)[1] == "207"
        assert curl(grid, server.url + "/fed/testvo/", "-X", "PROPFIND")[1] == "401"
        assert USER_DN in server.flush_access_log()


# -- macaroon requests -----------------------------------------------------------------------------


def test_macaroon_request_is_refused_clearly(grid: GridLayout, fed: GeofedServer) -> None:
    _rc, status, body = curl(
        grid, fed.url + "/fed/testvo/", "-X", "POST", "-H", "Content-Type: application/macaroon-request",
        "--data", '{"caveats": ["activity:DOWNLOAD"], "validity": "PT60M"}', cred=grid.proxies.voms,
    )  # fmt: skip
    assert status == "405" and b"macaroon" in body


def test_required_client_certificates_refuse_a_client_without_one(grid: GridLayout) -> None:
    with GeofedServer(grid.settings(client_certificates="required")) as server:
        (grid.store / "public" / "req.txt").write_bytes(b"needs a certificate\n")
        rc, status, _ = curl(grid, server.url + "/fed/public/req.txt", "-L")
        assert rc in (35, 52, 56) and status == "000"  # the handshake fails: no certificate
        rc, status, body = curl(grid, server.url + "/fed/public/req.txt", "-L", cred=grid.proxies.voms)
        assert (rc, status, body) == (0, "200", b"needs a certificate\n")
