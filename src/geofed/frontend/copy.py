"""COPY: WLCG HTTP third-party copy (pull and push), and WebDAV COPY inside the federation.

* **Pull** -- ``COPY <path>`` with ``Source: <url>``: geofed picks the destination endpoint for
  ``path`` as a PUT would, and moves the bytes of ``url`` into it.
* **Push** -- ``COPY <path>`` with ``Destination: <url>`` on another host: geofed reads the replica of
  ``path`` closest to the destination and PUTs it there.
* Either URL may name this geofed itself (gfal2 copying between two federated paths sends exactly
  that): the copy then goes from endpoint to endpoint through the engine, no HTTP hop through geofed.

A third-party copy is answered ``202`` with a streamed ``text/plain`` body of performance markers
and one final ``success: Created`` / ``failure: …`` line (see :mod:`geofed.transfer.markers`); what
can be refused before any byte moves (a malformed request, a refused authorization, ``Overwrite: F``
over an existing file, a missing source file) is a plain 4xx instead. A COPY with a local
``Destination`` and none of the HTTP-TPC headers is a plain WebDAV COPY (cadaver, rclone):
answered 201/204 when done, 412 for ``Overwrite: F`` over an existing file, 502 on failure.

Headers: ``Credential`` (absent or ``none``; delegation is refused), ``TransferHeader<Name>``
(sent to the remote side as ``<Name>``), ``Overwrite``, ``X-Number-Of-Streams`` (accepted; one
stream is used), ``RequireChecksumVerification``, ``Copy-Flags: NoHead``.

Privileges: ``copy`` on the geofed path, with ``write`` (and ``modify`` when it exists) where the
copy writes and ``read`` where it reads. An endpoint marked ``tpc: true`` (a WebDAV server that
does HTTP-TPC itself) is sent the COPY with a 307 instead. A copy between two objects of one S3
endpoint also goes through the engine: the endpoint offers no public server-side copy.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from aiohttp import web

from geofed.auth.identity import Privilege
from geofed.endpoints.base import Endpoint
from geofed.errors import (
    BadGateway,
    BadRequest,
    Conflict,
    Forbidden,
    HTTPError,
    MethodNotAllowed,
    ServiceUnavailable,
)
from geofed.federation.locator import Want
from geofed.frontend import move as moving
from geofed.frontend.common import ALLOWED, Note
from geofed.geo import ClientPlacement
from geofed.transfer.engine import (
    ClientGone,
    EndpointDestination,
    RemoteDestination,
    RemoteSource,
    Replica,
    ReplicaSource,
    Source,
    TransferEngine,
    TransferFailed,
)
from geofed.transfer.markers import failure_line, perf_marker, success_line
from geofed.transfer.remote import forwarded_headers, redact

if TYPE_CHECKING:
    from geofed.frontend.handlers import FederationFrontEnd

log = logging.getLogger("geofed.transfer")

DELEGATION_REFUSED = "delegation is not supported; use Credential: none with TransferHeaderAuthorization"
TPC_HEADERS = (
    "Source",
    "Credential",
    "X-Number-Of-Streams",
    "RequireChecksumVerification",
    "Copy-Flags",
    "Secure-Redirection",
    "X-No-Delegate",
)
"""Any of these (or a ``TransferHeader*``) makes a COPY to this geofed a third-party copy (202 and
markers) rather than a plain WebDAV COPY."""
_SCHEMES = {"dav": "http", "davs": "https"}
RESOLVE_TIMEOUT = 2.0


class NotImplementedHere(HTTPError):
    status = 501


@dataclass(frozen=True, slots=True)
class Target:
    """The other end of a COPY: a federated path of this geofed, or a remote URL."""

    path: str | None = None
    url: str | None = None


@dataclass(frozen=True, slots=True)
class Chosen:
    """The endpoint a copy writes to, and whether the federated path existed before."""

    name: str
    path: str
    endpoint: Endpoint
    existed: bool


async def copy(fe: FederationFrontEnd, request: web.Request, path: str, note: Note) -> web.StreamResponse:
    headers = request.headers
    source_header, destination_header = headers.get("Source"), headers.get("Destination")
    if source_header and destination_header:
        raise BadRequest("give a Source header (pull) or a Destination header (push), not both")
    if not source_header and not destination_header:
        raise BadRequest("COPY needs a Source header (pull) or a Destination header (push)")
    credential = headers.get("Credential", "none").strip().lower()
    if credential not in ("", "none"):
        raise BadRequest(DELEGATION_REFUSED)
    overwrite = moving.overwrite_allowed(headers.get("Overwrite"))
    verify = _verification(headers.get("RequireChecksumVerification"))
    streams = headers.get("X-Number-Of-Streams", "1").strip()
    if not streams.isdigit():
        raise BadRequest("X-Number-Of-Streams must be a number")
    forwarded = forwarded_headers(headers)
    tpc = any(name in headers for name in TPC_HEADERS) or bool(forwarded)
    if source_header:
        return await pull(
            fe, request, path, note, _target(fe, request, source_header, "Source"), overwrite, verify
        )
    assert destination_header is not None
    target = _target(fe, request, destination_header, "Destination")
    if target.path is not None and not tpc:
        return await webdav_copy(fe, path, target.path, note, overwrite)
    return await push(fe, request, path, note, target, overwrite, verify)


def engine_of(fe: FederationFrontEnd) -> TransferEngine:
    """The federation's engine (one per configuration; closed with it)."""
    return fe.fed.transfers


