"""A grid-style test PKI made at run time in pure Python: CA, CRL, host, users, VOMS servers, proxies.

CI has no grid tools (``grid-proxy-init``, ``voms-proxy-fake``), and checked-in certificates expire,
so every test session builds its own PKI with ``cryptography`` (certificates, CRL, RFC 3820
proxies) and ``asn1crypto`` (VOMS attribute certificates), in the exact shapes of reference
section 8: what grid-proxy-init and voms-proxy-fake write, which OpenSSL, curl, davix and
``voms-proxy-info`` accept.

Layout written by :func:`make_pki` under ``directory``::

    ca.pem ca.key                  /DC=org/DC=test/CN=Test CA
    certificates/                  hashed CA directory: ca.pem, <hash>.0 -> ca.pem, <hash>.r0 (CRL)
    host.pem host.key              /DC=org/DC=test/CN=localhost (DNS:localhost, IP:127.0.0.1)
    user.pem other.pem member.pem revoked.pem (+ .key)   /DC=org/DC=test/OU=Users/CN=...
    voms.pem voms-other.pem (+ .key)                     VOMS servers of testvo and othervo
    vomsdir/testvo/voms.test.org.lsc, vomsdir/othervo/voms.other.org.lsc
    members-testvo.txt             the Plain Member's DN, for a ``vo_members`` file
    untrusted/ca.pem, untrusted/user.pem (+ .key)        a CA that is *not* in certificates/

RSA-2048 key generation takes ~30 ms here, so every certificate gets its own key: sharing keys would
make "signed with another key" forgeries accidentally valid.
"""

from __future__ import annotations

import datetime as dt
import ipaddress
import os
import secrets
import subprocess
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from asn1crypto import cms, core  # type: ignore[import-untyped]  # asn1crypto ships no stubs
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from geofed.auth.x509 import slash_dn

CA_DN = "/DC=org/DC=test/CN=Test CA"
HOST_DN = "/DC=org/DC=test/CN=localhost"
USER_DN = "/DC=org/DC=test/OU=Users/CN=Test User"
OTHER_DN = "/DC=org/DC=test/OU=Users/CN=Other User"
MEMBER_DN = "/DC=org/DC=test/OU=Users/CN=Plain Member"
REVOKED_DN = "/DC=org/DC=test/OU=Users/CN=Revoked User"
VOMS_DN = "/DC=org/DC=test/CN=voms.test.org"
VOMS_OTHER_DN = "/DC=org/DC=test/CN=voms.other.org"
UNTRUSTED_CA_DN = "/DC=org/DC=evil/CN=Untrusted CA"
UNTRUSTED_USER_DN = "/DC=org/DC=evil/OU=Users/CN=Test User"

PROXY_CERT_INFO = ObjectIdentifier("1.3.6.1.5.5.7.1.14")
DRAFT_PROXY_CERT_INFO = ObjectIdentifier("1.3.6.1.4.1.3536.1.222")
INHERIT_ALL = "1.3.6.1.5.5.7.21.1"
LIMITED_POLICY = "1.3.6.1.4.1.3536.1.1.1.9"
VOMS_EXTENSION = ObjectIdentifier("1.3.6.1.4.1.8005.100.100.5")
VOMS_ATTRIBUTE = "1.3.6.1.4.1.8005.100.100.4"
VOMS_CERTS_EXTENSION = "1.3.6.1.4.1.8005.100.100.10"
NO_REV_AVAIL = "2.5.29.56"

_DN_NAMES = {
    "DC": NameOID.DOMAIN_COMPONENT,
    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "O": NameOID.ORGANIZATION_NAME,
    "CN": NameOID.COMMON_NAME,
    "C": NameOID.COUNTRY_NAME,
}


