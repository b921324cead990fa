"""Runtime control: the admin API under ``/_geofed/admin/`` and the administrator's endpoint marks.

* ``GET /_geofed/admin/endpoints``: every endpoint's state as JSON (what ``geofed endpoints`` prints).
* ``POST /_geofed/admin/endpoints/<name>/disable`` | ``drain`` | ``enable`` (optional JSON body
  ``{"reason": "..."}``): mark an endpoint. *Disabled*: used for nothing, like a down endpoint.
  *Draining*: read and listed as before, but no new data is placed there. *Enable*: back to normal
  (the health probes still apply).
* ``POST /_geofed/admin/reload``: reload the configuration file (:mod:`geofed.live`); 200 with what
  changed, or 400 with the reason the new file was refused (the running configuration stays).
* ``POST /_geofed/admin/replicate`` (JSON body ``{"paths": [...], "to": "<endpoint>", "recursive":
  false, "parallel": 4}``): start a bulk replication job (:mod:`geofed.replication`); 202 with its
  ``id`` (200 with the id of the same job when it is still running). ``GET
  /_geofed/admin/replicate/<id>`` (``?items=0``: counts only): its progress and report; ``POST
  /_geofed/admin/replicate/<id>/cancel``: stop it.

**Who is an administrator**: an identity to which the policy's *rules* grant every privilege (read,
list, write, modify, delete, copy -- ``allow: [all]``) on ``/``. Token scopes do not count (they
grant storage access, never control of the service), and a limited proxy does not qualify (it is
not granted write unless ``auth.limited_proxies_may_write``). A client without credentials is
answered 401, any other refused identity 403. The API is open to anonymous clients only when the
policy gives anonymous clients everything on ``/`` (as the demo configuration does).

**The marks** are kept by endpoint name in this process (:class:`EndpointControl`), so they outlive
a reload; a mark on an endpoint that a reloaded configuration no longer has is forgotten. Under
``serve --workers N`` the workers share them through a file that the supervisor creates (and
unlinks at once: it disappears with the last process), and a worker that changes one asks the
supervisor to tell the others (SIGUSR1). They are not kept across a restart, and not shared with
other front ends through L2 (a cache, which may evict them): call each front end.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import asdict, dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

from aiohttp import web

from geofed.auth.identity import Identity, Privilege
from geofed.auth.policy import Policy
from geofed.errors import BadRequest, Forbidden, HTTPError, NotFound, Unauthorized
from geofed.health import ADMIN_MODES, AdminMode, EndpointState
from geofed.replication import JobRequest, ReplicationJob, Replicator
from geofed.runtime import Federation

if TYPE_CHECKING:
    from geofed.live import Generation, Live

log = logging.getLogger("geofed.admin")

ADMIN_ROOT = "/_geofed/admin"
ACTIONS: dict[str, AdminMode | None] = {"disable": "disabled", "drain": "draining", "enable": None}
_MAX_BODY = 4096


# -- the marks ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Mark:
    """An administrator's decision about one endpoint."""

    mode: AdminMode
    note: str | None
    by: str
    at: float