# -- the three kinds of COPY -------------------------------------------------------------------


async def pull(
    fe: FederationFrontEnd,
    request: web.Request,
    path: str,
    note: Note,
    origin: Target,
    overwrite: bool,
    verify: bool | None,
) -> web.StreamResponse:
    """Copy ``origin`` (a URL, or a federated path) into the federated ``path``."""
    _require_writable(fe, path, note)
    placement = fe.fed.clients.place(note.client)
    source: Source
    size: int | None = None
    if origin.path is not None:
        if origin.path == path:
            raise Forbidden("the source and the destination of a COPY are the same")
        source = await _replica_source(fe, origin.path, note, placement)
        size = source.replicas[0].stat.size
    else:
        assert origin.url is not None
        source = RemoteSource(origin.url, forwarded_headers(request.headers))
    chosen = await _choose_destination(fe, path, note, placement, overwrite, size)
    if origin.url is not None and _tpc_capable(chosen.endpoint):
        await _invalidate(fe, path, writing=True)
        note.decision, note.endpoint = "tpc-redirect", chosen.name
        location = fe.signed(request, "PUT", chosen.name, chosen.path)
        return web.Response(status=307, headers={"Location": location})
    note.decision, note.endpoint = "tpc-pull", chosen.name
    destination = EndpointDestination(chosen.endpoint, chosen.path, path)
    return await _run_tpc(fe, request, source, destination, verify, path)


async def push(
    fe: FederationFrontEnd,
    request: web.Request,
    path: str,
    note: Note,
    target: Target,
    overwrite: bool,
    verify: bool | None,
) -> web.StreamResponse:
    """Copy the federated ``path`` to ``target`` (a URL, or another federated path)."""
    fe.gate.require(note.identity, Privilege.READ, path)
    fe.gate.require(note.identity, Privilege.COPY, path)
    if target.path is not None:  # TPC push to this same geofed
        if target.path == path:
            raise Forbidden("the source and the destination of a COPY are the same")
        _require_writable(fe, target.path, note)
        placement = fe.fed.clients.place(note.client)
        source = await _replica_source(fe, path, note, placement)
        size = source.replicas[0].stat.size
        chosen = await _choose_destination(fe, target.path, note, placement, overwrite, size)
        note.decision, note.endpoint = "tpc-local", chosen.name
        local = EndpointDestination(chosen.endpoint, chosen.path, target.path)
        return await _run_tpc(fe, request, source, local, verify, target.path)
    assert target.url is not None
    placement = await _place_url(fe, target.url, note)
    source = await _replica_source(fe, path, note, placement)
    first = source.replicas[0]
    if _tpc_capable(first.endpoint):
        note.decision, note.endpoint = "tpc-redirect", first.endpoint.name
        location = fe.signed(request, "GET", first.endpoint.name, first.path)
        return web.Response(status=307, headers={"Location": location})
    forwarded = forwarded_headers(request.headers)
    if not overwrite:
        info = await engine_of(fe).probe(target.url, forwarded)
        if info is not None and 200 <= info.status < 300:
            raise moving.precondition(redact(target.url))
    no_head = "nohead" in request.headers.get("Copy-Flags", "").replace(" ", "").lower().split(",")
    destination = RemoteDestination(target.url, forwarded, head_after=not no_head)
    note.decision, note.endpoint = "tpc-push", first.endpoint.name
    return await _run_tpc(fe, request, source, destination, verify, None)


