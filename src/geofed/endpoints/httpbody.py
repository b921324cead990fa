"""Reading endpoint answers over HTTP with a size cap, shared by the HTTP-based endpoint kinds.

A storage server's answer (a listing, an error document) is untrusted input: a runaway or hostile
server must not make geofed read without bound. Past the cap the connection is dropped.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import aiohttp

CHUNK_SIZE = 64 * 1024


async def capped_chunks(
    response: aiohttp.ClientResponse, limit: int, too_large: Callable[[], Exception]
) -> AsyncIterator[bytes]:
    """The body's chunks as they arrive; ``too_large()`` is raised once more than ``limit`` came."""
    seen = 0
    async for chunk in response.content.iter_chunked(CHUNK_SIZE):
        seen += len(chunk)
        if seen > limit:
            response.close()
            raise too_large()
        yield chunk


async def window(
    content: aiohttp.StreamReader, chunk_size: int, skip: int, length: int | None
) -> AsyncIterator[bytes]:
    """The body's bytes after the first ``skip`` (a server that ignored ``Range`` sends them),
    at most ``length`` of them, in chunks of at most ``chunk_size``: ranged reads of every kind."""
    remaining = length
    async for chunk in content.iter_chunked(chunk_size):
        if skip:
            if len(chunk) <= skip:
                skip -= len(chunk)
                continue
            chunk, skip = chunk[skip:], 0
        if remaining is not None:
            if len(chunk) >= remaining:
                yield chunk[:remaining]
                return
            remaining -= len(chunk)
        yield chunk
