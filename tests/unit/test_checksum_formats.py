"""Checksum algorithms (known answers) and the Want-Digest / Digest / Repr-Digest formats."""

from __future__ import annotations

import base64
import hashlib
import itertools
import re
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geofed.checksums.algorithms import (
    ALGORITHMS,
    MultiHasher,
    canonical_hex,
    canonical_name,
    compute,
    from_bytes,
    from_client,
    wire_value,
)
from geofed.checksums.wantdigest import (
    DigestRequest,
    format_digest,
    format_repr_digest,
    format_repr_digest_registered,
    parse_digest_claims,
    parse_want_digest,
    parse_want_repr_digest,
)

HELLO = b"hello world\n"
HELLO_SUMS = compute(HELLO)


def b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


# -- known answers ---------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [b"", HELLO, b"123456789", b"Wiki", bytes(range(256)) * 4099])
def test_known_answers_match_the_standard_library(data: bytes) -> None:
    sums = compute(data)
    assert sums["adler32"] == f"{zlib.adler32(data):08x}"
    assert sums["md5"] == hashlib.md5(data).hexdigest()
    assert sums["sha256"] == hashlib.sha256(data).hexdigest()


def test_hello_world_values() -> None:
    assert HELLO_SUMS == {
        "adler32": "1e720467",
        "md5": "6f5902ac237024bdd0c176cb93063dc4",
        "sha256": "a948904f2f0f479b8f8197694b30184b0d2ed1c1cd2a1ec0fb85d299a192a447",
        "crc32c": "f0ff7292",
    }


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"123456789", "e3069283"),  # the CRC-32C check value
        (b"", "00000000"),
        (bytes(32), "8a9136aa"),  # RFC 3720 B.4 test vectors
        (b"\xff" * 32, "62a8ab43"),
        (bytes(range(32)), "46dd794e"),
        (bytes(range(31, -1, -1)), "113fdb5c"),
        (b"dog", "0a72a4df"),  # the IANA registry's example (zero-padded)
    ],
)
def test_crc32c_known_answers(data: bytes, expected: str) -> None:
    assert compute(data, ["crc32c"]) == {"crc32c": expected}


def test_adler32_is_zero_padded() -> None:
    assert compute(b"Wiki", ["adler32"]) == {"adler32": "03da0195"}  # the IANA registry's example
    assert compute(b"", ["adler32"]) == {"adler32": "00000001"}


def test_canonical_lengths() -> None:
    sums = compute(b"x")
    assert {a: len(v) for a, v in sums.items()} == {"adler32": 8, "md5": 32, "sha256": 64, "crc32c": 8}
    assert all(v == v.lower() for v in sums.values())
    assert tuple(sums) == ALGORITHMS


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=4096), st.lists(st.integers(0, 4096), max_size=8))
def test_incremental_equals_one_shot(data: bytes, cuts: list[int]) -> None:
    hasher = MultiHasher()
    points = sorted({0, len(data), *(c for c in cuts if c <= len(data))})
    for start, end in itertools.pairwise(points):
        hasher.update(data[start:end])
    assert hasher.hexdigests() == compute(data)
    assert hasher.size == len(data)


def test_multihasher_accepts_other_buffers_and_subsets() -> None:
    hasher = MultiHasher(["crc32c", "md5"])
    hasher.update(bytearray(b"12345"))
    hasher.update(memoryview(b"6789"))
    assert hasher.hexdigests() == {"crc32c": "e3069283", "md5": hashlib.md5(b"123456789").hexdigest()}
    with pytest.raises(ValueError):
        MultiHasher(["sha1"])


# -- names and conversions -------------------------------------------------------------------------


