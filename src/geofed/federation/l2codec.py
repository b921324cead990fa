"""Every byte format of L2: keys, values (locate answers, listings, health records), invalidations.

Keys: ``namespace + key``, percent-encoded so that any path (spaces, control characters, any
UTF-8, even surrogate escapes) is a legal memcached key, and hashed with sha256 -- after a readable
head -- when longer than memcached's 250 bytes. The encoding is injective, and hashed keys and
chunk keys carry markers ("%h", "%c") that no plain key can contain, so distinct keys stay distinct.

Values:

Format: one prefix byte, then JSON with compact separators. The prefix's high nibble says how the
JSON is stored (``0xC``: as is; ``0xD``: zlib-compressed, used when that saves space, which it
does for any listing of some size), its low nibble is the format version (1). JSON rather than
msgpack: the standard library has it, a value can be read with ``redis-cli get`` when debugging,
and with zlib on the large values (listings) msgpack's size advantage is gone -- it would be a new
dependency for a speed difference that does not matter next to a network round trip.

Compatibility: within a version, objects may gain keys (old readers ignore them) and optional
keys may be absent (defaults apply), so front ends of neighbouring releases share L2 during a
rolling upgrade. An incompatible change takes a new version; older readers then see a miss.
Every ``decode_*`` returns ``None`` -- a miss -- for anything it does not fully understand
(unknown prefix or version, garbage, truncation, wrong kind, wrong types) and never raises.

Signed URLs are never stored: a LocateResult's prepared redirects stay with the front end that
made them. A LocateResult read back from L2 has ``cached=True``.
"""

from __future__ import annotations

import hashlib
import json
import math
import zlib
from collections.abc import Sequence
from typing import Any
from urllib.parse import quote

from geofed.endpoints.base import Entry, StatResult
from geofed.federation.locator import LocateResult, Replica

VERSION = 1
PLAIN = bytes([0xC0 | VERSION])
COMPRESSED = bytes([0xD0 | VERSION])
COMPRESS_ABOVE = 1024
"""Below this many bytes of JSON, zlib saves too little to be worth the time."""
MAX_DECODED = 256 * 1024 * 1024
"""A compressed value that expands beyond this is refused (garbage, or a zip bomb)."""

_KIND_LOCATE = "loc"
_KIND_LISTING = "list"
_KIND_HEALTH = "health"


class _Invalid(Exception):
    """The value does not have the expected shape."""


# -- keys ------------------------------------------------------------------------------------------

MEMCACHED_KEY_LIMIT = 250
# Printable ASCII that memcached accepts in keys; quote() escapes everything else, '%' included,
# so encoded keys never contain '%' followed by a non-hex letter: "%h" (hashed) and "%c" (chunk)
# below can never be produced by a plain key, which keeps all three kinds distinct.
_KEY_SAFE = "!\"#$&'()*+,/:;<=>?@[\\]^`{|}"


def _limit(encoded: str) -> str:
    """``encoded`` itself when memcached accepts its length, else a readable head plus its sha256."""
    if len(encoded) <= MEMCACHED_KEY_LIMIT:
        return encoded
    digest = hashlib.sha256(encoded.encode("ascii")).hexdigest()
    head = encoded[: MEMCACHED_KEY_LIMIT - len(digest) - 2]
    cut = head.rfind("%", len(head) - 2)  # do not leave half an escape before the marker
    if cut != -1:
        head = head[:cut]
    return f"{head}%h{digest}"


def escape(text: str) -> str:
    """``text`` percent-encoded for memcached (surrogatepass: a path decoded with surrogateescape
    still gets a unique key, not an error)."""
    return quote(text.encode("utf-8", "surrogatepass"), safe=_KEY_SAFE)


def encode_key(namespace: str, key: str) -> str:
    """The server-side key of ``key``: namespaced, escaped, at most 250 ASCII bytes, unique."""
    return _limit(escape(namespace + key))


def chunk_key(namespace: str, key: str, index: int) -> str:
    """The server-side key of chunk ``index`` of ``key`` (never equal to any plain key)."""
    return _limit(f"{escape(namespace + key)}%c{index}")


# -- the envelope ----------------------------------------------------------------------------------