@dataclass(frozen=True)
class Credential:
    """A certificate with its key and the files they are in.

    ``chain`` is what a client sends after its own certificate is verified: the certificate itself,
    then its issuers up to (not including) the CA; pass it as ``make_proxy``'s ``chain`` to build a
    proxy of this credential. For a proxy, ``cert_path == key_path`` (one grid-proxy-init file).
    """

    cert: x509.Certificate
    key: rsa.RSAPrivateKey
    cert_path: Path
    key_path: Path
    chain: tuple[x509.Certificate, ...]

    @property
    def path(self) -> Path:
        return self.cert_path

    @property
    def dn(self) -> str:
        return slash_dn(self.cert.subject)


@dataclass(frozen=True)
class Pki:
    """Everything :func:`make_pki` made (see the module docstring for the files)."""

    directory: Path
    ca: Credential
    ca_dir: Path
    ca_hash: str
    crl_path: Path
    host: Credential
    user: Credential
    other_user: Credential
    member: Credential
    revoked: Credential
    voms: Credential  # testvo
    voms_other: Credential  # othervo
    vomsdir: Path
    members_file: Path
    untrusted_ca: Credential
    untrusted_user: Credential


def name(dn: str) -> x509.Name:
    """An ``x509.Name`` from a slash-form DN of DC/OU/O/CN/C components (test names only)."""
    rdns = []
    for part in dn.strip("/").split("/"):
        key, value = part.split("=", 1)
        rdns.append(x509.RelativeDistinguishedName([x509.NameAttribute(_DN_NAMES[key], value)]))
    return x509.Name(rdns)


def new_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def _write(path: Path, data: bytes) -> None:
    """Write ``data`` mode 600 from the start (no window where a key is world-readable)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)
    path.chmod(0o600)


def pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def key_pem(key: rsa.RSAPrivateKey) -> bytes:
    """Traditional (PKCS#1, ``BEGIN RSA PRIVATE KEY``) unencrypted, as grid tools write it."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def issue(
    subject: str,
    issuer: Credential | None,
    extensions: Iterable[tuple[x509.ExtensionType, bool]],
    directory: Path,
    stem: str,
    *,
    not_before: dt.datetime | None = None,
    days: float = 3650,
) -> Credential:
    """A certificate for ``subject`` signed by ``issuer`` (self-signed when None), written to
    ``<stem>.pem`` and ``<stem>.key``; valid from ``not_before`` (default a day ago) for ``days``.

    ``extensions`` usually come from :func:`ca_extensions`, :func:`server_extensions` or
    :func:`user_extensions`. The credential's ``chain`` includes the issuer's when that is an
    intermediate CA, since a client must send intermediates.
    """
    key = new_key()
    start = not_before if not_before is not None else _now() - dt.timedelta(days=1)
    subject_name = name(subject)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject_name)
        .issuer_name(issuer.cert.subject if issuer else subject_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(days=days))
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
    )
    if issuer is not None:
        builder = builder.add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer.key.public_key()), critical=False
        )
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical=critical)
    cert = builder.sign(issuer.key if issuer else key, hashes.SHA256())
    cert_path, key_path = directory / f"{stem}.pem", directory / f"{stem}.key"
    _write(cert_path, pem(cert))
    _write(key_path, key_pem(key))
    above = issuer.chain if issuer is not None and issuer.cert.issuer != issuer.cert.subject else ()
    return Credential(cert, key, cert_path, key_path, (cert, *above))


def _key_usage(
    *, sign: bool = False, encipher: bool = False, data: bool = False, ca: bool = False
) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=sign,
        content_commitment=False,
        key_encipherment=encipher,
        data_encipherment=data,
        key_agreement=False,
        key_cert_sign=ca,
        crl_sign=ca,
        encipher_only=False,
        decipher_only=False,
    )


def ca_extensions() -> list[tuple[x509.ExtensionType, bool]]:
    return [(x509.BasicConstraints(ca=True, path_length=None), True), (_key_usage(ca=True), True)]


