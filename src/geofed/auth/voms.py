"""Verify VOMS attribute certificates: which VO a client belongs to, with which groups and roles.

A VOMS AC (RFC 5755 AttributeCertificate v2) rides in the client's proxy and is signed by the VO's
VOMS server. The client controls every byte of it (it signs its own proxy), so nothing in it counts
until all of these hold:

- it parses, as the AC shape VOMS writes (one attribute 1.3.6.1.4.1.8005.100.100.4 whose
  ``policyAuthority`` URI names the VO before ``://`` and whose values are the FQANs, each inside
  that VO: a server trusted for one VO must not grant roles in another);
- its holder (``baseCertificateID``) is the issuer and serial of the client's end-entity certificate,
  so an AC cannot be lifted into someone else's proxy;
- its issuer is trusted for *that* VO, the way grid middleware does it: either the VOMS server
  certificate embedded in extension …100.100.10 has the subject and issuer named by a
  ``vomsdir/<vo>/*.lsc`` file and is issued by a CA of the CA directory (LSC style), or a VOMS
  server certificate placed in ``vomsdir/<vo>/*.pem`` has the AC's issuer as subject;
- its signature verifies with that certificate's key, and no unknown extension is critical;
- now is inside the AC's validity and that of the certificates trusted along the way (with
  ``clock_skew`` tolerance, as VOMS clients allow, because ACs are used seconds after being issued
  by a server whose clock may be ahead).

The vomsdir and the CA directory are read once, at construction: a configuration reload builds a
new verifier (and so also drops the cache). Results are cached by (AC bytes, end-entity certificate)
in a bounded LRU, because a client presents the same AC on every connection for hours; the time
checks are redone on every call, so a cached success still expires.

:meth:`VomsVerifier.verify` never raises: a bad AC only means "no VO from this AC", with a reason.
"""

from __future__ import annotations

import datetime as dt
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from asn1crypto import cms, core  # type: ignore[import-untyped]  # asn1crypto ships no stubs
from asn1crypto import x509 as asn1_x509
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from geofed.auth.x509 import short_attribute_name, slash_dn

log = logging.getLogger(__name__)

VOMS_ATTRIBUTE_OID = "1.3.6.1.4.1.8005.100.100.4"
VOMS_CERTS_OID = "1.3.6.1.4.1.8005.100.100.10"
VOMS_TAGS_OID = "1.3.6.1.4.1.8005.100.100.11"  # generic attributes (nickname, …): not used here
NO_REV_AVAIL_OID = "2.5.29.56"
AUTHORITY_KEY_ID_OID = "2.5.29.35"
_UNDERSTOOD_EXTENSIONS = frozenset({VOMS_CERTS_OID, VOMS_TAGS_OID, NO_REV_AVAIL_OID, AUTHORITY_KEY_ID_OID})

MAX_AC_BYTES = 64 * 1024
"""A real AC is 2 to 5 kB (mostly the embedded VOMS certificate); refuse to parse anything far bigger."""
MAX_EMBEDDED_CERTS = 8
MAX_PATH_LENGTH = 5
_VO_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,254}")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_HASHES: dict[str, type[hashes.HashAlgorithm]] = {
    "sha1": hashes.SHA1,
    "sha224": hashes.SHA224,
    "sha256": hashes.SHA256,
    "sha384": hashes.SHA384,
    "sha512": hashes.SHA512,
}


@dataclass(frozen=True, slots=True)
class VomsAttributes:
    """The outcome of verifying one AC: ``vo`` and ``fqans`` when ``error`` is None, else only why."""

    vo: str | None
    fqans: tuple[str, ...] = ()
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and self.vo is not None

    @classmethod
    def failure(cls, error: str) -> VomsAttributes:
        return cls(vo=None, fqans=(), error=error)


class _Rejected(Exception):
    """Internal: the AC is refused for the reason given (becomes ``VomsAttributes.error``)."""


