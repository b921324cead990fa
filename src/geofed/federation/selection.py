"""Replica selection: a pure function from (client, replicas, endpoint state) to a ranking.

Every replica ends up either accepted (ranked, with the reason for its rank) or rejected (with the
reason), so ``geofed locate`` and the tests can show why a client was sent where it was. The rules:

1. replicas on endpoints that are down or not readable are rejected;
2. a preferred endpoint of the client's network comes first;
3. with a known client location, replicas are ordered by great-circle distance; those within
   ``fuzz_km`` of the closest are shuffled together to spread load over near-equal sites;
   replicas on endpoints of unknown location come after all placed ones;
4. with an unknown client location, the order is random.
"""

from __future__ import annotations

import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from geofed.config import Location
from geofed.geo import ClientPlacement, great_circle_km


@dataclass(frozen=True, slots=True)
class Candidate:
    """A replica to rank: its endpoint, the path there, and where that endpoint is."""

    endpoint: str
    path: str
    location: Location | None


@dataclass(frozen=True, slots=True)
class Ranked:
    endpoint: str
    path: str
    distance_km: float | None
    reason: str


@dataclass(frozen=True, slots=True)
class Rejected:
    endpoint: str
    path: str
    reason: str


@dataclass(frozen=True, slots=True)
class Ranking:
    """Accepted replicas best first, rejected ones with reasons.

    ``interchangeable`` is how many leading accepted replicas are equally good (the fuzz group, or
    every replica for an unplaced client): a cached ranking may pick any of them per request.
    """

    accepted: tuple[Ranked, ...]
    rejected: tuple[Rejected, ...]
    interchangeable: int = 1

    @property
    def best(self) -> Ranked | None:
        return self.accepted[0] if self.accepted else None


def rank(
    client: ClientPlacement,
    replicas: Sequence[Candidate],
    unavailable: Mapping[str, str],
    fuzz_km: float,
    rng: random.Random,
) -> Ranking:
    """Rank ``replicas`` for ``client``; ``unavailable`` maps endpoint names to why they can't serve."""
    rejected: list[Rejected] = []
    usable: list[Candidate] = []
    for candidate in replicas:
        why = unavailable.get(candidate.endpoint)
        if why is None:
            usable.append(candidate)
        else:
            rejected.append(Rejected(candidate.endpoint, candidate.path, why))

    preferred: list[Ranked] = []
    if client.preferred_endpoint is not None:
        for candidate in usable:
            if candidate.endpoint == client.preferred_endpoint:
                preferred.append(
                    Ranked(candidate.endpoint, candidate.path, None, f"preferred by {client.source}")
                )
        usable = [c for c in usable if c.endpoint != client.preferred_endpoint]

    if client.location is None:
        shuffled = list(usable)
        rng.shuffle(shuffled)
        rest = [Ranked(c.endpoint, c.path, None, "client location unknown: random order") for c in shuffled]
        group = 1 if preferred else max(1, len(rest))
        return Ranking(tuple(preferred + rest), tuple(rejected), group)

    placed = [(great_circle_km(client.location, c.location), c) for c in usable if c.location is not None]
    placed.sort(key=lambda pair: pair[0])
    ordered: list[Ranked] = []
    group = 1
    if placed:
        closest = placed[0][0]
        near = [pair for pair in placed if pair[0] <= closest + fuzz_km]
        far = placed[len(near) :]
        if len(near) > 1:
            rng.shuffle(near)
            group = 1 if preferred else len(near)
        for distance, c in near:
            reason = (
                f"closest ({distance:.0f} km)"
                if len(near) == 1
                else f"within {fuzz_km:.0f} km of the closest ({distance:.0f} km): shuffled"
            )
            ordered.append(Ranked(c.endpoint, c.path, distance, reason))
        for distance, c in far:
            reason = f"{distance:.0f} km, {distance - closest:.0f} km farther than the closest"
            ordered.append(Ranked(c.endpoint, c.path, distance, reason))
    unplaced = [c for c in usable if c.location is None]
    ordered.extend(
        Ranked(c.endpoint, c.path, None, "endpoint location unknown: ranked last") for c in unplaced
    )
    return Ranking(tuple(preferred + ordered), tuple(rejected), group)