def test_canonical_name() -> None:
    spellings = {
        "adler32": ("adler32", "ADLER32", "Adler32", " adler32 "),
        "md5": ("md5", "MD5"),
        "sha256": ("sha-256", "SHA-256", "sha256", "SHA256", "Sha256"),
        "crc32c": ("crc32c", "CRC32C", "CRC32c"),
    }
    for canonical, tokens in spellings.items():
        assert {canonical_name(token) for token in tokens} == {canonical}
    # RFC 9530's "adler" only counts in Want-Repr-Digest; fullwidth or Kelvin-sign look-alikes never.
    for token in ("sha", "SHA1", "sha-512", "UNIXcksum", "adler", "", "\uff2d\uff24\uff15", "md5\u212a"):
        assert canonical_name(token) is None


def test_wire_values() -> None:
    assert wire_value("adler32", HELLO_SUMS["adler32"]) == "1e720467"
    assert wire_value("adler32", "3DA0195") == "03da0195"
    assert wire_value("crc32c", "A72A4DF") == "0a72a4df"
    assert wire_value("md5", "b1946ac92492d2347c6235b4d2611184") == "sZRqySSS0jR8YjW00mERhA=="
    assert wire_value("sha256", HELLO_SUMS["sha256"]) == b64(hashlib.sha256(HELLO).digest())
    assert len(wire_value("sha256", HELLO_SUMS["sha256"])) == 44
    with pytest.raises(ValueError):
        wire_value("sha1", "00")
    with pytest.raises(ValueError):
        wire_value("md5", "1234")


@pytest.mark.parametrize(
    ("algorithm", "value", "expected"),
    [
        ("adler32", "1e720467", "1e720467"),
        ("adler32", "3DA0195", "03da0195"),
        ("adler32", " 03da0195 ", "03da0195"),
        ("md5", "sZRqySSS0jR8YjW00mERhA==", "b1946ac92492d2347c6235b4d2611184"),
        ("md5", "B1946AC92492D2347C6235B4D2611184", "b1946ac92492d2347c6235b4d2611184"),  # old DPM hex
        ("sha256", b64(hashlib.sha256(HELLO).digest()), HELLO_SUMS["sha256"]),
        ("sha256", HELLO_SUMS["sha256"], HELLO_SUMS["sha256"]),
        ("crc32c", "e3069283", "e3069283"),
        ("crc32c", "A72A4DF", "0a72a4df"),
        ("crc32c", "4waSgw==", "e3069283"),  # XrdHttp's base64 form
    ],
)
def test_from_client(algorithm: str, value: str, expected: str) -> None:
    assert from_client(algorithm, value) == expected


# int() would take "0x", "+", "_", spaces and Arabic-Indic digits; lengths and padding are checked.
REJECTED = {
    "adler32": ("", "123456789", "0x1234", "12 34", "+1234", "1_234", "\u0661\u0662\u0663", "HnIEZw=="),
    "md5": ("sZRqySSS0jR8YjW00mERhA", "sZRqySSS0jR8YjW00mERhA===", "sZRq ySSS0jR8YjW00mERhA==",
            "qUiQTy8PR5uPgZdpSzAYSw0u0cHNKh7A+4XSmaGSpEc=", "b1946ac92492d2347c6235b4d261118",
            "sZRqySSS0jR8YjW00mERhA=\u00e9"),
    "sha256": ("sZRqySSS0jR8YjW00mERhA==",),
    "crc32c": ("e30692830", "AAAAAAA=", "=="),  # 9 digits; 5 bytes; nothing
    "sha1": ("00",),
}  # fmt: skip


@pytest.mark.parametrize(("algorithm", "value"), [(a, v) for a, values in REJECTED.items() for v in values])
def test_from_client_rejects(algorithm: str, value: str) -> None:
    with pytest.raises(ValueError):
        from_client(algorithm, value)