def server_extensions(*names: str, ip: str | None = None) -> list[tuple[x509.ExtensionType, bool]]:
    alt: list[x509.GeneralName] = [x509.DNSName(n) for n in names]
    if ip is not None:
        alt.append(x509.IPAddress(ipaddress.ip_address(ip)))
    return [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (_key_usage(sign=True, encipher=True), True),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]), False),
        (x509.SubjectAlternativeName(alt), False),
    ]


def user_extensions() -> list[tuple[x509.ExtensionType, bool]]:
    return [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (_key_usage(sign=True, encipher=True, data=True), True),
        (x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False),
    ]


def subject_hash(cert_path: Path) -> str:
    """OpenSSL's subject-name hash (the ``<hash>.0`` name in a CA directory)."""
    result = subprocess.run(
        ["openssl", "x509", "-hash", "-noout", "-in", str(cert_path)],
        check=True,
        capture_output=True,
        text=True,
    )
    return result.stdout.strip()


def _crl(ca: Credential, revoked: Sequence[x509.Certificate]) -> x509.CertificateRevocationList:
    now = _now()
    builder = (
        x509.CertificateRevocationListBuilder()
        .issuer_name(ca.cert.subject)
        .last_update(now - dt.timedelta(hours=1))
        .next_update(now + dt.timedelta(days=30))
        .add_extension(x509.CRLNumber(1), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()), critical=False
        )
    )
    for cert in revoked:
        builder = builder.add_revoked_certificate(
            x509.RevokedCertificateBuilder()
            .serial_number(cert.serial_number)
            .revocation_date(now - dt.timedelta(hours=1))
            .build()
        )
    return builder.sign(ca.key, hashes.SHA256())


def _lsc(vomsdir: Path, vo: str, host: str, voms: Credential, ca: Credential) -> None:
    _write(vomsdir / vo / f"{host}.lsc", f"{voms.dn}\n{ca.dn}\n".encode())


def make_pki(directory: Path) -> Pki:
    """Build the whole test PKI under ``directory`` (see the module docstring)."""
    directory.mkdir(parents=True, exist_ok=True)
    ca = issue(CA_DN, None, ca_extensions(), directory, "ca")
    host = issue(HOST_DN, ca, server_extensions("localhost", ip="127.0.0.1"), directory, "host")
    user = issue(USER_DN, ca, user_extensions(), directory, "user")
    other_user = issue(OTHER_DN, ca, user_extensions(), directory, "other")
    member = issue(MEMBER_DN, ca, user_extensions(), directory, "member")
    revoked = issue(REVOKED_DN, ca, user_extensions(), directory, "revoked")
    voms = issue(VOMS_DN, ca, server_extensions("voms.test.org"), directory, "voms")
    voms_other = issue(VOMS_OTHER_DN, ca, server_extensions("voms.other.org"), directory, "voms-other")

    ca_dir = directory / "certificates"
    ca_dir.mkdir(exist_ok=True)
    _write(ca_dir / "ca.pem", pem(ca.cert))
    (ca_dir / "ca.pem").chmod(0o644)
    ca_hash = subject_hash(ca_dir / "ca.pem")
    link = ca_dir / f"{ca_hash}.0"
    link.unlink(missing_ok=True)
    link.symlink_to("ca.pem")
    crl_path = ca_dir / f"{ca_hash}.r0"
    _write(crl_path, _crl(ca, [revoked.cert]).public_bytes(serialization.Encoding.PEM))
    crl_path.chmod(0o644)

    vomsdir = directory / "vomsdir"
    _lsc(vomsdir, "testvo", "voms.test.org", voms, ca)
    _lsc(vomsdir, "othervo", "voms.other.org", voms_other, ca)
    members_file = directory / "members-testvo.txt"
    _write(members_file, f"# members of testvo without VOMS\n{member.dn}\n".encode())

    untrusted_dir = directory / "untrusted"
    untrusted_dir.mkdir(exist_ok=True)
    untrusted_ca = issue(UNTRUSTED_CA_DN, None, ca_extensions(), untrusted_dir, "ca")
    untrusted_user = issue(UNTRUSTED_USER_DN, untrusted_ca, user_extensions(), untrusted_dir, "user")
    return Pki(
        directory=directory,
        ca=ca,
        ca_dir=ca_dir,
        ca_hash=ca_hash,
        crl_path=crl_path,
        host=host,
        user=user,
        other_user=other_user,
        member=member,
        revoked=revoked,
        voms=voms,
        voms_other=voms_other,
        vomsdir=vomsdir,
        members_file=members_file,
        untrusted_ca=untrusted_ca,
        untrusted_user=untrusted_user,
    )


