"""Run a real geofed server (the full aiohttp application) in a background thread on loopback.

Tests then talk to it over real TCP with real clients (curl, davix, gfal2), from the test thread,
while the server's event loop runs undisturbed in its own thread. The port is chosen by the OS.
"""

from __future__ import annotations

import asyncio
import io
import threading
from collections.abc import Callable, Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

from aiohttp import web

from geofed.app import ACCESS_LOG_KEY, FEDERATION_KEY, build_app
from geofed.auth.tlsctx import server_context
from geofed.config import Settings
from geofed.runtime import Federation

T = TypeVar("T")


class GeofedServer:
    """A started geofed; ``url`` is its base URL, ``federation`` its live state (for assertions)."""

    def __init__(self, settings: Settings, host: str = "127.0.0.1", *, probe_first: bool = True) -> None:
        self.settings = settings
        self.probe_first = probe_first
        self.host = host
        self.access_log = io.StringIO()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="geofed-server", daemon=True)
        self._runner: web.AppRunner | None = None
        self.port = 0

    def __enter__(self) -> GeofedServer:
        self._thread.start()
        self.call(self._start())
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        scheme = "https" if self.settings.server.tls is not None else "http"
        return f"{scheme}://{self.host}:{self.port}"

    @property
    def federation(self) -> Federation:
        assert self._runner is not None
        return self._runner.app[FEDERATION_KEY]

    def flush_access_log(self) -> str:
        """Everything the access log has recorded so far (flushed on the server's loop first)."""

        def flush() -> None:
            if self._runner is not None and ACCESS_LOG_KEY in self._runner.app:
                self._runner.app[ACCESS_LOG_KEY].flush()

        self.run(flush)
        return self.access_log.getvalue()

    def call(self, coro: Coroutine[Any, Any, T], timeout: float = 30) -> T:
        """Run a coroutine on the server's loop and wait for its result."""
        future: Future[T] = asyncio.run_coroutine_threadsafe(coro, self._loop)
        return future.result(timeout)

    def run(self, fn: Callable[[], T]) -> T:
        """Run a plain function on the server's loop (to touch its state safely)."""

        async def wrapper() -> T:
            return fn()

        return self.call(wrapper())

    async def _start(self) -> None:
        app = build_app(self.settings, access_stream=self.access_log, probe_first=self.probe_first)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        tls = self.settings.server.tls
        site = web.TCPSite(self._runner, self.host, 0, ssl_context=server_context(tls) if tls else None)
        await site.start()
        server = site._server
        assert server is not None and server.sockets
        self.port = server.sockets[0].getsockname()[1]

    @staticmethod
    async def _cancel_leftovers() -> None:
        """End connection tasks that outlived the runner, so the loop closes cleanly."""
        current = asyncio.current_task()
        leftovers = [t for t in asyncio.all_tasks() if t is not current]
        for task in leftovers:
            task.cancel()
        await asyncio.gather(*leftovers, return_exceptions=True)

    def stop(self) -> None:
        if self._runner is not None:
            self.call(self._runner.cleanup())
            self._runner = None
            self.call(self._cancel_leftovers())
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)
        if not self._loop.is_closed() and not self._loop.is_running():
            self._loop.close()
