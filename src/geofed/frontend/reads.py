"""What a read tells besides where the bytes are: checksums (RFC 3230 ``Digest``, RFC 9530
``Repr-Digest``) and the metalink of every replica (RFC 5854).

Checksums come from :class:`~geofed.checksums.ChecksumService` (caches, then what the endpoint
keeps, else one streamed read of the closest readable replica). The algorithm is echoed as the
client spelled it: gfal2 asks ``ADLER32`` and accepts nothing else. An algorithm geofed does not
know is not an error: the answer simply has no digest for it and says, in ``Want-Digest``, which
algorithms it could give.

No ``Content-MD5`` is sent, even for MD5: davix (so gfal2, so Rucio's ``ctx.checksum(url, 'MD5')``)
looks at ``Content-MD5`` before ``Digest`` and hands the caller its base64-*decoded* bytes without
hex-encoding them (``internal_checksum`` in davix's ``davmeta.cpp``), so the caller gets 16 raw bytes
instead of 32 hex digits. The ``Digest`` entry alone is decoded correctly.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from aiohttp import web

from geofed.checksums import (
    ChecksumTimeout,
    DigestRequest,
    compare,
    format_digest,
    format_repr_digest,
    parse_want_digest,
    parse_want_repr_digest,
)
from geofed.errors import EndpointError, PathNotFound, ServiceUnavailable
from geofed.federation.locator import LocateResult, Replica
from geofed.frontend import metalink
from geofed.frontend.common import Note

if TYPE_CHECKING:
    from geofed.frontend.handlers import FederationFrontEnd

log = logging.getLogger(__name__)
SUPPORTED = "adler32, md5, sha-256, crc32c"
_ALL = ("adler32", "md5", "sha256", "crc32c")


def wanted_digests(request: web.Request) -> tuple[DigestRequest, DigestRequest] | None:
    """The parsed ``Want-Digest`` and ``Want-Repr-Digest``, or None when the client asked neither."""
    headers = request.headers
    plain = headers.get("Want-Digest")
    structured = headers.get("Want-Repr-Digest")
    if plain is None and structured is None:
        return None
    return parse_want_digest(plain), parse_want_repr_digest(structured)


async def digest_headers(
    fe: FederationFrontEnd,
    asked: tuple[DigestRequest, DigestRequest],
    replicas: tuple[Replica, ...],
    path: str,
) -> dict[str, str]:
    """The checksum headers answering ``asked`` for a file, from the first replica that can say;
    when the client that uploaded it declared other values, ``X-Checksum-Mismatch`` says so."""
    plain, structured = asked
    algorithms = tuple(dict.fromkeys((*plain.algorithms, *structured.algorithms)))
    headers: dict[str, str] = {}
    if not algorithms:
        headers["Want-Digest"] = SUPPORTED  # nothing asked that geofed knows: say what it knows
        return headers
    values: dict[str, str] = {}
    service = fe.fed.checksums
    for replica in _readable_first(fe, replicas):
        try:
            values = await service.checksums(replica.endpoint, replica.path, replica.stat, algorithms)
        except ChecksumTimeout as exc:
            raise ServiceUnavailable(
                f"the checksum is being computed ({exc}); ask again later", retry_after=30
            ) from exc
        except PathNotFound:
            continue
        except EndpointError:
            continue
        if all(a in values for a in algorithms):
            break
    if plain and (text := format_digest(plain, values)):
        headers["Digest"] = text
    if structured and (text := format_repr_digest(structured, values)):
        headers["Repr-Digest"] = text
    if not headers:
        headers["Want-Digest"] = SUPPORTED
    claims = fe.fed.claims.get(path)
    if claims and (mismatches := compare(claims, values)):
        log.warning("checksum mismatch for %s: %s", path, "; ".join(mismatches))
        headers["X-Checksum-Mismatch"] = "; ".join(mismatches)
    return headers


def _readable_first(fe: FederationFrontEnd, replicas: tuple[Replica, ...]) -> list[Replica]:
    """Healthy replicas first, those whose endpoint can stream reads (compute) before others."""
    healthy = fe.fed.health.is_usable
    files = [r for r in replicas if not r.stat.is_dir]
    return sorted(
        files,
        key=lambda r: (not healthy(r.endpoint), not fe.fed.endpoints[r.endpoint].capabilities.read_stream),
    )


async def metalink_response(
    fe: FederationFrontEnd, request: web.Request, path: str, result: LocateResult, note: Note
) -> web.Response:
    """The metalink of ``path``: every healthy replica, closest first, with size and hashes known
    without reading (a metalink must be quick; checksums being computed are left out)."""
    placement = fe.fed.clients.place(note.client)
    ranking = fe.fed.rank(placement, result)
    urls = [fe.signed(request, "GET", r.endpoint, r.path) for r in ranking.accepted]
    files = result.files
    checksums: dict[str, str] = {}
    for replica in files:
        try:
            checksums = await fe.fed.checksums.checksums(
                replica.endpoint, replica.path, replica.stat, _ALL, compute=False
            )
        except EndpointError:
            continue
        if checksums:
            break
    size = files[0].stat.size if files else None
    body = metalink.render(metalink.file_name(path), size, checksums, urls, "geofed")
    note.decision = "metalink"
    return web.Response(body=body, content_type=metalink.MEDIA_TYPE)
