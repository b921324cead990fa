"""What a client asks for (``Want-Digest``, ``Want-Repr-Digest``), what geofed answers (``Digest``,
``Repr-Digest``), and what a client declares on a PUT (``Digest``, ``Content-MD5``, ``Repr-Digest``).

Everything here is pure string work, so the handlers stay short and the rules can be tested alone.

**The echo rule.** gfal2 sends the algorithm name verbatim (``ADLER32``, ``SHA256``) and accepts
only a ``Digest`` entry with that name, compared case-insensitively: ``Want-Digest: SHA256``
answered with ``sha-256=...`` is "checksum calculation not supported". So every answer entry
carries the client's own spelling (:attr:`Wanted.token`), never a normalised one.

**Emitted forms.**

* ``Digest: <token>=<value>[, <token>=<value>...]``, in the client's preference order, one entry per
  acceptable supported token it sent: adler32 and crc32c as 8 lower-case hex digits, md5 and
  sha256 as base64 of the digest (see :mod:`geofed.checksums.algorithms` for why crc32c is hex).
  Example: ``Want-Digest: SHA256, adler32;q=0.5`` → ``Digest: SHA256=qUiQ...=, adler32=1d6a0468``.
* ``Repr-Digest: <key>=:<base64>:[, ...]`` (RFC 9530 byte sequences): the key the client sent
  (lower-case, as structured-field keys are), the base64 of the raw digest -- 16 bytes for md5,
  32 for sha-256, and the 4 big-endian bytes of the 32-bit value for ``adler`` and ``crc32c``
  (RFC 9530's registry names them, deprecated). ``sha-256`` and ``md5`` are RFC 9530's registered
  keys; ``adler32``/``sha256`` are accepted as the same algorithms and echoed as sent.

**Leniency.** Asking is never an error: a malformed ``Want-Digest`` item (bad token, bad q) or
``Want-Repr-Digest`` member (non-integer preference) is skipped and listed in
:attr:`DigestRequest.malformed`, so a handler can still answer what it understood. Declaring is
different: a malformed value for an algorithm geofed checks makes the parse raise ValueError,
because a PUT whose declared checksum cannot be read must not be stored as if it were verified.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Mapping
from dataclasses import dataclass

from geofed.checksums.algorithms import (
    ALGORITHMS,
    ALIASES,
    b64,
    canonical_name,
    from_bytes,
    from_client,
    wire_value,
)

REPR_NAMES: Mapping[str, str] = {"adler32": "adler", "md5": "md5", "sha256": "sha-256", "crc32c": "crc32c"}
"""The RFC 9530 registry key of each canonical algorithm."""

_STRUCTURED_ALIASES: Mapping[str, str] = {**ALIASES, "adler": "adler32"}
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")  # RFC 9110 token
_SF_KEY = re.compile(r"[a-z*][a-z0-9_\-.*]*")  # RFC 8941 key
_QVALUE = re.compile(r"[0-9]{1,5}(?:\.[0-9]{0,5})?|\.[0-9]{1,5}")
_SF_INTEGER = re.compile(r"-?[0-9]{1,15}")
_SF_BYTES = re.compile(r":([A-Za-z0-9+/=]*):")


@dataclass(frozen=True, slots=True)
class Wanted:
    """One algorithm a client asked for."""

    algorithm: str
    """The canonical name (``adler32``, ``md5``, ``sha256``, ``crc32c``)."""
    token: str
    """The client's spelling, to be echoed: verbatim for ``Want-Digest``, the lower-case dictionary
    key for ``Want-Repr-Digest``."""
    weight: float
    """The client's preference: the q-value (0 < q <= 1) or the RFC 9530 integer (1..10)."""


