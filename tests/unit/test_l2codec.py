"""The L2 value codec (l2codec) and key encoding (l2): round trips, and garbage is a miss."""

from __future__ import annotations

import json
import zlib
from typing import Any

import pytest

from geofed.endpoints.base import Entry, StatResult
from geofed.federation import l2codec
from geofed.federation.l2_memcached import exptime, parse_server, rendezvous
from geofed.federation.l2codec import MEMCACHED_KEY_LIMIT, chunk_key, encode_key
from geofed.federation.locator import LocateResult, Replica

FILE = StatResult(
    False,
    size=1234,
    mtime=1_700_000_000.25,
    etag='"abc-1"',
    content_type="application/x-root",
    metadata=(("adler32", "0a1b2c3d"), ("md5", "ü")),
)
DIR = StatResult(True)


def _result(path: str = "/fed/a b/ü.root") -> LocateResult:
    return LocateResult(
        path,
        (Replica("cern", "/data/a b/ü.root", FILE), Replica("triumf", "/x", DIR)),
        (("uvic", "no answer within 3 s"),),
        complete=False,
        elapsed=0.0421,
    )


def _raw(document: dict[str, Any], prefix: bytes = l2codec.PLAIN) -> bytes:
    return prefix + json.dumps(document).encode()


# -- round trips -----------------------------------------------------------------------------------


def test_locate_round_trip_is_marked_cached() -> None:
    result = _result()
    decoded = l2codec.decode_locate(l2codec.encode_locate(result), result.path)
    assert decoded is not None
    assert decoded.cached is True
    assert decoded.replicas == result.replicas
    assert decoded.unknown == result.unknown
    assert (decoded.path, decoded.complete, decoded.elapsed) == (result.path, False, 0.0421)
    assert decoded.redirects == {}


def test_locate_empty_and_complete() -> None:
    result = LocateResult("/fed/missing", (), (), complete=True, elapsed=0.001)
    decoded = l2codec.decode_locate(l2codec.encode_locate(result), "/fed/missing")
    assert decoded is not None and decoded.replicas == () and decoded.complete


def test_prepared_redirects_are_not_stored() -> None:
    result = _result()
    result.redirects["https://geofed"] = {1: "https://cern/data?X-Amz-Signature=secret"}
    data = l2codec.encode_locate(result)
    assert b"secret" not in _body(data) and b"Signature" not in _body(data)


def _body(data: bytes) -> bytes:
    return zlib.decompress(data[1:]) if data[:1] == l2codec.COMPRESSED else data[1:]


def test_value_stored_for_another_path_is_a_miss() -> None:
    assert l2codec.decode_locate(l2codec.encode_locate(_result("/fed/a")), "/fed/b") is None


def test_surrogate_escaped_path_round_trips() -> None:
    path = "/fed/latin1-\udce9"
    decoded = l2codec.decode_locate(l2codec.encode_locate(_result(path)), path)
    assert decoded is not None and decoded.path == path


def test_listing_round_trip_and_compression() -> None:
    entries = [Entry(f"file{i:05}.dat", FILE) for i in range(2000)] + [Entry("sub dir", DIR)]
    data = l2codec.encode_listing(entries)
    assert data[:1] == l2codec.COMPRESSED
    assert len(data) < len(json.dumps([e.name for e in entries]))  # compact: smaller than the names
    assert l2codec.decode_listing(data) == entries
    small = [Entry("a", DIR)]
    assert l2codec.encode_listing(small)[:1] == l2codec.PLAIN
    assert l2codec.decode_listing(l2codec.encode_listing(small)) == small
    assert l2codec.decode_listing(l2codec.encode_listing([])) == []


def test_health_round_trip() -> None:
    states = {"cern": {"state": "up", "latency_ms": 1.5, "last_error": None}, "uvic": {"state": "down"}}
    assert l2codec.decode_health(l2codec.encode_health(states)) == states