DIGEST_BYTES = {"adler32": 4, "crc32c": 4, "md5": 16, "sha256": 32}


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_wire_round_trip(data: st.DataObject) -> None:
    algorithm = data.draw(st.sampled_from(ALGORITHMS))
    raw = data.draw(st.binary(min_size=DIGEST_BYTES[algorithm], max_size=DIGEST_BYTES[algorithm]))
    hex_value = raw.hex()
    assert from_client(algorithm, wire_value(algorithm, hex_value)) == hex_value
    assert from_bytes(algorithm, raw) == hex_value
    assert canonical_hex(algorithm, hex_value.upper()) == hex_value


# -- Want-Digest -----------------------------------------------------------------------------------


def tokens(request: DigestRequest) -> list[tuple[str, str, float]]:
    return [(w.token, w.algorithm, w.weight) for w in request.wanted]


def test_gfal2_spellings_are_echoed_exactly() -> None:
    for token in ("ADLER32", "adler32", "MD5", "SHA256", "CRC32C", "sha-256", "Sha256"):
        request = parse_want_digest(token)
        answer = format_digest(request, HELLO_SUMS)
        assert answer is not None and answer.startswith(token + "=")
    assert format_digest(parse_want_digest("SHA256"), HELLO_SUMS) == "SHA256=" + b64(
        hashlib.sha256(HELLO).digest()
    )
    assert "sha-256" not in (format_digest(parse_want_digest("SHA256"), HELLO_SUMS) or "")


def test_digest_answer_forms() -> None:
    request = parse_want_digest("adler32, MD5;q=0.8, sha-256;q=0.5, crc32c;q=0.1")
    assert format_digest(request, HELLO_SUMS) == (
        "adler32=1e720467, MD5=b1kCrCNwJL3QwXbLkwY9xA==, "
        "sha-256=qUiQTy8PR5uPgZdpSzAYSw0u0cHNKh7A+4XSmaGSpEc=, crc32c=f0ff7292"
    )
    assert format_digest(request, {}) is None
    assert format_digest(request, {"md5": HELLO_SUMS["md5"]}) == "MD5=b1kCrCNwJL3QwXbLkwY9xA=="


def test_q_values_order_preferences() -> None:
    request = parse_want_digest("md5;q=0.3, adler32, sha256;q=0.9, crc32c;q=0.3")
    assert tokens(request) == [("adler32", "adler32", 1.0), ("sha256", "sha256", 0.9), ("md5", "md5", 0.3),
                               ("crc32c", "crc32c", 0.3)]  # fmt: skip
    assert request.algorithms == ("adler32", "sha256", "md5", "crc32c")
    assert not request.structured


def test_q_zero_means_not_acceptable() -> None:
    request = parse_want_digest("md5;q=0, adler32;Q=0.000, MD5, sha256")
    assert request.algorithms == ("sha256",)
    assert request.refused == ("adler32", "md5")
    assert format_digest(request, HELLO_SUMS) is not None
    assert not parse_want_digest("adler32;q=0")


def test_unknown_and_malformed_are_remembered_not_fatal() -> None:
    request = parse_want_digest(
        "UNIXcksum, sha;q=0.5, sha-512;q=0, ADLER32;q=1.5, md5;q=abc, crc32c;q=, , ,adler32"
    )
    assert tokens(request) == [("adler32", "adler32", 1.0)]
    assert request.unknown == ("UNIXcksum", "sha")
    assert request.malformed == ("ADLER32;q=1.5", "md5;q=abc", "crc32c;q=")


@pytest.mark.parametrize("header", [None, "", " , ,", "\t"])
def test_empty_want_digest(header: str | None) -> None:
    assert parse_want_digest(header) == DigestRequest()
    assert not parse_want_digest(header)


