"""VOMS AC verification: the good AC, every way an AC must be refused, the cache, and fuzzing.

ACs are made by ``tests/infra/pki.py`` in the shape voms-proxy-fake writes; each refusal test
changes one thing from the good AC, so the error it gets is the one check under test.
"""

from __future__ import annotations

import datetime as dt
import shutil
import time
from pathlib import Path

import pytest
from asn1crypto import core  # type: ignore[import-untyped]
from asn1crypto import x509 as asn1_x509
from hypothesis import given, settings
from hypothesis import strategies as st

from geofed.auth.voms import VomsAttributes, VomsVerifier
from tests.infra.pki import (
    Credential,
    Pki,
    ca_extensions,
    issue,
    make_pki,
    make_voms_ac,
    pem,
    server_extensions,
    subject_hash,
)

FQANS = ["/testvo/Role=NULL/Capability=NULL", "/testvo/prod/Role=production/Capability=NULL"]
HOUR = dt.timedelta(hours=1)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def verifier(pki: Pki) -> VomsVerifier:
    return VomsVerifier(pki.vomsdir, pki.ca_dir)


@pytest.fixture(scope="module")
def good_ac(pki: Pki) -> bytes:
    return make_voms_ac(pki.voms.cert, pki.voms.key, pki.user.cert, "testvo", FQANS)


def now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def test_good_ac(verifier: VomsVerifier, good_ac: bytes, pki: Pki) -> None:
    result = verifier.verify(good_ac, pki.user.cert)
    assert result == VomsAttributes(vo="testvo", fqans=tuple(FQANS), error=None)
    assert result.ok
    assert verifier.vos == {"testvo", "othervo"}


def test_each_vo_by_its_own_server(verifier: VomsVerifier, pki: Pki) -> None:
    ac = make_voms_ac(
        pki.voms_other.cert,
        pki.voms_other.key,
        pki.user.cert,
        "othervo",
        ["/othervo"],
        uri="voms.other.org:15001",
    )
    assert verifier.verify(ac, pki.user.cert) == VomsAttributes("othervo", ("/othervo",))


def test_forged_ac_signed_by_another_key(verifier: VomsVerifier, pki: Pki) -> None:
    forged = make_voms_ac(pki.voms.cert, pki.other_user.key, pki.user.cert, "testvo", FQANS)
    result = verifier.verify(forged, pki.user.cert)
    assert not result.ok
    assert result.error == "VOMS AC signature does not verify"
    assert result.vo is None and result.fqans == ()


def test_server_not_listed_for_the_vo(verifier: VomsVerifier, pki: Pki) -> None:
    # voms.other.org is a trusted VOMS server, but for othervo only
    ac = make_voms_ac(pki.voms_other.cert, pki.voms_other.key, pki.user.cert, "testvo", FQANS)
    error = verifier.verify(ac, pki.user.cert).error
    assert error is not None and "untrusted" in error and "not listed in vomsdir/testvo" in error


def test_vo_missing_from_vomsdir(pki: Pki, tmp_path: Path) -> None:
    vomsdir = tmp_path / "vomsdir"
    shutil.copytree(pki.vomsdir / "testvo", vomsdir / "testvo")
    verifier = VomsVerifier(vomsdir, pki.ca_dir)
    ac = make_voms_ac(pki.voms_other.cert, pki.voms_other.key, pki.user.cert, "othervo", ["/othervo"])
    result = verifier.verify(ac, pki.user.cert)
    assert result.error == "untrusted VOMS AC: no .lsc or certificate for VO othervo in vomsdir"
    # and the testvo server cannot sign for othervo either
    ac = make_voms_ac(pki.voms.cert, pki.voms.key, pki.user.cert, "othervo", ["/othervo"])
    error = verifier.verify(ac, pki.user.cert).error
    assert error is not None and "untrusted" in error


