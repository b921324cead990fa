"""One access-log line per request, written without slowing the request down.

Lines are formatted on the request path (a single f-string) and flushed to the stream in batches
by a background task, because a synchronous write or a logging.Handler per request costs more than
the federation logic itself on a warm redirect.

Format (space separated, ``-`` for unknown)::

    2026-11-26T01:02:03Z client identity METHOD /path status decision endpoint locate_ms
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from typing import TextIO
from urllib.parse import quote


class AccessLog:
    def __init__(self, stream: TextIO | None = None, flush_interval: float = 0.5) -> None:
        self._stream = stream or sys.stderr
        self._lines: list[str] = []
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
        now = int(time.time())
        if now != self._stamp_second:
            self._stamp_second = now
            self._stamp = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(now))
        locate = "-" if locate_seconds is None else f"{locate_seconds * 1000:.1f}ms"
        self._lines.append(
            f"{self._stamp} {client or '-'} {identity or '-'} {method} {quote(path)} {status} "
            f"{decision} {endpoint or '-'} {locate}\n"
        )
        if len(self._lines) >= 4096:
            self.flush()

    def flush(self) -> None:
        if self._lines:
            lines, self._lines = self._lines, []
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