async def webdav_copy(
    fe: FederationFrontEnd, path: str, destination_path: str, note: Note, overwrite: bool
) -> web.StreamResponse:
    """RFC 4918 COPY of a file to another federated path, done before the answer (201/204)."""
    gate, identity = fe.gate, note.identity
    gate.require(identity, Privilege.READ, path)
    gate.require(identity, Privilege.COPY, path)
    if destination_path == path:
        raise Forbidden("the source and the destination of a COPY are the same")
    _require_writable(fe, destination_path, note)
    placement = fe.fed.clients.place(note.client)
    source = await _replica_source(fe, path, note, placement)
    size = source.replicas[0].stat.size
    chosen = await _choose_destination(fe, destination_path, note, placement, overwrite, size)
    destination = EndpointDestination(chosen.endpoint, chosen.path, destination_path)
    note.decision, note.endpoint = "copy", chosen.name
    await _invalidate(fe, destination_path, writing=True)
    try:
        await engine_of(fe).copy(source, destination, verify=None)
    except TransferFailed as exc:
        raise BadGateway(f"copy of {path} to {destination_path} failed: {exc}") from None
    finally:
        await _invalidate(fe, destination_path)
    return web.Response(status=204 if chosen.existed else 201)


# -- running a third-party copy ------------------------------------------------------------------


async def _run_tpc(
    fe: FederationFrontEnd,
    request: web.Request,
    source: Source,
    destination: EndpointDestination | RemoteDestination,
    verify: bool | None,
    changed: str | None,
) -> web.StreamResponse:
    """Answer 202 and stream markers while the engine copies; ``changed`` is the federated path
    the copy writes (its caches are dropped before and after)."""
    engine = engine_of(fe)
    if changed is not None:
        await _invalidate(fe, changed, writing=True)
    response = web.StreamResponse(status=202)
    response.content_type = "text/plain"
    response.headers["Cache-Control"] = "no-cache"
    response.enable_chunked_encoding()
    transfer = engine.start(source, destination, verify=verify)
    final = ""
    try:
        await response.prepare(request)
        async for transferred in transfer.progress(engine.settings.marker_interval, lambda: _alive(request)):
            await response.write(perf_marker(transferred).encode())
        final = success_line()
    except TransferFailed as exc:
        final = failure_line(str(exc))
    except ClientGone:
        pass
    except ConnectionError:  # the client went away while a marker was written
        await transfer.abort("the client went away")
    except asyncio.CancelledError:
        await transfer.abort("the request was cancelled")
        raise
    finally:
        if changed is not None:
            await _invalidate(fe, changed)
    if final:
        with contextlib.suppress(ConnectionError):
            await response.write(final.encode())
            await response.write_eof()
    return response


def _alive(request: web.Request) -> bool:
    transport = request.transport
    return transport is not None and not transport.is_closing()


# -- choosing the ends ----------------------------------------------------------------------------


def _verification(value: str | None) -> bool | None:
    """``RequireChecksumVerification``: None (the configured default) when absent."""
    if value is None:
        return None
    text = value.strip().lower()
    if text in ("true", "1", "yes"):
        return True
    if text in ("false", "0", "no"):
        return False
    raise BadRequest("RequireChecksumVerification must be true or false")


def _target(fe: FederationFrontEnd, request: web.Request, value: str, header: str) -> Target:
    """What a Source/Destination header names: a path of this geofed, or a remote http(s) URL."""
    prefix = fe.fed.settings.proxy.url_prefix
    value = value.strip()
    if "://" not in value:
        if not value.startswith("/"):
            raise BadRequest(f"{header} must be an absolute http(s) URL")
        return Target(path=moving.destination_path(value, prefix))
    scheme, _, rest = value.partition("://")
    scheme = _SCHEMES.get(scheme.lower(), scheme.lower())  # davs:// as gfal2 users write it
    value = f"{scheme}://{rest}"
    try:
        parts = urlsplit(value)
        port = parts.port
    except ValueError:
        raise BadRequest(f"{header} is not a valid URL") from None
    if scheme not in ("http", "https") or not parts.hostname:
        raise BadRequest(f"{header} must be an http:// or https:// URL")
    if any(c in value for c in "\r\n\t "):
        raise BadRequest(f"{header} must not contain whitespace")
    local = _is_this_server(fe, request, scheme, parts.hostname, port)
    if local and not parts.path.startswith("/_geofed/"):
        return Target(path=moving.destination_path(value, prefix))
    return Target(url=value)


def _is_this_server(
    fe: FederationFrontEnd, request: web.Request, scheme: str, host: str, port: int | None
) -> bool:
    wanted = (host.lower().strip("[]"), port or _default_port(scheme))
    mine = {_host_port(f"{request.scheme}://{request.host}")}
    public = fe.server.public_url
    if public:
        mine.add(_host_port(public))
    return wanted in mine


def _host_port(url: str) -> tuple[str, int]:
    parts = urlsplit(url)
    try:
        port = parts.port
    except ValueError:
        port = None
    return (parts.hostname or "").lower(), port or _default_port(parts.scheme.lower())


def _default_port(scheme: str) -> int:
    return 443 if scheme == "https" else 80


