"""Endpoint health: one probe loop per endpoint, and the state the rest of geofed reads.

A probe that fails (or takes longer than its timeout) ``failures_to_down`` times in a row marks
the endpoint down with the reason; a down endpoint is asked nothing and chosen for nothing. The
next passing probe brings it back by itself. An endpoint that was never probed counts as usable, so
a fresh process serves at once.

An administrator can also take an endpoint out by hand (``geofed endpoints``, the admin API):

* **disabled**: used for nothing (no reads, no writes, not listed, not a replica), like a down
  endpoint, whatever the probes say; ``state`` is ``disabled``.
* **draining**: still read and listed, but no new data is placed there (:attr:`HealthMonitor.unwritable`),
  so that its data can be moved off; ``state`` stays up/down/unknown and ``draining`` is set.

Enabling clears either; the probes' verdict applies again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from geofed.config import HealthSettings
from geofed.endpoints.base import Endpoint
from geofed.errors import EndpointError

if TYPE_CHECKING:
    from geofed.federation.shared import SharedLayer

log = logging.getLogger("geofed.health")

AdminMode = Literal["disabled", "draining"]
ADMIN_MODES: tuple[AdminMode, ...] = ("disabled", "draining")


@dataclass(slots=True)
class EndpointState:
    """What the monitor knows of one endpoint."""

    name: str
    up: bool | None = None
    latency: float | None = None
    last_error: str | None = None
    last_change: float | None = None
    last_check: float | None = None
    consecutive_failures: int = 0
    disabled: bool = False
    draining: bool = False
    admin_note: str | None = None
    """Why an administrator disabled or drained the endpoint (as given), for the reason shown."""
    history: list[str] = field(default_factory=list)

    @property
    def state(self) -> str:
        if self.disabled:
            return "disabled"
        return {None: "unknown", True: "up", False: "down"}[self.up]

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "state": self.state,
            "draining": self.draining,
            "latency_ms": None if self.latency is None else round(self.latency * 1000, 2),
            "last_error": self.last_error,
            "last_change": self.last_change,
            "last_check": self.last_check,
        }


class HealthMonitor:
    """Runs the probes and answers "may this endpoint be used, and if not, why?"."""

    def __init__(self, endpoints: Mapping[str, Endpoint], settings: HealthSettings) -> None:
        self._endpoints = endpoints
        self._settings = settings
        self.states = {name: EndpointState(name) for name in endpoints}
        self._unavailable: dict[str, str] = {}
        self._unwritable: dict[str, str] = {}
        self.shared: SharedLayer | None = None
        """The second-level cache, when configured: probe results are shared through it."""
        self.generation = 0
        """Changes whenever the set of unusable endpoints changes (invalidates cached rankings)."""
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def unavailable(self) -> Mapping[str, str]:
        """Endpoint name → reason, for every endpoint that must not be used now."""
        return self._unavailable

    @property
    def unwritable(self) -> Mapping[str, str]:
        """Endpoint name → reason, for every endpoint that must not receive new data now: the
        unavailable ones and the draining ones."""
        return self._unwritable

    def is_usable(self, name: str) -> bool:
        return name not in self._unavailable

    def start(self) -> None:
        for name in self._endpoints:
            self._tasks.append(asyncio.create_task(self._loop(name), name=f"health:{name}"))

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()

    async def check(self, name: str) -> EndpointState:
        """Probe one endpoint now and record the outcome."""
        endpoint = self._endpoints[name]
        started = time.monotonic()
        error: str | None = None
        try:
            await asyncio.wait_for(endpoint.probe(), self._settings.timeout)
        except TimeoutError:
            error = f"probe timed out after {self._settings.timeout:g} s"
        except EndpointError as exc:
            error = exc.reason
        except Exception as exc:  # a bug in a probe must not kill the monitor
            log.exception("probe of %s raised", name)
            error = f"probe failed: {type(exc).__name__}"
        self._record(name, time.monotonic() - started, error)
        return self.states[name]

    def set_disabled(self, name: str, disabled: bool) -> None:
        self.set_admin(name, "disabled" if disabled else None)

    def set_admin(self, name: str, mode: AdminMode | None, note: str | None = None) -> None:
        """An administrator's decision: ``disabled``, ``draining``, or None (back to the probes)."""
        if mode is not None and mode not in ADMIN_MODES:
            raise ValueError(f"unknown administrative state {mode!r}")
        state = self.states[name]
        disabled, draining = mode == "disabled", mode == "draining"
        note = note if mode is not None else None
        if (state.disabled, state.draining, state.admin_note) == (disabled, draining, note):
            return
        state.disabled, state.draining, state.admin_note = disabled, draining, note
        state.last_change = time.time()
        self._refresh(name)

    def _record(self, name: str, latency: float, error: str | None) -> None:
        state = self.states[name]
        state.last_check = time.time()
        if error is None:
            state.latency = latency
            state.consecutive_failures = 0
            if state.up is not True:
                log.info("endpoint %s is up (%.1f ms)", name, latency * 1000)
                state.up, state.last_change, state.last_error = True, state.last_check, None
        else:
            state.consecutive_failures += 1
            state.last_error = error
            if state.consecutive_failures >= self._settings.failures_to_down and state.up is not False:
                log.warning("endpoint %s is down: %s", name, error)
                state.up, state.last_change = False, state.last_check
        self._refresh(name)

    def _refresh(self, name: str) -> None:
        state = self.states[name]
        before = self._unavailable.get(name)
        note = f": {state.admin_note}" if state.admin_note else ""
        if state.disabled:
            self._unavailable[name] = f"endpoint disabled by an administrator{note}"
        elif state.up is False:
            self._unavailable[name] = f"endpoint down: {state.last_error}"
        else:
            self._unavailable.pop(name, None)
        if name in self._unavailable:
            self._unwritable[name] = self._unavailable[name]
        elif state.draining:
            self._unwritable[name] = f"endpoint being drained by an administrator{note}"
        else:
            self._unwritable.pop(name, None)
        if self._unavailable.get(name) != before:
            self.generation += 1

    async def _loop(self, name: str) -> None:
        while True:
            if not await self._adopt_shared(name):
                state = await self.check(name)
                if self.shared is not None:
                    self.shared.store_health(
                        name,
                        {
                            "sender": self.shared.sender,
                            "at": time.time(),
                            "up": state.up,
                            "latency": state.latency,
                            "error": state.last_error if state.up is False else None,
                        },
                        self._settings.interval * 3,
                    )
            await asyncio.sleep(self._settings.interval)

    async def _adopt_shared(self, name: str) -> bool:
        """Take another front end's fresh probe of ``name`` instead of probing again, so one front
        end's probe informs the others (and an endpoint is not probed N times per interval)."""
        if self.shared is None:
            return False
        record = await self.shared.get_health(name)
        if not record or record.get("sender") == self.shared.sender:
            return False
        at, up = record.get("at"), record.get("up")
        if not isinstance(at, int | float) or time.time() - at > self._settings.interval / 2 or up is None:
            return False
        latency = record.get("latency")
        error = record.get("error")
        self._record(
            name,
            float(latency) if isinstance(latency, int | float) else 0.0,
            None if up else str(error or "reported down by another front end"),
        )
        return True
