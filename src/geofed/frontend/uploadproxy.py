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

from geofed import metrics
from geofed.checksums import MultiHasher, compare
from geofed.config import EndpointSettings, ProxySettings
from geofed.endpoints.base import Endpoint
from geofed.errors import BadRequest

CHUNK_BYTES = 8 * 1024 * 1024


@functools.lru_cache(maxsize=256)
def _compiled(patterns: tuple[str, ...]) -> re.Pattern[str] | None:
    return re.compile("|".join(f"(?:{p})" for p in patterns)) if patterns else None


def proxy_mode(settings: ProxySettings, user_agent: str, path: str, via_prefix: bool) -> bool:
    """True when the federation-wide ``proxy`` settings say this client's transfers of ``path``
    are streamed through geofed (Rucio's webdav protocol, rclone, or a ``/proxy/…`` URL)."""
    if via_prefix:
        return True
    pattern = _compiled(settings.user_agents)
    if pattern is not None and pattern.search(user_agent) is not None:
        return True
    return any(p == "/" or path == p or path.startswith(p + "/") for p in settings.path_prefixes)


def wants_proxy(endpoint: Endpoint, user_agent: str, forced: bool = False) -> bool:
    """True when uploads from this client to this endpoint are streamed through geofed: proxy
    mode (``forced``), or a User-Agent the endpoint lists (davix to Azure)."""
    if not endpoint.capabilities.upload_stream:
        return False
    if forced:
        return True
    settings: EndpointSettings = endpoint.settings
    pattern = _compiled(settings.upload_proxy_patterns)
    return pattern is not None and pattern.search(user_agent) is not None


async def stream_upload(
    request: web.Request, endpoint: Endpoint, endpoint_path: str, claims: dict[str, str] | None = None
) -> int:
    """Pass the request body to ``endpoint.upload``; the number of bytes stored.

    A body shorter than its Content-Length, or a client that goes away, aborts the upload before
    anything becomes visible. ``claims`` (checksums the client declared) are checked against the
    bytes before the last chunk is handed over, so a mismatch aborts the upload too.
    """
    expected = request.content_length
    received = 0
    hasher = MultiHasher(tuple(claims)) if claims else None

    async def chunks() -> AsyncIterator[bytes]:
        nonlocal received
        buffer = bytearray()
        try:
            while block := await request.content.read(CHUNK_BYTES - len(buffer)):
                buffer += block
                received += len(block)
                if len(buffer) >= CHUNK_BYTES:
                    if hasher is not None:
                        hasher.update(bytes(buffer))
                    yield bytes(buffer)
                    buffer.clear()
        except ConnectionError as exc:
            raise BadRequest(f"upload interrupted after {received} bytes; nothing was stored") from exc
        if expected is not None and received != expected:
            raise BadRequest(f"received {received} bytes of the {expected} declared; nothing was stored")
        if hasher is not None and claims:
            hasher.update(bytes(buffer))
            mismatches = compare(claims, hasher.hexdigests())
            if mismatches:
                raise BadRequest(f"checksum mismatch: {'; '.join(mismatches)}; nothing was stored")
        if buffer or received == 0:
            yield bytes(buffer)

    try:
        await endpoint.upload(endpoint_path, chunks())
    finally:
        metrics.bytes_proxied("upload", endpoint.name, received)
    return received
