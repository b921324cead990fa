"""Versions of everything measured, and plain-text tables for the results."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence

import aiohttp

import geofed
from bench.procs import require


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile (no interpolation), fine for the small samples here."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(fraction * (len(ordered) - 1))))
    return ordered[index]


def _first_line(argv: list[str]) -> str:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=10, check=False)
    return (proc.stdout + proc.stderr).strip().splitlines()[0]


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
            for line in cpuinfo:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def aiohttp_parser() -> str:
    """Whether aiohttp runs its C HTTP parser (the fast path) or the pure-Python fallback."""
    from aiohttp import http_parser

    c_parser = getattr(http_parser, "HttpRequestParserC", None)
    return (
        "C parser" if c_parser is not None and http_parser.HttpRequestParser is c_parser else "Python parser"
    )


def versions() -> list[tuple[str, str]]:
    return [
        ("python", f"{platform.python_version()} ({sys.executable})"),
        ("aiohttp", f"{aiohttp.__version__} ({aiohttp_parser()})"),
        ("uvloop", importlib.metadata.version("uvloop")),
        ("geofed", geofed.__version__),
        ("nginx", _first_line([require("nginx"), "-v"]).removeprefix("nginx version: ")),
        ("wrk", _first_line([require("wrk"), "-v"]).split(" Copyright")[0]),
        ("kernel", platform.release()),
        ("cpu", f"{_cpu_model()} x {os.cpu_count()}"),
    ]


def table(headers: Sequence[str], rows: Sequence[Sequence[str]], title: str = "") -> str:
    """A left-aligned first column, right-aligned numbers, a rule under the headers."""
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]
    lines = [title] if title else []

    def render(cells: Sequence[str]) -> str:
        out = [str(cells[0]).ljust(widths[0])]
        out += [str(cell).rjust(width) for cell, width in zip(cells[1:], widths[1:], strict=True)]
        return "  ".join(out).rstrip()

    lines.append(render(headers))
    lines.append("  ".join("-" * width for width in widths))
    lines += [render(row) for row in rows]
    return "\n".join(lines)


def _cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies over all CPUs, from /proc/stat."""
    with open("/proc/stat", encoding="ascii") as stat:
        fields = [int(x) for x in stat.readline().split()[1:]]
    idle = fields[3] + fields[4]  # idle + iowait
    return sum(fields) - idle, sum(fields)


def machine_busy(seconds: float = 1.0) -> float:
    """Share of all CPUs busy over ``seconds`` while we do nothing: other tenants' load (0..1)."""
    busy0, total0 = _cpu_times()
    time.sleep(seconds)
    busy1, total1 = _cpu_times()
    return (busy1 - busy0) / max(1, total1 - total0)


def verdict(ratio: float, target: float, higher_is_better: bool) -> str:
    ok = ratio >= target if higher_is_better else ratio <= target
    sign = ">=" if higher_is_better else "<="
    return f"target {sign} {target:g}: {'met' if ok else 'MISSED'}"


def commands_and_problems(commands: dict[str, str], problems: list[str]) -> list[str]:
    """The closing lines of a benchmark report: how each process was started, and any problem."""
    lines = ["  commands:", *(f"    {name:<13} {command}" for name, command in commands.items())]
    if problems:
        lines.append("  PROBLEMS:")
        lines += [f"    {p}" for p in problems]
    return lines