def test_server_certificate_from_an_untrusted_ca(pki: Pki, tmp_path: Path) -> None:
    rogue = pki.untrusted_user
    (tmp_path / "testvo").mkdir()
    (tmp_path / "testvo" / "rogue.lsc").write_text(f"{rogue.dn}\n{pki.untrusted_ca.dn}\n")
    verifier = VomsVerifier(tmp_path, pki.ca_dir)
    ac = make_voms_ac(rogue.cert, rogue.key, pki.user.cert, "testvo", FQANS)
    error = verifier.verify(ac, pki.user.cert).error
    assert error is not None and "untrusted" in error and "not issued by a trusted CA" in error


def test_revoked_server_certificate(pki: Pki, tmp_path: Path) -> None:
    (tmp_path / "testvo").mkdir()
    (tmp_path / "testvo" / "revoked.lsc").write_text(f"{pki.revoked.dn}\n{pki.ca.dn}\n")
    verifier = VomsVerifier(tmp_path, pki.ca_dir)
    ac = make_voms_ac(pki.revoked.cert, pki.revoked.key, pki.user.cert, "testvo", FQANS)
    error = verifier.verify(ac, pki.user.cert).error
    assert error is not None and "revoked" in error


def test_lsc_needs_the_ca_dir(pki: Pki, good_ac: bytes) -> None:
    error = VomsVerifier(pki.vomsdir, None).verify(good_ac, pki.user.cert).error
    assert error is not None and "not issued by a trusted CA" in error


def test_lsc_with_next_chain_and_comments(pki: Pki, good_ac: bytes, tmp_path: Path) -> None:
    (tmp_path / "testvo").mkdir()
    (tmp_path / "testvo" / "both.lsc").write_text(
        f"# two servers\n/DC=org/DC=test/CN=elsewhere\n{pki.ca.dn}\n------ NEXT CHAIN ------\n"
        f"{pki.voms.dn}\n{pki.ca.dn}\n"
    )
    assert VomsVerifier(tmp_path, pki.ca_dir).verify(good_ac, pki.user.cert).ok


SUB_CA_DN = "/DC=org/DC=test/CN=Test Sub CA"
SUB_VOMS_DN = "/DC=org/DC=test/CN=voms.sub.test.org"


