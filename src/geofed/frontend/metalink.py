"""RFC 5854 metalink documents: every replica of a file, best first, with its size and hashes.

davix fails over with them: on a read error it asks the original URL (HEAD, metalink ``Accept``),
follows the ``Link: <…?metalink>; rel=describedby`` geofed puts on file answers and redirects, and
tries each ``<url>`` in priority order. The document lives at its own URL (``?metalink``) because
davix caches redirects per (method, URL): a metalink served at the file's URL would be fetched
through the cached, failing redirect (client reference §5).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from urllib.parse import quote
from xml.sax.saxutils import escape, quoteattr

MEDIA_TYPE = "application/metalink4+xml"
QUERY = "metalink"
# metalink hash types (IANA "Hash Function Textual Names", plus adler32 as Rucio writes it)
_HASH_TYPES = {"md5": "md5", "sha256": "sha-256", "adler32": "adler32", "crc32c": "crc32c"}


def wants_metalink(accept: str, query_string: str) -> bool:
    """A metalink request: ``?metalink`` in the URL, or the metalink media type in ``Accept``."""
    return MEDIA_TYPE in accept or query_string == QUERY or query_string.startswith(QUERY + "&")


def describedby(raw_path: str) -> str:
    """The ``Link`` value that points a client from a file to its metalink."""
    return f'<{raw_path.split("?", 1)[0]}?{QUERY}>; rel=describedby; type="{MEDIA_TYPE}"'


def render(
    name: str, size: int | None, checksums: Mapping[str, str], urls: Iterable[str], generator: str
) -> bytes:
    """The document for one file; ``urls`` best first (they get priorities 1, 2, …), ``checksums``
    canonical algorithm → lower-case hex (metalink hashes are hex)."""
    parts = [
        '<?xml version="1.0" encoding="UTF-8"?>\n',
        '<metalink xmlns="urn:ietf:params:xml:ns:metalink">\n',
        f"  <generator>{escape(generator)}</generator>\n",
        f"  <file name={quoteattr(name)}>\n",
    ]
    if size is not None:
        parts.append(f"    <size>{size}</size>\n")
    for algorithm, value in sorted(checksums.items()):
        kind = _HASH_TYPES.get(algorithm)
        if kind is not None:
            parts.append(f'    <hash type="{kind}">{escape(value)}</hash>\n')
    for priority, url in enumerate(urls, start=1):
        parts.append(f'    <url priority="{priority}">{escape(url)}</url>\n')
    parts.append("  </file>\n</metalink>\n")
    return "".join(parts).encode()


def file_name(path: str) -> str:
    """The ``name`` attribute: the last segment, as RFC 5854 wants a relative name."""
    return path.rsplit("/", 1)[-1] or quote(path)