class EndpointControl:
    """The endpoint marks of this process, by endpoint name; with ``shared_fd`` (an open, unlinked
    file that the workers of one ``serve --workers N`` inherit from their supervisor), those of
    every worker: the file is the truth, read and rewritten under a POSIX record lock (per process,
    unlike ``flock``, whose lock the forked processes sharing one open file would all hold)."""

    def __init__(self, shared_fd: int | None = None) -> None:
        self.shared_fd = shared_fd
        self.marks: dict[str, Mark] = {}

    @property
    def shared(self) -> bool:
        return self.shared_fd is not None

    def update(self, name: str, mode: AdminMode | None, note: str | None, by: str) -> None:
        """Mark ``name`` (``mode``) or clear its mark (None)."""
        with self._edit() as marks:
            if mode is None:
                marks.pop(name, None)
            else:
                marks[name] = Mark(mode, note, by, time.time())

    def forget_except(self, names: set[str]) -> None:
        """Forget the marks of endpoints not in ``names`` (after a reload removed them)."""
        gone = [name for name in self.marks if name not in names]
        if not gone:
            return
        log.info("forgetting the marks of endpoints no longer configured: %s", ", ".join(sorted(gone)))
        with self._edit() as marks:
            for name in gone:
                marks.pop(name, None)

    def load_shared(self) -> bool:
        """Re-read the shared file (if any); whether the marks changed."""
        if self.shared_fd is None:
            return False
        with self._locked(fcntl.LOCK_SH) as fd:
            marks = _parse(_read_all(fd))
        changed = marks != self.marks
        self.marks = marks
        return changed

    def apply(self, federation: Federation, *, forget_missing: bool = False) -> None:
        """Set every endpoint of ``federation`` as the marks say. Disabling or enabling drops the
        cached locations and listings, which were made with or without that endpoint."""
        if forget_missing:
            self.forget_except(set(federation.endpoints))
        health = federation.health
        disabled_before = {name for name, state in health.states.items() if state.disabled}
        for name in federation.endpoints:
            mark = self.marks.get(name)
            health.set_admin(name, mark.mode if mark else None, mark.note if mark else None)
        disabled_after = {name for name, state in health.states.items() if state.disabled}
        if disabled_before != disabled_after:
            federation.locations_cache.clear()
            federation.listings_cache.clear()

    @contextlib.contextmanager
    def _edit(self) -> Iterator[dict[str, Mark]]:
        if self.shared_fd is None:
            marks = dict(self.marks)
            yield marks
            self.marks = marks
            return
        with self._locked(fcntl.LOCK_EX) as fd:
            marks = _parse(_read_all(fd))
            yield marks
            data = json.dumps({"marks": {n: asdict(m) for n, m in sorted(marks.items())}}).encode()
            os.ftruncate(fd, 0)
            os.pwrite(fd, data, 0)
        self.marks = marks

    @contextlib.contextmanager
    def _locked(self, how: int) -> Iterator[int]:
        fd = self.shared_fd
        assert fd is not None
        fcntl.lockf(fd, how)
        try:
            yield fd
        finally:
            fcntl.lockf(fd, fcntl.LOCK_UN)


def create_shared_fd() -> int:
    """An open, empty file only this process (and what it forks) can reach: created and unlinked
    at once, so it disappears with the last process holding it, however that process ends."""
    import tempfile

    fd, name = tempfile.mkstemp(prefix="geofed-endpoint-marks-", suffix=".json")
    os.unlink(name)
    return fd


def _read_all(fd: int) -> bytes:
    return os.pread(fd, os.fstat(fd).st_size, 0)


def _parse(raw: bytes) -> dict[str, Mark]:
    if not raw.strip():
        return {}
    try:
        marks = json.loads(raw)["marks"]
        return {
            str(name): Mark(value["mode"], value.get("note"), str(value.get("by", "?")), float(value["at"]))
            for name, value in marks.items()
            if value.get("mode") in ADMIN_MODES
        }
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        log.warning("unreadable endpoint marks (%s); treating them as none", exc)
        return {}


# -- what an endpoint's state is --------------------------------------------------------------------


def display_state(state: EndpointState) -> str:
    """``disabled``, ``down``, ``draining``, ``up`` or ``unknown`` (not probed yet)."""
    if state.disabled:
        return "disabled"
    if state.up is False:
        return "down"
    if state.draining:
        return "draining"
    return state.state


def endpoint_rows(federation: Federation) -> list[dict[str, Any]]:
    """One JSON object per endpoint: what ``GET /_geofed/admin/endpoints`` answers."""
    rows = []
    health = federation.health
    for name, endpoint in federation.endpoints.items():
        state = health.states[name]
        space = federation.space.space.get(name)
        settings = endpoint.settings
        admin: str | None = "disabled" if state.disabled else "draining" if state.draining else None
        rows.append(
            {
                "name": name,
                "kind": settings.kind,
                "state": display_state(state),
                "health": {None: "unknown", True: "up", False: "down"}[state.up],
                "admin": admin,
                "reason": health.unavailable.get(name) or health.unwritable.get(name) or "",
                "latency_ms": None if state.latency is None else round(state.latency * 1000, 2),
                "last_error": state.last_error,
                "last_check": state.last_check,
                "last_change": state.last_change,
                "readable": settings.readable,
                "listable": settings.listable,
                "writable": settings.writable,
                "space": None
                if space is None
                else {
                    "used_bytes": space.used,
                    "available_bytes": space.available,
                    "quota_bytes": settings.quota,
                },
            }
        )
    return rows


