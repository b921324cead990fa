"""The four checksum algorithms geofed computes, their canonical form, and their wire forms.

Canonical form (what endpoints store, what the caches hold, what the service returns): lower-case
hex of the big-endian digest, fixed length -- 8 digits for adler32 and crc32c, 32 for md5, 64 for
sha256. One form everywhere means a value can be compared, cached and written back without
knowing where it came from; only the edges (HTTP headers) convert.

Wire forms (the ``Digest`` field, RFC 3230 and the IANA "HTTP Digest Algorithm Values" registry):

* adler32: 8 lower-case hex digits (the registry allows 1--8; davix left-pads to 8 anyway, and Rucio
  compares the padded string);
* md5, sha256: base64 of the raw digest (RFC 1864 ``Content-MD5``, RFC 5843 ``SHA-256``); davix and
  gfal2 base64-decode both;
* crc32c: 8 lower-case hex digits. A deliberate choice: the IANA registry defines ``CRC32c`` in hex,
  davix and gfal2 hand the value to the caller verbatim, and hex is what ``xrdfs query checksum``
  and Rucio print -- so a user comparing by eye sees the same string everywhere. XrdHttp sends
  base64 instead; a client written against XrdHttp would see a different string for the same
  checksum. :func:`from_client` accepts both when a client declares one.

crc32c comes from ``google-crc32c``: a C extension over Google's hardware-accelerated (SSE4.2 /
ARMv8 CRC) library with manylinux wheels, maintained for the Google Cloud clients. The other
candidate, ``crc32c``, is also a C extension but adds nothing here. Should the C extension ever be
missing, google-crc32c silently uses a pure-Python loop that is thousands of times slower; that is
logged once at import, since a computation of a large file would then hit the service's timeout.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import logging
import re
import warnings
import zlib
from collections.abc import Iterable, Mapping
from typing import Protocol

from geofed.endpoints.base import CHECKSUM_ALGORITHMS

with warnings.catch_warnings():
    warnings.simplefilter("ignore", RuntimeWarning)  # the slow-fallback warning: logged below instead
    import google_crc32c

log = logging.getLogger("geofed.checksums")

if google_crc32c.implementation != "c":  # pragma: no cover - depends on the installed wheel
    log.warning("google-crc32c has no C extension here: crc32c checksums will be very slow")

ALGORITHMS: tuple[str, ...] = CHECKSUM_ALGORITHMS
"""The canonical names, in the order geofed prefers them when a client has no preference."""

HEX_LENGTH: Mapping[str, int] = {"adler32": 8, "md5": 32, "sha256": 64, "crc32c": 8}
"""Characters of the canonical hex form of each algorithm."""

ALIASES: Mapping[str, str] = {
    "adler32": "adler32",
    "md5": "md5",
    "sha-256": "sha256",
    "sha256": "sha256",
    "crc32c": "crc32c",
}
"""Names clients use (lower-cased) → canonical name. ``SHA256`` is not in the IANA registry (which
says ``SHA-256``) but gfal2 and Rucio send it, so both are accepted."""

_HEX = re.compile(r"[0-9a-fA-F]+")
_BASE64 = re.compile(r"[A-Za-z0-9+/]+={0,2}")


def canonical_name(token: str) -> str | None:
    """The canonical algorithm a client's token names (case-insensitively), or None when geofed
    does not support it. Only ASCII tokens match: ``str.lower`` maps some non-ASCII letters onto
    ASCII ones (the Kelvin sign becomes ``k``), which must not make a name match."""
    if not token.isascii():
        return None
    return ALIASES.get(token.strip().lower())


# -- hashing -----------------------------------------------------------------------------------------


class _Hasher(Protocol):
    def update(self, data: bytes) -> None: ...

    def hexdigest(self) -> str: ...


class _Adler32:
    """zlib.adler32 behind the hashlib interface (it starts at 1, not 0)."""

    __slots__ = ("_value",)

    def __init__(self) -> None:
        self._value = 1

    def update(self, data: bytes) -> None:
        self._value = zlib.adler32(data, self._value)

    def hexdigest(self) -> str:
        return f"{self._value:08x}"


class _Crc32c:
    """google_crc32c's integer interface (no object per update) behind the hashlib interface."""

    __slots__ = ("_value",)

    def __init__(self) -> None:
        self._value = 0

    def update(self, data: bytes) -> None:
        # The C extension takes only bytes (not bytearray/memoryview): copy the odd other buffer.
        self._value = int(google_crc32c.extend(self._value, data if type(data) is bytes else bytes(data)))

    def hexdigest(self) -> str:
        return f"{self._value:08x}"


def new_hasher(algorithm: str) -> _Hasher:
    """An incremental hasher for a canonical algorithm name; ValueError for any other name."""
    if algorithm == "adler32":
        return _Adler32()
    if algorithm == "crc32c":
        return _Crc32c()
    if algorithm == "md5":
        return hashlib.md5(usedforsecurity=False)
    if algorithm == "sha256":
        return hashlib.sha256()
    raise ValueError(f"unsupported checksum algorithm: {algorithm!r}")


