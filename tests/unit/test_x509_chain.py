"""Reading client chains (end-entity DN, proxies, limited proxies, VOMS ACs) and DNs from headers.

The chains come from a PKI made at run time (``tests/infra/pki.py``); where it matters the test also
asks OpenSSL (the CLI, and Python's ``ssl`` in an in-memory handshake) so the shapes are the real ones.
"""

from __future__ import annotations

import datetime as dt
import shutil
import ssl
import subprocess
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import NameOID
from hypothesis import given, settings
from hypothesis import strategies as st

from geofed.auth.x509 import (
    CertificateError,
    chain_from_der,
    chain_info,
    dn_from_header,
    slash_dn,
    strip_proxy_rdns,
)
from tests.infra.pki import (
    USER_DN,
    VOMS_EXTENSION,
    Credential,
    Pki,
    make_pki,
    make_proxy,
    make_voms_ac,
    voms_extension_value,
)

needs_openssl = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl CLI")


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def proxy(pki: Pki) -> Credential:
    return make_proxy(pki.user.cert, pki.user.key, pki.user.chain, pki.directory / "proxy.pem")


def test_plain_certificate(pki: Pki) -> None:
    info = chain_info([pki.user.cert, pki.ca.cert])
    assert info.dn == USER_DN
    assert info.end_entity == pki.user.cert
    assert (info.is_proxy, info.limited, info.voms_acs) == (False, False, ())


def test_proxy(pki: Pki, proxy: Credential) -> None:
    assert slash_dn(proxy.cert.subject) == f"{USER_DN}/CN={proxy.cert.serial_number}"
    info = chain_info([*proxy.chain, pki.ca.cert])
    assert info.dn == USER_DN
    assert info.end_entity == pki.user.cert
    assert (info.is_proxy, info.limited) == (True, False)


def test_proxy_of_proxy(pki: Pki, proxy: Credential) -> None:
    second = make_proxy(proxy.cert, proxy.key, proxy.chain, pki.directory / "proxy2.pem")
    assert len(second.chain) == 3
    info = chain_info([*second.chain, pki.ca.cert])
    assert info.dn == USER_DN
    assert (info.is_proxy, info.limited) == (True, False)


def test_limited_proxy_and_what_inherits_it(pki: Pki, proxy: Credential) -> None:
    limited = make_proxy(pki.user.cert, pki.user.key, pki.user.chain, pki.directory / "lim.pem", limited=True)
    assert chain_info(limited.chain).limited
    # a full proxy signed by a limited one is limited too, and so is a limited one below a full one
    below = make_proxy(limited.cert, limited.key, limited.chain, pki.directory / "lim-full.pem")
    assert chain_info(below.chain).limited
    lim_below = make_proxy(proxy.cert, proxy.key, proxy.chain, pki.directory / "full-lim.pem", limited=True)
    info = chain_info(lim_below.chain)
    assert (info.dn, info.limited) == (USER_DN, True)


@pytest.mark.parametrize(
    ("style", "limited"), [("draft", False), ("draft", True), ("legacy", False), ("legacy", True)]
)
def test_draft_and_legacy_proxies(pki: Pki, style: str, limited: bool) -> None:
    out = pki.directory / f"{style}-{limited}.pem"
    cred = make_proxy(pki.user.cert, pki.user.key, pki.user.chain, out, limited=limited, style=style)  # type: ignore[arg-type]
    info = chain_info(cred.chain)
    assert (info.dn, info.is_proxy, info.limited) == (USER_DN, True, limited)


def test_proxy_with_another_policy_is_refused(pki: Pki) -> None:
    """An independent (or application-policy) proxy was meant to carry fewer rights than its issuer."""
    independent = make_proxy(
        pki.user.cert, pki.user.key, pki.user.chain, pki.directory / "ind.pem", policy="1.3.6.1.5.5.7.21.2"
    )
    with pytest.raises(CertificateError, match="not supported"):
        chain_info(independent.chain)


