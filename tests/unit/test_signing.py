from __future__ import annotations

from urllib.parse import parse_qs, urlsplit

from geofed.signing import URLSigner

SIGNER = URLSigner("a-test-secret-of-enough-length")


def parts(url: str) -> tuple[str, str, str]:
    split = urlsplit(url)
    query = parse_qs(split.query)
    return split.path, query["e"][0], query["s"][0]


def test_signed_url_verifies_for_its_method_only() -> None:
    path, e, s = parts(SIGNER.sign("GET", "cern", "/a b/f.root", 60, now=1000))
    assert path == "/_geofed/data/cern/a%20b/f.root"
    assert SIGNER.verify("GET", "cern", "/a b/f.root", e, s, now=1000) is None
    assert SIGNER.verify("HEAD", "cern", "/a b/f.root", e, s, now=1000) is None
    assert SIGNER.verify("PUT", "cern", "/a b/f.root", e, s, now=1000) is not None
    assert SIGNER.verify("DELETE", "cern", "/a b/f.root", e, s, now=1000) is not None


def test_put_signature_is_not_valid_for_get() -> None:
    _, e, s = parts(SIGNER.sign("PUT", "cern", "/f", 60, now=1000))
    assert SIGNER.verify("PUT", "cern", "/f", e, s, now=1000) is None
    assert SIGNER.verify("GET", "cern", "/f", e, s, now=1000) is not None


def test_expired_tampered_and_moved_urls_are_refused() -> None:
    _, e, s = parts(SIGNER.sign("GET", "cern", "/f", 60, now=1000))
    assert SIGNER.verify("GET", "cern", "/f", e, s, now=1061) == "the signed URL has expired"
    assert SIGNER.verify("GET", "cern", "/f", str(int(e) + 100), s, now=1000) is not None
    assert SIGNER.verify("GET", "cern", "/g", e, s, now=1000) is not None
    assert SIGNER.verify("GET", "uvic", "/f", e, s, now=1000) is not None
    assert SIGNER.verify("GET", "cern", "/f", e, s[:-2] + "AA", now=1000) is not None
    assert SIGNER.verify("GET", "cern", "/f", "soon", s, now=1000) == "malformed expiry in the signed URL"


def test_other_secret_does_not_verify() -> None:
    _, e, s = parts(URLSigner("another-secret-of-enough-length").sign("GET", "cern", "/f", 60, now=1000))
    assert SIGNER.verify("GET", "cern", "/f", e, s, now=1000) is not None