class MultiHasher:
    """Several algorithms fed from one pass over the data, so a file is read once for all of them.

    hashlib and zlib release the GIL on large buffers, so :meth:`update` may run in a worker
    thread while the event loop fetches the next chunk's bytes elsewhere.
    """

    __slots__ = ("_hashers", "size")

    def __init__(self, algorithms: Iterable[str] = ALGORITHMS) -> None:
        self._hashers = {name: new_hasher(name) for name in algorithms}
        self.size = 0
        """Bytes hashed so far (lets the caller check it against the file's size)."""

    def update(self, chunk: bytes) -> None:
        for hasher in self._hashers.values():
            hasher.update(chunk)
        self.size += len(chunk)

    def hexdigests(self) -> dict[str, str]:
        """{canonical algorithm: canonical hex} of everything hashed so far."""
        return {name: hasher.hexdigest() for name, hasher in self._hashers.items()}


def compute(data: bytes, algorithms: Iterable[str] = ALGORITHMS) -> dict[str, str]:
    """Checksums of ``data`` held in memory (tests, small bodies)."""
    hasher = MultiHasher(algorithms)
    hasher.update(data)
    return hasher.hexdigests()


# -- conversions ----------------------------------------------------------------------------------


def canonical_hex(algorithm: str, value: str) -> str:
    """``value`` (hex of ``algorithm``'s digest, any case, short 32-bit values allowed) in canonical
    form; ValueError when it is not one. Used on what endpoints return, which may be unpadded
    (``3da0195``) or upper-case."""
    length = HEX_LENGTH.get(algorithm)
    if length is None:
        raise ValueError(f"unsupported checksum algorithm: {algorithm!r}")
    value = value.strip()
    shortest = 1 if length == 8 else length
    if not (shortest <= len(value) <= length and _HEX.fullmatch(value)):
        raise ValueError(f"not a {algorithm} value: {value[:80]!r}")
    return value.lower().rjust(length, "0")


def digest_bytes(algorithm: str, hex_value: str) -> bytes:
    """The raw digest (big-endian for the 32-bit checksums) of a canonical hex value."""
    return bytes.fromhex(canonical_hex(algorithm, hex_value))


def b64(algorithm: str, hex_value: str) -> str:
    """Standard base64, with padding, of the raw digest."""
    return base64.b64encode(digest_bytes(algorithm, hex_value)).decode("ascii")


def wire_value(algorithm: str, hex_value: str) -> str:
    """The value as a ``Digest`` field carries it (see the module docstring): hex for adler32 and
    crc32c, base64 for md5 and sha256. ValueError for an unknown algorithm or a malformed value."""
    if algorithm in ("adler32", "crc32c"):
        return canonical_hex(algorithm, hex_value)
    return b64(algorithm, hex_value)


def _from_base64(algorithm: str, value: str) -> str:
    if not _BASE64.fullmatch(value) or len(value) % 4:
        raise ValueError(f"not base64: {value[:80]!r}")
    try:
        raw = base64.b64decode(value, validate=True)
    except binascii.Error as exc:
        raise ValueError(f"not base64: {value[:80]!r}") from exc
    if len(raw) * 2 != HEX_LENGTH[algorithm]:
        raise ValueError(f"a {algorithm} digest has {HEX_LENGTH[algorithm] // 2} bytes, not {len(raw)}")
    return raw.hex()


def from_client(algorithm: str, value: str) -> str:
    """The canonical hex of a value a client declared (``Digest``, ``Content-MD5``) for a canonical
    ``algorithm``; ValueError when it is malformed.

    Accepted: adler32 as 1--8 hex digits (the registry's form); md5 and sha256 as base64 (RFC
    1864/5843), or as full-length hex (old DPM and some scripts send that; the lengths cannot be
    confused: base64 of 16 bytes has 24 characters); crc32c as 1--8 hex digits (the registry's
    form) or as base64 of its 4 bytes (XrdHttp's form: 8 characters ending in ``==``, which hex
    never contains).
    """
    if algorithm not in HEX_LENGTH:
        raise ValueError(f"unsupported checksum algorithm: {algorithm!r}")
    value = value.strip()
    if algorithm == "adler32":
        return canonical_hex(algorithm, value)
    if algorithm == "crc32c":
        if value.endswith("="):
            return _from_base64(algorithm, value)
        return canonical_hex(algorithm, value)
    if len(value) == HEX_LENGTH[algorithm] and _HEX.fullmatch(value):
        return value.lower()
    return _from_base64(algorithm, value)


def from_bytes(algorithm: str, raw: bytes) -> str:
    """The canonical hex of a raw digest (an RFC 9530 byte sequence); ValueError on a wrong length."""
    if algorithm not in HEX_LENGTH:
        raise ValueError(f"unsupported checksum algorithm: {algorithm!r}")
    if len(raw) * 2 != HEX_LENGTH[algorithm]:
        raise ValueError(f"a {algorithm} digest has {HEX_LENGTH[algorithm] // 2} bytes, not {len(raw)}")
    return raw.hex()
