from __future__ import annotations

import random

from geofed.config import Location
from geofed.federation.selection import Candidate, rank
from geofed.geo import UNPLACED, ClientPlacement

GENEVA = Location(lat=46.2044, lon=6.1432)
VANCOUVER = Location(lat=49.2827, lon=-123.1207)
VICTORIA = Location(lat=48.4284, lon=-123.3656)
CHICAGO = Location(lat=41.8781, lon=-87.6298)

REPLICAS = [
    Candidate("cern", "/f", GENEVA),
    Candidate("triumf", "/f", VANCOUVER),
    Candidate("uvic", "/f", VICTORIA),
]


def names(ranking_accepted: tuple[object, ...]) -> list[str]:
    return [r.endpoint for r in ranking_accepted]  # type: ignore[attr-defined]


def test_closest_first_with_distances_and_reasons() -> None:
    ranking = rank(ClientPlacement(GENEVA, source="geoip"), REPLICAS, {}, 0, random.Random(1))
    assert names(ranking.accepted) == ["cern", "triumf", "uvic"]
    best = ranking.accepted[0]
    assert best.distance_km is not None and best.distance_km < 1
    assert best.reason.startswith("closest")
    assert "farther than the closest" in ranking.accepted[1].reason
    assert ranking.rejected == ()


def test_client_in_victoria_goes_to_uvic_then_triumf() -> None:
    ranking = rank(ClientPlacement(VICTORIA), REPLICAS, {}, 0, random.Random(1))
    assert names(ranking.accepted) == ["uvic", "triumf", "cern"]
    assert 50 < ranking.accepted[1].distance_km < 120  # type: ignore[operator]


def test_down_endpoint_is_rejected_with_its_reason() -> None:
    ranking = rank(
        ClientPlacement(VICTORIA), REPLICAS, {"uvic": "endpoint down: refused"}, 0, random.Random(1)
    )
    assert names(ranking.accepted) == ["triumf", "cern"]
    assert [(r.endpoint, r.reason) for r in ranking.rejected] == [("uvic", "endpoint down: refused")]


def test_fuzz_radius_shuffles_near_replicas_only() -> None:
    seen_first = set()
    for seed in range(40):
        ranking = rank(ClientPlacement(VANCOUVER), REPLICAS, {}, 200, random.Random(seed))
        order = names(ranking.accepted)
        assert order[-1] == "cern"
        assert "shuffled" in ranking.accepted[0].reason
        seen_first.add(order[0])
    assert seen_first == {"triumf", "uvic"}


def test_unknown_client_gets_a_random_order_of_healthy_replicas() -> None:
    firsts = set()
    for seed in range(40):
        ranking = rank(UNPLACED, REPLICAS, {"cern": "down"}, 0, random.Random(seed))
        assert sorted(names(ranking.accepted)) == ["triumf", "uvic"]
        assert all("client location unknown" in r.reason for r in ranking.accepted)
        firsts.add(ranking.accepted[0].endpoint)
    assert firsts == {"triumf", "uvic"}


def test_preferred_endpoint_of_client_network_comes_first() -> None:
    client = ClientPlacement(VICTORIA, preferred_endpoint="cern", source="client network 10.0.0.0/8")
    ranking = rank(client, REPLICAS, {}, 0, random.Random(1))
    assert names(ranking.accepted) == ["cern", "uvic", "triumf"]
    assert ranking.accepted[0].reason == "preferred by client network 10.0.0.0/8"


def test_preferred_endpoint_that_is_down_is_skipped() -> None:
    client = ClientPlacement(VICTORIA, preferred_endpoint="cern")
    ranking = rank(client, REPLICAS, {"cern": "endpoint down: timeout"}, 0, random.Random(1))
    assert names(ranking.accepted) == ["uvic", "triumf"]


def test_endpoints_without_location_rank_last() -> None:
    replicas = [Candidate("nowhere", "/f", None), *REPLICAS]
    ranking = rank(ClientPlacement(CHICAGO), replicas, {}, 0, random.Random(1))
    assert names(ranking.accepted)[-1] == "nowhere"
    assert ranking.accepted[-1].reason == "endpoint location unknown: ranked last"


def test_no_replicas() -> None:
    ranking = rank(ClientPlacement(GENEVA), [], {}, 50, random.Random(1))
    assert ranking.accepted == () and ranking.best is None
