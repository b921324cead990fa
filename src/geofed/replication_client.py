"""The client side of bulk replication, for ``geofed replicate``: start a job in a running geofed
(:mod:`geofed.replication`), follow it with a progress bar, print its report.

The progress bar is drawn with `rich` when it is installed, else with ``click.progressbar``, on
standard error (the report goes to standard output). Ctrl-C cancels the job in geofed and prints what
it did so far.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any, TextIO

import click

from geofed.control import AdminClient, ControlError, human_size

POLL_S = 0.5
RETRIES = 10
"""Polls in a row that may fail (geofed restarting its workers, a network hiccup) before giving up."""


class ReplicationFailed(Exception):
    """The job could not be started or followed; the message says why."""


def read_paths(paths: Iterable[str], lines: Iterable[str] | None) -> list[str]:
    """The paths given, then those of ``lines`` (one a line; blank lines and ``#`` comments skipped),
    each once, in order."""
    found: dict[str, None] = dict.fromkeys(p.strip() for p in paths if p.strip())
    for line in lines or ():
        text = line.strip()
        if text and not text.startswith("#"):
            found[text] = None
    return list(found)


def rich_available() -> bool:
    return importlib.util.find_spec("rich") is not None


# -- the progress display -------------------------------------------------------------------------


def _current_text(status: dict[str, Any]) -> str:
    items = status.get("current") or []
    if not items:
        return "finding files" if status.get("walking") else ""
    first = items[0]
    size = first.get("size")
    moved = f" {human_size(first.get('bytes'))}/{human_size(size)}" if size else ""
    more = f" (+{len(items) - 1} more)" if len(items) > 1 else ""
    return f"{first['action']} {first['path']}{moved}{more}"


def _shown(item: str | None) -> str | None:
    return item


class _ClickBar:
    """``click.progressbar`` over the files found so far (its length grows while geofed walks)."""

    def __init__(self, label: str, stream: TextIO) -> None:
        self._bar: Any = click.progressbar(
            length=1,
            label=label,
            file=stream,
            show_pos=True,
            show_eta=False,
            item_show_func=_shown,
        )
        self._bar.__enter__()

    def update(self, status: dict[str, Any]) -> None:
        counts = status["counts"]
        bar = self._bar
        length = max(1, counts["found"])
        if length != bar.length:
            bar.length = length
            bar.finished = bar.pos >= length
        bar.update(max(0, counts["handled"] - bar.pos), _current_text(status))
        bar.render_progress()

    def close(self) -> None:
        self._bar.__exit__(None, None, None)


class _RichBar:
    """A rich progress bar: files handled of those found, bytes copied, the file being copied."""

    def __init__(self, label: str, stream: TextIO) -> None:
        progress_module = importlib.import_module("rich.progress")
        console_module = importlib.import_module("rich.console")
        console = console_module.Console(file=stream)
        self._progress: Any = progress_module.Progress(
            progress_module.SpinnerColumn(),
            progress_module.TextColumn("[bold]{task.description}"),
            progress_module.BarColumn(),
            progress_module.MofNCompleteColumn(),
            progress_module.TextColumn("{task.fields[copied]}"),
            progress_module.TimeElapsedColumn(),
            progress_module.TextColumn("{task.fields[now]}"),
            console=console,
            transient=False,
        )
        self._progress.start()
        self._task = self._progress.add_task(label, total=None, copied="", now="")

    def update(self, status: dict[str, Any]) -> None:
        counts = status["counts"]
        self._progress.update(
            self._task,
            total=None if status.get("walking") and not counts["found"] else counts["found"],
            completed=counts["handled"],
            copied=human_size(status["bytes"]["copied"]),
            now=_current_text(status),
        )

    def close(self) -> None:
        self._progress.stop()


def _display(label: str, stream: TextIO) -> _ClickBar | _RichBar:
    if rich_available():
        try:
            return _RichBar(label, stream)
        except (ImportError, AttributeError):  # an old rich without these columns
            pass
    return _ClickBar(label, stream)


# -- running a job ------------------------------------------------------------------------------


def run_job(
    client: AdminClient,
    body: dict[str, Any],
    *,
    progress: bool = True,
    stream: TextIO | None = None,
    poll: float = POLL_S,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any]:
    """Start the job, follow it to its end, and return its full status document (with every item).
    ReplicationFailed when it cannot be started or followed."""
    try:
        _status, answer = client.call("POST", "/replicate", body)
    except ControlError as exc:
        raise ReplicationFailed(str(exc)) from None
    job = str(answer["id"])
    if not answer.get("new", True):
        click.echo(f"geofed: the same job is already running ({job}); following it", err=True)
    display = _display(f"replicate to {body['to']}", stream or sys.stderr) if progress else None
    try:
        failures = 0
        while True:
            try:
                _status, status = client.call("GET", f"/replicate/{job}?items=0")
                failures = 0
            except ControlError as exc:
                failures += 1
                if failures > RETRIES:
                    raise ReplicationFailed(f"lost job {job}: {exc}") from None
                sleep(poll)
                continue
            if display is not None:
                display.update(status)
            if status["state"] != "running":
                break
            sleep(poll)
    except KeyboardInterrupt:
        if display is not None:
            display.close()
            display = None
        click.echo(f"\ngeofed: interrupted: cancelling job {job}", err=True)
        try:
            client.call("POST", f"/replicate/{job}/cancel")
        except ControlError as exc:
            click.echo(f"geofed: could not cancel job {job}: {exc}", err=True)
    finally:
        if display is not None:
            display.close()
    try:
        return client.call("GET", f"/replicate/{job}")[1]
    except ControlError as exc:
        raise ReplicationFailed(f"cannot fetch the report of job {job}: {exc}") from None


def succeeded(status: dict[str, Any]) -> bool:
    """Nothing failed, and the job ran to its end."""
    return status["state"] == "finished" and not status["counts"]["failed"]


def render_report(status: dict[str, Any]) -> str:
    """The final report: a summary line, then each file done, skipped and failed, with its reason."""
    counts = status["counts"]
    request = status["request"]
    state = "" if status["state"] == "finished" else f" ({status['state']})"
    lines = [
        f"replicate to {request['to']}{state}: {counts['done']} done, {counts['skipped']} skipped, "
        f"{counts['failed']} failed; {human_size(status['bytes']['copied'])} copied in "
        f"{status['seconds']:.1f} s (job {status['id']})"
    ]
    for section in ("done", "skipped", "failed"):
        items = status.get(section) or []
        if items:
            lines.append(f"{section}:")
            lines.extend(f"  {item['path']}: {item['reason']}" for item in items)
    return "\n".join(lines) + "\n"


def render_json(status: dict[str, Any]) -> str:
    return json.dumps(status, indent=2) + "\n"
