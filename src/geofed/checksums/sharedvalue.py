"""Which version of a file a checksum belongs to, and how checksums are kept in the shared L2.

A checksum is a fact about bytes, so every cached value is tied to the identity of the bytes it
was computed from: endpoint, endpoint path, size, mtime and ETag as the endpoint's stat reported
them. A file rewritten outside geofed gets a new mtime or ETag, so its old checksums are simply
never matched again -- even on a front end that missed every invalidation.

L2 values live under their own key prefix, ``ck:<endpoint>:<endpoint path>`` (endpoint names
cannot contain ``:``, so the split is unambiguous), one key per file rather than per version, so
that a rewritten file replaces its entry instead of leaving garbage behind. Integrating with
:mod:`geofed.federation.l2codec` proper would mean editing it; instead the value reuses its
envelope -- the ``PLAIN`` prefix byte (JSON, format version 1) and a ``"k"`` kind field, ``"ck"``,
which l2codec's own decoders reject as "not a loc/list/health" -- plus a ``"v"`` schema version
of its own. The JSON is about 250 bytes, so it is never compressed::

    {"k":"ck","v":1,"e":"s3-a","p":"/data/f","s":12,"m":1700000000.5,"t":"\"abc\"",
     "c":{"adler32":"1d6a0468","md5":"..."}}

Decoding returns None -- a miss -- for anything it does not fully understand, for another schema
version, or for a value of another version of the file; it never raises.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from geofed.checksums.algorithms import ALGORITHMS, canonical_hex
from geofed.endpoints.base import StatResult
from geofed.federation.l2codec import PLAIN

KEY_PREFIX = "ck:"
KIND = "ck"
SCHEMA = 1


@dataclass(frozen=True, slots=True)
class FileVersion:
    """The identity of one version of a file on one endpoint: what every cached checksum is keyed by."""

    endpoint: str
    path: str
    size: int | None
    mtime: float | None
    etag: str | None

    @classmethod
    def of(cls, endpoint: str, path: str, stat: StatResult) -> FileVersion:
        # A NaN mtime never equals itself, so it could never be matched: treat it as unknown.
        mtime = float(stat.mtime) if stat.mtime is not None and math.isfinite(stat.mtime) else None
        return cls(endpoint, path, stat.size, mtime, stat.etag)

    @property
    def cacheable(self) -> bool:
        """Whether a rewrite would show in this identity. Size alone would not (a file rewritten
        with as many bytes would get the old checksums), so values of a file with neither mtime
        nor ETag are never cached, only recomputed or read from the endpoint."""
        return self.mtime is not None or self.etag is not None

    @property
    def shared_key(self) -> str:
        return shared_key(self.endpoint, self.path)


def shared_key(endpoint: str, path: str) -> str:
    """The L2 key of a file's checksums (every version of it)."""
    return f"{KEY_PREFIX}{endpoint}:{path}"


def encode(version: FileVersion, values: Mapping[str, str]) -> bytes:
    """The L2 value of ``values`` (canonical) for ``version``."""
    document: dict[str, Any] = {"k": KIND, "v": SCHEMA, "e": version.endpoint, "p": version.path}
    if version.size is not None:
        document["s"] = version.size
    if version.mtime is not None:
        document["m"] = version.mtime
    if version.etag is not None:
        document["t"] = version.etag
    document["c"] = {a: values[a] for a in ALGORITHMS if a in values}
    text = json.dumps(document, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return PLAIN + text.encode("utf-8", "surrogatepass")


def decode(data: bytes, version: FileVersion) -> dict[str, str] | None:
    """The checksums stored for exactly ``version``, or None (miss, garbage, other version)."""
    try:
        if data[:1] != PLAIN:
            return None
        document = json.loads(data[1:].decode("utf-8", "surrogatepass"))
        if not isinstance(document, dict) or document.get("k") != KIND or document.get("v") != SCHEMA:
            return None
        stored = (
            document.get("e"),
            document.get("p"),
            document.get("s"),
            document.get("m"),
            document.get("t"),
        )
        wanted = (version.endpoint, version.path, version.size, version.mtime, version.etag)
        # type() as well as ==: JSON's 1 and 1.0 and True compare equal but are different versions.
        if stored != wanted or [type(x) for x in stored] != [type(x) for x in wanted]:
            return None
        values = document.get("c")
        if not isinstance(values, dict):
            return None
        out: dict[str, str] = {}
        for algorithm in ALGORITHMS:
            value = values.get(algorithm)
            if isinstance(value, str):
                out[algorithm] = canonical_hex(algorithm, value)
        return out
    except Exception:  # garbage of any kind is a miss, never an error
        return None
