"""Translation between the federated namespace and each endpoint's own namespace.

Each endpoint declares one or more prefix mappings ``federated → endpoint``. A federated path is
served by an endpoint when it lies under one of that endpoint's federated prefixes; the longest
matching prefix wins, so ``/atlas/scratch → /tmp`` can sit inside ``/atlas → /data``. The
federated prefixes also define *mount points*: the collections a listing must show even when no
endpoint has them (``/atlas`` appears in ``/`` as soon as any endpoint is mounted there).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from geofed.config import EndpointSettings
from geofed.federation.paths import is_within


@dataclass(frozen=True, slots=True)
class Target:
    """One place where a federated path may live: an endpoint and the path in its namespace."""

    endpoint: str
    path: str


@dataclass(frozen=True, slots=True)
class _Rule:
    endpoint: str
    federated: str
    local: str


class Namespace:
    """Maps federated paths to endpoint paths and back, and knows the mount points."""

    def __init__(self, endpoints: Iterable[EndpointSettings]) -> None:
        self._rules_by_endpoint: dict[str, list[_Rule]] = {}
        mounts: set[str] = set()
        for settings in endpoints:
            rules = [_Rule(settings.name, p.federated, p.endpoint) for p in settings.prefixes]
            rules.sort(key=lambda r: len(r.federated), reverse=True)
            self._rules_by_endpoint[settings.name] = rules
            for rule in rules:
                path = rule.federated
                while path != "/":
                    mounts.add(path)
                    path = path.rsplit("/", 1)[0] or "/"
        self._mounts = frozenset(mounts)
        self._children: dict[str, set[str]] = {}
        for mount in self._mounts:
            head, _, name = mount.rpartition("/")
            self._children.setdefault(head or "/", set()).add(name)

    def translate(self, path: str, endpoint: str) -> str | None:
        """The endpoint's path for a federated path, or None when that endpoint does not serve it."""
        for rule in self._rules_by_endpoint.get(endpoint, ()):
            if is_within(path, rule.federated):
                rest = path[len(rule.federated) :] if rule.federated != "/" else path
                local = (rule.local.rstrip("/") + rest) or "/"
                return local if local.startswith("/") else "/" + local
        return None

    def federated_paths(self, endpoint: str, local: str) -> list[str]:
        """Every federated path under which the endpoint path ``local`` is visible (reverse mapping)."""
        out = []
        for rule in self._rules_by_endpoint.get(endpoint, ()):
            if is_within(local, rule.local):
                rest = local[len(rule.local) :] if rule.local != "/" else local
                candidate = (rule.federated.rstrip("/") + rest) or "/"
                if self.translate(candidate, endpoint) == local:
                    out.append(candidate)
        return out

    def targets(self, path: str, endpoints: Iterable[str]) -> list[Target]:
        """Every (endpoint, endpoint path) that may hold the federated ``path``."""
        out = []
        for name in endpoints:
            local = self.translate(path, name)
            if local is not None:
                out.append(Target(name, local))
        return out

    def is_mount_point(self, path: str) -> bool:
        """True for the root and for every collection on the way to a federated prefix."""
        return path == "/" or path in self._mounts

    def mount_children(self, path: str) -> frozenset[str]:
        """Names of mount points directly inside the collection ``path``."""
        return frozenset(self._children.get(path, ()))
