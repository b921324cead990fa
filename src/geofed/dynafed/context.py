"""The state shared by the parts of a Dynafed import: the configuration read, and the report.

The report has three parts: the *defaults applied* (Dynafed's code defaults for keys the files do
not set), *notes* (where geofed behaves differently, or a value was read the way UGR reads it), and
the lines *not mapped*, each with its file:line and the reason. Every line of the input ends up
either mapped or in that last list; nothing is dropped silently.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from geofed.dynafed.parser import DynafedConfig, Line

_SECRET_KEYS = ("s3.priv_key", "s3.pub_key", "azure.key", "cli_password", "auth_passwd")
_LONG = re.compile(r"\s*([+-]?\d+)")


def ugr_bool(value: str) -> bool:
    """UGR's GetBool: ``true`` or ``yes`` in any case; anything else is false."""
    return value.lower() in ("true", "yes")


def ugr_long(value: str) -> int:
    """UGR's GetLong (``atol``): the leading integer, 0 when there is none."""
    match = _LONG.match(value)
    return int(match.group(1)) if match else 0


def shown_value(line: Line) -> str:
    """The value as printed in the report: secrets written inline are not shown."""
    if line.name.endswith(_SECRET_KEYS) and not line.has_env:
        return "<secret, not shown>"
    return line.value


@dataclass(frozen=True)
class Unmapped:
    where: str
    order: int
    text: str
    reason: str


class Report:
    """What the import did not map, the defaults it applied, and what works differently."""

    def __init__(self) -> None:
        self.unmapped: list[Unmapped] = []
        self.notes: list[str] = []
        self.defaults: list[str] = []

    def render(self, summary: str) -> str:
        out = [f"geofed import-dynafed: {summary}"]
        if self.defaults:
            out.append("Dynafed code defaults applied (for keys the files do not set):")
            out.extend(f"  {text}" for text in self.defaults)
        if self.notes:
            out.append("Notes:")
            out.extend(f"  {text}" for text in self.notes)
        if self.unmapped:
            out.append(f"Not mapped ({len(self.unmapped)}):")
            for item in sorted(self.unmapped, key=lambda u: u.order):
                out.append(f"  {item.where}: {item.text} -- {item.reason}")
        else:
            out.append("Not mapped: nothing; every line was mapped.")
        return "\n".join(out) + "\n"


class Context:
    """The configuration, the report, and getters that read values the way UGR reads them."""

    def __init__(self, config: DynafedConfig) -> None:
        self.cfg = config
        self.report = Report()
        self._reported: set[int] = set()

    def unmapped(self, line: Line, reason: str) -> None:
        """Report a line as not mapped (once) and mark it accounted for."""
        self.cfg.use(line)
        if line.order in self._reported:
            return
        self._reported.add(line.order)
        self.report.unmapped.append(
            Unmapped(line.where, line.order, f"{line.key}: {shown_value(line)}", reason)
        )

    def is_reported(self, line: Line) -> bool:
        return line.order in self._reported

    def unmapped_text(self, where: str, order: int, text: str, reason: str) -> None:
        self.report.unmapped.append(Unmapped(where, order, text, reason))

    def note(self, text: str) -> None:
        if text not in self.report.notes:
            self.report.notes.append(text)

    def default(self, text: str) -> None:
        if text not in self.report.defaults:
            self.report.defaults.append(text)

    def get_bool(self, line: Line | None, default: bool) -> bool:
        if line is None:
            return default
        self.cfg.use(line)
        if line.has_env:
            self.unmapped(
                line, f"its value comes from the environment, which the import does not read; used {default}"
            )
            return default
        if line.value.lower() not in ("true", "yes", "false", "no"):
            self.note(
                f"{line.where}: {line.key}: {line.value!r} is false, as UGR reads it (only true and yes are "
                "true)"
            )
        return ugr_bool(line.value)

    def get_long(self, line: Line | None, default: int) -> int:
        if line is None:
            return default
        self.cfg.use(line)
        if line.has_env:
            self.unmapped(
                line, f"its value comes from the environment, which the import does not read; used {default}"
            )
            return default
        value = ugr_long(line.value)
        if not re.fullmatch(r"[+-]?\d+", line.value):
            self.note(f"{line.where}: {line.key}: {line.value!r} is read as {value}, as UGR reads it (atol)")
        return value


def duration(seconds: float) -> str:
    """A geofed duration string: ``30s``, ``1500ms``."""
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    millis = seconds * 1000
    if millis == int(millis):
        return f"{int(millis)}ms"
    return f"{seconds}s"