def test_non_finite_mtime_is_dropped_not_an_error() -> None:
    entries = [Entry("x", StatResult(False, 1, float("nan")))]
    decoded = l2codec.decode_listing(l2codec.encode_listing(entries))
    assert decoded == [Entry("x", StatResult(False, 1, None))]


# -- misses, never errors --------------------------------------------------------------------------

GOOD_LOCATE = l2codec.encode_locate(_result("/p"))
GOOD_LISTING = l2codec.encode_listing([Entry(f"n{i}", FILE) for i in range(500)])


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"\x00",
        b"garbage",
        bytes([0xC2]) + GOOD_LOCATE[1:],  # a future version
        bytes([0xE1]) + GOOD_LOCATE[1:],  # an unknown encoding
        GOOD_LOCATE[:-5],  # truncated
        GOOD_LISTING[: len(GOOD_LISTING) // 2],  # truncated compressed
        l2codec.COMPRESSED + b"not zlib",
        l2codec.PLAIN + b"\xff\xfe",  # not UTF-8
        l2codec.PLAIN + b"[1, 2]",
        l2codec.PLAIN + b"[" * 100_000,  # too deep for the parser
        GOOD_LISTING,  # the wrong kind
        _raw({"k": "loc", "p": "/p", "r": [["e", "/p", {"d": "yes"}]]}),
        _raw({"k": "loc", "p": "/p", "r": [["e", "/p", {"s": True}]]}),
        _raw({"k": "loc", "p": "/p", "r": [["e", "/p"]]}),
        _raw({"k": "loc", "p": "/p", "r": [["e", "/p", {"md": [["only-name"]]}]]}),
        _raw({"k": "loc", "p": "/p", "c": "yes"}),
        _raw({"k": "loc", "p": "/p", "e": "slow"}),
        _raw({"k": "loc", "p": "/p", "u": [["e"]]}),
        _raw({"k": "loc", "p": 5}),
    ],
)
def test_decode_locate_garbage_is_a_miss(data: bytes) -> None:
    assert l2codec.decode_locate(data, "/p") is None


@pytest.mark.parametrize(
    "data",
    [GOOD_LOCATE, GOOD_LISTING[:-1], _raw({"k": "list"}), _raw({"k": "list", "e": [["x", None]]})],
)
def test_decode_listing_garbage_is_a_miss(data: bytes) -> None:
    assert l2codec.decode_listing(data) is None


@pytest.mark.parametrize("data", [GOOD_LOCATE, _raw({"k": "health", "h": [1]}), b"\xc1{"])
def test_decode_health_garbage_is_a_miss(data: bytes) -> None:
    assert l2codec.decode_health(data) is None


def test_zip_bomb_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(l2codec, "MAX_DECODED", 64 * 1024)
    bomb = l2codec.COMPRESSED + zlib.compress(b'{"k":"list","e":[' + b" " * (1024 * 1024) + b"]}")
    assert l2codec.decode_listing(bomb) is None


# -- compatibility within a version ----------------------------------------------------------------


def test_newer_writer_with_extra_fields_is_understood() -> None:
    data = _raw(
        {
            "k": "loc",
            "p": "/p",
            "r": [["cern", "/p", {"s": 5, "future": 1}, "extra item"]],
            "u": [["uvic", "down", "extra"]],
            "c": True,
            "e": 0.5,
            "new-field": {"anything": []},
        }
    )
    decoded = l2codec.decode_locate(data, "/p")
    assert decoded is not None
    assert decoded.replicas == (Replica("cern", "/p", StatResult(False, 5)),)
    assert decoded.unknown == (("uvic", "down"),)


def test_older_writer_without_optional_fields_is_understood() -> None:
    decoded = l2codec.decode_locate(_raw({"k": "loc", "p": "/p", "r": [["cern", "/p", {}]]}), "/p")
    assert decoded is not None
    assert decoded.replicas == (Replica("cern", "/p", StatResult(False)),)
    assert (decoded.unknown, decoded.complete, decoded.elapsed) == ((), False, 0.0)