def _der(tag: int, content: bytes) -> bytes:
    """One DER TLV (definite length)."""
    size = len(content)
    if size < 0x80:
        return bytes([tag, size]) + content
    length = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(length)]) + length + content


def proxy_cert_info(policy: str, *, path_length: int | None = None) -> bytes:
    """proxyCertInfo value: SEQUENCE { [pCPathLenConstraint INTEGER,] SEQUENCE { OID policy } }."""
    body = core.ObjectIdentifier(policy).dump()
    if path_length is not None:
        return _der(0x30, core.Integer(path_length).dump() + _der(0x30, body))
    return _der(0x30, _der(0x30, body))


def voms_extension_value(acs: Sequence[bytes]) -> bytes:
    """The proxy's VOMS extension value: SEQUENCE OF SEQUENCE OF AttributeCertificate."""
    return _der(0x30, _der(0x30, b"".join(acs)))


def make_proxy(
    issuer_cert: x509.Certificate,
    issuer_key: rsa.RSAPrivateKey,
    chain: Sequence[x509.Certificate],
    out: Path,
    *,
    ac: bytes | None = None,
    limited: bool = False,
    hours: float = 12,
    not_before: dt.datetime | None = None,
    signing_key: rsa.RSAPrivateKey | None = None,
    style: Literal["rfc", "draft", "legacy"] = "rfc",
    extra_extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
    policy: str | None = None,
) -> Credential:
    """Write a proxy of ``issuer_cert`` to ``out`` as grid-proxy-init does; returns it as a Credential.

    ``chain`` is the issuer's own chain, issuer first (``user.chain``, or a proxy's ``chain`` for a
    proxy of a proxy); the file holds the proxy, its key, then ``chain``. ``ac`` adds the VOMS
    extension; ``signing_key`` signs with another key than the issuer's (a forgery); ``style``
    ``draft`` uses the pre-RFC proxyCertInfo OID and ``legacy`` a Globus ``CN=proxy`` /
    ``CN=limited proxy`` without proxyCertInfo (which OpenSSL 3 rejects); ``extra_extensions`` are
    (extension, critical) pairs added as given (a malformed VOMS extension, say); ``policy``
    overrides the proxyCertInfo policy language OID (id-ppl-independent is 1.3.6.1.5.5.7.21.2).
    """
    key = new_key()
    serial = secrets.randbits(31) | (1 << 30)
    last = ("limited proxy" if limited else "proxy") if style == "legacy" else str(serial)
    subject = x509.Name(
        [
            *issuer_cert.subject.rdns,
            x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, last)]),
        ]
    )
    start = not_before if not_before is not None else _now() - dt.timedelta(minutes=5)
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer_cert.subject)
        .public_key(key.public_key())
        .serial_number(serial)
        .not_valid_before(start)
        .not_valid_after(start + dt.timedelta(hours=hours))
        .add_extension(_key_usage(sign=True, encipher=True, data=True), critical=True)
    )
    if style != "legacy":
        oid = PROXY_CERT_INFO if style == "rfc" else DRAFT_PROXY_CERT_INFO
        value = proxy_cert_info(policy or (LIMITED_POLICY if limited else INHERIT_ALL))
        builder = builder.add_extension(x509.UnrecognizedExtension(oid, value), critical=True)
    if ac is not None:
        builder = builder.add_extension(
            x509.UnrecognizedExtension(VOMS_EXTENSION, voms_extension_value([ac])), critical=False
        )
    for extension, critical in extra_extensions:
        builder = builder.add_extension(extension, critical=critical)
    cert = builder.sign(signing_key or issuer_key, hashes.SHA256())
    _write(out, pem(cert) + key_pem(key) + b"".join(pem(c) for c in chain))
    return Credential(cert, key, out, out, (cert, *chain))