@dataclass(frozen=True, slots=True)
class DigestRequest:
    """A parsed ``Want-Digest`` or ``Want-Repr-Digest``."""

    wanted: tuple[Wanted, ...] = ()
    """Supported, acceptable algorithms in preference order (highest weight first, then the order
    the client named them); one entry per distinct spelling, so a client asking ``sha-256, SHA256``
    gets both names back."""
    unknown: tuple[str, ...] = ()
    """Acceptable tokens geofed does not support (``sha``, ``UNIXcksum``), as spelled: the handler can
    name them when nothing supported is left."""
    refused: tuple[str, ...] = ()
    """Canonical algorithms the client marked not acceptable (q=0, or 0 in RFC 9530)."""
    malformed: tuple[str, ...] = ()
    """Items that could not be parsed, verbatim; they were ignored."""
    structured: bool = False
    """True for ``Want-Repr-Digest`` (answer with ``Repr-Digest``)."""

    @property
    def algorithms(self) -> tuple[str, ...]:
        """The canonical algorithms wanted, without repeats, most preferred first."""
        return tuple(dict.fromkeys(w.algorithm for w in self.wanted))

    def __bool__(self) -> bool:
        return bool(self.wanted)


def _build(
    items: list[tuple[str, str | None, float]], unknown: list[str], malformed: list[str], structured: bool
) -> DigestRequest:
    """Order and filter (token, canonical or None, weight) triples into a DigestRequest."""
    refused = {canonical for _, canonical, weight in items if canonical is not None and weight <= 0}
    wanted: list[Wanted] = []
    seen: set[str] = set()
    for token, canonical, weight in items:
        if weight <= 0 or canonical is None or canonical in refused or token.lower() in seen:
            continue
        seen.add(token.lower())
        wanted.append(Wanted(canonical, token, weight))
    wanted.sort(key=lambda w: -w.weight)  # stable: equal weights keep the client's order
    return DigestRequest(
        tuple(wanted),
        tuple(dict.fromkeys(unknown)),
        tuple(a for a in ALGORITHMS if a in refused),
        tuple(malformed),
        structured,
    )


def parse_want_digest(header: str | None) -> DigestRequest:
    """Parse RFC 3230 ``Want-Digest: md5;q=0.3, ADLER32``; never raises.

    q-values are honoured (absent means 1; 0 means "not acceptable" and wins over any other
    mention of the same algorithm); parameters other than ``q`` are ignored.
    """
    items: list[tuple[str, str | None, float]] = []
    unknown: list[str] = []
    malformed: list[str] = []
    for raw in (header or "").split(","):
        item = raw.strip()
        if not item:
            continue
        token, *params = (part.strip() for part in item.split(";"))
        weight = 1.0
        valid = _TOKEN.fullmatch(token) is not None
        for param in params:
            name, _, value = (part.strip() for part in param.partition("="))
            if name.lower() == "q":
                valid = valid and _QVALUE.fullmatch(value) is not None and float(value) <= 1
                weight = float(value) if valid else weight
        if not valid:
            malformed.append(item)
            continue
        canonical = canonical_name(token)
        if canonical is None and weight > 0:
            unknown.append(token)
        items.append((token, canonical, weight))
    return _build(items, unknown, malformed, structured=False)


def parse_want_repr_digest(header: str | None) -> DigestRequest:
    """Parse RFC 9530 ``Want-Repr-Digest: sha-256=5, md5=3`` (a structured dictionary of integers
    0..10, 0 meaning "not acceptable"); never raises.

    Lenient where it costs nothing: keys are lower-cased before the check (some clients send
    ``SHA-256``), a bare key (a boolean true) counts as preference 1, ``?0`` as 0; member
    parameters are ignored. Anything else (decimals, strings, out of range) is malformed.
    """
    items: list[tuple[str, str | None, float]] = []
    unknown: list[str] = []
    malformed: list[str] = []
    for raw in (header or "").split(","):
        item = raw.strip()
        if not item:
            continue
        member = item.split(";", 1)[0].strip()
        key, has_value, value = (part.strip() for part in member.partition("="))
        key = key.lower() if key.isascii() else key
        weight: float | None
        if not has_value or value == "?1":
            weight = 1.0
        elif value == "?0":
            weight = 0.0
        elif _SF_INTEGER.fullmatch(value) and 0 <= int(value) <= 10:
            weight = float(int(value))
        else:
            weight = None
        if not _SF_KEY.fullmatch(key) or weight is None:
            malformed.append(item)
            continue
        canonical = _STRUCTURED_ALIASES.get(key)
        if canonical is None and weight > 0:
            unknown.append(key)
        items.append((key, canonical, weight))
    return _build(items, unknown, malformed, structured=True)