@dataclass(frozen=True, slots=True)
class _Window:
    not_before: float
    not_after: float
    what: str


@dataclass(frozen=True, slots=True)
class _Verdict:
    """A time-independent result, cached; ``windows`` are checked against the clock on every use."""

    attributes: VomsAttributes
    windows: tuple[_Window, ...] = ()


@dataclass(slots=True)
class _VoTrust:
    lsc_chains: set[tuple[str, ...]] = field(default_factory=set)
    certs: list[tuple[x509.Certificate, Any]] = field(default_factory=list)  # (cert, asn1 subject)


class _AnySequence(core.SequenceOf):  # type: ignore[misc]  # asn1crypto is untyped
    _child_spec = core.Any


class _CertificateSets(core.SequenceOf):  # type: ignore[misc]
    """Extension …100.100.10: SEQUENCE { SEQUENCE OF Certificate } (read as a list of lists)."""

    _child_spec = _AnySequence


class VomsVerifier:
    """Verifies VOMS ACs against a vomsdir and a hashed CA directory, read at construction.

    ``vomsdir`` holds ``<vo>/*.lsc`` (two or more lines: the VOMS server certificate's subject, its
    issuer, … up to a CA of ``ca_dir``; ``------ NEXT CHAIN ------`` separates alternatives) and/or
    ``<vo>/*.pem`` (VOMS server certificates trusted directly). ``ca_dir`` is the grid CA directory
    (``<hash>.0`` certificates, ``<hash>.r0`` CRLs: a revoked VOMS server certificate is refused).
    """

    def __init__(
        self,
        vomsdir: Path | None,
        ca_dir: Path | None,
        *,
        cache_entries: int = 10_000,
        clock_skew: float = 300.0,
    ) -> None:
        self._trust: dict[str, _VoTrust] = _load_vomsdir(vomsdir) if vomsdir is not None else {}
        self._cas, self._revoked = _load_ca_dir(ca_dir) if ca_dir is not None else ({}, {})
        self._cache: OrderedDict[tuple[bytes, x509.Certificate], _Verdict] = OrderedDict()
        self._cache_entries = max(1, cache_entries)
        self._clock_skew = clock_skew
        self._lock = threading.Lock()
        self._configured = vomsdir is not None

    @property
    def vos(self) -> frozenset[str]:
        """The VOs with at least one trusted VOMS server (for a startup log line)."""
        return frozenset(vo for vo, trust in self._trust.items() if trust.lsc_chains or trust.certs)

    def verify(self, ac_der: bytes, end_entity: x509.Certificate, now: float | None = None) -> VomsAttributes:
        """The VO and FQANs of ``ac_der`` if it is a valid AC for ``end_entity`` at ``now`` (epoch
        seconds, default the current time); otherwise a failure saying why. Never raises."""
        try:
            if not isinstance(ac_der, bytes | bytearray | memoryview):
                return VomsAttributes.failure("VOMS AC is not bytes")
            if not isinstance(end_entity, x509.Certificate):
                return VomsAttributes.failure("no end-entity certificate to check the AC holder against")
            key = (bytes(ac_der), end_entity)
            with self._lock:
                verdict = self._cache.get(key)
                if verdict is not None:
                    self._cache.move_to_end(key)
            if verdict is None:
                verdict = self._verify_uncached(key[0], end_entity)
                with self._lock:
                    self._cache[key] = verdict
                    while len(self._cache) > self._cache_entries:
                        self._cache.popitem(last=False)
            return self._at(verdict, time.time() if now is None else now)
        except Exception as exc:  # the contract: a bad credential is a result, never an exception
            return VomsAttributes.failure(f"VOMS AC verification failed: {type(exc).__name__}: {exc}")

    def _at(self, verdict: _Verdict, now: float) -> VomsAttributes:
        if verdict.attributes.error is not None:
            return verdict.attributes
        for window in verdict.windows:
            if now + self._clock_skew < window.not_before:
                return VomsAttributes.failure(f"{window.what} not valid before {_iso(window.not_before)}")
            if now - self._clock_skew > window.not_after:
                return VomsAttributes.failure(f"{window.what} expired at {_iso(window.not_after)}")
        return verdict.attributes

    def _verify_uncached(self, ac_der: bytes, end_entity: x509.Certificate) -> _Verdict:
        """Everything about the AC that does not depend on the clock, so the result can be cached."""
        try:
            return self._check(ac_der, end_entity)
        except _Rejected as exc:
            return _Verdict(VomsAttributes.failure(str(exc)))
        except Exception as exc:  # asn1crypto raises ValueError, TypeError, KeyError, … on bad DER
            return _Verdict(VomsAttributes.failure(f"malformed VOMS AC: {type(exc).__name__}: {exc}"))

    def _check(self, ac_der: bytes, end_entity: x509.Certificate) -> _Verdict:
        if len(ac_der) > MAX_AC_BYTES:
            raise _Rejected(f"VOMS AC too large ({len(ac_der)} bytes)")
        ac = cms.AttributeCertificateV2.load(ac_der, strict=True)
        info = ac["ac_info"]
        if info["version"].native != "v2":
            raise _Rejected("not a version 2 attribute certificate")
        if ac["signature_algorithm"].dump() != info["signature"].dump():
            raise _Rejected("VOMS AC signature algorithm differs from the one it signed")
        _check_holder(info["holder"], end_entity)
        vo, fqans = _voms_attribute(info["attributes"])
        embedded = _extensions(info["extensions"])
        period = info["att_cert_validity_period"]
        windows = [
            _Window(
                period["not_before_time"].native.timestamp(),
                period["not_after_time"].native.timestamp(),
                "VOMS AC",
            )
        ]
        issuer = _ac_issuer(info["issuer"])
        candidates = self._signers(vo, issuer, embedded)
        algorithm = ac["signature_algorithm"]
        signed = info.dump()
        signature = ac["signature"].native
        for cert, cert_windows in candidates:
            if _signature_ok(cert.public_key(), algorithm, signature, signed):
                return _Verdict(VomsAttributes(vo=vo, fqans=fqans), (*windows, *cert_windows))
        raise _Rejected("VOMS AC signature does not verify")

    def _signers(
        self, vo: str, issuer: Any, embedded: list[x509.Certificate]
    ) -> list[tuple[x509.Certificate, tuple[_Window, ...]]]:
        """The certificates trusted to have signed an AC of ``vo`` by ``issuer`` (direct first)."""
        if not self._configured:
            raise _Rejected("untrusted VOMS AC: no vomsdir configured")
        trust = self._trust.get(vo)
        if trust is None or not (trust.certs or trust.lsc_chains):
            raise _Rejected(f"untrusted VOMS AC: no .lsc or certificate for VO {vo} in vomsdir")
        out: list[tuple[x509.Certificate, tuple[_Window, ...]]] = [
            (cert, (_window(cert, f"VOMS server certificate {slash_dn(cert.subject)}"),))
            for cert, subject in trust.certs
            if subject == issuer
        ]
        if trust.lsc_chains and embedded:
            if _asn1_name(embedded[0].subject) != issuer:
                if not out:
                    raise _Rejected(
                        "untrusted VOMS AC: its issuer is not the embedded VOMS server certificate"
                    )
            else:
                try:
                    out.append(self._lsc_path(vo, trust, embedded))
                except _Rejected:
                    if not out:  # a directly trusted certificate may still vouch for the AC
                        raise
        if not out:
            raise _Rejected(f"untrusted VOMS AC: issuer {_asn1_slash(issuer)} is not trusted for VO {vo}")
        return out

    def _lsc_path(
        self, vo: str, trust: _VoTrust, embedded: list[x509.Certificate]
    ) -> tuple[x509.Certificate, tuple[_Window, ...]]:
        """The embedded VOMS certificate, if its DN chain is in an LSC file and it leads to a CA.

        The path goes up through embedded intermediates until a CA of the CA directory, then on
        through the CA directory to the root. An LSC file lists the subjects along that path, from the
        VOMS server's; like VOMS, a file that stops early (two lines: the server and its issuer, the
        usual case) matches, since everything above is checked against the CA directory anyway.
        """
        voms = embedded[0]
        head = (slash_dn(voms.subject), slash_dn(voms.issuer))
        if not any(chain[:2] == head for chain in trust.lsc_chains):
            raise _Rejected(
                f"untrusted VOMS AC: VOMS server {head[0]} (issuer {head[1]}) is not listed in vomsdir/{vo}"
            )
        path = [voms]
        current = voms
        trusted = False
        for _ in range(MAX_PATH_LENGTH):
            if current.serial_number in self._revoked.get(current.issuer, ()):
                raise _Rejected(f"untrusted VOMS AC: certificate {slash_dn(current.subject)} is revoked")
            if trusted and current.subject == current.issuer:
                break  # the root
            parent = next((ca for ca in self._cas.get(current.issuer, ()) if _issued_by(current, ca)), None)
            if parent is not None:
                trusted = True
            elif trusted:
                break  # a CA of the directory whose own issuer is not there: trusted as it is
            else:
                parent = next((c for c in embedded[1:] if _is_ca(c) and _issued_by(current, c)), None)
                if parent is None:
                    raise _Rejected(
                        f"untrusted VOMS AC: {slash_dn(current.subject)} is not issued by a trusted CA"
                    )
            path.append(parent)
            current = parent
        if not trusted:
            raise _Rejected("untrusted VOMS AC: no trusted CA within the VOMS certificate chain")
        dns = [slash_dn(cert.subject) for cert in path]
        if path[-1].issuer != path[-1].subject:
            dns.append(slash_dn(path[-1].issuer))
        if not any(chain == tuple(dns[: len(chain)]) for chain in trust.lsc_chains):
            raise _Rejected(f"untrusted VOMS AC: certificate chain {dns} is not listed in vomsdir/{vo}")
        windows = [_window(voms, f"VOMS server certificate {head[0]}")]
        windows += [_window(cert, f"CA certificate {slash_dn(cert.subject)}") for cert in path[1:]]
        return voms, tuple(windows)


