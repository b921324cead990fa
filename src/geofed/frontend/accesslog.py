"""Per-request records, taken without slowing the request down, and the access log made of them.

On the request path a record is only a tuple appended to a list (:class:`RequestEvents`); a
background task hands the batch to its consumers every 20 ms: the access log (:class:`AccessLogWriter`,
when ``server.access_log`` is on) and the metrics (``geofed.metrics``), which count requests,
redirects and locate times from the same tuples. Formatting, a synchronous write, a
logging.Handler or a metrics update per request would cost more than the federation logic itself
on a warm redirect.

A record: ``(time, method, path, client, identity, status, decision, endpoint, locate_seconds)``.

Text format (space separated, ``-`` for unknown)::

    2026-11-26T01:02:03Z client identity METHOD /path status decision endpoint locate_ms

JSON format (``server.access_log_format: json``), one object per line, the same fields::

    {"time": "2026-11-26T01:02:03.042Z", "client": "127.0.0.1", "identity": null, "method": "GET",
     "path": "/a b", "status": 302, "decision": "redirect", "endpoint": "cern", "locate_ms": 0.0}
"""

from __future__ import annotations

import asyncio
import contextlib
import json.encoder
import logging
import re
import sys
import time
from collections.abc import Callable, Iterable
from typing import Literal, TextIO
from urllib.parse import quote

Record = tuple[float, str, str, str | None, str | None, int, str, str | None, float | None]
Consumer = Callable[[list[Record]], None]
"""Gets each batch of records, in order; must not keep the list (it is reused)."""

_MAX_PENDING = 1024
_PLAIN_PATH = re.compile(r"[A-Za-z0-9/._~+-]*")
_json_string: Callable[[str], str] = json.encoder.encode_basestring_ascii  # the C encoder: quoted, escaped

log = logging.getLogger("geofed.accesslog")


class RequestEvents:
    """The stream of per-request records, delivered in batches to every consumer."""

    def __init__(self, consumers: Iterable[Consumer] = (), flush_interval: float = 0.02) -> None:
        self._consumers = list(consumers)
        self._records: list[Record] = []
        self._interval = flush_interval
        self._task: asyncio.Task[None] | None = None

    def add_consumer(self, consumer: Consumer) -> None:
        self._consumers.append(consumer)

    def record(
        self,
        method: str,
        path: str,
        client: str | None,
        identity: str | None,
        status: int,
        decision: str,
        endpoint: str | None,
        locate_seconds: float | None,
    ) -> None:
        self._records.append(
            (time.time(), method, path, client, identity, status, decision, endpoint, locate_seconds)
        )
        if len(self._records) >= _MAX_PENDING:
            self.flush()

    def appender(self) -> Callable[[Record], None]:
        """The raw append for the hottest caller: it builds the record tuple itself (saves a call);
        the background flusher bounds the backlog."""
        return self._records.append

    def flush(self) -> None:
        """Hand every pending record to the consumers now (also before a metrics scrape)."""
        if not self._records:
            return
        records = self._records.copy()
        self._records.clear()  # the same list object: ``append`` handed out by appender() stays valid
        for consumer in self._consumers:
            try:
                consumer(records)
            except Exception:  # one consumer's bug must not lose the others' records
                log.exception("request records: %r failed", consumer)

    def start(self) -> None:
        self._task = asyncio.create_task(self._flusher())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self.flush()

    async def _flusher(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            self.flush()


AccessLog = RequestEvents
"""The name the request handlers take the record sink by."""


class AccessLogWriter:
    """A consumer of :class:`RequestEvents`: formats a batch and writes it in one ``write``."""

    def __init__(self, stream: TextIO | None = None, format: Literal["text", "json"] = "text") -> None:
        self._stream = stream or sys.stderr
        self._format = self._json_lines if format == "json" else self._text_lines
        self._stamp_second = -1
        self._stamp = ""

    def __call__(self, records: list[Record]) -> None:
        text = self._format(records)
        with contextlib.suppress(OSError, ValueError):  # a closed stream loses lines, never a request
            self._stream.write(text)
            self._stream.flush()

    def _stamp_of(self, when: float) -> str:
        """``YYYY-MM-DDTHH:MM:SS`` of ``when`` (UTC), formatted once per second."""
        second = int(when)
        if second != self._stamp_second:
            self._stamp_second = second
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return self._stamp

    def _text_lines(self, records: list[Record]) -> str:
        lines = []
        stamp_second, stamp = self._stamp_second, self._stamp
        for when, method, path, client, identity, status, decision, endpoint, locate in records:
            if int(when) != stamp_second:
                stamp = self._stamp_of(when)
                stamp_second = self._stamp_second
            shown_path = path if _PLAIN_PATH.fullmatch(path) else quote(path)
            locate_text = "-" if locate is None else f"{locate * 1000:.1f}ms"
            lines.append(
                f"{stamp}Z {client or '-'} {identity or '-'} {method} {shown_path} {status} "
                f"{decision} {endpoint or '-'} {locate_text}\n"
            )
        return "".join(lines)

    def _json_lines(self, records: list[Record]) -> str:
        lines = []
        stamp_second, stamp = self._stamp_second, self._stamp
        for when, method, path, client, identity, status, decision, endpoint, locate in records:
            if int(when) != stamp_second:
                stamp = self._stamp_of(when)
                stamp_second = self._stamp_second
            milliseconds = min(999, int((when - stamp_second) * 1000))
            locate_ms = "null" if locate is None else repr(round(locate * 1000, 3))
            lines.append(
                f'{{"time": "{stamp}.{milliseconds:03d}Z", "client": {_optional(client)}, '
                f'"identity": {_identity(identity)}, "method": {_json_string(method)}, '
                f'"path": {_json_string(path)}, "status": {status:d}, "decision": {_json_string(decision)}, '
                f'"endpoint": {_optional(endpoint)}, "locate_ms": {locate_ms}}}\n'
            )
        return "".join(lines)


def _optional(value: str | None) -> str:
    return "null" if value is None else _json_string(value)


def _identity(label: str | None) -> str:
    """The identity label; an anonymous client (``-`` in the text format) is null."""
    return "null" if label is None or label == "-" else _json_string(label)
