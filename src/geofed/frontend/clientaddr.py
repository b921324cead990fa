"""The address a request comes from, believing X-Forwarded-For only from trusted proxies.

Without trusted proxies configured, the TCP peer is the client, whatever headers say. Behind
trusted proxies, the client is the right-most address in ``X-Forwarded-For`` that is not itself a
trusted proxy, so a client cannot spoof its location by sending the header itself.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Iterable

from geofed.geo import normalise_ip


class ClientAddressResolver:
    def __init__(self, trusted_proxies: Iterable[str]) -> None:
        self._trusted = [ipaddress.ip_network(p, strict=False) for p in trusted_proxies]
        self.enabled = bool(self._trusted)

    def _is_trusted(self, address: str) -> bool:
        ip = normalise_ip(address)
        return ip is not None and any(ip.version == n.version and ip in n for n in self._trusted)

    def resolve(self, peer: str | None, forwarded_for: str | None) -> str | None:
        if not self._trusted or peer is None or forwarded_for is None or not self._is_trusted(peer):
            return peer
        hops = [h.strip() for h in forwarded_for.split(",") if h.strip()]
        for hop in reversed(hops):
            if not self._is_trusted(hop):
                return hop if normalise_ip(hop) is not None else peer
        return hops[0] if hops else peer