# -- authorization ----------------------------------------------------------------------------------


def is_admin(policy: Policy, identity: Identity) -> bool:
    """Whether the policy's rules grant ``identity`` every privilege on ``/`` (see the module doc)."""
    return all(policy.allows(identity, privilege, "/") for privilege in Privilege)


def who(identity: Identity) -> str:
    """The identity's name for the log (``anonymous`` rather than ``-``)."""
    return identity.label() if identity.authenticated else "anonymous"


def _refusal(identity: Identity) -> HTTPError:
    if not identity.authenticated:
        return Unauthorized(
            "authentication required: the admin API answers identities the policy grants every privilege on /"
        )
    return Forbidden(
        f"{identity.label()} is not an administrator: the policy does not grant it every privilege on /"
    )


# -- the routes -------------------------------------------------------------------------------------

_Action = Callable[["Live", "Generation", web.Request, Identity], Awaitable[web.Response]]


def register(app: web.Application, live: Live) -> None:
    """Add the admin routes; before the namespace's catch-all route."""

    def route(method: str, action: _Action) -> Callable[[web.Request], Awaitable[web.StreamResponse]]:
        async def handle(request: web.Request) -> web.StreamResponse:
            if request.method != method:  # every method is routed here, not to the namespace
                return web.json_response(
                    {"error": f"{request.method} is not allowed here; use {method}"},
                    status=405,
                    headers={"Allow": method},
                )
            generation = live.pin()
            gate = generation.frontend.gate
            try:
                identity = gate.known(request) or await gate.identify(request)
                if not is_admin(gate.policy, identity):
                    raise _refusal(identity)
                return await action(live, generation, request, identity)
            except HTTPError as exc:
                return web.json_response({"error": exc.detail}, status=exc.status, headers=exc.headers)

        return handle

    app.router.add_route("*", f"{ADMIN_ROOT}/endpoints", route("GET", _list))
    app.router.add_route("*", f"{ADMIN_ROOT}/endpoints/{{name}}/{{action}}", route("POST", _mark))
    app.router.add_route("*", f"{ADMIN_ROOT}/reload", route("POST", _reload))

    replicator = Replicator(lambda: live.current)
    app[REPLICATOR_KEY] = replicator

    async def stop_jobs(app: web.Application) -> None:  # before the federations close
        await replicator.aclose()

    app.on_shutdown.append(stop_jobs)
    jobs = f"{ADMIN_ROOT}/replicate"
    app.router.add_route("*", jobs, route("POST", partial(_replicate, replicator)))
    app.router.add_route("*", f"{jobs}/{{id}}", route("GET", partial(_replication, replicator)))
    app.router.add_route(
        "*", f"{jobs}/{{id}}/cancel", route("POST", partial(_cancel_replication, replicator))
    )


REPLICATOR_KEY = web.AppKey("replicator", Replicator)
"""The bulk replication jobs of this process."""
_MAX_JOB_BODY = 16 * 1024 * 1024


def _document(generation: Generation, live: Live) -> dict[str, Any]:
    return {
        "configuration": {
            "generation": generation.number,
            "file": None if live.config_path is None else str(live.config_path),
            "loaded_at": generation.loaded_at,
            "origin": generation.origin,
        },
        "endpoints": endpoint_rows(generation.federation),
    }


async def _list(live: Live, generation: Generation, request: web.Request, identity: Identity) -> web.Response:
    current = live.current  # the configuration in service, even if this request began before a reload
    if live.control.load_shared():  # another worker's change whose signal has not arrived yet
        live.control.apply(current.federation)
    return web.json_response(_document(current, live))


