"""Streaming a client's upload to an endpoint, for clients that cannot follow a PUT redirect there.

Redirecting uploads keeps bulk data off geofed, and is the default. Some client and store
pairings break on it: davix 0.8 follows a redirect to an Azure SAS URL with its block upload,
stores the blob, and then fails on its own bookkeeping ("No request started"), so gfal2 and davix
users would see failed uploads that in fact landed. For the User-Agents an endpoint lists,
geofed reads the body itself, in fixed-size chunks (bounded memory), and hands them to the
endpoint's ``upload``, which makes the object visible only when complete.
"""

from __future__ import annotations

import functools
import re
from collections.abc import AsyncIterator

from aiohttp import web

from geofed.config import EndpointSettings
from geofed.endpoints.base import Endpoint
from geofed.errors import BadRequest

CHUNK_BYTES = 8 * 1024 * 1024


@functools.lru_cache(maxsize=256)
def _compiled(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    return re.compile("|".join(f"(?:{p})" for p in patterns)) if patterns else None


def wants_proxy(endpoint: Endpoint, user_agent: str) -> bool:
    """True when uploads from this client to this endpoint are streamed through geofed."""
    if not endpoint.capabilities.upload_stream:
        return False
    settings: EndpointSettings = endpoint.settings
    pattern = _compiled(settings.upload_proxy_patterns)
    return pattern is not None and pattern.search(user_agent) is not None


async def stream_upload(request: web.Request, endpoint: Endpoint, endpoint_path: str) -> int:
    """Pass the request body to ``endpoint.upload``; the number of bytes stored.

    A body shorter than its Content-Length, or a client that goes away, aborts the upload before
    anything becomes visible.
    """
    expected = request.content_length
    received = 0

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal received
        buffer = bytearray()
        try:
            while block := await request.content.read(CHUNK_BYTES - len(buffer)):
                buffer += block
                received += len(block)
                if len(buffer) >= CHUNK_BYTES:
                    yield bytes(buffer)
                    buffer.clear()
        except ConnectionError as exc:
            raise BadRequest(f"upload interrupted after {received} bytes; nothing was stored") from exc
        if expected is not None and received != expected:
            raise BadRequest(f"received {received} bytes of the {expected} declared; nothing was stored")
        if buffer or received == 0:
            yield bytes(buffer)

    await endpoint.upload(endpoint_path, chunks())
    return received