def _general_name(subject: x509.Name) -> asn1_x509.GeneralName:
    return asn1_x509.GeneralName(name="directory_name", value=asn1_x509.Name.load(subject.public_bytes()))


def _extension(oid: str, value: object, *, critical: bool = False) -> asn1_x509.Extension:
    return asn1_x509.Extension({"extn_id": oid, "critical": critical, "extn_value": value})


def make_voms_ac(
    voms_cert: x509.Certificate,
    voms_key: rsa.RSAPrivateKey,
    holder: x509.Certificate,
    vo: str,
    fqans: Sequence[str],
    *,
    uri: str = "voms.test.org:15000",
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
    embed: Sequence[x509.Certificate] | None = None,
    extra_extensions: Sequence[asn1_x509.Extension] = (),
) -> bytes:
    """DER of a VOMS AttributeCertificateV2 for ``holder`` (the end-entity certificate), as
    voms-proxy-fake makes it (reference section 8.3), signed SHA256withRSA with ``voms_key``.

    ``embed`` replaces the certificates in extension …100.100.10 (default: ``voms_cert``);
    ``extra_extensions`` lets a test add, say, an unknown critical extension.
    """
    start = not_before if not_before is not None else _now() - dt.timedelta(minutes=5)
    end = not_after if not_after is not None else start + dt.timedelta(hours=12)
    attribute = cms.IetfAttrSyntax(
        {
            "policy_authority": [
                asn1_x509.GeneralName(name="uniform_resource_identifier", value=f"{vo}://{uri}")
            ],
            "values": [cms.IetfAttrValue(name="octets", value=fqan.encode()) for fqan in fqans],
        }
    )
    # the VOMS certificate's key id (SHA-1 of its key), also when a test forges with another key
    key_id = voms_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value.digest
    certs = embed if embed is not None else [voms_cert]
    certs_value = _der(0x30, _der(0x30, b"".join(c.public_bytes(serialization.Encoding.DER) for c in certs)))
    info = cms.AttributeCertificateInfoV2(
        {
            "version": "v2",
            "holder": {
                "base_certificate_id": {
                    "issuer": [_general_name(holder.issuer)],
                    "serial": holder.serial_number,
                }
            },
            "issuer": cms.AttCertIssuer(
                name="v2_form", value={"issuer_name": [_general_name(voms_cert.subject)]}
            ),
            "signature": {"algorithm": "sha256_rsa"},
            "serial_number": secrets.randbits(63),
            "att_cert_validity_period": {
                "not_before_time": core.GeneralizedTime(start.astimezone(dt.UTC).replace(microsecond=0)),
                "not_after_time": core.GeneralizedTime(end.astimezone(dt.UTC).replace(microsecond=0)),
            },
            "attributes": [{"type": VOMS_ATTRIBUTE, "values": [attribute]}],
            "extensions": [
                _extension(NO_REV_AVAIL, core.ParsableOctetString(core.Null().dump())),
                _extension("2.5.29.35", asn1_x509.AuthorityKeyIdentifier({"key_identifier": key_id})),
                _extension(VOMS_CERTS_EXTENSION, core.ParsableOctetString(certs_value)),
                *extra_extensions,
            ],
        }
    )
    signature = voms_key.sign(info.dump(), padding.PKCS1v15(), hashes.SHA256())
    ac = cms.AttributeCertificateV2(
        {"ac_info": info, "signature_algorithm": {"algorithm": "sha256_rsa"}, "signature": signature}
    )
    data: bytes = ac.dump()
    return data
