"""``geofed serve --workers N``: N processes serving one port, under a supervisor that binds it.

One geofed process saturates one core (the warm redirect path is pure Python on one event loop), so
using a machine's other cores takes more processes. This module runs them.

**The supervisor binds; workers only inherit.** The supervisor (the process the user started)
binds every listening socket and calls ``listen()`` on it before any worker exists; a worker serves the
sockets it inherited (``web.SockSite``) and never binds. So a bind error is reported once, before
anything is forked; ``port: 0`` picks one free port for all; a connection that arrives while the
workers start waits in a queue instead of being refused; and, because the supervisor keeps its
copies open, the port stays bound while a dead worker is replaced.

**A SO_REUSEPORT socket per worker, not one shared socket.** Both were built and measured
(``bench/workers.py``; figures in bench/README.md, "Workers"). With one socket shared by all
workers, a new connection wakes every idle worker and whichever runs first accepts everything
queued (libuv accepts until ``EAGAIN``). When wrk opened its 32 keep-alive connections at once, the
split between two workers was mostly lopsided (27/5, 29/3, 31/1, ...), and in 6 of 35 rounds one
worker got none at all: for the life of those connections the pair served no more than one worker
(about 38k req/s instead of 53-57k). A reverse proxy opening its pool of keep-alive connections
to geofed would be exposed the same way. With one socket per worker in a ``SO_REUSEPORT`` group,
the kernel hashes each connection to one of them: from 10/22 to 16/16, never all on one. The
shared socket does better on average when every request opens a new connection (1.35-1.38 times
one worker, against 1.15-1.32), because an idle worker takes the next connection where hashing
ignores load; with keep-alive the medians are within a few percent. The worst case decides. The
costs of ``SO_REUSEPORT``:

* a connection hashed to a dead worker's socket waits in that socket's queue until the replacement
  accepts it (the supervisor still holds the socket, so it is neither refused nor reset); a
  replacement is one fork plus the application's start-up;
* another program of the same user that sets ``SO_REUSEPORT`` could join the group and receive part
  of the traffic (Linux lets only the same effective UID join). geofed itself does not: before
  binding its group it binds the port plainly, which fails when anything listens there, so a second
  geofed started on the same port stops with "Address already in use" as it would without workers.

``SO_REUSEPORT`` balances this way only on Linux; elsewhere the workers share one socket
(:func:`reuse_port_balances`). A worker closes the copies it inherited of the other workers'
sockets, so that a stopped worker's socket does not stay open (queueing connections for nobody) in
its siblings.

**fork, after binding, before any event loop or thread.** Workers are started with
multiprocessing's ``fork`` start method. When the supervisor forks it has loaded the settings and
bound the sockets, and nothing else: no event loop, no thread, no client session, no open endpoint.
That is what makes ``fork`` safe here (fork is unsafe when another thread may hold a lock, or when
the child would inherit a running loop's selector and wake-up fds). Every worker builds its own
application, event loop (uvloop) and endpoint connections after the fork. Compared with ``spawn``,
fork hands the sockets over as plain inherited descriptors, starts a worker in milliseconds (no
re-import, which also makes a restart quick), and gives every worker the very same ``Settings``
object, including anything random in it: the demo configuration's signing secret is generated
once, so a URL signed by one worker verifies on any other.

Each worker is a full geofed: its own locate cache, health probes (N workers probe every endpoint
N times as often) and ``/_geofed/status``. Its access-log lines go to the shared stderr.

**Signals.** SIGTERM or SIGINT to the supervisor: it closes its own copies of the listening sockets,
sends SIGTERM to every worker once and waits for them (bounded by the workers' shutdown timeout plus
:data:`CLEANUP_GRACE_S`; a worker still there then is killed). A worker, on SIGTERM, closes the
listening socket first (so that, once all have, new connections are refused, not queued for
nobody), closes idle keep-alive connections, lets in-flight requests finish -- uploads whose body
is still arriving included, which aiohttp's graceful shutdown alone would cut (see :func:`_drain`)
-- for at most ``shutdown_timeout`` (:data:`SHUTDOWN_TIMEOUT_S`), runs the application's cleanup
(flushes the access log, closes endpoints) and exits 0. Workers ignore SIGINT: a Ctrl-C in a
terminal reaches the whole process group, and the supervisor's SIGTERM is the one that counts (a
worker also ignores a second SIGTERM while it stops). A worker whose supervisor has gone (SIGKILL)
notices within a second (its parent PID changes) and stops gracefully rather than serving on
unsupervised.

**Reload.** SIGHUP to the supervisor: it re-reads the configuration file (when it is good, the
workers it forks from then on get the new settings; when not, it logs why) and sends SIGHUP to every
worker, which reloads by itself (:mod:`geofed.live`: checked first, in-flight requests finish on the
old settings). A worker asked to reload by an admin call checks the file, then sends SIGHUP to the
supervisor, so that every worker reloads. The administrator's endpoint marks (``geofed endpoints
disable``) live in a file the supervisor creates and unlinks at once (the workers inherit it open);
a worker that changes one sends SIGUSR1 to the supervisor, which sends it on to every worker to
re-read the file. A worker's SIGHUP and SIGUSR1 stay blocked until its application has started, so
one sent meanwhile waits instead of killing it.

**Restarts.** A worker that exits while the supervisor is not stopping is replaced by a fresh fork,
immediately the first time, then with a growing delay. More than :data:`MAX_RESTARTS` restarts
within :data:`RESTART_WINDOW_S` means something is persistently wrong (a crash at start-up would
otherwise loop forever): the supervisor then stops the remaining workers and exits 1, for a process
manager (systemd, Kubernetes) to see and report.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import multiprocessing.connection
import os
import signal
import socket
import sys
import time
from collections import deque
from dataclasses import dataclass
from multiprocessing.context import ForkProcess
from typing import Any

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from geofed.config import Settings

log = logging.getLogger("geofed.workers")

SHUTDOWN_TIMEOUT_S = 10.0
"""How long a stopping worker lets in-flight requests run before closing their connections."""
CLEANUP_GRACE_S = 5.0
"""Added to the shutdown timeout for the application's own cleanup before a worker is killed."""
KILL_WAIT_S = 5.0
MAX_RESTARTS = 5
RESTART_WINDOW_S = 60.0
FIRST_BACKOFF_S = 0.5
MAX_BACKOFF_S = 5.0
BACKLOG = 128
"""The listen backlog, aiohttp's default (``web.run_app``)."""
KEEPALIVE_TIMEOUT_S = 75.0
"""Idle keep-alive connections are closed after this, as ``web.run_app`` does by default."""
ORPHAN_CHECK_S = 1.0
DRAIN_POLL_S = 0.05
FINAL_SHUTDOWN_S = 1.0
"""aiohttp's own shutdown timeout after :func:`_drain` has already waited for the requests."""
_STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)
_RELAYED_SIGNALS = (signal.SIGHUP, signal.SIGUSR1)
"""Relayed by the supervisor to every worker: reload the configuration; re-read the endpoint marks."""