def _check_holder(holder: Any, end_entity: x509.Certificate) -> None:
    base = holder["base_certificate_id"]
    if isinstance(base, core.Void):
        raise _Rejected("AC holder has no baseCertificateID (issuer and serial)")
    if base["serial"].native != end_entity.serial_number:
        raise _Rejected("AC holder is not this certificate (serial differs)")
    ee_issuer = _asn1_name(end_entity.issuer)
    if not any(n.name == "directory_name" and n.chosen == ee_issuer for n in base["issuer"]):
        raise _Rejected("AC holder is not this certificate (issuer differs)")


def _voms_attribute(attributes: Any) -> tuple[str, tuple[str, ...]]:
    found = [a for a in attributes if a["type"].dotted == VOMS_ATTRIBUTE_OID]
    if len(found) != 1 or len(found[0]["values"]) != 1:
        raise _Rejected("VOMS AC must carry exactly one VOMS attribute")
    syntax = cms.IetfAttrSyntax.load(found[0]["values"][0].dump(), strict=True)
    authority = syntax["policy_authority"]
    # the raw IA5String, not ``.native``: asn1crypto's IRI conversion refuses odd but harmless URIs
    uris = (
        []
        if isinstance(authority, core.Void)
        else [n.chosen.contents for n in authority if n.name == "uniform_resource_identifier"]
    )
    if len(uris) != 1 or b"://" not in uris[0] or not uris[0].isascii():
        raise _Rejected("VOMS attribute has no policyAuthority URI <vo>://<host>:<port>")
    vo = uris[0].decode("ascii").split("://", 1)[0]
    if not _VO_NAME.fullmatch(vo):
        raise _Rejected(f"bad VO name {vo!r} in VOMS AC")
    fqans = []
    for value in syntax["values"]:
        if value.name == "octets":
            fqan = value.native.decode("utf-8")
        elif value.name == "string":
            fqan = value.native
        else:
            raise _Rejected("VOMS attribute value is not an FQAN string")
        if _CONTROL.search(fqan) or not (fqan == f"/{vo}" or fqan.startswith(f"/{vo}/")):
            raise _Rejected(f"FQAN {fqan!r} is not in VO {vo}")
        fqans.append(fqan)
    return vo, tuple(fqans)


