"""The live configuration: what serves requests now, and how a reload replaces it without dropping one.

A :class:`Generation` is everything built from one ``Settings``: the :class:`~geofed.runtime.Federation`
(endpoints, health, caches, locator, L2), the front end (access gate and policy, listings) and the
data route. :class:`Live` holds the current one. The application's routes are fixed for the life of
the process; each is a small trampoline that, at the start of a request, takes the current
generation and hands the request to it, so the request runs from start to end on the objects it
started with, whatever happens meanwhile. Where one request passes through two handlers (an
upload's expect handler, then its body) or a route keeps a front end for good (the web UI), the
generation is *pinned* for the request in a context variable (aiohttp runs every request in a task
of its own), so both see the same one.

**A reload** (SIGHUP, ``POST /_geofed/admin/reload``) re-reads the configuration file geofed was
started with and checks it completely before anything changes: the YAML and its cross-checks, then
every file it names (policy file, member lists, the TLS certificate, key and CA locations); then it
builds the new generation and starts it (its endpoints are probed first, as at start). Any failure
refuses the reload, with the reason logged (and answered to an admin call), and the running
generation carries on untouched. Only when the new one is ready is it swapped in: one assignment,
so the next request sees the new settings.

**The old generation is retired, not closed**: its probe and space-polling loops stop at once, but
its endpoints, sessions, caches and gate stay open while the requests that were running at the swap
run on (a proxied download, a third-party copy: :func:`running_requests`). It is closed when they
are all done, or after :data:`RETIRE_TIMEOUT_S` at the most (those still running then fail as at a
shutdown's end). Nothing is counted per request: the running requests are looked up once, at the
swap.

What a reload cannot change in a running process is reported as needing a restart (and otherwise
ignored): the listening address (``server.host``, ``server.port``), turning TLS on or off, the TLS
verification settings fixed on the listening socket (``server.tls.client_certificates``, ``crl``,
``session_tickets``), the access log (``server.access_log``, ``access_log_format``) and the GeoIP
database the metrics use for their country label. A changed certificate or key is picked up for new
connections, and so are changed CA and CRL files: the listening context loads the new certificate,
and new handshakes switch to a freshly built context (through the SNI callback).

The administrator's endpoint marks (disabled, draining: :class:`~geofed.admin.EndpointControl`) are
kept by endpoint name across reloads.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import ssl
import time
from collections.abc import Awaitable
from contextvars import ContextVar
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from geofed.config import Settings, load_settings
from geofed.errors import ConfigError
from geofed.frontend.accesslog import RequestEvents
from geofed.frontend.dataroute import DataRoute
from geofed.frontend.handlers import FederationFrontEnd
from geofed.health import AdminMode
from geofed.runtime import Federation

if TYPE_CHECKING:
    from geofed.admin import EndpointControl
    from geofed.metrics import Metrics

log = logging.getLogger("geofed.reload")

RETIRE_TIMEOUT_S = 3600.0
"""The longest a replaced generation stays open for the requests still running on it."""
RETIRE_POLL_S = 0.2
RELAY_TIMEOUT_S = 120.0
"""How long an admin reload call in a worker waits for the reload the supervisor relays back."""

_PINNED: ContextVar[Generation | None] = ContextVar("geofed_generation", default=None)


# -- checking a configuration ---------------------------------------------------------------------


def check_files(settings: Settings) -> tuple[int, ssl.SSLContext | None]:
    """Read what ``auth`` and ``server.tls`` point at, so that a broken file is reported now (at
    start, by ``check-config``, or to refuse a reload); the number of policy rules and the TLS
    context built from ``server.tls`` (None without TLS). Raises ConfigError."""
    from geofed.auth.members import VOMemberList
    from geofed.auth.policy import load_policy_file
    from geofed.auth.tlsctx import server_context

    rules = len(settings.auth.policy)
    if settings.auth.policy_file is not None:
        rules += len(load_policy_file(settings.auth.policy_file))
    VOMemberList.from_settings(settings.auth.vo_members)
    context = server_context(settings.server.tls) if settings.server.tls is not None else None
    return rules, context


def load_checked(path: str | os.PathLike[str]) -> tuple[Settings, ssl.SSLContext | None]:
    """The settings of ``path`` with every file they name checked (see :func:`check_files`)."""
    settings = load_settings(path)
    _rules, context = check_files(settings)
    return settings, context


def restart_needed(old: Settings, new: Settings) -> list[str]:
    """What differs between ``old`` and ``new`` that a reload cannot apply (see the module doc)."""
    changes: list[str] = []

    def compare(key: str, before: object, after: object) -> None:
        if before != after:
            changes.append(f"{key} ({before!r} -> {after!r})")

    compare("server.host", old.server.host, new.server.host)
    compare("server.port", old.server.port, new.server.port)
    compare("server.access_log", old.server.access_log, new.server.access_log)
    compare("server.access_log_format", old.server.access_log_format, new.server.access_log_format)
    before_tls, after_tls = old.server.tls, new.server.tls
    if (before_tls is None) != (after_tls is None):
        changes.append(f"server.tls (turned {'on' if after_tls is not None else 'off'})")
    elif before_tls is not None and after_tls is not None:
        for key in ("client_certificates", "crl", "session_tickets"):
            compare(f"server.tls.{key}", getattr(before_tls, key), getattr(after_tls, key))
    if old.geoip.database != new.geoip.database:
        changes.append("geoip.database (for the metrics' country label; requests use the new one)")
    return changes


def describe_changes(old: Settings, new: Settings) -> list[str]:
    """A short account of what a reload changes in the endpoints, for the log and the admin call."""
    before = {e.name: e for e in old.endpoints}
    after = {e.name: e for e in new.endpoints}
    changes = [f"endpoint added: {name}" for name in after if name not in before]
    changes += [f"endpoint removed: {name}" for name in before if name not in after]
    changes += [
        f"endpoint changed: {name}" for name in after if name in before and after[name] != before[name]
    ]
    others = [
        key for key in Settings.model_fields if key != "endpoints" and getattr(old, key) != getattr(new, key)
    ]
    if others:
        changes.append(f"settings changed: {', '.join(others)}")
    return changes


@dataclass(frozen=True, slots=True)
class ReloadOutcome:
    """What a reload did: ``ok`` and the new generation, or the reason it was refused."""

    ok: bool
    generation: int
    trigger: str
    error: str | None = None
    changes: tuple[str, ...] = ()
    restart_needed: tuple[str, ...] = ()

    def as_json(self) -> dict[str, Any]:
        return {
            "reloaded": self.ok,
            "generation": self.generation,
            "trigger": self.trigger,
            "error": self.error,
            "changes": list(self.changes),
            "restart_needed": list(self.restart_needed),
        }


# -- generations ----------------------------------------------------------------------------------


@dataclass(eq=False)
class Generation:
    """Everything built from one Settings, and the requests running on it."""

    number: int
    settings: Settings
    federation: Federation
    frontend: FederationFrontEnd
    data_route: DataRoute
    origin: str
    loaded_at: float = field(default_factory=time.time)
    requests: list[asyncio.Task[Any]] = field(default_factory=list)
    """Once replaced: the request tasks that were running when it was (see :func:`running_requests`)."""
    _closing: asyncio.Future[None] | None = None

    @classmethod
    async def create(cls, number: int, settings: Settings, events: RequestEvents, origin: str) -> Generation:
        """Build (not start) a generation; on failure, what was built is closed again."""
        federation = Federation(settings)
        try:
            frontend = FederationFrontEnd(federation, settings.server, events)
            data_route = DataRoute(federation, events, frontend.client_address)
        except BaseException:
            await federation.stop()
            raise
        return cls(number, settings, federation, frontend, data_route, origin)

    def busy(self) -> int:
        """Requests still running on this generation."""
        return sum(1 for task in self.requests if not task.done())

    @property
    def closed(self) -> bool:
        return self._closing is not None

    async def close(self) -> None:
        """Close everything (once; a second call waits for the first, which a cancellation of the
        caller does not interrupt)."""
        if self._closing is None:
            self._closing = asyncio.ensure_future(self._close())
        await asyncio.shield(self._closing)

    async def _close(self) -> None:
        await self.frontend.gate.close()
        await self.federation.stop()


# -- the live state -------------------------------------------------------------------------------


@dataclass
class SupervisorLink:
    """A worker's way to its supervisor (``serve --workers N``): a reload asked of one worker is
    relayed (SIGHUP) to every worker, and so is a change of the endpoint marks (SIGUSR1), which
    the workers share through the file open as ``marks_fd``."""

    pid: int
    marks_fd: int | None = None

    def relay(self, signum: int) -> None:
        os.kill(self.pid, signum)


class Live:
    """The current generation, the reload that replaces it, and the retirement of the old ones."""

    def __init__(
        self,
        first: Generation,
        *,
        events: RequestEvents,
        control: EndpointControl,
        metrics: Metrics | None = None,
        config_path: str | os.PathLike[str] | None = None,
        probe_first: bool = True,
        tls: ssl.SSLContext | None = None,
        supervisor: SupervisorLink | None = None,
        handle_signals: bool = False,
    ) -> None:
        self.current = first
        self.events = events
        self.control = control
        self.metrics = metrics
        self.config_path = Path(config_path).absolute() if config_path is not None else None
        self.probe_first = probe_first
        self.tls = tls
        """The listening socket's context: a reload loads the new certificate into it."""
        self._tls_latest: ssl.SSLContext | None = tls
        self.supervisor = supervisor
        self.handle_signals = handle_signals
        self.retire_timeout = RETIRE_TIMEOUT_S
        self._lock = asyncio.Lock()
        self._retiring: dict[Generation, asyncio.Task[None]] = {}
        self._signal_reload_queued = False
        self._background: set[asyncio.Task[Any]] = set()
        self._waiters: list[asyncio.Future[ReloadOutcome]] = []
        self._signals: list[int] = []

    # -- pinning (every request) ----------------------------------------------------------------

    def pin(self) -> Generation:
        """The generation this request runs on: the current one at its first call, then the same."""
        generation = _PINNED.get()
        if generation is None:
            generation = self.current
            _PINNED.set(generation)
        return generation

    # The two hot routes only read the pin (set by an expect handler before them), and otherwise
    # take the current generation without setting it: the handler they call holds it to the end.

    async def dispatch(self, request: web.Request) -> web.StreamResponse:
        """The federated namespace's handler (the catch-all route)."""
        return await (_PINNED.get() or self.current).frontend.dispatch(request)

    async def expect_handler(self, request: web.Request) -> web.StreamResponse | None:
        """Pinned: the upload's body, if asked for, is then handled by the same generation."""
        return await self.pin().frontend.expect_handler(request)

    async def data(self, request: web.Request) -> web.StreamResponse:
        """The data route of local endpoints."""
        return await (_PINNED.get() or self.current).data_route.handle(request)

    def federation(self) -> Federation:
        """The federation of this request's generation."""
        return self.pin().federation

    def frontend_view(self) -> FederationFrontEnd:
        """A stand-in for the front end where a caller keeps one for good (the web UI's routes):
        each attribute is that of the request's pinned generation."""
        return cast(FederationFrontEnd, _CurrentFrontEnd(self))

    # -- start and stop -------------------------------------------------------------------------

    async def start(self) -> None:
        self.control.load_shared()
        self.control.apply(self.current.federation)
        await self.current.federation.start(probe_first=self.probe_first)
        if self.handle_signals:
            loop = asyncio.get_running_loop()
            loop.add_signal_handler(signal.SIGHUP, self._on_sighup)
            self._signals.append(signal.SIGHUP)
            if self.supervisor is not None:
                loop.add_signal_handler(signal.SIGUSR1, self._on_marks_changed)
                self._signals.append(signal.SIGUSR1)

    async def stop(self) -> None:
        """Close every generation, the current one and those still retiring."""
        loop = asyncio.get_running_loop()
        for signum in self._signals:
            loop.remove_signal_handler(signum)
        self._signals.clear()
        generations = [*self._retiring, self.current]
        tasks = [*self._background, *self._retiring.values()]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        generations += [*self._retiring, self.current]  # a cancelled reload may have swapped meanwhile
        for generation in dict.fromkeys(generations):
            await generation.close()
        self._retiring.clear()
        for waiter in self._waiters:
            if not waiter.done():
                waiter.cancel()

    # -- signals --------------------------------------------------------------------------------

    def _on_sighup(self) -> None:
        if self._signal_reload_queued:
            return  # one is waiting for the lock already: it will read the file as it is then
        self._signal_reload_queued = True
        self._spawn(self._signal_reload())

    async def _signal_reload(self) -> None:
        async with self._lock:
            self._signal_reload_queued = False
            await self._reload_locked("SIGHUP")

    def _on_marks_changed(self) -> None:
        """SIGUSR1 from the supervisor: another worker changed the endpoint marks."""
        if self.control.load_shared():
            self.control.apply(self.current.federation)

    def _spawn(self, coro: Awaitable[Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- reload ---------------------------------------------------------------------------------

    async def reload(self, trigger: str) -> ReloadOutcome:
        """Reload the configuration file in this process now (see the module doc)."""
        async with self._lock:
            return await self._reload_locked(trigger)

    async def reload_everywhere(self, trigger: str) -> ReloadOutcome:
        """Reload in this process and, under a supervisor, in every worker: the file is checked
        here first (a bad one is refused at once); then the supervisor relays a SIGHUP to every
        worker, this one included, and the answer is this worker's outcome of it."""
        if self.supervisor is None:
            return await self.reload(trigger)
        refused = await self._check_file(trigger)
        if refused is not None:
            return refused
        waiter: asyncio.Future[ReloadOutcome] = asyncio.get_running_loop().create_future()
        self._waiters.append(waiter)
        try:
            self.supervisor.relay(signal.SIGHUP)
        except ProcessLookupError:
            self._waiters.remove(waiter)
            return self._refused(trigger, "the supervisor has gone: this worker is stopping")
        try:
            outcome = await asyncio.wait_for(waiter, RELAY_TIMEOUT_S)
        except TimeoutError:
            return self._refused(
                trigger, f"the supervisor did not relay the reload within {RELAY_TIMEOUT_S:g} s"
            )
        return dataclasses.replace(outcome, trigger=f"{trigger}, relayed to every worker")

    async def _check_file(self, trigger: str) -> ReloadOutcome | None:
        if self.config_path is None:
            return self._refused(trigger, "geofed was started without --config: there is no file to reload")
        try:
            await asyncio.to_thread(load_checked, self.config_path)
        except ConfigError as exc:
            return self._refused(trigger, str(exc))
        return None

    def _refused(self, trigger: str, reason: str) -> ReloadOutcome:
        log.error("reload (%s) refused, the running configuration stays: %s", trigger, reason)
        return ReloadOutcome(False, self.current.number, trigger, error=reason)

    async def _reload_locked(self, trigger: str) -> ReloadOutcome:
        waiters, self._waiters = self._waiters, []
        try:
            outcome = await self._replace(trigger)
        except BaseException:
            self._waiters.extend(waiters)
            raise
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(outcome)
        return outcome

    async def _replace(self, trigger: str) -> ReloadOutcome:
        if self.config_path is None:
            return self._refused(trigger, "geofed was started without --config: there is no file to reload")
        log.info("reload (%s): reading %s", trigger, self.config_path)
        try:
            settings, tls = await asyncio.to_thread(load_checked, self.config_path)
        except ConfigError as exc:
            return self._refused(trigger, str(exc))
        except Exception as exc:  # an unexpected failure must refuse, not kill the process
            log.exception("reload (%s): reading the configuration raised", trigger)
            return self._refused(trigger, f"cannot read the configuration: {type(exc).__name__}: {exc}")
        old = self.current
        try:
            new = await Generation.create(old.number + 1, settings, self.events, trigger)
        except Exception as exc:
            if not isinstance(exc, ConfigError):
                log.exception("reload (%s): building the new configuration raised", trigger)
            return self._refused(trigger, f"cannot apply the configuration: {exc}")
        swapped = False
        try:
            try:
                self.control.apply(new.federation, forget_missing=True)
                await new.federation.start(probe_first=self.probe_first)
            except Exception as exc:
                log.exception("reload (%s): starting the new configuration raised", trigger)
                return self._refused(
                    trigger, f"cannot start the new configuration: {type(exc).__name__}: {exc}"
                )
            restart = restart_needed(old.settings, settings)
            self._switch_tls(settings, tls, restart)
            # The swap: from the next request on, everything is the new generation's.
            self.current = new
            swapped = True
        finally:
            if not swapped:  # refused, failed or cancelled (geofed stopping) before the swap
                await new.close()
        old.requests = running_requests()
        if self.metrics is not None:
            _adopt_metrics(self.metrics, new.federation)
        self._retiring[old] = asyncio.create_task(self._retire(old), name=f"retire:{old.number}")
        outcome = ReloadOutcome(
            True,
            new.number,
            trigger,
            changes=tuple(describe_changes(old.settings, settings)),
            restart_needed=tuple(restart),
        )
        log.info(
            "reload (%s): configuration %d in service in process %d (%d endpoints)%s%s",
            trigger,
            new.number,
            os.getpid(),
            len(settings.endpoints),
            "; " + "; ".join(outcome.changes) if outcome.changes else "; nothing changed",
            f"; needs a restart to change: {', '.join(restart)}" if restart else "",
        )
        return outcome

    def _switch_tls(self, settings: Settings, context: ssl.SSLContext | None, restart: list[str]) -> None:
        """New handshakes use the new certificate, key, CAs and CRLs."""
        tls = settings.server.tls
        if self.tls is None or tls is None or context is None:
            return
        try:
            self.tls.load_cert_chain(str(tls.cert), str(tls.key))
        except (OSError, ssl.SSLError) as exc:  # checked a moment ago: the files changed again
            restart.append(f"server.tls.cert (cannot load it now: {exc})")
            return
        self._tls_latest = context
        if self.tls.sni_callback is None:
            self.tls.sni_callback = self._use_latest_tls

    def _use_latest_tls(self, connection: Any, _server_name: str | None, _context: ssl.SSLContext) -> None:
        """SNI callback of the listening context (called on every handshake, with or without SNI):
        switch the connection to the context of the latest configuration (its certificate, CAs,
        CRLs). The verification mode and flags stay those of the listening context (OpenSSL keeps
        them per connection), which is why changing them needs a restart."""
        latest = self._tls_latest
        if latest is not None and latest is not self.tls:
            with contextlib.suppress(Exception):
                connection.context = latest
        return None

    async def _retire(self, old: Generation) -> None:
        """Stop the old generation's background work now; close it once its requests are done."""
        try:
            await old.federation.quiesce()
            loop = asyncio.get_running_loop()
            deadline = loop.time() + self.retire_timeout
            while old.busy() and loop.time() < deadline:
                await asyncio.sleep(RETIRE_POLL_S)
            busy = old.busy()
            if busy:
                log.warning(
                    "configuration %d: %d requests still running after %.0f s; closing it anyway",
                    old.number,
                    busy,
                    self.retire_timeout,
                )
            await old.close()
            log.info("configuration %d closed (replaced by %d)", old.number, self.current.number)
        finally:
            self._retiring.pop(old, None)

    # -- endpoint marks -------------------------------------------------------------------------

    def mark(self, name: str, mode: AdminMode | None, note: str | None, by: str) -> None:
        """Disable, drain (``mode``) or enable (None) endpoint ``name`` of the current configuration;
        other workers are told."""
        self.control.update(name, mode, note, by)
        self.control.apply(self.current.federation)
        if self.supervisor is not None and self.control.shared:
            with contextlib.suppress(ProcessLookupError):
                self.supervisor.relay(signal.SIGUSR1)


def running_requests() -> list[asyncio.Task[Any]]:
    """The tasks of the requests being handled now: aiohttp runs each request in a task of its own
    (so that context variables, the pin among them, are per request), whose coroutine is
    ``RequestHandler._handle_request``. A replaced generation waits for these: a request that began
    before the swap may be using it, one that begins after cannot (requests are pinned, or hold
    the generation they started with, from their first step). Looking them up once per reload
    costs the request path nothing."""
    return [
        task
        for task in asyncio.all_tasks()
        if getattr(task.get_coro(), "cr_code", None) is _REQUEST_CODE and not task.done()
    ]


_REQUEST_CODE = RequestHandler._handle_request.__code__


class _CurrentFrontEnd:
    """See :meth:`Live.frontend_view`."""

    __slots__ = ("_live",)

    def __init__(self, live: Live) -> None:
        self._live = live

    def __getattr__(self, name: str) -> Any:
        return getattr(self._live.pin().frontend, name)


def _adopt_metrics(metrics: Metrics, federation: Federation) -> None:
    """Point the process's metrics (their counters survive reloads) at the new federation."""
    from geofed.metrics import _count_lookups

    metrics.federation = federation
    if federation.shared is not None:
        _count_lookups(federation.shared.cache, metrics.l2_lookups)