def format_digest(request: DigestRequest, values: Mapping[str, str]) -> str | None:
    """The ``Digest`` value answering ``request`` from ``values`` ({canonical: canonical hex}), or
    None when no wanted algorithm has a value. Tokens are echoed exactly (the echo rule)."""
    parts = [
        f"{w.token}={wire_value(w.algorithm, values[w.algorithm])}"
        for w in request.wanted
        if w.algorithm in values
    ]
    return ", ".join(parts) or None


def format_repr_digest(request: DigestRequest, values: Mapping[str, str]) -> str | None:
    """The ``Repr-Digest`` value answering ``request`` (keys echoed in lower case, values as
    ``:base64:`` byte sequences), or None when no wanted algorithm has a value."""
    parts = [
        f"{w.token.lower()}=:{b64(w.algorithm, values[w.algorithm])}:"
        for w in request.wanted
        if w.algorithm in values
    ]
    return ", ".join(parts) or None


def format_repr_digest_registered(values: Mapping[str, str]) -> str | None:
    """A ``Repr-Digest`` of every value under RFC 9530's registered keys (``sha-256``, ``md5``,
    ``adler``, ``crc32c``), for answers nobody asked a spelling for."""
    parts = [f"{REPR_NAMES[a]}=:{b64(a, values[a])}:" for a in REPR_NAMES if a in values]
    return ", ".join(parts) or None


# -- what a client declares ----------------------------------------------------------------------------


def _add(claims: dict[str, str], algorithm: str, value: str, source: str) -> None:
    previous = claims.setdefault(algorithm, value)
    if previous != value:
        raise ValueError(f"conflicting {algorithm} values declared ({source})")


def parse_digest_claims(
    digest: str | None = None, content_md5: str | None = None, repr_digest: str | None = None
) -> dict[str, str]:
    """{canonical: canonical hex} of what a PUT declares: RFC 3230 ``Digest: ADLER32=..., md5=...``,
    RFC 1864 ``Content-MD5`` and RFC 9530 ``Repr-Digest`` (or ``Content-Digest`` when the body has
    no content coding, which makes them equal).

    Algorithms geofed does not check (``sha``, ``UNIXcksum``) are ignored whatever their value.
    ValueError when an entry has no ``=``, a name is not a token, a supported algorithm's value is
    malformed, or two declarations of one algorithm disagree.
    """
    claims: dict[str, str] = {}
    for raw in (digest or "").split(","):
        item = raw.strip()
        if not item:
            continue
        token, has_value, value = item.partition("=")
        token = token.strip()
        if not has_value or not _TOKEN.fullmatch(token):
            raise ValueError(f"malformed Digest entry: {item[:80]!r}")
        canonical = canonical_name(token)
        if canonical is not None:
            _add(claims, canonical, from_client(canonical, value), "Digest")
    if content_md5 is not None and content_md5.strip():
        _add(claims, "md5", from_client("md5", content_md5), "Content-MD5")
    for raw in (repr_digest or "").split(","):
        item = raw.strip()
        if not item:
            continue
        member = item.split(";", 1)[0]
        key, has_value, value = (part.strip() for part in member.partition("="))
        key = key.lower() if key.isascii() else key
        if not has_value or not _SF_KEY.fullmatch(key):
            raise ValueError(f"malformed Repr-Digest member: {item[:80]!r}")
        canonical = _STRUCTURED_ALIASES.get(key)
        if canonical is None:
            continue
        match = _SF_BYTES.fullmatch(value)
        if match is None:
            raise ValueError(f"Repr-Digest {key} is not a byte sequence: {value[:80]!r}")
        try:
            raw_digest = base64.b64decode(match.group(1), validate=True)
        except binascii.Error as exc:
            raise ValueError(f"Repr-Digest {key} is not base64: {value[:80]!r}") from exc
        _add(claims, canonical, from_bytes(canonical, raw_digest), "Repr-Digest")
    return claims
