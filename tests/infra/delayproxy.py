"""TCP proxy on loopback that adds a fixed one-way latency, to make local servers look "far away".

The test machine's kernel has no ``netem`` qdisc, so WAN latency is simulated in user space: every
chunk read from one side is forwarded to the other side ``--one-way-ms`` after it arrived, in order,
in both directions. Opening the upstream connection is delayed by one round trip (2 x one-way), like
a TCP handshake to a distant site, so a fresh request/response costs about 4 x one-way and a request
on a kept-alive connection about 2 x one-way.

Half-closes are forwarded (EOF from one side becomes ``write_eof`` on the other, after the same
delay), so HTTP ``Connection: close`` and clients that shut down their sending side behave as on a
real network. A reset on either side tears the whole proxied connection down.

Usage::

    python delayproxy.py --listen-port 18090 --target-host 127.0.0.1 --target-port 18080 --one-way-ms 25

The script prints nothing; readiness is "the listening port accepts connections". SIGTERM/SIGINT
stop it with exit status 0.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import time
from dataclasses import dataclass

CHUNK_SIZE = 65536
# Chunks in flight per direction. Bounding the queue gives back-pressure (a slow receiver slows
# the sender, as a TCP window would) instead of buffering a whole large transfer in memory.
MAX_CHUNKS_IN_FLIGHT = 1024


@dataclass(frozen=True)
class ProxyConfig:
    """Where to listen, where to forward, and the one-way delay in seconds."""

    listen_host: str
    listen_port: int
    target_host: str
    target_port: int
    delay_s: float


async def _forward(src: asyncio.StreamReader, dst: asyncio.StreamWriter, delay_s: float) -> None:
    """Copy ``src`` to ``dst``, releasing each chunk ``delay_s`` after it was read.

    A reader task stamps chunks with their due time and a writer task releases them in order, so
    the delay does not depend on chunk size and consecutive chunks overlap in flight (latency, not
    a bandwidth cap). An empty chunk marks EOF and is forwarded as a half-close.
    """
    queue: asyncio.Queue[tuple[float, bytes]] = asyncio.Queue(maxsize=MAX_CHUNKS_IN_FLIGHT)

    async def read_side() -> None:
        while chunk := await src.read(CHUNK_SIZE):
            await queue.put((time.monotonic() + delay_s, chunk))
        await queue.put((time.monotonic() + delay_s, b""))

    async def write_side() -> None:
        while True:
            due, chunk = await queue.get()
            wait = due - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
            if not chunk:
                if dst.can_write_eof() and not dst.is_closing():
                    dst.write_eof()
                return
            dst.write(chunk)
            await dst.drain()

    # TaskGroup: if the writer fails (peer reset), the reader is cancelled instead of hanging.
    async with asyncio.TaskGroup() as group:
        group.create_task(read_side())
        group.create_task(write_side())


async def _close(writer: asyncio.StreamWriter) -> None:
    """Close a stream, ignoring errors from a peer that is already gone."""
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


async def _handle(
    config: ProxyConfig, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter
) -> None:
    """Serve one client connection: delayed upstream connect, then delayed copying both ways."""
    # A TCP handshake to a distant site costs one round trip before any byte can flow.
    await asyncio.sleep(2 * config.delay_s)
    try:
        upstream_reader, upstream_writer = await asyncio.open_connection(
            config.target_host, config.target_port
        )
    except OSError:
        # Upstream down: the client sees its connection closed, as with a refused connection.
        await _close(client_writer)
        return
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(_forward(client_reader, upstream_writer, config.delay_s))
            group.create_task(_forward(upstream_reader, client_writer, config.delay_s))
    except* OSError:
        pass  # a reset on either side ends the proxied connection; nothing else to do
    finally:
        await _close(client_writer)
        await _close(upstream_writer)


async def serve(config: ProxyConfig) -> None:
    """Listen until SIGTERM or SIGINT, then stop accepting and return."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)

    # Track connection handlers so shutdown can cancel them: from Python 3.12 on,
    # Server.wait_closed() waits for open connections, which would make SIGTERM hang.
    handlers: set[asyncio.Task[None]] = set()

    async def on_connect(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            await _handle(config, reader, writer)
        except asyncio.CancelledError:
            # Only shutdown cancels handlers. Ending normally keeps Python 3.11's stream callback
            # (which calls task.exception() on the finished task) from logging a traceback.
            await _close(writer)
        finally:
            handlers.discard(task)

    server = await asyncio.start_server(on_connect, config.listen_host, config.listen_port)
    await stop.wait()
    server.close()
    for task in list(handlers):
        task.cancel()
    await asyncio.gather(*handlers, return_exceptions=True)
    await server.wait_closed()


def parse_args(argv: list[str] | None = None) -> ProxyConfig:
    """Parse the command line into a :class:`ProxyConfig`."""
    parser = argparse.ArgumentParser(description="TCP proxy adding a fixed one-way delay.")
    parser.add_argument("--listen-host", default="127.0.0.1")
    parser.add_argument("--listen-port", type=int, required=True)
    parser.add_argument("--target-host", required=True)
    parser.add_argument("--target-port", type=int, required=True)
    parser.add_argument("--one-way-ms", type=float, required=True)
    args = parser.parse_args(argv)
    if args.one_way_ms < 0:
        parser.error("--one-way-ms must be >= 0")
    return ProxyConfig(
        listen_host=args.listen_host,
        listen_port=args.listen_port,
        target_host=args.target_host,
        target_port=args.target_port,
        delay_s=args.one_way_ms / 1000.0,
    )


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the proxy until signalled."""
    asyncio.run(serve(parse_args(argv)))


if __name__ == "__main__":
    main()
