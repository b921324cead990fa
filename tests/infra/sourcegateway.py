"""A TCP relay that gives a client a source address it cannot choose itself (a site's NAT gateway).

gfal2 (davix/neon) has no option to bind a local address, and on loopback the kernel picks
127.0.0.1 as the source of every connection, so a server cannot tell gfal2 "jobs" at different
sites apart. A :class:`SourceGateway` listens on 127.0.0.1 and opens each upstream connection from
``source`` (e.g. 127.0.2.10, a client network the federation places in Vancouver): the server sees
that address as the TCP peer, exactly as it would see a site's NAT. Bytes are relayed unchanged
(TLS passes through end to end; the server still checks the client's certificate), half-closes are
forwarded, and nothing is trusted on the server side: no ``X-Forwarded-For``.

It runs its own event loop in a daemon thread and stops (closing every relayed connection) on exit.
"""

from __future__ import annotations

import asyncio
import threading

CHUNK = 65536


class SourceGateway:
    def __init__(self, target_host: str, target_port: int, source: str) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.source = source
        self.port = 0
        self.connections = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name=f"gateway-{source}", daemon=True)
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()

    def __enter__(self) -> SourceGateway:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(10)
        return self

    def __exit__(self, *exc: object) -> None:
        asyncio.run_coroutine_threadsafe(self._stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    async def _start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    async def _stop(self) -> None:
        if self._server is not None:
            self._server.close()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._tasks.add(task)
        self.connections += 1
        try:
            try:
                up_reader, up_writer = await asyncio.open_connection(
                    self.target_host, self.target_port, local_addr=(self.source, 0)
                )
            except OSError:
                writer.close()
                return
            try:
                await asyncio.gather(self._pipe(reader, up_writer), self._pipe(up_reader, writer))
            finally:
                up_writer.close()
        except asyncio.CancelledError:
            pass  # stopped by _stop: end quietly (a cancelled connection task would be logged)
        finally:
            self._tasks.discard(task)
            writer.close()

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while chunk := await reader.read(CHUNK):
                writer.write(chunk)
                await writer.drain()
            if writer.can_write_eof():
                writer.write_eof()
        except (ConnectionError, OSError):
            writer.close()  # a reset on one side ends the relay in both directions