@dataclass
class Listeners:
    """The listening sockets, all bound by the supervisor before any worker exists.

    ``groups[i]`` holds one socket per listening address. With ``reuse_port`` there is a group per
    worker slot (all in one ``SO_REUSEPORT`` group per address, so the kernel spreads connections
    over them); without it, one group that every worker shares.
    """

    groups: list[list[socket.socket]]
    reuse_port: bool

    def for_slot(self, slot: int) -> list[socket.socket]:
        return self.groups[slot] if self.reuse_port else self.groups[0]

    @property
    def port(self) -> int:
        port: int = self.groups[0][0].getsockname()[1]
        return port

    def close(self) -> None:
        for group in self.groups:
            for sock in group:
                sock.close()


def reuse_port_balances() -> bool:
    """Whether ``SO_REUSEPORT`` spreads connections over the sockets of a group (Linux >= 3.9).

    Elsewhere (macOS, the BSDs without ``SO_REUSEPORT_LB``) it does not balance, so workers share
    one socket instead.
    """
    return sys.platform.startswith("linux") and hasattr(socket, "SO_REUSEPORT")


def bind_listeners(host: str, port: int, slots: int = 1, backlog: int = BACKLOG) -> Listeners:
    """Bind and listen on every address ``host`` resolves to, like ``web.run_app(host=...)``.

    With ``slots`` > 1 and :func:`reuse_port_balances`, each address gets one socket per worker
    slot in a ``SO_REUSEPORT`` group; otherwise one socket per address. The sockets listen as soon
    as they are bound, so a connection that arrives before the workers are up waits in a queue
    instead of being refused. With ``port`` 0 the first socket picks a free port and the others
    reuse it. Raises ``OSError`` (e.g. "Address already in use").
    """
    reuse_port = slots > 1 and reuse_port_balances()
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    addresses = list({(info[0], str(info[4][0])): info for info in infos}.values())
    if not addresses:
        raise OSError(f"{host!r} resolves to no address to listen on")
    if reuse_port:
        # SO_REUSEPORT would let this bind join a group that another process of ours already
        # listens with (a second geofed started on the same port would silently take half of the
        # first one's connections). A plain bind first fails as usual when the port is taken; it
        # also picks the port when asked for any.
        with _socket_for(addresses[0]) as probe:
            probe.bind(_with_port(addresses[0][4], port))
            port = probe.getsockname()[1]
        for info in addresses[1:]:
            with _socket_for(info) as probe:
                probe.bind(_with_port(info[4], port))
    groups: list[list[socket.socket]] = [[] for _ in range(slots if reuse_port else 1)]
    try:
        for group in groups:
            for info in addresses:
                sock = _socket_for(info)
                group.append(sock)
                if reuse_port:
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
                if port == 0 and groups[0][0] is not sock:
                    port = groups[0][0].getsockname()[1]
                sock.bind(_with_port(info[4], port))
                sock.listen(backlog)  # close-on-exec stays set: fork inherits it, an exec'd program must not
    except BaseException:
        Listeners(groups, reuse_port).close()
        raise
    return Listeners(groups, reuse_port)


