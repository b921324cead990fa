"""How much each endpoint holds and can still take (RFC 4331 quota properties, write placement).

Endpoints are asked in the background, at the health interval, never on a request: a PROPFIND for
``quota-available-bytes`` must not wait for a slow endpoint, and placing a write must not cost a
round trip. A configured ``quota`` caps what an endpoint reports (a site's share of a bigger disk).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterable, Mapping

from geofed.endpoints.base import Endpoint, Space

log = logging.getLogger(__name__)


def effective(reported: Space | None, quota: int | None) -> Space | None:
    """What to publish for one endpoint: the report, capped by the quota when one is set."""
    if quota is None:
        return reported
    used = reported.used if reported is not None else None
    left = quota - used if used is not None else quota
    if reported is not None and reported.available is not None:
        left = min(left, reported.available)
    return Space(used=used, available=max(left, 0))


def total(spaces: Iterable[Space | None]) -> Space | None:
    """The sum over several endpoints; a part nobody reports is left out of that part's sum."""
    used = available = None
    for space in spaces:
        if space is None:
            continue
        if space.used is not None:
            used = (used or 0) + space.used
        if space.available is not None:
            available = (available or 0) + space.available
    if used is None and available is None:
        return None
    return Space(used=used, available=available)


class SpaceMonitor:
    """Asks every endpoint for its space every ``interval`` seconds; ``space[name]`` is the latest
    effective answer (None when unknown)."""

    def __init__(self, endpoints: Mapping[str, Endpoint], interval: float) -> None:
        self._endpoints = endpoints
        self._interval = max(interval, 1.0)
        self.space: dict[str, Space | None] = {name: None for name in endpoints}
        self._task: asyncio.Task[None] | None = None

    def fits(self, name: str, size: int | None) -> bool:
        """Whether a write of ``size`` bytes fits on endpoint ``name`` (unknown space fits)."""
        space = self.space.get(name)
        return size is None or space is None or space.available is None or space.available >= size

    async def refresh(self) -> None:
        await asyncio.gather(*(self._ask(name, e) for name, e in self._endpoints.items()))

    async def _ask(self, name: str, endpoint: Endpoint) -> None:
        try:
            reported = await asyncio.wait_for(endpoint.space(), timeout=max(self._interval, 5.0))
        except Exception as exc:  # an endpoint's trouble must not stop the loop
            log.debug("space of %s unknown: %s", name, exc)
            reported = None
        self.space[name] = effective(reported, endpoint.settings.quota)

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._loop())

    async def _loop(self) -> None:
        while True:
            await self.refresh()
            await asyncio.sleep(self._interval)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
