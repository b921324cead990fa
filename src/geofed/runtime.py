"""The running federation: every long-lived object built from one Settings, started and stopped together.

``Federation`` owns the endpoints, the health monitor, the caches and the locator. The HTTP front
end and the command line both use it, so ``geofed locate`` explains exactly what a request would do.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import random
import socket
from collections.abc import Mapping

from geofed.checksums.service import ChecksumService
from geofed.config import EndpointSettings, Location, Settings
from geofed.endpoints.base import Endpoint, Entry
from geofed.endpoints.local import LocalEndpoint
from geofed.federation.cache import TTLCache
from geofed.federation.l2 import create_shared_cache
from geofed.federation.locator import LocateResult, Locator
from geofed.federation.namespace import Namespace
from geofed.federation.selection import Candidate, Ranking, rank
from geofed.federation.shared import SharedLayer
from geofed.geo import ClientLocator, ClientPlacement, GeoDatabase, normalise_ip
from geofed.health import HealthMonitor
from geofed.signing import URLSigner
from geofed.space import SpaceMonitor
from geofed.transfer.engine import TransferEngine

log = logging.getLogger("geofed")


def build_endpoint(settings: EndpointSettings, signer: URLSigner) -> Endpoint:
    """The endpoint object for one configured endpoint, by kind."""
    if settings.kind == "local":
        return LocalEndpoint(settings, signer)
    if settings.kind == "s3":
        from geofed.endpoints.s3 import S3Endpoint

        return S3Endpoint(settings)
    if settings.kind == "azure":  # imported here: the azure SDK is slow to import and often unused
        from geofed.endpoints.azure import AzureEndpoint

        return AzureEndpoint(settings)
    from geofed.endpoints.webdav import WebDAVEndpoint

    return WebDAVEndpoint(settings)


class Federation:
    """Everything a request needs, built once per configuration."""

    def __init__(self, settings: Settings, *, rng: random.Random | None = None) -> None:
        self.settings = settings
        self.signer = URLSigner(settings.signing.secret)
        self.url_lifetime = settings.signing.url_lifetime
        self.endpoints: dict[str, Endpoint] = {
            e.name: build_endpoint(e, self.signer) for e in settings.endpoints
        }
        seal_key = hmac.new(
            settings.signing.secret.encode(), b"geofed checksum seal", hashlib.sha256
        ).digest()
        for endpoint in self.endpoints.values():
            endpoint.seal_key = seal_key
        self.url_lifetimes: dict[str, float] = {
            e.name: e.url_lifetime or self.url_lifetime for e in settings.endpoints
        }
        self.namespace = Namespace(settings.endpoints)
        self.geo_db = GeoDatabase(settings.geoip.database) if settings.geoip.database else None
        self.clients = ClientLocator(settings.client_networks, self.geo_db)
        self.locations: dict[str, Location | None] = {
            e.name: e.location or self._locate_host(e) for e in settings.endpoints
        }
        self.health = HealthMonitor(self.endpoints, settings.health)
        self.locations_cache: TTLCache[LocateResult] = TTLCache(settings.cache.max_entries)
        self.listings_cache: TTLCache[tuple[Entry, ...]] = TTLCache(max(1, settings.cache.max_entries // 100))
        self.locator = Locator(
            self.endpoints,
            self.namespace,
            self.health,
            self.locations_cache,
            self.listings_cache,
            settings.cache,
            self.locations,
            settings.federation.locate_timeout,
            settings.federation.fuzz_km,
        )
        self.rng = rng or random.Random()
        self.shared: SharedLayer | None = None
        if settings.cache.l2 is not None:
            self.shared = SharedLayer(create_shared_cache(settings.cache.l2), settings.cache.l2)
            self.locator.shared = self.shared
            self.health.shared = self.shared
        self.checksums = ChecksumService(
            self.endpoints,
            cache=TTLCache(max(1, settings.cache.max_entries // 10)),
            shared=self.shared,
            max_concurrent=settings.checksums.max_concurrent,
            timeout=settings.checksums.timeout,
        )
        self.space = SpaceMonitor(self.endpoints, settings.health.interval)
        self.transfers = TransferEngine.from_settings(settings)
        # checksums clients declared on redirected uploads, compared once geofed computes the real ones
        self.claims: TTLCache[dict[str, str]] = TTLCache(max(1, settings.cache.max_entries // 10))
        self.local_endpoints: Mapping[str, LocalEndpoint] = {
            n: e for n, e in self.endpoints.items() if isinstance(e, LocalEndpoint)
        }

    def _locate_host(self, settings: EndpointSettings) -> Location | None:
        """An endpoint without configured coordinates is placed by a GeoIP lookup of its host."""
        if self.geo_db is None or settings.host is None:
            return None
        try:
            address = socket.getaddrinfo(settings.host, None)[0][4][0]
        except OSError:
            log.warning("endpoint %s: cannot resolve %s to place it", settings.name, settings.host)
            return None
        ip = normalise_ip(str(address))
        location = self.geo_db.location(ip) if ip is not None else None
        if location is None:
            log.warning("endpoint %s: no location configured and none found by GeoIP", settings.name)
        return location

    def rank(self, client: ClientPlacement, result: LocateResult, *, writable: bool = False) -> Ranking:
        """Rank the file replicas of ``result`` for ``client`` (to overwrite one: ``writable``, which
        also leaves out draining endpoints)."""
        candidates = [
            Candidate(r.endpoint, r.path, self.locations[r.endpoint])
            for r in result.replicas
            if not r.stat.is_dir and (not writable or self.endpoints[r.endpoint].settings.writable)
        ]
        unusable = self.health.unwritable if writable else self.health.unavailable
        return rank(client, candidates, unusable, self.settings.federation.fuzz_km, self.rng)

    def rank_for_write(self, client: ClientPlacement, path: str, size: int | None = None) -> Ranking:
        """Rank the writable endpoints that serve ``path`` as upload destinations; those without
        room for ``size`` bytes (when known) are rejected with that reason, and so are the unusable
        and draining ones."""
        candidates = []
        for name, endpoint in self.endpoints.items():
            if not endpoint.settings.writable or not endpoint.capabilities.redirect_put:
                continue
            local = self.namespace.translate(path, name)
            if local is not None:
                candidates.append(Candidate(name, local, self.locations[name]))
        unavailable = self.health.unwritable
        if size is not None:
            full = {
                c.endpoint: f"not enough space for {size} bytes"
                for c in candidates
                if not self.space.fits(c.endpoint, size)
            }
            if full:
                unavailable = {**unavailable, **full}
        return rank(client, candidates, unavailable, self.settings.federation.fuzz_km, self.rng)

    async def start(self, *, probe_first: bool = True) -> None:
        """Probe every endpoint once (so a dead one gets no traffic from the start), then monitor."""
        if self.shared is not None:
            await self.shared.cache.start()
            self.shared.on_invalidation(self._forget_paths)
        if probe_first:
            await asyncio.gather(*(self.health.check(name) for name in self.endpoints))
        self.health.start()
        self.space.start()

    def _forget_paths(self, paths: list[str]) -> None:
        """Another front end wrote these paths: drop what this process cached about them."""
        for path in paths:
            self.locator.forget(path)
            self.forget_checksums(path)

    def forget_checksums(self, path: str) -> None:
        """Drop what the checksum service remembers of ``path`` on every endpoint serving it."""
        for name in self.endpoints:
            local = self.namespace.translate(path, name)
            if local is not None:
                self.checksums.forget(name, local)

    async def quiesce(self) -> None:
        """Stop the background work (probes, space polling) but keep everything requests use: a
        federation replaced by a reload serves its in-flight requests a while longer."""
        await self.health.stop()
        await self.space.stop()

    async def stop(self) -> None:
        await self.transfers.aclose()
        await self.space.stop()
        await self.checksums.aclose()
        await self.health.stop()
        await self.locator.aclose()
        if self.shared is not None:
            await self.shared.aclose()
        await asyncio.gather(*(e.aclose() for e in self.endpoints.values()), return_exceptions=True)
        if self.geo_db is not None:
            self.geo_db.close()