def _pack(document: dict[str, Any]) -> bytes:
    text = json.dumps(document, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    raw = text.encode("utf-8", "surrogatepass")  # paths may carry surrogate escapes
    if len(raw) > COMPRESS_ABOVE:
        packed = zlib.compress(raw, 1)
        if len(packed) < len(raw):
            return COMPRESSED + packed
    return PLAIN + raw


def _unpack(data: bytes, kind: str) -> dict[str, Any]:
    prefix, body = data[:1], data[1:]
    if prefix == COMPRESSED:
        inflater = zlib.decompressobj()
        body = inflater.decompress(body, MAX_DECODED)
        if inflater.unconsumed_tail or not inflater.eof:
            raise _Invalid("truncated or oversized")
    elif prefix != PLAIN:
        raise _Invalid("unknown format or version")
    document = json.loads(body.decode("utf-8", "surrogatepass"))
    if not isinstance(document, dict) or document.get("k") != kind:
        raise _Invalid("not a " + kind)
    return document


# -- field helpers ---------------------------------------------------------------------------------


def _str(value: Any) -> str:
    if not isinstance(value, str):
        raise _Invalid("expected a string")
    return value


def _opt_str(value: Any) -> str | None:
    return None if value is None else _str(value)


def _list(value: Any) -> list[Any]:
    if not isinstance(value, list):
        raise _Invalid("expected a list")
    return value


def _encode_stat(stat: StatResult) -> dict[str, Any]:
    """Only what differs from StatResult's defaults (most files have no metadata, no type)."""
    out: dict[str, Any] = {}
    if stat.is_dir:
        out["d"] = True
    if stat.size is not None:
        out["s"] = stat.size
    if stat.mtime is not None and math.isfinite(stat.mtime):
        out["m"] = stat.mtime
    if stat.etag is not None:
        out["t"] = stat.etag
    if stat.content_type is not None:
        out["ct"] = stat.content_type
    if stat.metadata:
        out["md"] = [[name, value] for name, value in stat.metadata]
    return out


def _decode_stat(value: Any) -> StatResult:
    if not isinstance(value, dict):
        raise _Invalid("stat is not an object")
    is_dir = value.get("d", False)
    size = value.get("s")
    mtime = value.get("m")
    if not isinstance(is_dir, bool):
        raise _Invalid("bad is_dir")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int)):
        raise _Invalid("bad size")
    if mtime is not None and (isinstance(mtime, bool) or not isinstance(mtime, int | float)):
        raise _Invalid("bad mtime")
    metadata: list[tuple[str, str]] = []
    for pair in _list(value.get("md", [])):
        pair = _list(pair)
        if len(pair) < 2:
            raise _Invalid("bad metadata")
        metadata.append((_str(pair[0]), _str(pair[1])))
    return StatResult(
        is_dir=is_dir,
        size=size,
        mtime=None if mtime is None else float(mtime),
        etag=_opt_str(value.get("t")),
        content_type=_opt_str(value.get("ct")),
        metadata=tuple(metadata),
    )


# -- locate answers --------------------------------------------------------------------------------


def encode_locate(result: LocateResult) -> bytes:
    """A locate answer without its prepared redirects (signed URLs stay in the front end)."""
    return _pack(
        {
            "k": _KIND_LOCATE,
            "p": result.path,
            "r": [[r.endpoint, r.path, _encode_stat(r.stat)] for r in result.replicas],
            "u": [[name, reason] for name, reason in result.unknown],
            "c": result.complete,
            "e": round(result.elapsed, 6),
        }
    )


def decode_locate(data: bytes, path: str) -> LocateResult | None:
    """The answer stored for ``path`` (``cached=True``), or None; a value stored for another path
    (which only a key collision could produce) is a miss too."""
    try:
        doc = _unpack(data, _KIND_LOCATE)
        if _str(doc.get("p")) != path:
            return None
        replicas = []
        for item in _list(doc.get("r", [])):
            item = _list(item)
            if len(item) < 3:
                raise _Invalid("bad replica")
            replicas.append(Replica(_str(item[0]), _str(item[1]), _decode_stat(item[2])))
        unknown = []
        for item in _list(doc.get("u", [])):
            item = _list(item)
            if len(item) < 2:
                raise _Invalid("bad unknown")
            unknown.append((_str(item[0]), _str(item[1])))
        complete = doc.get("c", False)
        elapsed = doc.get("e", 0.0)
        if not isinstance(complete, bool):
            raise _Invalid("bad complete")
        if isinstance(elapsed, bool) or not isinstance(elapsed, int | float):
            raise _Invalid("bad elapsed")
        return LocateResult(path, tuple(replicas), tuple(unknown), complete, float(elapsed), cached=True)
    except Exception:  # garbage of any kind is a miss, never an error
        return None


# -- listings --------------------------------------------------------------------------------------


def encode_listing(entries: Sequence[Entry]) -> bytes:
    return _pack({"k": _KIND_LISTING, "e": [[e.name, _encode_stat(e.stat)] for e in entries]})


def decode_listing(data: bytes) -> list[Entry] | None:
    """The entries, in the stored order, or None."""
    try:
        doc = _unpack(data, _KIND_LISTING)
        entries = []
        for item in _list(doc.get("e")):
            item = _list(item)
            if len(item) < 2:
                raise _Invalid("bad entry")
            entries.append(Entry(_str(item[0]), _decode_stat(item[1])))
        return entries
    except Exception:  # garbage of any kind is a miss, never an error
        return None


# -- health ----------------------------------------------------------------------------------------


def encode_health(states: dict[str, Any]) -> bytes:
    """A health record (any JSON-compatible mapping); ValueError/TypeError when it is not one."""
    return _pack({"k": _KIND_HEALTH, "h": states})


def decode_health(data: bytes) -> dict[str, Any] | None:
    try:
        states = _unpack(data, _KIND_HEALTH).get("h")
    except Exception:  # garbage of any kind is a miss, never an error
        return None
    return states if isinstance(states, dict) else None


# -- invalidation messages -------------------------------------------------------------------------

MAX_MESSAGE = 64 * 1024
"""A longer invalidation becomes "forget everything" (``["/"]``): cheaper than a huge message."""


def encode_invalidation(sender: str, paths: Sequence[str]) -> bytes:
    """``{"s": sender, "p": paths}`` as JSON (Redis pub/sub message, memcached sequence entry)."""
    message = json.dumps({"s": sender, "p": list(paths)}, separators=(",", ":"))
    if len(message) > MAX_MESSAGE:
        message = json.dumps({"s": sender, "p": ["/"]}, separators=(",", ":"))
    return message.encode()


def decode_invalidation(data: bytes | str) -> tuple[str, list[str]] | None:
    """(sender, paths) of a message, or None when it is not one of ours."""
    try:
        message = json.loads(data)
        sender, paths = message["s"], message["p"]
    except Exception:  # not JSON, not an object, missing keys: not one of ours
        return None
    valid = isinstance(sender, str) and isinstance(paths, list) and all(isinstance(p, str) for p in paths)
    return (sender, paths) if valid else None
