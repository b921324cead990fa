"""VO membership for plain certificates (no VOMS extension), from lists of member DNs.

Some sites keep who belongs to a VO in files instead of (or as well as) VOMS: a list of DNs, one a
line, or a grid-mapfile whose first column is the DN. The file decides which it is:

* a **grid-mapfile** has at least one quoted DN (``"/DC=org/DC=test/CN=Some One" account``), as
  every grid-mapfile tool writes DNs with blanks; there, an unquoted line is a DN without blanks
  followed by its account field (``/DC=org/DC=test/CN=someone account``);
* otherwise it is a **DN list**: each line is one whole DN, blanks included
  (``/DC=org/DC=test/CN=Some One``), as people write them by hand;
* in both, blank lines and lines starting with ``#`` are ignored, as is ``# ...`` after a DN.

Anything else (a line that is not a slash-form DN, an RFC 2253 ``CN=x,DC=org`` DN, an unterminated
quote) is a :class:`~geofed.errors.ConfigError` naming the file and line: a member list that is
silently half-read would silently deny (or worse, mis-grant) access.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path

from geofed.auth.settings import VOMembers
from geofed.errors import ConfigError

# A grid-mapfile account field: one word of local account names, comma-separated (``.pool`` too).
_ACCOUNT_FIELD = re.compile(r"[^\s/=\"#]+")


def _parse_line(line: str, grid_mapfile: bool) -> str | None:
    """The DN on one line, None for a blank or comment line; ValueError says what is wrong."""
    text = line.strip()
    if not text or text.startswith("#"):
        return None
    if text.startswith('"'):
        end = text.find('"', 1)
        if end < 0:
            raise ValueError("unterminated quote")
        dn = text[1:end]
        rest = text[end + 1 :]
        if rest and not rest[0].isspace() and not rest.startswith("#"):
            raise ValueError("text right after the closing quote")
        rest = rest.strip()
        if rest and not rest.startswith("#") and not _ACCOUNT_FIELD.fullmatch(rest.split("#", 1)[0].strip()):
            raise ValueError(f"after the DN, expected one account field, got {rest!r}")
    elif grid_mapfile:
        head, rest = _split_blank(text)
        if rest and not rest.startswith("#") and not _ACCOUNT_FIELD.fullmatch(rest.split("#", 1)[0].strip()):
            raise ValueError(f"after the DN, expected one account field (quote DNs with blanks): {rest!r}")
        dn = head
    else:
        dn = text.split(" #", 1)[0].split("\t#", 1)[0].rstrip()
    if not dn.startswith("/"):
        raise ValueError(f"not a DN in slash form (/DC=org/CN=...): {dn[:80]!r}")
    return dn


def _split_blank(text: str) -> tuple[str, str]:
    """The text before the first run of whitespace (tabs included), and the text after it."""
    parts = text.split(None, 1)
    return (parts[0], parts[1]) if len(parts) == 2 else (text, "")


def parse_members(text: str, source: str) -> frozenset[str]:
    """The DNs listed in ``text``; ``source`` names it in errors (``members.txt:12: ...``)."""
    dns: set[str] = set()
    lines = text.split("\n")
    grid_mapfile = any(line.lstrip().startswith('"') for line in lines)
    for number, line in enumerate(lines, start=1):
        try:
            dn = _parse_line(line, grid_mapfile)
        except ValueError as exc:
            raise ConfigError(f"{source}:{number}: {exc}") from None
        if dn is not None:
            dns.add(dn)
    return frozenset(dns)


def read_member_file(path: Path) -> frozenset[str]:
    """The DNs listed in a file; ConfigError if it cannot be read or a line is not a DN."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read VO member file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise ConfigError(f"cannot read VO member file {path}: not UTF-8 text") from None
    return parse_members(text, str(path))


class VOMemberList:
    """Which VOs each listed DN belongs to: one dict lookup per new connection."""

    def __init__(self, vos_by_dn: Mapping[str, frozenset[str]] | None = None) -> None:
        self._vos_by_dn: dict[str, frozenset[str]] = dict(vos_by_dn or {})

    @classmethod
    def from_settings(cls, members: Sequence[VOMembers]) -> VOMemberList:
        """Read every ``auth.vo_members`` file (each once, however often it is named)."""
        files: dict[Path, frozenset[str]] = {}
        vos: dict[str, set[str]] = {}
        for entry in members:
            if entry.file not in files:
                files[entry.file] = read_member_file(entry.file)
            for dn in files[entry.file]:
                vos.setdefault(dn, set()).add(entry.vo)
        return cls({dn: frozenset(names) for dn, names in vos.items()})

    def vos_of(self, dn: str) -> frozenset[str]:
        """The VOs ``dn`` is listed in (empty when none)."""
        return self._vos_by_dn.get(dn, frozenset())

    def __len__(self) -> int:
        return len(self._vos_by_dn)

    def __bool__(self) -> bool:
        return bool(self._vos_by_dn)
