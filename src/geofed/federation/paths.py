"""Validation and normalisation of the paths clients ask for.

The federated namespace is a tree of absolute paths. Anything that could step outside it or be
read two ways is refused here, before any endpoint is asked: ``..`` segments, encoded slashes
(``%2F`` would let one name mean two paths), NUL bytes and other control characters, and
backslashes. The normalised form has no trailing slash except for the root, no empty or ``.``
segments.
"""

from __future__ import annotations

import re

from geofed.errors import BadRequest

_ENCODED_SEPARATOR = re.compile(r"%(2f|5c|00)", re.IGNORECASE)
_FORBIDDEN_CHARS = re.compile(r"[\x00-\x1f\x7f\\]")
MAX_PATH_LENGTH = 4096


def check_raw_path(raw_path: str) -> None:
    """Refuse a request target whose undecoded path hides separators or NULs."""
    path = raw_path.split("?", 1)[0]
    if _ENCODED_SEPARATOR.search(path):
        raise BadRequest("encoded '/', '\\' or NUL in the path is not allowed")
    if len(path) > MAX_PATH_LENGTH:
        raise BadRequest(f"path longer than {MAX_PATH_LENGTH} characters")


def is_clean_request_path(raw_path: str, decoded_path: str) -> bool:
    """True when the request path is already canonical and safe, so checks can be skipped.

    Conservative: anything percent-encoded, with dot segments, doubled or trailing slashes,
    backslashes, control characters or excess length is "not clean" and gets the full checks.
    """
    return not (
        "%" in raw_path
        or "/." in decoded_path
        or "//" in decoded_path
        or "\\" in decoded_path
        or len(raw_path) > MAX_PATH_LENGTH
        or (decoded_path.endswith("/") and decoded_path != "/")
        or not decoded_path.isprintable()
        or not decoded_path.startswith("/")
    )


def request_path(raw_path: str, decoded_path: str) -> str:
    """The normalised federated path of a request, checked as :func:`check_raw_path` and
    :func:`normalise` do, with a fast exit for the common clean path (this runs on every request)."""
    if is_clean_request_path(raw_path, decoded_path):
        return decoded_path
    check_raw_path(raw_path)
    return normalise(decoded_path)


def normalise(path: str) -> str:
    """The canonical form of a decoded federated path; BadRequest when it is unsafe."""
    if not path.startswith("/"):
        raise BadRequest("the path must be absolute")
    if _FORBIDDEN_CHARS.search(path):
        raise BadRequest("control characters, NUL or backslashes in the path are not allowed")
    segments = [s for s in path.split("/") if s and s != "."]
    if ".." in segments:
        raise BadRequest("'..' in the path is not allowed")
    return "/" + "/".join(segments)


def parent(path: str) -> str:
    """The parent collection of a normalised path (the root is its own parent)."""
    head = path.rsplit("/", 1)[0]
    return head or "/"


def basename(path: str) -> str:
    """The last segment of a normalised path ('' for the root)."""
    return path.rsplit("/", 1)[1]


def join(base: str, *names: str) -> str:
    """Join normalised path segments without doubling slashes."""
    out = base.rstrip("/")
    for name in names:
        out += "/" + name.strip("/")
    return out or "/"


def is_within(path: str, prefix: str) -> bool:
    """True when ``path`` is ``prefix`` or below it (segment-wise, never by string prefix)."""
    return prefix == "/" or path == prefix or path.startswith(prefix + "/")
