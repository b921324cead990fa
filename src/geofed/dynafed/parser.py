"""Reading Dynafed (UGR) configuration files the way UGR's own parser (``UgrConfig.cc``) reads them.

What is reproduced, because it changes what a configuration means:

* a comment is a line whose first column is ``#``; there are no inline comments (text after a ``#``
  in a value is part of the value);
* the key is everything before the first ``:``, *not* trimmed (``key : v`` is the key ``"key "``,
  which UGR never reads); the value is trimmed of spaces (not tabs) and cut at 1023 characters;
* ``key[]`` appends to a list; a plain key given again overrides the earlier value;
* ``INCLUDE dir`` (any case, also ``INCLUDE: dir``) reads the ``*.conf`` files of the directory that do
  not start with a dot, in sorted order, *after* the rest of the including file.

Beyond UGR, and said so in the report: an INCLUDE may name a single file, a relative path is taken
relative to the including file, ``root`` re-roots absolute INCLUDE paths (for a copy of the Dynafed
host's ``/etc``), a file is read once however often it is included, and an INCLUDE cycle is refused.
``${ENV}`` references are kept as written: they are not resolved here.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

ENV_REF = re.compile(r"\$\{[A-Za-z_][A-Za-z0-9_]*(?::-[^}]*)?\}")
_INCLUDE = re.compile(r"include(?=[\s:]|$)", re.IGNORECASE)
MAX_VALUE = 1023
"""UGR keeps at most this many characters of a value."""


class DynafedInputError(Exception):
    """The input cannot be read or is not a Dynafed configuration (the command exits 2)."""


@dataclass(frozen=True)
class Line:
    """One ``key: value`` line, where it was read, and its place in UGR's reading order."""

    key: str
    value: str
    source: str
    lineno: int
    order: int

    @property
    def where(self) -> str:
        return f"{self.source}:{self.lineno}"

    @property
    def has_env(self) -> bool:
        return ENV_REF.search(self.value) is not None

    @property
    def is_array(self) -> bool:
        return self.key.endswith("[]")

    @property
    def name(self) -> str:
        """The key without a trailing ``[]``."""
        return self.key[:-2] if self.is_array else self.key


@dataclass(frozen=True)
class Skipped:
    """A line that UGR reads as nothing (no ``:``), or an INCLUDE that could not be followed."""

    text: str
    source: str
    lineno: int
    order: int
    reason: str

    @property
    def where(self) -> str:
        return f"{self.source}:{self.lineno}"


@dataclass
class DynafedConfig:
    """Every line of a Dynafed configuration in reading order, with lookups that behave like UGR's."""

    lines: list[Line] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)
    files: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    _used: set[int] = field(default_factory=set)

    def scalar(self, key: str) -> Line | None:
        """The value UGR uses for a plain key: the last line that sets it."""
        found = None
        for line in self.lines:
            if line.key == key:
                found = line
        return found

    def array(self, name: str) -> list[Line]:
        """The lines of ``name[]``, in order."""
        return [line for line in self.lines if line.is_array and line.name == name]

    def plugin_scalar(self, plugin: str, name: str) -> Line | None:
        """``locplugin.<plugin>.<name>``, else the wildcard ``locplugin.*.<name>`` (scalars only)."""
        return self.scalar(f"locplugin.{plugin}.{name}") or self.scalar(f"locplugin.*.{name}")

    def overridden(self) -> list[tuple[Line, Line]]:
        """Each plain-key line that a later line with the same key overrides, with the winner."""
        last: dict[str, Line] = {}
        for line in self.lines:
            if not line.is_array:
                last[line.key] = line
        return [
            (line, last[line.key]) for line in self.lines if not line.is_array and last[line.key] is not line
        ]

    def use(self, line: Line | None) -> None:
        """Mark a line as accounted for (mapped, or reported with a reason)."""
        if line is not None:
            self._used.add(line.order)

    def is_used(self, line: Line) -> bool:
        return line.order in self._used

    def used_marks(self) -> frozenset[int]:
        return frozenset(self._used)

    def restore_used_marks(self, marks: frozenset[int]) -> None:
        self._used = set(marks)


