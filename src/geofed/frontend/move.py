"""WebDAV MOVE through the federation: rename every replica on the endpoint that holds it.

Rucio uploads to ``name.rucio.upload`` and renames to the final name when the upload is complete
(both its ``webdav`` and ``gfal`` protocols), so MOVE is part of every Rucio upload. A rename never
crosses endpoints: each replica is renamed where it is, to the destination's path on that same
endpoint; an endpoint that does not serve the destination path fails the MOVE (502) rather than
silently leaving a replica under the old name.
"""

from __future__ import annotations

from urllib.parse import unquote, urlsplit

from geofed.errors import BadGateway, BadRequest, EndpointError, Forbidden, HTTPError, PreconditionFailed
from geofed.federation.paths import check_raw_path, normalise


def destination_path(header: str | None, strip_prefix: str | None = None) -> str:
    """The federated path named by a ``Destination`` header (an absolute URL or an absolute path),
    checked like a request path; ``strip_prefix`` removes a URL prefix such as ``/proxy``."""
    if not header:
        raise BadRequest("MOVE needs a Destination header")
    raw = urlsplit(header).path if "://" in header else header.split("?", 1)[0]
    check_raw_path(raw)
    path = normalise(unquote(raw))
    if strip_prefix and (path == strip_prefix or path.startswith(strip_prefix + "/")):
        path = path[len(strip_prefix) :] or "/"
    return path


def overwrite_allowed(header: str | None) -> bool:
    """RFC 4918 ``Overwrite``: T (the default) or F."""
    value = (header or "T").strip().upper()
    if value not in ("T", "F"):
        raise BadRequest("Overwrite must be T or F")
    return value == "T"


def check_endpoints(source: str, destination: str, translations: dict[str, str | None]) -> None:
    """Every endpoint holding the source must serve the destination too."""
    if source == destination:
        raise Forbidden("the source and the destination of a MOVE are the same")
    if destination.startswith(source + "/"):
        raise Forbidden("a collection cannot be moved into itself")
    missing = sorted(name for name, path in translations.items() if path is None)
    if missing:
        raise BadGateway(
            f"cannot move {source} to {destination}: endpoint(s) {', '.join(missing)} hold the source "
            "but do not serve the destination"
        )


def failure(source: str, destination: str, done: list[str], failed: list[str]) -> HTTPError:
    done_text = f"moved on {', '.join(done)}; " if done else ""
    return BadGateway(f"{source} -> {destination}: {done_text}failed on {'; '.join(failed)}")


def precondition(destination: str) -> PreconditionFailed:
    return PreconditionFailed(f"{destination} exists and Overwrite is F")


def describe(exc: EndpointError) -> str:
    return str(exc)