@pytest.fixture(scope="module")
def sub_voms(pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Credential:
    """A VOMS server certificate issued by an intermediate CA (which is not in the CA directory)."""
    directory = tmp_path_factory.mktemp("sub")
    sub_ca = issue(SUB_CA_DN, pki.ca, ca_extensions(), directory, "sub-ca")
    return issue(SUB_VOMS_DN, sub_ca, server_extensions("voms.sub.test.org"), directory, "voms")


def _lsc_verifier(directory: Path, ca_dir: Path, *dns: str) -> VomsVerifier:
    (directory / "testvo").mkdir(parents=True)
    (directory / "testvo" / "voms.lsc").write_text("\n".join(dns) + "\n")
    return VomsVerifier(directory, ca_dir)


@pytest.mark.parametrize(
    ("lsc", "ok"),
    [
        ((SUB_VOMS_DN, SUB_CA_DN, "/DC=org/DC=test/CN=Test CA"), True),
        ((SUB_VOMS_DN, SUB_CA_DN), True),  # VOMS-style: server and issuer only, the rest by the CA dir
        ((SUB_VOMS_DN, SUB_CA_DN, "/DC=org/DC=test/CN=Other CA"), False),
        ((SUB_VOMS_DN, "/DC=org/DC=test/CN=Test CA"), False),
    ],
)
def test_intermediate_ca_embedded_in_the_ac(
    pki: Pki, sub_voms: Credential, tmp_path: Path, lsc: tuple[str, ...], ok: bool
) -> None:
    verifier = _lsc_verifier(tmp_path, pki.ca_dir, *lsc)
    ac = make_voms_ac(sub_voms.cert, sub_voms.key, pki.user.cert, "testvo", FQANS, embed=sub_voms.chain)
    result = verifier.verify(ac, pki.user.cert)
    assert result.ok is ok, result.error
    if not ok:
        assert result.error is not None and "untrusted" in result.error


def test_intermediate_ca_from_the_ca_dir(pki: Pki, sub_voms: Credential, tmp_path: Path) -> None:
    ac = make_voms_ac(sub_voms.cert, sub_voms.key, pki.user.cert, "testvo", FQANS)  # server cert only
    lsc = (SUB_VOMS_DN, SUB_CA_DN, "/DC=org/DC=test/CN=Test CA")
    error = _lsc_verifier(tmp_path / "a", pki.ca_dir, *lsc).verify(ac, pki.user.cert).error
    assert error is not None and "not issued by a trusted CA" in error
    ca_dir = tmp_path / "certificates"
    shutil.copytree(pki.ca_dir, ca_dir, symlinks=True)
    sub_ca = sub_voms.chain[1]
    (ca_dir / "sub.pem").write_bytes(pem(sub_ca))
    (ca_dir / f"{subject_hash(ca_dir / 'sub.pem')}.0").symlink_to("sub.pem")
    assert _lsc_verifier(tmp_path / "b", ca_dir, *lsc).verify(ac, pki.user.cert).ok
    assert _lsc_verifier(tmp_path / "c", ca_dir, *lsc[:2]).verify(ac, pki.user.cert).ok


def test_expired_voms_server_certificate(pki: Pki, tmp_path: Path) -> None:
    old = issue(
        "/DC=org/DC=test/CN=voms.test.org",
        pki.ca,
        server_extensions("voms.test.org"),
        tmp_path,
        "old-voms",
        not_before=now() - dt.timedelta(days=30),
        days=10,
    )
    ac = make_voms_ac(old.cert, old.key, pki.user.cert, "testvo", FQANS)
    error = VomsVerifier(pki.vomsdir, pki.ca_dir).verify(ac, pki.user.cert).error
    assert error is not None
    assert error.startswith("VOMS server certificate /DC=org/DC=test/CN=voms.test.org expired at ")


def test_server_certificate_trusted_directly(pki: Pki, good_ac: bytes, tmp_path: Path) -> None:
    (tmp_path / "testvo").mkdir()
    (tmp_path / "testvo" / "voms.test.org.pem").write_bytes(pem(pki.voms.cert))
    verifier = VomsVerifier(tmp_path, None)
    assert verifier.verify(good_ac, pki.user.cert).ok
    # a certificate of the right name with another key does not make a forgery valid
    forged = make_voms_ac(pki.voms.cert, pki.other_user.key, pki.user.cert, "testvo", FQANS)
    assert verifier.verify(forged, pki.user.cert).error == "VOMS AC signature does not verify"
    # without embedded certificates the direct certificate is the only way
    bare = make_voms_ac(pki.voms.cert, pki.voms.key, pki.user.cert, "testvo", FQANS, embed=[])
    assert verifier.verify(bare, pki.user.cert).ok
    other = make_voms_ac(pki.voms_other.cert, pki.voms_other.key, pki.user.cert, "testvo", FQANS, embed=[])
    error = verifier.verify(other, pki.user.cert).error
    assert error is not None and "untrusted" in error


def test_no_vomsdir_trusts_nothing(pki: Pki, good_ac: bytes) -> None:
    assert VomsVerifier(None, pki.ca_dir).verify(good_ac, pki.user.cert).error == (
        "untrusted VOMS AC: no vomsdir configured"
    )


def test_expired_and_not_yet_valid(verifier: VomsVerifier, pki: Pki) -> None:
    expired = make_voms_ac(
        pki.voms.cert,
        pki.voms.key,
        pki.user.cert,
        "testvo",
        FQANS,
        not_before=now() - 3 * HOUR,
        not_after=now() - HOUR,
    )
    error = verifier.verify(expired, pki.user.cert).error
    assert error is not None and error.startswith("VOMS AC expired at ")
    future = make_voms_ac(
        pki.voms.cert, pki.voms.key, pki.user.cert, "testvo", FQANS, not_before=now() + HOUR
    )
    error = verifier.verify(future, pki.user.cert).error
    assert error is not None and error.startswith("VOMS AC not valid before ")


def test_clock_skew_is_tolerated(verifier: VomsVerifier, pki: Pki) -> None:
    fresh = make_voms_ac(
        pki.voms.cert,
        pki.voms.key,
        pki.user.cert,
        "testvo",
        FQANS,
        not_before=now() + dt.timedelta(seconds=60),
    )
    assert verifier.verify(fresh, pki.user.cert).ok
    strict = VomsVerifier(pki.vomsdir, pki.ca_dir, clock_skew=0)
    assert not strict.verify(fresh, pki.user.cert).ok


def test_explicit_now(verifier: VomsVerifier, good_ac: bytes, pki: Pki) -> None:
    assert verifier.verify(good_ac, pki.user.cert, now=time.time() + 600).ok
    error = verifier.verify(good_ac, pki.user.cert, now=time.time() + 13 * 3600).error
    assert error is not None and "expired" in error
    # beyond the VOMS server certificate's own validity (the AC itself made to outlive it)
    long = make_voms_ac(
        pki.voms.cert, pki.voms.key, pki.user.cert, "testvo", FQANS, not_after=now() + dt.timedelta(days=9000)
    )
    error = verifier.verify(long, pki.user.cert, now=time.time() + 4000 * 86400).error
    assert error is not None and error.startswith(
        "VOMS server certificate /DC=org/DC=test/CN=voms.test.org expired"
    )


def test_holder_is_another_user(verifier: VomsVerifier, good_ac: bytes, pki: Pki) -> None:
    result = verifier.verify(good_ac, pki.other_user.cert)
    assert result.error is not None and result.error.startswith("AC holder is not this certificate")
    # same serial from another CA: the issuer check catches it
    ac = make_voms_ac(pki.voms.cert, pki.voms.key, pki.untrusted_user.cert, "testvo", FQANS)
    assert not verifier.verify(ac, pki.user.cert).ok


def test_fqan_outside_the_vo(verifier: VomsVerifier, pki: Pki) -> None:
    ac = make_voms_ac(
        pki.voms.cert, pki.voms.key, pki.user.cert, "testvo", ["/testvo", "/atlas/Role=production"]
    )
    assert verifier.verify(ac, pki.user.cert).error == "FQAN '/atlas/Role=production' is not in VO testvo"
    ac = make_voms_ac(pki.voms.cert, pki.voms.key, pki.user.cert, "testvo", ["/testvo2"])
    assert not verifier.verify(ac, pki.user.cert).ok


def test_bad_vo_name(verifier: VomsVerifier, pki: Pki) -> None:
    ac = make_voms_ac(pki.voms.cert, pki.voms.key, pki.user.cert, "../testvo", ["/../testvo"])
    error = verifier.verify(ac, pki.user.cert).error
    assert error is not None and "bad VO name" in error


def test_unknown_critical_extension(verifier: VomsVerifier, pki: Pki) -> None:
    def ext(critical: bool) -> asn1_x509.Extension:
        value = core.ParsableOctetString(core.Null().dump())
        return asn1_x509.Extension({"extn_id": "1.2.3.4.5", "critical": critical, "extn_value": value})

    ac = make_voms_ac(
        pki.voms.cert, pki.voms.key, pki.user.cert, "testvo", FQANS, extra_extensions=[ext(True)]
    )
    assert verifier.verify(ac, pki.user.cert).error == "unsupported critical extension 1.2.3.4.5 in VOMS AC"
    ac = make_voms_ac(
        pki.voms.cert, pki.voms.key, pki.user.cert, "testvo", FQANS, extra_extensions=[ext(False)]
    )
    assert verifier.verify(ac, pki.user.cert).ok


@pytest.mark.parametrize("data", [b"", b"garbage", b"\x30\x84\xff\xff\xff\xff", b"\x30\x00", b"\x30" * 5000])
def test_garbage(verifier: VomsVerifier, pki: Pki, data: bytes) -> None:
    result = verifier.verify(data, pki.user.cert)
    assert not result.ok and result.error


def test_wrong_types_and_sizes(verifier: VomsVerifier, good_ac: bytes, pki: Pki) -> None:
    assert verifier.verify("text", pki.user.cert).error == "VOMS AC is not bytes"  # type: ignore[arg-type]
    assert not verifier.verify(good_ac, None).ok  # type: ignore[arg-type]
    assert verifier.verify(bytearray(good_ac), pki.user.cert).ok  # type: ignore[arg-type]
    error = verifier.verify(good_ac + b"\x00" * 70000, pki.user.cert).error
    assert error is not None and "too large" in error
    assert not verifier.verify(good_ac + b"\x00", pki.user.cert).ok  # trailing data


def test_unreadable_vomsdir_files_are_skipped(pki: Pki, good_ac: bytes, tmp_path: Path) -> None:
    shutil.copytree(pki.vomsdir, tmp_path / "vomsdir")
    (tmp_path / "vomsdir" / "testvo" / "broken.pem").write_text("not a certificate")
    (tmp_path / "vomsdir" / "testvo" / "broken.lsc").write_text("no slash\n")
    (tmp_path / "vomsdir" / "stray-file").write_text("x")
    assert VomsVerifier(tmp_path / "vomsdir", pki.ca_dir).verify(good_ac, pki.user.cert).ok
    with pytest.raises(ValueError, match="not a directory"):
        VomsVerifier(tmp_path / "nowhere", None)


def test_cache_hits_skip_verification(pki: Pki, good_ac: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    verifier = VomsVerifier(pki.vomsdir, pki.ca_dir, cache_entries=2)
    calls: list[bytes] = []
    real = verifier._verify_uncached

    def counting(ac_der: bytes, end_entity: object) -> object:
        calls.append(ac_der)
        return real(ac_der, end_entity)  # type: ignore[arg-type]

    monkeypatch.setattr(verifier, "_verify_uncached", counting)
    first = verifier.verify(good_ac, pki.user.cert)
    assert verifier.verify(good_ac, pki.user.cert) == first
    assert first.ok and len(calls) == 1
    # a cached success still expires: the validity window is checked on every call
    error = verifier.verify(good_ac, pki.user.cert, now=time.time() + 2 * 86400).error
    assert error is not None and "expired" in error and len(calls) == 1
    # the cache is keyed by the end entity too: another user's cached result never leaks
    assert not verifier.verify(good_ac, pki.other_user.cert).ok
    assert len(calls) == 2
    # failures are cached as well (garbage is not re-parsed)
    verifier.verify(b"garbage", pki.user.cert)
    verifier.verify(b"garbage", pki.user.cert)
    assert len(calls) == 3
    # bounded LRU: three entries went into a cache of two, the good AC was the least recent
    verifier.verify(good_ac, pki.user.cert)
    assert len(calls) == 4


# --- fuzz ----------------------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=3000))
def test_fuzz_random_bytes(verifier: VomsVerifier, pki: Pki, data: bytes) -> None:
    result = verifier.verify(data, pki.user.cert)
    assert isinstance(result, VomsAttributes)
    assert not result.ok


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_fuzz_mutated_ac(verifier: VomsVerifier, pki: Pki, good_ac: bytes, data: st.DataObject) -> None:
    """Byte flips, truncations and insertions of a good AC never raise; if one still verifies it must
    say exactly what the original said (the signature covers everything that matters)."""
    mutated = bytearray(good_ac)
    for _ in range(data.draw(st.integers(1, 4))):
        kind = data.draw(st.sampled_from(["flip", "truncate", "insert", "length"]))
        position = data.draw(st.integers(0, max(0, len(mutated) - 1)))
        if kind == "flip" and mutated:
            mutated[position] ^= data.draw(st.integers(1, 255))
        elif kind == "truncate":
            del mutated[position:]
        elif kind == "insert":
            mutated[position:position] = data.draw(st.binary(min_size=1, max_size=8))
        elif mutated:  # a huge length byte where a length might be
            mutated[position] = data.draw(st.sampled_from([0x80, 0x84, 0x88, 0xFF, 0x7F]))
    result = verifier.verify(bytes(mutated), pki.user.cert)
    assert isinstance(result, VomsAttributes)
    assert (result.error is None) == result.ok
    if result.ok:
        assert result == VomsAttributes("testvo", tuple(FQANS))
