"""The writing methods of the namespace: PUT (redirected, multipart, or streamed by geofed), DELETE,
MKCOL and MOVE. Each checks the client's privilege first, then changes the endpoints, then
invalidates what every front end cached about the paths it touched.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from aiohttp import web

from geofed.auth.identity import Privilege
from geofed.checksums import parse_digest_claims
from geofed.errors import (
    BadGateway,
    BadRequest,
    Conflict,
    EndpointError,
    Forbidden,
    MethodNotAllowed,
    NotFound,
    PathNotFound,
    ServiceUnavailable,
    UnsupportedMediaType,
)
from geofed.federation.locator import Want
from geofed.federation.paths import parent
from geofed.frontend import move as moving
from geofed.frontend import multipart, uploadproxy
from geofed.frontend.common import (
    ALLOWED,
    AWAITING_BODY,
    PROXY_TARGET,
    SEND_THE_BODY,
    VIA_PROXY_PREFIX,
    Note,
    endpoint_http_error,
)

if TYPE_CHECKING:
    from geofed.frontend.handlers import FederationFrontEnd

CLAIM_TTL = 86400.0
"""How long a checksum declared on a redirected PUT is kept to be compared with the stored bytes."""


async def put(fe: FederationFrontEnd, request: web.Request, path: str, note: Note) -> web.StreamResponse:
    fe.gate.require(note.identity, Privilege.WRITE, path)
    if path == "/" or fe.fed.namespace.is_mount_point(path):
        raise MethodNotAllowed(f"{path} is a collection", headers={"Allow": ALLOWED})
    if multipart.UPLOAD_ID_HEADER in request.headers:
        return await multipart_parts(fe, request, path, note)
    target = request.get(PROXY_TARGET)
    if target is not None:  # chosen in the expect handler, before the body was sent
        return await proxy_upload(fe, request, path, target[0], target[1], note)
    claims = declared_checksums(request)
    placement = fe.fed.clients.place(note.client)
    existing = await fe.locate(path, Want.ALL, placement, note)
    if existing.is_dir:
        raise Conflict(f"a collection exists at {path}")
    if existing.replicas:
        fe.gate.require(note.identity, Privilege.MODIFY, path)
    ranking = fe.fed.rank(placement, existing, writable=True)
    if not ranking.accepted:
        ranking = fe.fed.rank_for_write(placement, path, request.content_length)
    if not ranking.accepted:
        if ranking.rejected:
            reasons = "; ".join(f"{r.endpoint}: {r.reason}" for r in ranking.rejected)
            raise ServiceUnavailable(f"no writable endpoint for {path} is available ({reasons})")
        raise Forbidden(f"no writable endpoint serves {path}")
    best = ranking.accepted[0]
    endpoint = fe.fed.endpoints[best.endpoint]
    try:
        await endpoint.makedirs(parent(best.path))
    except EndpointError as exc:
        raise endpoint_http_error(exc, f"cannot create the parent collection of {path}") from exc
    user_agent = request.headers.get("User-Agent", "")
    forced = uploadproxy.proxy_mode(
        fe.fed.settings.proxy, user_agent, path, bool(request.get(VIA_PROXY_PREFIX))
    )
    if uploadproxy.wants_proxy(endpoint, user_agent, forced):
        if request.get(AWAITING_BODY):
            request[PROXY_TARGET] = (best.endpoint, best.path)
            return SEND_THE_BODY
        return await proxy_upload(fe, request, path, best.endpoint, best.path, note)
    if forced:
        raise MethodNotAllowed(f"endpoint {best.endpoint} cannot take streamed uploads (proxy mode)")
    if claims:  # checked when the checksum is first computed from the stored bytes
        fe.fed.claims.put(path, claims, CLAIM_TTL)
    else:  # an earlier upload's declaration says nothing about these bytes
        fe.fed.claims.discard(path)
    await fe.fed.locator.invalidate_everywhere(path, writing=True)
    fe.fed.forget_checksums(path)
    headers = {"Location": fe.signed(request, "PUT", best.endpoint, best.path)}
    headers.update(multipart.offer_headers(endpoint, best.path, fe.fed.url_lifetimes[best.endpoint]))
    note.decision, note.endpoint = "redirect", best.endpoint
    response = web.Response(status=307, headers=headers)
    length = request.content_length
    if length is not None and length > fe.server.max_unread_put_body and "Expect" not in request.headers:
        response.force_close()
    return response


async def proxy_upload(
    fe: FederationFrontEnd, request: web.Request, path: str, name: str, endpoint_path: str, note: Note
) -> web.StreamResponse:
    """Stream the body to the endpoint ourselves (see frontend.uploadproxy for why)."""
    endpoint = fe.fed.endpoints[name]
    existed = (await fe.fed.locator.locate(path, Want.FIRST, None)).replicas != ()
    await fe.fed.locator.invalidate_everywhere(path, writing=True)
    fe.fed.forget_checksums(path)
    fe.fed.claims.discard(path)  # these bytes are checked against their own declaration, if any
    try:
        await uploadproxy.stream_upload(request, endpoint, endpoint_path, declared_checksums(request))
    except EndpointError as exc:
        raise endpoint_http_error(exc, f"upload of {path} to {name} failed; nothing was stored") from exc
    finally:
        await fe.fed.locator.invalidate_everywhere(path)
        fe.fed.forget_checksums(path)
    note.decision, note.endpoint = "proxy-upload", name
    return web.Response(status=204 if existed else 201)


async def multipart_parts(
    fe: FederationFrontEnd, request: web.Request, path: str, note: Note
) -> web.StreamResponse:
    """Step 3 of the multipart protocol: sign the part and commit URLs on the endpoint the
    client was sent to (named by ``x-ugrpluginid``)."""
    name = request.headers.get(multipart.PLUGIN_ID_HEADER, "")
    endpoint = fe.fed.endpoints.get(name)
    local = fe.fed.namespace.translate(path, name) if endpoint is not None else None
    if endpoint is None or local is None or not endpoint.settings.writable:
        raise BadRequest(f"{multipart.PLUGIN_ID_HEADER} does not name a writable endpoint serving {path}")
    if not endpoint.capabilities.multipart_upload:
        raise BadRequest(f"endpoint {name} does not support multipart uploads")
    count = multipart.chunk_count(request.headers.get(multipart.CHUNKS_HEADER))
    response = multipart.parts_response(
        endpoint,
        local,
        request.headers[multipart.UPLOAD_ID_HEADER],
        count,
        fe.fed.url_lifetimes[name],
    )
    await fe.fed.locator.invalidate_everywhere(path, writing=True)
    note.decision, note.endpoint = "multipart", name
    return response


async def delete(fe: FederationFrontEnd, request: web.Request, path: str, note: Note) -> web.StreamResponse:
    fe.gate.require(note.identity, Privilege.DELETE, path)
    if path == "/" or fe.fed.namespace.is_mount_point(path):
        raise Forbidden(f"{path} is a mount point of the federation and cannot be deleted")
    result = await fe.fed.locator.locate(path, Want.ALL, None, use_cache=False)
    note.locate_seconds = result.elapsed
    if not result.replicas:
        raise fe.missing(path, result)
    failures: list[str] = [f"{name}: {why} (its replica may remain)" for name, why in result.unknown]
    deleted: list[str] = []
    for replica in result.replicas:
        endpoint = fe.fed.endpoints[replica.endpoint]
        if not endpoint.settings.writable or not endpoint.capabilities.delete:
            failures.append(f"{replica.endpoint}: endpoint is read-only")
            continue
        try:
            await endpoint.delete(replica.path)
        except PathNotFound:
            deleted.append(replica.endpoint)
        except EndpointError as exc:
            failures.append(f"{replica.endpoint}: {exc.reason}")
        else:
            deleted.append(replica.endpoint)
    await fe.fed.locator.invalidate_everywhere(path)
    fe.fed.forget_checksums(path)
    fe.fed.claims.discard(path)
    note.decision, note.endpoint = "delete", ",".join(deleted) or None
    if failures:
        done = f"deleted on {', '.join(deleted)}; " if deleted else ""
        raise BadGateway(f"{path}: {done}failed on {'; '.join(failures)}")
    return web.Response(status=204)


async def mkcol(fe: FederationFrontEnd, request: web.Request, path: str, note: Note) -> web.StreamResponse:
    fe.gate.require(note.identity, Privilege.WRITE, path)
    if request.body_exists:
        raise UnsupportedMediaType("MKCOL with a body is not supported")
    if path == "/" or fe.fed.namespace.is_mount_point(path):
        raise MethodNotAllowed(f"{path} already exists", headers={"Allow": ALLOWED})
    existing = await fe.locate(path, Want.FIRST, None, note)
    if existing.replicas:
        raise MethodNotAllowed(f"{path} already exists", headers={"Allow": ALLOWED})
    try:
        parent_stat = await fe.stat_of(parent(path), Note())
    except NotFound as exc:
        raise Conflict(f"the parent collection of {path} does not exist") from exc
    if not parent_stat.is_dir:
        raise Conflict(f"the parent of {path} is not a collection")
    ranking = fe.fed.rank_for_write(fe.fed.clients.place(note.client), path)
    if not ranking.accepted:
        raise Forbidden(f"no writable endpoint serves {path}")
    best = ranking.accepted[0]
    try:
        await fe.fed.endpoints[best.endpoint].makedirs(best.path)
    except EndpointError as exc:
        raise endpoint_http_error(exc, f"cannot create {path}") from exc
    await fe.fed.locator.invalidate_everywhere(path)
    note.decision, note.endpoint = "mkcol", best.endpoint
    return web.Response(status=201)


def declared_checksums(request: web.Request) -> dict[str, str]:
    """Checksums the client declares for its upload (``Digest``, ``Content-MD5``, ``Repr-Digest``):
    claims to check against the stored bytes, never values to report. 400 when malformed."""
    headers = request.headers
    digest, content_md5 = headers.get("Digest"), headers.get("Content-MD5")
    repr_digest = headers.get("Repr-Digest")
    if digest is None and content_md5 is None and repr_digest is None:
        return {}
    try:
        return parse_digest_claims(digest, content_md5, repr_digest)
    except ValueError as exc:
        raise BadRequest(f"declared checksum not understood: {exc}") from None


async def move(fe: FederationFrontEnd, request: web.Request, path: str, note: Note) -> web.StreamResponse:
    """Rename every replica of ``path`` where it is (see :mod:`geofed.frontend.move`)."""
    prefix = fe.fed.settings.proxy.url_prefix
    destination = moving.destination_path(request.headers.get("Destination"), prefix)
    overwrite = moving.overwrite_allowed(request.headers.get("Overwrite"))
    gate, identity = fe.gate, note.identity
    gate.require(identity, Privilege.WRITE, path)
    gate.require(identity, Privilege.WRITE, destination)
    namespace = fe.fed.namespace
    if path == "/" or namespace.is_mount_point(path) or namespace.is_mount_point(destination):
        raise Forbidden("mount points of the federation cannot be moved or replaced")
    source = await fe.fed.locator.locate(path, Want.ALL, None, use_cache=False)
    note.locate_seconds = source.elapsed
    if not source.replicas:
        raise fe.missing(path, source)
    if source.unknown:
        raise ServiceUnavailable(
            f"cannot move {path}: some endpoints could not say whether they hold it "
            f"({'; '.join(f'{n}: {w}' for n, w in source.unknown)})"
        )
    target = await fe.fed.locator.locate(destination, Want.ALL, None, use_cache=False)
    if target.replicas:
        if not overwrite:
            raise moving.precondition(destination)
        gate.require(identity, Privilege.MODIFY, destination)
    translations = {r.endpoint: namespace.translate(destination, r.endpoint) for r in source.replicas}
    moving.check_endpoints(path, destination, translations)
    done: list[str] = []
    failed: list[str] = []
    await fe.fed.locator.invalidate_everywhere(destination, writing=True)
    for replica in source.replicas:
        endpoint = fe.fed.endpoints[replica.endpoint]
        new_path = translations[replica.endpoint]
        assert new_path is not None  # checked above
        if not endpoint.settings.writable or not endpoint.capabilities.move:
            failed.append(f"{replica.endpoint}: cannot rename (read-only, or no rename on this kind)")
            continue
        try:
            await endpoint.move(replica.path, new_path, overwrite)
        except EndpointError as exc:
            failed.append(f"{replica.endpoint}: {exc}")
        else:
            done.append(replica.endpoint)
    if not failed:  # an overwritten destination must not live on where no source replica went
        for stale in (r for r in target.replicas if r.endpoint not in translations):
            endpoint = fe.fed.endpoints[stale.endpoint]
            if not endpoint.settings.writable or not endpoint.capabilities.delete:
                failed.append(f"{stale.endpoint}: cannot delete the replaced {destination} (read-only)")
                continue
            try:
                await endpoint.delete(stale.path)
            except PathNotFound:
                pass
            except EndpointError as exc:
                failed.append(f"{stale.endpoint}: replaced {destination} not deleted: {exc}")
    for changed in (path, destination):
        await fe.fed.locator.invalidate_everywhere(changed)
        fe.fed.forget_checksums(changed)
    claims = fe.fed.claims.get(path)  # the declaration goes with the bytes it was made for
    fe.fed.claims.discard(path)
    if claims and done:
        fe.fed.claims.put(destination, claims, CLAIM_TTL)
    else:
        fe.fed.claims.discard(destination)
    note.decision, note.endpoint = "move", ",".join(done) or None
    if failed:
        raise moving.failure(path, destination, done, failed)
    return web.Response(status=204 if target.replicas else 201)