def test_integer_mtime_is_a_float() -> None:
    data = _raw({"k": "list", "e": [["x", {"m": 17}]]})
    assert l2codec.decode_listing(data) == [Entry("x", StatResult(False, None, 17.0))]


# -- keys ------------------------------------------------------------------------------------------

KEYS = [
    "loc:/a",
    "loc:/a b",
    "loc:/a%20b",
    "loc:/a\nb",
    "loc:/ü",
    "loc:/\udcff",
    "loc:/%h" + "0" * 64,
    "loc:/x%c0",
    "loc:/" + "x" * 400,
    "loc:/" + "x" * 399 + "y",
    "loc:/" + "€" * 100,
    "loc:/" + "€" * 99 + "£",
]


def test_keys_are_legal_for_memcached_and_distinct() -> None:
    encoded = [encode_key("geofed:", key) for key in KEYS]
    chunks = [chunk_key("geofed:", key, i) for key in KEYS for i in (0, 1, 12)]
    everything = encoded + chunks
    assert len(set(everything)) == len(everything)
    for key in everything:
        assert len(key.encode()) <= MEMCACHED_KEY_LIMIT
        assert key.isascii() and not any(c.isspace() or ord(c) < 0x21 or ord(c) == 0x7F for c in key)
    assert encode_key("geofed:", "loc:/a") == "geofed:loc:/a"  # short keys stay readable
    assert encode_key("other:", "loc:/a") != encode_key("geofed:", "loc:/a")
    assert encode_key("geofed:", KEYS[8]).startswith("geofed:loc:/xxx")


def test_rendezvous_is_stable_and_order_independent() -> None:
    servers = ["10.0.0.1:11211", "10.0.0.2:11211", "10.0.0.3:11211"]
    keys = [f"geofed:loc:/k{i}" for i in range(3000)]
    placed = {k: rendezvous(k, servers) for k in keys}
    assert placed == {k: rendezvous(k, list(reversed(servers))) for k in keys}
    counts = {s: list(placed.values()).count(s) for s in servers}
    assert all(800 < n < 1200 for n in counts.values()), counts
    # Removing a server moves only that server's keys.
    fewer = servers[:2]
    moved = [k for k in keys if placed[k] != servers[2] and rendezvous(k, fewer) != placed[k]]
    assert moved == []


def test_server_and_ttl_helpers() -> None:
    assert parse_server("127.0.0.1:11211") == ("127.0.0.1", 11211)
    assert parse_server("[::1]:11211") == ("::1", 11211)
    with pytest.raises(ValueError):
        parse_server("localhost")
    assert exptime(0.2) == 1 and exptime(300) == 300 and exptime(10 * 365 * 86400) == 30 * 86400


# -- invalidation messages -------------------------------------------------------------------------


def test_invalidation_message_round_trip() -> None:
    data = l2codec.encode_invalidation("me", ["/a b", "/ü", "/\udcff"])
    assert l2codec.decode_invalidation(data) == ("me", ["/a b", "/ü", "/\udcff"])
    assert l2codec.decode_invalidation(data.decode()) == ("me", ["/a b", "/ü", "/\udcff"])


def test_huge_invalidation_becomes_invalidate_everything() -> None:
    data = l2codec.encode_invalidation("me", [f"/p/{i}" for i in range(100_000)])
    assert len(data) <= l2codec.MAX_MESSAGE
    assert l2codec.decode_invalidation(data) == ("me", ["/"])


@pytest.mark.parametrize(
    "data", [b"", b"\xff", b"[]", b'{"s": 1, "p": []}', b'{"s": "x", "p": [1]}', b'{"s": "x"}']
)
def test_invalidation_garbage_is_ignored(data: bytes) -> None:
    assert l2codec.decode_invalidation(data) is None
