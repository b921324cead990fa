from __future__ import annotations

import random

from geofed.federation.selection import Ranked, Ranking
from geofed.frontend.redirect import SIGNING_WINDOW, prepare_redirect

LIFETIME = 600.0


def ranking(names: list[str], group: int = 1) -> Ranking:
    return Ranking(tuple(Ranked(n, f"/p/{n}", None, "test") for n in names), (), group)


def signer(now: float) -> tuple[list[float], object]:
    expiries: list[float] = []

    def sign(endpoint: str, path: str, extra: float) -> str:
        expiries.append(now + LIFETIME + extra)
        return f"https://{endpoint}.example{path}?exp={now + LIFETIME + extra:.0f}"

    return expiries, sign


def test_single_choice_with_ordered_alternatives() -> None:
    _, sign = signer(1000.0)
    prepared = prepare_redirect(ranking(["a", "b", "c"]), sign, 4, generation=7, now=1000.0)  # type: ignore[arg-type]
    assert len(prepared.choices) == 1
    headers, endpoint = prepared.pick(random.Random(0))
    assert endpoint == "a"
    assert headers["Location"].startswith("https://a.example/p/a")
    assert headers["Link"].split(", ") == [
        "<https://b.example/p/b?exp=1620>; rel=duplicate; pri=1",
        "<https://c.example/p/c?exp=1620>; rel=duplicate; pri=2",
    ]


def test_urls_keep_the_full_lifetime_until_the_window_ends() -> None:
    now = 1000.5
    expiries, sign = signer(now)
    prepared = prepare_redirect(ranking(["a"]), sign, 4, generation=0, now=now)  # type: ignore[arg-type]
    assert prepared.valid_until == 1020.0  # the next multiple of the window
    assert prepared.valid_until - now <= SIGNING_WINDOW
    assert expiries == [prepared.valid_until + LIFETIME]


def test_no_link_header_without_alternatives() -> None:
    _, sign = signer(0.0)
    prepared = prepare_redirect(ranking(["a", "b"]), sign, 0, generation=0, now=0.0)  # type: ignore[arg-type]
    headers, _ = prepared.pick(random.Random(0))
    assert "Link" not in headers


def test_interchangeable_replicas_are_spread_per_request() -> None:
    _, sign = signer(0.0)
    prepared = prepare_redirect(ranking(["a", "b", "c"], group=2), sign, 4, generation=0, now=0.0)  # type: ignore[arg-type]
    assert len(prepared.choices) == 2
    rng = random.Random(3)
    firsts = {prepared.pick(rng)[1] for _ in range(50)}
    assert firsts == {"a", "b"}
    for headers, first in prepared.choices:
        others = [name for name in ("a", "b", "c") if name != first]
        assert headers["Link"].count("rel=duplicate") == 2
        assert [part.split(".example")[0].split("//")[1] for part in headers["Link"].split(", ")] == others


def test_usable_only_for_same_health_generation() -> None:
    _, sign = signer(0.0)
    prepared = prepare_redirect(ranking(["a"]), sign, 4, generation=3)  # type: ignore[arg-type]
    assert prepared.usable(3)
    assert not prepared.usable(4)
