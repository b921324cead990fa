"""What a copy is made of: its source, its destination, its result and its failures.

Plain frozen values shared by the engine (:mod:`~geofed.transfer.engine`), the steps of one copy
(:mod:`~geofed.transfer.job`) and the ``COPY`` handler that builds them; kept in a module of their
own so that none of those has to import the others to name what is copied. All of them are
re-exported by :mod:`geofed.transfer.engine`, where callers import them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from geofed.endpoints.base import Endpoint, StatResult

if TYPE_CHECKING:
    from geofed.checksums import ChecksumService


class TransferFailed(Exception):
    """The copy failed; the message says which side and why (no URL query, no credential)."""


class ClientGone(Exception):
    """The client of the COPY went away; the copy was cancelled and cleaned up."""


# -- what is copied ----------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Replica:
    endpoint: Endpoint
    path: str
    stat: StatResult


@dataclass(frozen=True, slots=True)
class ReplicaSource:
    """A federated file: its replicas, best first, and the service that knows their checksums."""

    replicas: tuple[Replica, ...]
    label: str
    """The federated path (for messages)."""
    checksums: ChecksumService | None = None


@dataclass(frozen=True, slots=True)
class RemoteSource:
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class EndpointDestination:
    endpoint: Endpoint
    path: str
    label: str


@dataclass(frozen=True, slots=True)
class RemoteDestination:
    url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    head_after: bool = True
    """Ask the destination (HEAD, ``Want-Digest``) for its size and checksum once the PUT is done;
    off for ``Copy-Flags: NoHead`` (a pre-signed PUT URL cannot answer a HEAD)."""


Source = ReplicaSource | RemoteSource
Destination = EndpointDestination | RemoteDestination


@dataclass(frozen=True, slots=True)
class TransferResult:
    size: int
    checksums: dict[str, str]
    seconds: float
    source: str
    """Where the bytes came from: ``endpoint:path`` or the redacted URL."""