class _Reader:
    def __init__(self, root: Path | None, ignore_missing_includes: bool) -> None:
        self.root = root
        self.ignore_missing = ignore_missing_includes
        self.config = DynafedConfig()
        self.seen: set[Path] = set()
        self.order = 0

    def _next(self) -> int:
        self.order += 1
        return self.order

    def read(self, path: Path, stack: tuple[Path, ...], origin: str | None) -> None:
        real = path.resolve()
        if real in stack:
            chain = " -> ".join(str(p) for p in (*stack[stack.index(real) :], real))
            raise DynafedInputError(f"{origin}: INCLUDE cycle refused: {chain}")
        if path.is_dir():
            self._read_dir(path, stack, origin or str(path))
            return
        if real in self.seen:
            self.config.notes.append(f"{origin or path}: {path} was read already; not read again")
            return
        self.seen.add(real)
        shown = str(path)
        try:
            data = path.read_bytes()
        except OSError as exc:
            where = f"{origin}: " if origin else ""
            raise DynafedInputError(f"{where}cannot read {shown}: {exc.strerror or exc}") from None
        if b"\x00" in data:
            raise DynafedInputError(f"{shown}: not a text file")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as exc:
            lineno = data[: exc.start].count(b"\n") + 1
            raise DynafedInputError(f"{shown}:{lineno}: not UTF-8 text") from None
        self.config.files.append(shown)
        includes: list[tuple[str, str]] = []
        for lineno, raw in enumerate(text.split("\n"), start=1):
            line = raw.rstrip("\r")
            if not line.strip() or line.startswith("#"):
                continue
            match = _INCLUDE.match(line)
            if match:
                target = line[match.end() :].strip(" \t").removeprefix(":").strip(" \t")
                includes.append((target, f"{shown}:{lineno}"))
                continue
            key, colon, value = line.partition(":")
            if not colon:
                self.config.skipped.append(
                    Skipped(
                        line,
                        shown,
                        lineno,
                        self._next(),
                        "not a 'key: value' line; UGR reads nothing from it",
                    )
                )
                continue
            value = value.strip(" ")[:MAX_VALUE]
            self.config.lines.append(Line(key, value, shown, lineno, self._next()))
            if re.search(r"\s#", value):
                self.config.notes.append(
                    f"{shown}:{lineno}: {key}: UGR has no inline comments, so the text after '#' is part of "
                    "the value and is converted as such"
                )
        # UGR reads the included files after the whole including file.
        for target, where in includes:
            self._include(target, path, where, (*stack, real))

    def _include(self, target: str, including: Path, where: str, stack: tuple[Path, ...]) -> None:
        if not target:
            raise DynafedInputError(f"{where}: INCLUDE names no file or directory")
        if ENV_REF.search(target):
            raise DynafedInputError(
                f"{where}: INCLUDE {target}: a path taken from the environment cannot be read"
            )
        wanted = Path(target)
        if wanted.is_absolute():
            path = self.root / wanted.relative_to(wanted.anchor) if self.root is not None else wanted
        else:
            path = including.parent / wanted
        if not path.exists():
            hint = (
                ""
                if self.root is not None or not wanted.is_absolute()
                else "; give --root DIR to read absolute "
                "INCLUDE paths below a copy of the Dynafed host's files"
            )
            message = f"INCLUDE {target}: {path} does not exist{hint}"
            if not self.ignore_missing:
                raise DynafedInputError(
                    f"{where}: {message} (or --ignore-missing-includes to go on without it)"
                )
            source, _, lineno = where.rpartition(":")
            self.config.skipped.append(
                Skipped(
                    f"INCLUDE {target}", source, int(lineno), self._next(), f"{path} does not exist; not read"
                )
            )
            return
        self.read(path, stack, where)

    def _read_dir(self, directory: Path, stack: tuple[Path, ...], where: str) -> None:
        try:
            entries = sorted(directory.iterdir(), key=lambda p: p.name)
        except OSError as exc:
            raise DynafedInputError(
                f"{where}: cannot read directory {directory}: {exc.strerror or exc}"
            ) from None
        files = [
            p for p in entries if p.name.endswith(".conf") and not p.name.startswith(".") and not p.is_dir()
        ]
        ignored = [p.name for p in entries if p not in files]
        if ignored:
            self.config.notes.append(
                f"{where}: in {directory}, UGR reads only *.conf files not starting with '.'; not read: "
                + ", ".join(ignored)
            )
        if not files:
            self.config.notes.append(f"{where}: {directory} holds no *.conf file")
        inside = (*stack, directory.resolve())
        for path in files:
            self.read(path, inside, where)


def read_config(
    paths: Sequence[Path], *, root: Path | None = None, ignore_missing_includes: bool = False
) -> DynafedConfig:
    """Read the given files (and directories) in order, each followed by what it includes."""
    reader = _Reader(root, ignore_missing_includes)
    for path in paths:
        if not path.exists():
            raise DynafedInputError(f"cannot read {path}: No such file or directory")
        reader.read(path, (), None)
    return reader.config