_AddrInfo = tuple[socket.AddressFamily, socket.SocketKind, int, str, tuple[Any, ...]]


def _socket_for(info: _AddrInfo) -> socket.socket:
    family, kind, proto = info[0], info[1], info[2]
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # rebind over TIME_WAIT
    if family == socket.AF_INET6:  # as asyncio does: IPv4 addresses get their own socket
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
    return sock


def _with_port(address: tuple[Any, ...], port: int) -> tuple[Any, ...]:
    return (address[0], port, *address[2:])


def listener_url(sock: socket.socket) -> str:
    """``http://host:port/`` of a bound socket (IPv6 addresses in brackets)."""
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/"


# -- the worker (runs in the forked child) --------------------------------------------------------


@dataclass(frozen=True)
class WorkerSpec:
    """Everything a forked worker needs; inherited through fork, never pickled."""

    settings: Settings
    sockets: tuple[socket.socket, ...]
    supervisor_pid: int
    shutdown_timeout: float = SHUTDOWN_TIMEOUT_S
    others: tuple[socket.socket, ...] = ()
    """The other slots' sockets: a worker must not keep them listening (see worker_main)."""
    close_fds: tuple[int, ...] = ()
    """The supervisor's own descriptors (its signal wake-up pipe) that a worker must not keep."""
    config_path: str | None = None
    """The configuration file a reload re-reads (None: the demo, nothing to reload)."""
    marks_fd: int | None = None
    """The open file of the endpoint marks shared by the workers (see :mod:`geofed.admin`)."""


def worker_main(spec: WorkerSpec) -> None:
    """Entry point of a worker process, right after the fork.

    The supervisor forks with SIGTERM and SIGINT blocked, so a SIGTERM sent at that moment waits
    until this process has dropped the supervisor's handler and wake-up pipe; with the default
    action restored, a SIGTERM that arrives before the event loop handles it ends a worker that has
    not accepted anything yet, which is the right outcome.

    The copies of the other slots' sockets are closed at once: held here, they would keep
    another worker's socket listening (its connections queued for nobody) after that worker
    stopped.
    """
    signal.set_wakeup_fd(-1)
    for sock in spec.others:
        sock.close()
    for fd in spec.close_fds:
        with contextlib.suppress(OSError):
            os.close(fd)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    for sig in _RELAYED_SIGNALS:  # still blocked: unblocked once the application handles them
        signal.signal(sig, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _STOP_SIGNALS)
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(_serve(spec))