def _extensions(extensions: Any) -> list[x509.Certificate]:
    """Refuse unknown critical extensions; return the embedded VOMS certificates (may be empty)."""
    if isinstance(extensions, core.Void):
        return []
    embedded: list[x509.Certificate] = []
    for ext in extensions:
        oid = ext["extn_id"].dotted
        if oid not in _UNDERSTOOD_EXTENSIONS and ext["critical"].native:
            raise _Rejected(f"unsupported critical extension {oid} in VOMS AC")
        if oid == VOMS_CERTS_OID:
            sets = _CertificateSets.load(ext["extn_value"].contents, strict=True)
            items = [item for inner in sets for item in inner]
            if len(items) > MAX_EMBEDDED_CERTS:
                raise _Rejected("too many certificates embedded in VOMS AC")
            embedded = [x509.load_der_x509_certificate(item.dump()) for item in items]
    return embedded


def _ac_issuer(issuer: Any) -> Any:
    names = issuer.chosen["issuer_name"] if issuer.name == "v2_form" else issuer.chosen
    if isinstance(names, core.Void):
        raise _Rejected("VOMS AC has no issuer name")
    directory = [n.chosen for n in names if n.name == "directory_name"]
    if len(directory) != 1:
        raise _Rejected("VOMS AC issuer is not one directory name")
    return directory[0]


