"""Reads streamed through geofed (``proxy.reads``) for clients that cannot follow a redirect.

The bytes of the best replica whose endpoint can stream (``Endpoint.read``) are passed on chunk by
chunk, so memory stays bounded whatever the file size. One ``Range: bytes=`` range is honoured
(206), as clients resuming a download send. A replica that fails before the first byte is skipped
for the next; one that fails midway ends the response early, which the client sees as a short read
(the ``Content-Length`` was announced), never as a complete wrong file.
"""

from __future__ import annotations

import logging
import re
from typing import TYPE_CHECKING

from aiohttp import web

from geofed import metrics
from geofed.errors import EndpointError, RangeNotSatisfiable, ServiceUnavailable
from geofed.federation.selection import Ranking
from geofed.frontend.common import Note, http_date

if TYPE_CHECKING:
    from geofed.federation.locator import LocateResult
    from geofed.frontend.handlers import FederationFrontEnd

log = logging.getLogger(__name__)
_RANGE = re.compile(r"^\s*bytes\s*=\s*(\d*)\s*-\s*(\d*)\s*$")


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """(offset, length) of a single-range ``Range`` header, None for the whole file; 416 when the
    range does not fit. Multiple ranges are answered with the whole file, as RFC 9110 allows."""
    if header is None or "," in header:
        return None
    match = _RANGE.match(header)
    if match is None:
        return None
    first, last = match.group(1), match.group(2)
    if first == "" and last == "":
        return None
    if first == "":  # the last N bytes
        length = min(int(last), size)
        if length == 0:
            raise RangeNotSatisfiable(f"range {header.strip()} of a {size}-byte file")
        return size - length, length
    start = int(first)
    if start >= size:
        raise RangeNotSatisfiable(f"range {header.strip()} starts past the end of a {size}-byte file")
    end = min(int(last), size - 1) if last else size - 1
    if end < start:
        raise RangeNotSatisfiable(f"range {header.strip()} is empty")
    return start, end - start + 1


async def stream(
    fe: FederationFrontEnd,
    request: web.Request,
    path: str,
    result: LocateResult,
    ranking: Ranking,
    note: Note,
) -> web.StreamResponse:
    replicas = {(r.endpoint, r.path): r for r in result.files}
    failures: list[str] = []
    for candidate in ranking.accepted:
        endpoint = fe.fed.endpoints[candidate.endpoint]
        replica = replicas.get((candidate.endpoint, candidate.path))
        if replica is None or not endpoint.capabilities.read_stream or replica.stat.size is None:
            continue
        stat = replica.stat
        size = stat.size
        assert size is not None
        wanted = parse_range(request.headers.get("Range"), size)
        offset, length = wanted if wanted is not None else (0, size)
        chunks = endpoint.read(candidate.path, offset, length)
        try:
            first = await anext(chunks, b"")
        except EndpointError as exc:
            failures.append(f"{candidate.endpoint}: {exc}")
            continue
        response = web.StreamResponse(status=206 if wanted is not None else 200)
        response.content_type = stat.content_type or "application/octet-stream"
        response.content_length = length
        response.headers["Accept-Ranges"] = "bytes"
        if wanted is not None:
            response.headers["Content-Range"] = f"bytes {offset}-{offset + length - 1}/{size}"
        if stat.mtime is not None:
            response.headers["Last-Modified"] = http_date(stat.mtime)
        if stat.etag is not None:
            response.headers["ETag"] = stat.etag
        await response.prepare(request)
        note.decision, note.endpoint = "proxy-read", candidate.endpoint
        sent = 0
        try:
            if first:
                await response.write(first)
                sent = len(first)
            async for chunk in chunks:
                await response.write(chunk)
                sent += len(chunk)
        except EndpointError as exc:
            log.warning("proxied read of %s from %s failed midway: %s", path, candidate.endpoint, exc)
            if request.transport is not None:
                request.transport.close()
            return response
        finally:
            metrics.bytes_proxied("download", candidate.endpoint, sent)
        await response.write_eof()
        return response
    detail = "; ".join(failures) or "no replica is on an endpoint geofed can read from"
    raise ServiceUnavailable(f"cannot stream {path}: {detail}")