def _loop_factory() -> type[asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
        return None
    return uvloop.Loop


async def _serve(spec: WorkerSpec) -> None:
    """Serve the inherited sockets until SIGTERM (or the supervisor's death), then stop gracefully."""
    from geofed.app import build_app  # after the fork: nothing of the app exists in the supervisor
    from geofed.auth.tlsctx import server_context
    from geofed.live import SupervisorLink

    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    loop.add_signal_handler(signal.SIGTERM, stop.set)
    pid = os.getpid()
    drain = _can_drain()
    tls = server_context(spec.settings.server.tls) if spec.settings.server.tls is not None else None
    app = build_app(
        spec.settings,
        config_path=spec.config_path,
        tls_context=tls,
        supervisor=SupervisorLink(spec.supervisor_pid, spec.marks_fd),
        handle_signals=True,
    )
    runner = web.AppRunner(
        app,
        access_log=None,
        shutdown_timeout=FINAL_SHUTDOWN_S if drain else spec.shutdown_timeout,
        keepalive_timeout=KEEPALIVE_TIMEOUT_S,
    )
    await runner.setup()  # the application's start-up: endpoint probes, health loop, access log
    signal.pthread_sigmask(signal.SIG_UNBLOCK, _RELAYED_SIGNALS)  # handled by the application now
    sites = [web.SockSite(runner, sock, backlog=BACKLOG, ssl_context=tls) for sock in spec.sockets]
    watchdog = asyncio.create_task(_watch_supervisor(spec.supervisor_pid, stop))
    try:
        if not stop.is_set():
            for site in sites:
                await site.start()
            urls = ", ".join(listener_url(sock) for sock in spec.sockets)
            log.info("worker %d serving %s", pid, urls)
            await stop.wait()
            log.info("worker %d stopping: no new connections, in-flight requests may finish", pid)
    finally:
        watchdog.cancel()
        # Stop accepting before waiting for in-flight requests, and drop this process's reference
        # to the listening socket, so that once every worker has done so connections are refused.
        for site in sites:
            with contextlib.suppress(RuntimeError):  # never started
                await site.stop()
        for sock in spec.sockets:
            sock.close()  # the loop has already closed it (uvloop detaches it): this is a safety net
        if drain and runner.server is not None:
            await _drain(runner.server, spec.shutdown_timeout)
        await runner.cleanup()  # closes what is left (bounded), then the application's cleanup
    log.info("worker %d stopped", pid)


def _can_drain() -> bool:
    """Whether this aiohttp's connection handler has the wait state :func:`_drain` reads."""
    return hasattr(RequestHandler, "_waiter")


async def _drain(server: web.Server, timeout: float) -> None:
    """Let requests in progress finish (bounded by ``timeout``), closing connections once idle.

    Why not only aiohttp's graceful shutdown: it first marks every connection closing, and a
    closing connection discards the bytes that still arrive (aiohttp issue #2298), so an upload
    whose body is still streaming in would hang until the timeout and then be cut. Here a
    connection is closed only when it is idle, i.e. waiting for its next request -- the state
    aiohttp's own keep-alive timer checks (``RequestHandler._waiter`` pending) before it closes
    one. Busy connections keep reading until their response is sent. Only this test of the
    handler's private state depends on aiohttp's internals; without it (:func:`_can_drain`),
    aiohttp's shutdown alone runs, with the full timeout.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        busy = 0
        for handler in server.connections:
            if handler.transport is None:
                # The client has gone (the task may linger a while on an unread body): nothing
                # is left to deliver, and aiohttp's shutdown ends it at once.
                continue
            waiter = handler._waiter
            if waiter is not None and not waiter.done():
                handler.force_close()
            else:
                busy += 1
        if not busy or loop.time() >= deadline:
            if busy:
                log.warning("worker %d: %d requests still running after %.0f s", os.getpid(), busy, timeout)
            return
        await asyncio.sleep(DRAIN_POLL_S)


async def _watch_supervisor(supervisor_pid: int, stop: asyncio.Event) -> None:
    """Stop when the supervisor has gone (the worker was re-parented): nobody would stop us later."""
    while not stop.is_set():
        await asyncio.sleep(ORPHAN_CHECK_S)
        if os.getppid() != supervisor_pid:
            log.warning("worker %d: supervisor %d has gone; stopping", os.getpid(), supervisor_pid)
            stop.set()


# -- the supervisor -------------------------------------------------------------------------------


class RestartBudget:
    """At most ``limit`` restarts within any ``window`` seconds, each later one after a longer delay."""

    def __init__(
        self,
        limit: int = MAX_RESTARTS,
        window: float = RESTART_WINDOW_S,
        first_backoff: float = FIRST_BACKOFF_S,
        max_backoff: float = MAX_BACKOFF_S,
    ) -> None:
        self.limit = limit
        self.window = window
        self.first_backoff = first_backoff
        self.max_backoff = max_backoff
        self._times: deque[float] = deque()

    def recent(self, now: float) -> int:
        while self._times and self._times[0] <= now - self.window:
            self._times.popleft()
        return len(self._times)

    def take(self, now: float) -> float | None:
        """Spend one restart: the delay before it, or None when the budget is exhausted."""
        recent = self.recent(now)
        if recent >= self.limit:
            return None
        self._times.append(now)
        if recent == 0:
            return 0.0
        return min(self.max_backoff, self.first_backoff * 2.0 ** (recent - 1))


class Supervisor:
    """Forks the workers, replaces the ones that die, and stops them all on SIGTERM/SIGINT.

    Worker ``i`` serves slot ``i`` of the listeners; its replacement gets the same slot, whose
    sockets the supervisor kept open meanwhile. The supervisor is deliberately synchronous: an
    event loop here would be inherited by every fork. It sleeps in
    ``multiprocessing.connection.wait`` on the workers' exit sentinels and on the signal wake-up
    pipe, so it reacts at once to a worker's death and to a signal.
    """

    def __init__(
        self,
        settings: Settings,
        listeners: Listeners,
        workers: int,
        *,
        shutdown_timeout: float = SHUTDOWN_TIMEOUT_S,
        budget: RestartBudget | None = None,
        config_path: str | None = None,
    ) -> None:
        if workers < 1:
            raise ValueError("workers must be at least 1")
        if listeners.reuse_port and len(listeners.groups) != workers:
            raise ValueError(f"{len(listeners.groups)} listener slots for {workers} workers")
        self.settings = settings
        self.listeners = listeners
        self.count = workers
        self.shutdown_timeout = shutdown_timeout
        self.budget = budget or RestartBudget()
        self._context = multiprocessing.get_context("fork")
        self._workers: dict[int, ForkProcess] = {}  # slot -> its worker
        self._due: list[tuple[float, int]] = []  # (monotonic time, slot) of replacements to fork
        self._stop_signal: int | None = None
        self.config_path = config_path
        self._relay: list[int] = []  # SIGHUP / SIGUSR1 received, to handle and pass on
        self._marks_fd: int | None = None
        self._wake_r = -1
        self._wake_w = -1

    def run(self) -> int:
        """Serve until told to stop; the exit status (0: a clean stop)."""
        self._wake_r, self._wake_w = os.pipe()
        os.set_blocking(self._wake_r, False)
        os.set_blocking(self._wake_w, False)
        from geofed.admin import create_shared_fd

        self._marks_fd = create_shared_fd()
        previous = {sig: signal.signal(sig, self._on_signal) for sig in _STOP_SIGNALS}
        previous.update({sig: signal.signal(sig, self._on_relayed) for sig in _RELAYED_SIGNALS})
        previous_fd = signal.set_wakeup_fd(self._wake_w)
        try:
            how = "a SO_REUSEPORT socket each" if self.listeners.reuse_port else "one shared socket"
            log.info("supervisor %d: starting %d workers (%s)", os.getpid(), self.count, how)
            for slot in range(self.count):
                self._fork(slot)
            failed = self._supervise()
            clean = self._stop_workers()
            return 0 if clean and not failed else 1
        finally:
            signal.set_wakeup_fd(previous_fd)
            for sig, handler in previous.items():
                signal.signal(sig, handler)
            self.listeners.close()
            os.close(self._wake_r)
            os.close(self._wake_w)
            os.close(self._marks_fd)

    def _on_signal(self, signum: int, _frame: object) -> None:
        # Only record it: the wake-up pipe interrupts the wait in _supervise.
        if self._stop_signal is None:
            self._stop_signal = signum

    def _on_relayed(self, signum: int, _frame: object) -> None:
        self._relay.append(signum)  # handled in _supervise, woken by the wake-up pipe

    def _relay_signals(self) -> None:
        """SIGHUP: re-read the configuration (for the workers forked from now on), then tell every
        worker to reload; SIGUSR1: tell every worker to re-read the endpoint marks."""
        pending, self._relay = self._relay, []
        for signum in dict.fromkeys(pending):
            if signum == signal.SIGHUP:
                self._reload_settings()
            for process in list(self._workers.values()):
                if process.pid is not None and process.exitcode is None:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(process.pid, signum)

    def _reload_settings(self) -> None:
        if self.config_path is None:
            log.warning("supervisor %d: SIGHUP: started without --config, nothing to reload", os.getpid())
            return
        from geofed.errors import ConfigError
        from geofed.live import load_checked

        try:
            self.settings, _tls = load_checked(self.config_path)
        except ConfigError as exc:
            log.error(
                "supervisor %d: SIGHUP: %s is refused, workers keep their configuration: %s",
                os.getpid(),
                self.config_path,
                exc,
            )
            return
        log.info("supervisor %d: SIGHUP: reloading %d workers", os.getpid(), len(self._workers))

    def _fork(self, slot: int) -> None:
        own = self.listeners.for_slot(slot)
        others = [sock for group in self.listeners.groups for sock in group if sock not in own]
        spec = WorkerSpec(
            self.settings,
            tuple(own),
            os.getpid(),
            self.shutdown_timeout,
            others=tuple(others),
            close_fds=(self._wake_r, self._wake_w),
            config_path=self.config_path,
            marks_fd=self._marks_fd,
        )
        process = self._context.Process(target=worker_main, args=(spec,), name="geofed-worker", daemon=True)
        # Block the stop and relayed signals across the fork: see worker_main.
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, (*_STOP_SIGNALS, *_RELAYED_SIGNALS))
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        self._workers[slot] = process
        log.info("supervisor %d: started worker %d", os.getpid(), process.pid)

    def _supervise(self) -> bool:
        """Wait for a stop signal, replacing dead workers meanwhile; True if the budget ran out."""
        while self._stop_signal is None:
            now = time.monotonic()
            while self._due and self._due[0][0] <= now:
                self._fork(self._due.pop(0)[1])
            timeout = None if not self._due else max(0.0, self._due[0][0] - now)
            sentinels: list[int] = [self._wake_r, *(p.sentinel for p in self._workers.values())]
            ready = multiprocessing.connection.wait(sentinels, timeout)
            if self._wake_r in ready:
                with contextlib.suppress(BlockingIOError):
                    while os.read(self._wake_r, 512):
                        pass
            if self._relay and self._stop_signal is None:
                self._relay_signals()
            for slot, process in [(n, p) for n, p in self._workers.items() if p.sentinel in ready]:
                process.join()
                del self._workers[slot]
                if self._stop_signal is not None:
                    break
                delay = self.budget.take(time.monotonic())
                if delay is None:
                    log.error(
                        "supervisor %d: worker %d exited (%s); more than %d restarts within %.0f s, "
                        "giving up",
                        os.getpid(),
                        process.pid,
                        _describe_exit(process.exitcode),
                        self.budget.limit,
                        self.budget.window,
                    )
                    return True
                log.warning(
                    "supervisor %d: worker %d exited unexpectedly (%s); restarting it%s",
                    os.getpid(),
                    process.pid,
                    _describe_exit(process.exitcode),
                    f" in {delay:.1f} s" if delay else "",
                )
                self._due.append((time.monotonic() + delay, slot))
                self._due.sort()
        name = signal.Signals(self._stop_signal).name
        log.info("supervisor %d: %s received, stopping %d workers", os.getpid(), name, len(self._workers))
        return False

    def _stop_workers(self) -> bool:
        """SIGTERM every worker once and wait (bounded); True when none had to be killed."""
        self._due.clear()
        # Our copies of the listening sockets must not keep the port accepting once the workers stop.
        self.listeners.close()
        workers = list(self._workers.values())
        for process in workers:
            if process.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(process.pid, signal.SIGTERM)
        deadline = time.monotonic() + self.shutdown_timeout + CLEANUP_GRACE_S
        for process in workers:
            process.join(max(0.0, deadline - time.monotonic()))
        clean = True
        for process in workers:
            if process.exitcode is None:
                clean = False
                log.error(
                    "supervisor %d: worker %d did not stop in time; killing it", os.getpid(), process.pid
                )
                process.kill()
                process.join(KILL_WAIT_S)
            elif process.exitcode not in (0, -signal.SIGTERM):
                # (killed by SIGTERM: it came before the worker's loop handled it, so nothing was
                # being served; see worker_main)
                clean = False
                log.warning(
                    "supervisor %d: worker %d %s", os.getpid(), process.pid, _describe_exit(process.exitcode)
                )
        self._workers.clear()
        log.info("supervisor %d: all workers stopped", os.getpid())
        return clean


def _describe_exit(exitcode: int | None) -> str:
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        with contextlib.suppress(ValueError):
            return f"killed by {signal.Signals(-exitcode).name}"
        return f"killed by signal {-exitcode}"
    return f"exit status {exitcode}"