def test_voms_acs_leaf_most_first(pki: Pki) -> None:
    first = make_voms_ac(pki.voms.cert, pki.voms.key, pki.user.cert, "testvo", ["/testvo"])
    second = make_voms_ac(pki.voms_other.cert, pki.voms_other.key, pki.user.cert, "othervo", ["/othervo"])
    outer = make_proxy(pki.user.cert, pki.user.key, pki.user.chain, pki.directory / "v1.pem", ac=first)
    inner = make_proxy(outer.cert, outer.key, outer.chain, pki.directory / "v2.pem", ac=second)
    assert chain_info(outer.chain).voms_acs == (first,)
    assert chain_info(inner.chain).voms_acs == (second, first)


def test_two_acs_in_one_extension(pki: Pki) -> None:
    acs = [make_voms_ac(pki.voms.cert, pki.voms.key, pki.user.cert, "testvo", ["/testvo"]) for _ in range(2)]
    ext = x509.UnrecognizedExtension(VOMS_EXTENSION, voms_extension_value(acs))
    cred = make_proxy(
        pki.user.cert,
        pki.user.key,
        pki.user.chain,
        pki.directory / "two.pem",
        extra_extensions=[(ext, False)],
    )
    assert chain_info(cred.chain).voms_acs == tuple(acs)


@pytest.mark.parametrize(
    "value", [b"", b"\x30\x03\x02\x01\x01", b"\x30\x80\x00\x00", b"\x04\x02ab", b"\x30\x05\x30\x03\x02"]
)
def test_malformed_voms_extension_is_a_note_not_a_failure(pki: Pki, value: bytes) -> None:
    ext = x509.UnrecognizedExtension(VOMS_EXTENSION, value)
    cred = make_proxy(
        pki.user.cert,
        pki.user.key,
        pki.user.chain,
        pki.directory / "bad.pem",
        extra_extensions=[(ext, False)],
    )
    info = chain_info(cred.chain)
    assert info.dn == USER_DN
    assert info.voms_acs == ()
    assert info.notes and "VOMS extension" in info.notes[0]


def test_chains_without_end_entity(pki: Pki, proxy: Credential) -> None:
    with pytest.raises(CertificateError, match="empty"):
        chain_info([])
    with pytest.raises(CertificateError, match="only proxies"):
        chain_info([proxy.cert])
    with pytest.raises(CertificateError):
        chain_info(["not a certificate"])  # type: ignore[list-item]


def test_chain_from_der(pki: Pki, proxy: Credential) -> None:
    ders = [c.public_bytes(serialization.Encoding.DER) for c in proxy.chain]
    assert chain_from_der(ders) == list(proxy.chain)
    with pytest.raises(CertificateError):
        chain_from_der([b"\x30\x03garbage"])
    with pytest.raises(CertificateError):
        chain_from_der(["text"])  # type: ignore[list-item]


def _handshake(pki: Pki, client_file: Path) -> list[x509.Certificate]:
    """Run a TLS handshake in memory with ``client_file`` as the client credential; return the chain
    the server verified, converted as the server does it (reference 8.5)."""
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(pki.host.cert_path, pki.host.key_path)
    server.load_verify_locations(capath=str(pki.ca_dir))
    server.verify_mode = ssl.CERT_REQUIRED
    server.verify_flags |= ssl.VERIFY_ALLOW_PROXY_CERTS
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.load_verify_locations(cafile=pki.ca.cert_path)
    client.load_cert_chain(client_file)
    c_in, c_out, s_in, s_out = ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO(), ssl.MemoryBIO()
    tls_client = client.wrap_bio(c_in, c_out, server_hostname="localhost")
    tls_server = server.wrap_bio(s_in, s_out, server_side=True)
    done = {"client": False, "server": False}
    for _ in range(20):
        for side, obj in (("client", tls_client), ("server", tls_server)):
            if not done[side]:
                try:
                    obj.do_handshake()
                    done[side] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            break
    tls_client.write(b"x")  # TLS 1.3: the server reads the client's certificate with the first data
    s_in.write(c_out.read())
    assert tls_server.read(1) == b"x"
    verified = tls_server._sslobj.get_verified_chain()  # type: ignore[attr-defined]  # private before 3.13
    return [x509.load_der_x509_certificate(c.public_bytes(ssl._ssl.ENCODING_DER)) for c in verified]  # type: ignore[attr-defined]