def _signature_ok(public_key: Any, algorithm: Any, signature: bytes, data: bytes) -> bool:
    hash_type = _HASHES.get(algorithm.hash_algo)
    kind = algorithm.signature_algo
    if hash_type is None:
        raise _Rejected(f"unsupported VOMS AC hash {algorithm.hash_algo}")
    try:
        if isinstance(public_key, rsa.RSAPublicKey) and kind == "rsassa_pkcs1v15":
            public_key.verify(signature, data, padding.PKCS1v15(), hash_type())
        elif isinstance(public_key, ec.EllipticCurvePublicKey) and kind == "ecdsa":
            public_key.verify(signature, data, ec.ECDSA(hash_type()))
        else:
            return False
    except InvalidSignature:
        return False
    return True


def _issued_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


def _is_ca(cert: x509.Certificate) -> bool:
    try:
        return cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    except (x509.ExtensionNotFound, ValueError):
        return False


def _window(cert: x509.Certificate, what: str) -> _Window:
    return _Window(cert.not_valid_before_utc.timestamp(), cert.not_valid_after_utc.timestamp(), what)


def _iso(timestamp: float) -> str:
    return dt.datetime.fromtimestamp(timestamp, dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _asn1_name(name: x509.Name) -> Any:
    return asn1_x509.Name.load(name.public_bytes())


def _asn1_slash(name: Any) -> str:
    """An asn1crypto Name in slash form, for messages."""
    try:
        parts = []
        for rdn in name.chosen:
            parts.append(
                "+".join(f"{short_attribute_name(a['type'].dotted)}={a['value'].native}" for a in rdn)
            )
        return "".join(f"/{p}" for p in parts)
    except Exception:  # only for an error message: never let it hide the real reason
        return "<unreadable DN>"


def _load_vomsdir(vomsdir: Path) -> dict[str, _VoTrust]:
    if not vomsdir.is_dir():
        raise ValueError(f"vomsdir {vomsdir} is not a directory")
    trust: dict[str, _VoTrust] = {}
    for vo_dir in sorted(vomsdir.iterdir()):
        if not vo_dir.is_dir():
            continue  # old-style certificates directly in vomsdir bind to no VO: not supported
        entry = trust.setdefault(vo_dir.name, _VoTrust())
        for path in sorted(vo_dir.iterdir()):
            try:
                if path.suffix == ".lsc":
                    entry.lsc_chains.update(_parse_lsc(path.read_text("utf-8")))
                elif path.suffix == ".pem":
                    for cert in x509.load_pem_x509_certificates(path.read_bytes()):
                        entry.certs.append((cert, _asn1_name(cert.subject)))
            except (OSError, ValueError) as exc:
                log.warning("ignoring unreadable vomsdir file %s: %s", path, exc)
    return trust


def _parse_lsc(text: str) -> set[tuple[str, ...]]:
    """DN chains of an LSC file: one DN per line, alternatives separated by a ``NEXT CHAIN`` line."""
    chains: set[tuple[str, ...]] = set()
    current: list[str] = []
    for raw in [*text.splitlines(), "------ NEXT CHAIN ------"]:
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-") and "NEXT CHAIN" in line.upper():
            if len(current) >= 2:
                chains.add(tuple(current))
            elif current:
                raise ValueError("an LSC chain needs the VOMS server DN and its issuer's")
            current = []
        elif line.startswith("/"):
            current.append(line)
        else:
            raise ValueError(f"not a slash-form DN: {line!r}")
    return chains


def _load_ca_dir(
    ca_dir: Path,
) -> tuple[dict[x509.Name, list[x509.Certificate]], dict[x509.Name, frozenset[int]]]:
    """CA certificates by subject and revoked serials by issuer, from ``*.0``..``*.9`` and ``*.r0``..``*.r9``.

    A CRL counts only if a CA of the directory signed it; expired CRLs still count (refusing a
    revoked VOMS server matters more than a CRL's ``nextUpdate``).
    """
    if not ca_dir.is_dir():
        raise ValueError(f"CA directory {ca_dir} is not a directory")
    cas: dict[x509.Name, list[x509.Certificate]] = {}
    seen: set[x509.Certificate] = set()
    for path in sorted(_matching(ca_dir, re.compile(r".+\.[0-9]"))):
        try:
            for cert in x509.load_pem_x509_certificates(path.read_bytes()):
                if cert not in seen:
                    seen.add(cert)
                    cas.setdefault(cert.subject, []).append(cert)
        except (OSError, ValueError) as exc:
            log.warning("ignoring unreadable CA file %s: %s", path, exc)
    revoked: dict[x509.Name, set[int]] = {}
    for path in sorted(_matching(ca_dir, re.compile(r".+\.r[0-9]"))):
        try:
            data = path.read_bytes()
            crl = x509.load_pem_x509_crl(data) if b"-----BEGIN" in data else x509.load_der_x509_crl(data)
            if not any(crl.is_signature_valid(ca.public_key()) for ca in cas.get(crl.issuer, ())):  # type: ignore[arg-type]
                log.warning("ignoring CRL %s: not signed by a CA of %s", path, ca_dir)
                continue
            revoked.setdefault(crl.issuer, set()).update(entry.serial_number for entry in crl)
        except (OSError, ValueError, TypeError) as exc:
            log.warning("ignoring unreadable CRL %s: %s", path, exc)
    return cas, {issuer: frozenset(serials) for issuer, serials in revoked.items()}


def _matching(directory: Path, pattern: re.Pattern[str]) -> Iterable[Path]:
    return (p for p in directory.iterdir() if pattern.fullmatch(p.name) and p.is_file())