def test_want_digest_details() -> None:
    assert tokens(parse_want_digest("  ADLER32 ; q=1.000 ; foo=bar ")) == [("ADLER32", "adler32", 1.0)]
    assert tokens(parse_want_digest("adler32, ADLER32")) == [("adler32", "adler32", 1.0)]  # one per spelling
    both = parse_want_digest("sha-256, SHA256")
    assert [w.token for w in both.wanted] == ["sha-256", "SHA256"]
    assert both.algorithms == ("sha256",)
    answer = format_digest(both, HELLO_SUMS) or ""
    assert answer.startswith("sha-256=") and ", SHA256=" in answer
    assert parse_want_digest('md5 "x"').malformed == ('md5 "x"',)
    assert parse_want_digest("md5\r\nX-Injected: 1").malformed == ("md5\r\nX-Injected: 1",)
    assert tokens(parse_want_digest("md5;q=0.001")) == [("md5", "md5", 0.001)]


# -- Want-Repr-Digest ------------------------------------------------------------------------------


def test_want_repr_digest_preferences() -> None:
    request = parse_want_repr_digest("md5=3, sha-256=5")
    assert tokens(request) == [("sha-256", "sha256", 5.0), ("md5", "md5", 3.0)]
    assert request.structured
    assert format_repr_digest(request, HELLO_SUMS) == (
        "sha-256=:qUiQTy8PR5uPgZdpSzAYSw0u0cHNKh7A+4XSmaGSpEc=:, md5=:b1kCrCNwJL3QwXbLkwY9xA==:"
    )


def test_want_repr_digest_32_bit_values_are_big_endian_bytes() -> None:
    request = parse_want_repr_digest("adler=1, crc32c=2, adler32=1")
    answer = format_repr_digest(request, HELLO_SUMS)
    assert answer == (
        f"crc32c=:{b64(bytes.fromhex('f0ff7292'))}:, adler=:{b64(bytes.fromhex('1e720467'))}:, "
        f"adler32=:{b64(bytes.fromhex('1e720467'))}:"
    )
    assert answer.startswith("crc32c=:8P9ykg==:")


def test_want_repr_digest_leniency_and_errors() -> None:
    request = parse_want_repr_digest(
        "SHA-256=10, md5, crc32c=?1;x=y, adler=0, sha-512=2, sha=1.5, md5=11, x=abc"
    )
    assert tokens(request) == [("sha-256", "sha256", 10.0), ("md5", "md5", 1.0), ("crc32c", "crc32c", 1.0)]
    assert request.refused == ("adler32",)
    assert request.unknown == ("sha-512",)
    assert request.malformed == ("sha=1.5", "md5=11", "x=abc")
    assert parse_want_repr_digest("md5=?0").refused == ("md5",)
    assert not parse_want_repr_digest(None)


def test_registered_repr_digest() -> None:
    assert format_repr_digest_registered({"sha256": HELLO_SUMS["sha256"], "adler32": "03da0195"}) == (
        "adler=:A9oBlQ==:, sha-256=:qUiQTy8PR5uPgZdpSzAYSw0u0cHNKh7A+4XSmaGSpEc=:"
    )
    assert format_repr_digest_registered({}) is None


# -- declared checksums ----------------------------------------------------------------------------


def test_digest_claims() -> None:
    claims = parse_digest_claims("ADLER32=3DA0195, SHA-256=qUiQTy8PR5uPgZdpSzAYSw0u0cHNKh7A+4XSmaGSpEc=")
    assert claims == {"adler32": "03da0195", "sha256": HELLO_SUMS["sha256"]}
    assert parse_digest_claims(content_md5=" sZRqySSS0jR8YjW00mERhA== ") == {
        "md5": "b1946ac92492d2347c6235b4d2611184"
    }
    assert parse_digest_claims(
        repr_digest="sha-256=:qUiQTy8PR5uPgZdpSzAYSw0u0cHNKh7A+4XSmaGSpEc=:, adler=:A9oBlQ==:"
    ) == {
        "sha256": HELLO_SUMS["sha256"],
        "adler32": "03da0195",
    }
    both = parse_digest_claims(
        "md5=sZRqySSS0jR8YjW00mERhA==", "sZRqySSS0jR8YjW00mERhA==", "crc32c=:4waSgw==:"
    )
    assert both == {"md5": "b1946ac92492d2347c6235b4d2611184", "crc32c": "e3069283"}
    assert parse_digest_claims() == {} and parse_digest_claims(" , ", " ", "") == {}


