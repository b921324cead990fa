"""One access-log line per request, written without slowing the request down.

On the request path a record is only a tuple appended to a list; a background task formats the
lines and writes them in batches, because formatting, a synchronous write or a logging.Handler per
request would cost more than the federation logic itself on a warm redirect.

Format (space separated, ``-`` for unknown)::

    2026-11-26T01:02:03Z client identity METHOD /path status decision endpoint locate_ms
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
import time
from collections.abc import Callable
from typing import TextIO
from urllib.parse import quote

_Record = tuple[float, str, str, str | None, str | None, int, str, str | None, float | None]
_MAX_PENDING = 1024
_PLAIN_PATH = re.compile(r"[A-Za-z0-9/._~+-]*")


class AccessLog:
    def __init__(self, stream: TextIO | None = None, flush_interval: float = 0.02) -> None:
        self._stream = stream or sys.stderr
        self._records: list[_Record] = []
        self._interval = flush_interval
        self._task: asyncio.Task[None] | None = None
        self._stamp_second = -1
        self._stamp = ""

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

    def appender(self) -> Callable[[_Record], None]:
        """The raw append for the hottest caller: it builds the record tuple itself (saves a call);
        the background flusher bounds the backlog."""
        return self._records.append

    def flush(self) -> None:
        if not self._records:
            return
        records = self._records.copy()
        self._records.clear()  # the same list object: ``append`` handed out by appender() stays valid
        lines = []
        for when, method, path, client, identity, status, decision, endpoint, locate in records:
            second = int(when)
            if second != self._stamp_second:
                self._stamp_second = second
                self._stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(second))
            shown_path = path if _PLAIN_PATH.fullmatch(path) else quote(path)
            locate_text = "-" if locate is None else f"{locate * 1000:.1f}ms"
            lines.append(
                f"{self._stamp} {client or '-'} {identity or '-'} {method} {shown_path} {status} "
                f"{decision} {endpoint or '-'} {locate_text}\n"
            )
        with contextlib.suppress(OSError, ValueError):
            self._stream.write("".join(lines))
            self._stream.flush()

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