def test_chain_as_python_ssl_verifies_it(pki: Pki, proxy: Credential) -> None:
    second = make_proxy(proxy.cert, proxy.key, proxy.chain, pki.directory / "tls2.pem", limited=True)
    chain = _handshake(pki, second.path)
    assert chain == [second.cert, proxy.cert, pki.user.cert, pki.ca.cert]
    info = chain_info(chain)
    assert (info.dn, info.is_proxy, info.limited) == (USER_DN, True, True)


def test_python_ssl_rejects_a_forged_proxy(pki: Pki) -> None:
    forged = make_proxy(
        pki.user.cert,
        pki.user.key,
        pki.user.chain,
        pki.directory / "forged.pem",
        signing_key=pki.other_user.key,
    )
    with pytest.raises(ssl.SSLError):
        _handshake(pki, forged.path)


def _openssl_verify(pki: Pki, path: Path, *extra: str) -> bool:
    result = subprocess.run(
        [
            "openssl",
            "verify",
            "-allow_proxy_certs",
            *extra,
            "-CApath",
            str(pki.ca_dir),
            "-untrusted",
            str(path),
            str(path),
        ],
        capture_output=True,
        check=False,
    )
    return result.returncode == 0


@needs_openssl
def test_openssl_accepts_the_test_proxies(pki: Pki, proxy: Credential) -> None:
    ac = make_voms_ac(pki.voms.cert, pki.voms.key, pki.user.cert, "testvo", ["/testvo"])
    voms = make_proxy(pki.user.cert, pki.user.key, pki.user.chain, pki.directory / "ov.pem", ac=ac)
    second = make_proxy(voms.cert, voms.key, voms.chain, pki.directory / "ov2.pem", limited=True)
    for cred in (proxy, voms, second):
        assert _openssl_verify(pki, cred.path, "-crl_check_all"), cred.path
    forged = make_proxy(
        pki.user.cert, pki.user.key, pki.user.chain, pki.directory / "of.pem", signing_key=pki.other_user.key
    )
    assert not _openssl_verify(pki, forged.path)
    revoked = make_proxy(pki.revoked.cert, pki.revoked.key, pki.revoked.chain, pki.directory / "or.pem")
    assert _openssl_verify(pki, revoked.path)
    assert not _openssl_verify(pki, revoked.path, "-crl_check_all")
    untrusted = make_proxy(
        pki.untrusted_user.cert, pki.untrusted_user.key, pki.untrusted_user.chain, pki.directory / "ou.pem"
    )
    assert not _openssl_verify(pki, untrusted.path)


# --- DNs ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        ("CN=Test User,OU=Users,DC=test,DC=org", USER_DN),
        ("CN=Test User, OU=Users, DC=test, DC=org", USER_DN),
        ("cn=Test User;ou=Users;dc=test;dc=org", USER_DN),
        (USER_DN, USER_DN),
        (f"  {USER_DN}  ", USER_DN),
        ("CN=Doe\\, John,O=Example\\+Co,C=DE", "/C=DE/O=Example\\+Co/CN=Doe, John"),
        ('CN="Doe, John",O=Example', "/O=Example/CN=Doe, John"),
        ("CN=Ren\\C3\\A9 M\\C3\\BCller,O=x", "/O=x/CN=Ren\\xC3\\xA9 M\\xC3\\xBCller"),
        ("CN=René,O=x", "/O=x/CN=Ren\\xC3\\xA9"),
        ("CN=a\\0A", "/CN=a\\x0A"),
        ("CN=a+UID=b,DC=org", "/DC=org/UID=b+CN=a"),
        ("emailAddress=u@example.org,CN=U", "/CN=U/emailAddress=u@example.org"),
        ("E=u@example.org,CN=U", "/CN=U/emailAddress=u@example.org"),
        ("0.9.2342.19200300.100.1.25=org", "/DC=org"),
        ("OID.2.5.4.3=x", "/CN=x"),
        ("1.2.3.4=#0c03616263,CN=y", "/CN=y/1.2.3.4=abc"),
        ("CN=\\ padded\\ ", "/CN= padded "),
        ("CN=a\\=b", "/CN=a=b"),
        ("CN=Test User/CN=123,DC=org", "/DC=org/CN=Test User\\/CN=123"),
    ],
)
def test_dn_from_header(header: str, expected: str) -> None:
    assert dn_from_header(header) == expected