async def _mark(live: Live, generation: Generation, request: web.Request, identity: Identity) -> web.Response:
    name, action = request.match_info["name"], request.match_info["action"]
    if action not in ACTIONS:
        raise NotFound(f"unknown action {action!r}: use disable, drain or enable")
    federation = live.current.federation  # marks are made on the configuration in service
    if name not in federation.endpoints:
        raise NotFound(f"no endpoint named {name!r} (configured: {', '.join(federation.endpoints)})")
    note = await _reason(request)
    before = display_state(federation.health.states[name])
    live.mark(name, ACTIONS[action], note, who(identity))
    after = display_state(federation.health.states[name])
    log.info(
        "endpoint %s: %s by %s (%s -> %s)%s",
        name,
        action,
        who(identity),
        before,
        after,
        f": {note}" if note else "",
    )
    row = next(r for r in endpoint_rows(federation) if r["name"] == name)
    return web.json_response({"endpoint": row, "previous": before})


async def _reason(request: web.Request) -> str | None:
    """The optional ``{"reason": "..."}`` body of a mark."""
    if not request.body_exists:
        return None
    if request.content_length is not None and request.content_length > _MAX_BODY:
        raise BadRequest(f"the body is limited to {_MAX_BODY} bytes")
    body = await request.content.read(_MAX_BODY + 1)
    if len(body) > _MAX_BODY:
        raise BadRequest(f"the body is limited to {_MAX_BODY} bytes")
    if not body.strip():
        return None
    try:
        reason = json.loads(body).get("reason")
    except (ValueError, AttributeError):
        raise BadRequest('the body must be JSON: {"reason": "..."}') from None
    if reason is not None and not isinstance(reason, str):
        raise BadRequest('"reason" must be a string')
    return " ".join(reason.split())[:200] or None if reason else None


async def _reload(
    live: Live, generation: Generation, request: web.Request, identity: Identity
) -> web.Response:
    log.info("reload asked by %s", who(identity))
    outcome = await live.reload_everywhere(f"admin call by {who(identity)}")
    return web.json_response(outcome.as_json(), status=200 if outcome.ok else 400)


# -- bulk replication -------------------------------------------------------------------------------


async def _replicate(
    replicator: Replicator, live: Live, generation: Generation, request: web.Request, identity: Identity
) -> web.Response:
    if request.content_length is not None and request.content_length > _MAX_JOB_BODY:
        raise BadRequest(f"the body is limited to {_MAX_JOB_BODY} bytes")
    body = await request.content.read(_MAX_JOB_BODY + 1)
    if len(body) > _MAX_JOB_BODY:
        raise BadRequest(f"the body is limited to {_MAX_JOB_BODY} bytes")
    try:
        document = json.loads(body)
    except ValueError:
        raise BadRequest('the body must be JSON: {"paths": [...], "to": "<endpoint>"}') from None
    job, new = replicator.start(JobRequest.from_json(document), who(identity))
    answer = {"id": job.id, "new": new, "status": f"{ADMIN_ROOT}/replicate/{job.id}"}
    return web.json_response(answer, status=202 if new else 200)


def _job(replicator: Replicator, request: web.Request) -> ReplicationJob:
    job = replicator.jobs.get(request.match_info["id"])
    if job is None:
        raise NotFound(f"no replication job {request.match_info['id']!r} in this process")
    return job


async def _replication(
    replicator: Replicator, live: Live, generation: Generation, request: web.Request, identity: Identity
) -> web.Response:
    items = request.query.get("items", "1").lower() not in ("0", "false", "no")
    return web.json_response(_job(replicator, request).status(items=items))


async def _cancel_replication(
    replicator: Replicator, live: Live, generation: Generation, request: web.Request, identity: Identity
) -> web.Response:
    job = _job(replicator, request)
    if job.running:
        log.info("replication %s cancelled by %s", job.id, who(identity))
        await replicator.cancel(job)
    return web.json_response(job.status(items=False))