def _tpc_capable(endpoint: Endpoint) -> bool:
    """``endpoints[].tpc``: a WebDAV server that does HTTP-TPC itself, sent the COPY by a 307."""
    return bool(getattr(endpoint.settings, "tpc", False))


def _require_writable(fe: FederationFrontEnd, path: str, note: Note) -> None:
    fe.gate.require(note.identity, Privilege.WRITE, path)
    fe.gate.require(note.identity, Privilege.COPY, path)
    if path == "/" or fe.fed.namespace.is_mount_point(path):
        raise MethodNotAllowed(f"{path} is a collection", headers={"Allow": ALLOWED})


async def _replica_source(
    fe: FederationFrontEnd, path: str, note: Note, placement: ClientPlacement
) -> ReplicaSource:
    """The replicas of the file ``path`` that geofed can read, best first for ``placement``."""
    fe.gate.require(note.identity, Privilege.READ, path)
    fe.gate.require(note.identity, Privilege.COPY, path)
    result = await fe.fed.locator.locate(path, Want.ALL, placement, use_cache=False)
    note.locate_seconds = result.elapsed
    if not result.files:
        if result.replicas or path == "/" or fe.fed.namespace.is_mount_point(path):
            raise NotImplementedHere(f"{path} is a collection: COPY copies files; copy its files one by one")
        raise fe.missing(path, result)
    ranking = fe.fed.rank(placement, result)
    stats = {(r.endpoint, r.path): r.stat for r in result.files}
    replicas: list[Replica] = []
    for candidate in ranking.accepted:
        endpoint = fe.fed.endpoints[candidate.endpoint]
        stat = stats.get((candidate.endpoint, candidate.path))
        if stat is None:
            continue
        if endpoint.capabilities.read_stream or (_tpc_capable(endpoint) and not replicas):
            replicas.append(Replica(endpoint, candidate.path, stat))
    if not replicas:
        reasons = "; ".join(f"{r.endpoint}: {r.reason}" for r in ranking.rejected)
        detail = f" ({reasons})" if reasons else ""
        raise ServiceUnavailable(f"no replica of {path} can be read now{detail}")
    return ReplicaSource(tuple(replicas), path, fe.fed.checksums)


async def _choose_destination(
    fe: FederationFrontEnd,
    path: str,
    note: Note,
    placement: ClientPlacement,
    overwrite: bool,
    size: int | None,
) -> Chosen:
    """The endpoint ``path`` is written to, chosen as for a PUT: where it is already, else the
    best writable endpoint serving it. 412 when it exists and ``overwrite`` is off."""
    existing = await fe.fed.locator.locate(path, Want.ALL, placement, use_cache=False)
    if existing.is_dir:
        raise Conflict(f"a collection exists at {path}")
    if existing.replicas:
        if not overwrite:
            raise moving.precondition(path)
        fe.gate.require(note.identity, Privilege.MODIFY, path)
    ranking = fe.fed.rank(placement, existing, writable=True)
    if not ranking.accepted:
        ranking = fe.fed.rank_for_write(placement, path, size)
    if not ranking.accepted:
        if ranking.rejected:
            reasons = "; ".join(f"{r.endpoint}: {r.reason}" for r in ranking.rejected)
            raise ServiceUnavailable(f"no writable endpoint for {path} is available ({reasons})")
        raise Forbidden(f"no writable endpoint serves {path}")
    for candidate in ranking.accepted:
        endpoint = fe.fed.endpoints[candidate.endpoint]
        if endpoint.capabilities.upload_stream or _tpc_capable(endpoint):
            return Chosen(candidate.endpoint, candidate.path, endpoint, bool(existing.replicas))
    raise ServiceUnavailable(f"no writable endpoint for {path} can take a copy")


async def _place_url(fe: FederationFrontEnd, url: str, note: Note) -> ClientPlacement:
    """Where the host of ``url`` is (to read the replica closest to it); the client's place when
    the host cannot be resolved in time."""
    host = urlsplit(url).hostname or ""
    try:
        address = str(ipaddress.ip_address(host.strip("[]")))
    except ValueError:
        try:
            async with asyncio.timeout(RESOLVE_TIMEOUT):
                infos = await asyncio.get_running_loop().getaddrinfo(host, None)
            address = str(infos[0][4][0])
        except (OSError, TimeoutError, IndexError):
            return fe.fed.clients.place(note.client)
    placement = fe.fed.clients.place(address)
    if placement.location is None and placement.preferred_endpoint is None:
        return fe.fed.clients.place(note.client)
    return placement


async def _invalidate(fe: FederationFrontEnd, path: str, *, writing: bool = False) -> None:
    await fe.fed.locator.invalidate_everywhere(path, writing=writing)
    fe.fed.forget_checksums(path)
    fe.fed.claims.discard(path)