@pytest.mark.parametrize(
    "header",
    [
        "",
        "   ",
        "garbage",
        "CN=a,",
        "CN=a\\",
        'CN="unterminated',
        'CN="a"b',
        "CN=a\nOU=b",
        "/DC=org/CN=a\x00",
        "/nodn",
        "//DC=org",
        "C N=a",
        "=a",
        "CN=\\C3",
        "1.2.3=#zz",
        "1.2.3=#0201",
        "CN=a,,DC=b",
    ],
)
def test_dn_from_header_refuses(header: str) -> None:
    with pytest.raises(CertificateError):
        dn_from_header(header)


def test_dn_from_header_wrong_type() -> None:
    with pytest.raises(CertificateError):
        dn_from_header(b"CN=x")  # type: ignore[arg-type]


@needs_openssl
def test_dn_forms_agree_with_openssl(pki: Pki, tmp_path: Path) -> None:
    """A subject with separators in values and a multi-valued RDN: OpenSSL's RFC 2253 output, read
    by dn_from_header, equals slash_dn of the certificate and OpenSSL's own one-line form."""
    subject = x509.Name(
        [
            x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.DOMAIN_COMPONENT, "org")]),
            x509.RelativeDistinguishedName(
                [x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Example, Inc+Co/x")]
            ),
            x509.RelativeDistinguishedName(
                [
                    x509.NameAttribute(NameOID.USER_ID, "jdoe"),
                    x509.NameAttribute(NameOID.COMMON_NAME, "J = Doe"),
                ]
            ),
            x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.EMAIL_ADDRESS, "j@example.org")]),
            x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, "René")]),
        ]
    )
    now = dt.datetime.now(dt.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(pki.user.key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + dt.timedelta(days=1))
        .sign(pki.user.key, hashes.SHA256())
    )
    path = tmp_path / "odd.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))

    def subject_as(option: str) -> str:
        out = subprocess.run(
            ["openssl", "x509", "-noout", "-subject", "-nameopt", option, "-in", str(path)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        return out.removeprefix("subject=").strip()

    assert dn_from_header(subject_as("RFC2253")) == slash_dn(cert.subject) == subject_as("compat")


def test_slash_dn_of_the_test_pki(pki: Pki) -> None:
    assert slash_dn(pki.user.cert.subject) == USER_DN
    assert slash_dn(pki.ca.cert.subject) == "/DC=org/DC=test/CN=Test CA"


@pytest.mark.parametrize(
    ("dn", "expected"),
    [
        (f"{USER_DN}/CN=123456", USER_DN),
        (f"{USER_DN}/CN=1/CN=22/CN=limited proxy", USER_DN),
        (f"{USER_DN}/CN=proxy", USER_DN),
        (USER_DN, USER_DN),
        ("/DC=org/CN=12/CN=Someone", "/DC=org/CN=12/CN=Someone"),
        ("/DC=org/CN=proxyman", "/DC=org/CN=proxyman"),
        ("/DC=org/CN=x\\/CN=123", "/DC=org/CN=x\\/CN=123"),
    ],
)
def test_strip_proxy_rdns(dn: str, expected: str) -> None:
    assert strip_proxy_rdns(dn) == expected


_DN_PIECES = [*'CNOUDCE=,+;\\"# /x0aA\x00é\U0001f600', "\\2C", "\\C3", "#0c", "DC=org", "CN="]
_DN_ALPHABET = st.sampled_from(_DN_PIECES)


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.text(max_size=80), st.lists(_DN_ALPHABET, max_size=30).map("".join)))
def test_dn_from_header_fuzz(value: str) -> None:
    """Any string either converts or raises CertificateError: nothing else escapes."""
    try:
        result = dn_from_header(value)
    except CertificateError:
        return
    assert result.startswith("/")