def test_digest_claims_ignore_unsupported_algorithms() -> None:
    assert parse_digest_claims("UNIXcksum=12 34 5, sha=not base64!, adler32=1e720467") == {
        "adler32": "1e720467"
    }
    assert parse_digest_claims(repr_digest="sha-512=:garbage, unixsum=:MTIz:") == {}


@pytest.mark.parametrize(
    ("digest", "content_md5", "repr_digest"),
    [
        ("adler32", None, None),  # no '='
        ("adler32=xyz", None, None),
        ("md5=sZRqySSS0jR8YjW00mERhA", None, None),
        ("bad token=1", None, None),
        ("adler32=1e720467, ADLER32=00000001", None, None),  # conflict
        ("md5=sZRqySSS0jR8YjW00mERhA==", "b1kCrCNwJL3QwXbLkwY9xA==", None),  # conflict with Content-MD5
        (None, "not-md5", None),
        (None, None, "sha-256=qUiQTy8PR5uPgZdpSzAYSw0u0cHNKh7A+4XSmaGSpEc="),  # not a byte sequence
        (None, None, "sha-256=:sZRqySSS0jR8YjW00mERhA==:"),  # wrong length
        (None, None, "md5"),
        (None, None, "md5=:sZRqySSS0jR8YjW00mERhA:"),  # padding missing
        ("adler32=1e720467", None, "adler=:AAAAAQ==:"),  # conflict across fields
    ],
)
def test_digest_claims_reject(digest: str | None, content_md5: str | None, repr_digest: str | None) -> None:
    with pytest.raises(ValueError):
        parse_digest_claims(digest, content_md5, repr_digest)


# -- fuzz ------------------------------------------------------------------------------------------

HEADERISH = st.text(
    alphabet=st.sampled_from(list('adlermd5sha-256crc32cADLERMDSHACRC;q=0.1,:+/ \t"?*_éＭ\r\n\x00')),
    max_size=80,
)
ANY_TEXT = st.text(max_size=120)
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")


def check_request(request: DigestRequest) -> None:
    for wanted in request.wanted:
        assert wanted.algorithm in ALGORITHMS and wanted.weight > 0
        assert _TOKEN.fullmatch(wanted.token)
    for answer in (format_digest(request, HELLO_SUMS), format_repr_digest(request, HELLO_SUMS)):
        assert answer is None or ("\r" not in answer and "\n" not in answer and answer.isascii())


@settings(max_examples=500, deadline=None)
@given(st.one_of(HEADERISH, ANY_TEXT))
def test_fuzz_want_parsers_never_raise(header: str) -> None:
    check_request(parse_want_digest(header))
    check_request(parse_want_repr_digest(header))


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(HEADERISH, ANY_TEXT), st.one_of(st.none(), HEADERISH, ANY_TEXT), st.one_of(HEADERISH, ANY_TEXT)
)
def test_fuzz_claims_raise_only_value_error(digest: str, content_md5: str | None, repr_digest: str) -> None:
    for args in ((digest, None, None), (None, content_md5, None), (None, None, repr_digest)):
        try:
            claims = parse_digest_claims(*args)
        except ValueError:
            continue
        for algorithm, value in claims.items():
            assert canonical_hex(algorithm, value) == value


@settings(max_examples=300, deadline=None)
@given(st.sampled_from([*ALGORITHMS, "sha1", ""]), st.one_of(HEADERISH, ANY_TEXT))
def test_fuzz_from_client_raises_only_value_error(algorithm: str, value: str) -> None:
    try:
        result = from_client(algorithm, value)
    except ValueError:
        return
    assert canonical_hex(algorithm, result) == result
