"""The Dynafed S3 multipart upload protocol, which davix speaks, on geofed's side.

1. A PUT redirect to an endpoint that can do multipart uploads also carries ``x-ugrs3posturl`` (a
   URL signed for ``POST ?uploads``) and ``x-ugrpluginid`` (the endpoint's name). A client that
   does not know the protocol ignores them and follows the plain 307.
2. davix, for a large file (or ``#forceMultiPart``), POSTs to that URL and gets an UploadId.
3. It PUTs to geofed again, without a body, with ``x-s3-uploadid``, ``x-ugrpluginid`` and
   ``x-s3-upload-nchunks``; geofed answers one signed part URL per line, then the signed commit
   (``POST ?uploadId=``) URL on the last line. davix insists on exactly ``nchunks`` part URLs.

The credentials never leave geofed: every URL is pre-signed for one method and one part.
"""

from __future__ import annotations

from aiohttp import web

from geofed.endpoints.base import Endpoint
from geofed.errors import BadRequest

UPLOAD_ID_HEADER = "x-s3-uploadid"
PLUGIN_ID_HEADER = "x-ugrpluginid"
POST_URL_HEADER = "x-ugrs3posturl"
CHUNKS_HEADER = "x-s3-upload-nchunks"
DEFAULT_CHUNKS = 50
MAX_CHUNKS = 10000  # S3's limit on the parts of one upload


def offer_headers(endpoint: Endpoint, endpoint_path: str, lifetime: float) -> dict[str, str]:
    """The headers that let a capable client switch a PUT redirect to a multipart upload."""
    if not endpoint.capabilities.multipart_upload:
        return {}
    return {
        POST_URL_HEADER: endpoint.sign_multipart_create(endpoint_path, lifetime),
        PLUGIN_ID_HEADER: endpoint.name,
    }


def chunk_count(header: str | None) -> int:
    if header is None or not header.strip():
        return DEFAULT_CHUNKS
    try:
        count = int(header.strip())
    except ValueError:
        raise BadRequest(f"{CHUNKS_HEADER} must be a whole number, got {header[:20]!r}") from None
    if not 1 <= count <= MAX_CHUNKS:
        raise BadRequest(f"{CHUNKS_HEADER} must be between 1 and {MAX_CHUNKS}")
    return count


def parts_response(
    endpoint: Endpoint, endpoint_path: str, upload_id: str, count: int, lifetime: float
) -> web.Response:
    """The part URLs, one per line, then the commit URL on the last line."""
    if not upload_id or len(upload_id) > 1024 or any(c.isspace() for c in upload_id):
        raise BadRequest(f"{UPLOAD_ID_HEADER} is not a valid upload id")
    parts = endpoint.sign_multipart_parts(endpoint_path, upload_id, count, lifetime)
    commit = endpoint.sign_multipart_complete(endpoint_path, upload_id, lifetime)
    return web.Response(status=200, text="\n".join([*parts, commit]) + "\n", content_type="text/plain")
