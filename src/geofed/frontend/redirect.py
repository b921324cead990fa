"""Prepared redirects: the headers of a GET redirect, built once and served many times.

Ranking the replicas and signing their URLs costs more than the web framework's own work per
request, and for a warm path the answer is the same for every client placed alike. So the
Location and Link headers are prepared per (cached locate answer, client placement, base URL) and
reused until one of these changes:

* the locate answer expires or is invalidated (the preparations live on it and go with it);
* the health of an endpoint changes (``HealthMonitor.generation``);
* the signing window ends. URLs are signed to expire ``lifetime`` after the *end* of the current
  60-second window, so a reused URL always has at least the full configured lifetime left.

Replicas that are equally good (within the fuzz radius, or any replica for an unplaced client)
stay spread: one header set is prepared per possible first choice, and each request picks one at
random.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from geofed.federation.selection import Ranking

SIGNING_WINDOW = 60
MAX_PREPARED_PER_ANSWER = 256


@dataclass(frozen=True, slots=True)
class PreparedRedirect:
    choices: tuple[tuple[dict[str, str], str], ...]
    """(headers, endpoint name) per possible first choice."""
    valid_until: float
    generation: int

    def pick(self, rng: random.Random) -> tuple[dict[str, str], str]:
        choices = self.choices
        return choices[0] if len(choices) == 1 else choices[rng.randrange(len(choices))]

    def usable(self, generation: int) -> bool:
        return self.generation == generation and time.time() < self.valid_until


def prepare_redirect(
    ranking: Ranking,
    sign: Callable[[str, str, float], str],
    max_alternatives: int,
    generation: int,
    now: float | None = None,
    describedby: str | None = None,
) -> PreparedRedirect:
    """Sign the needed URLs once and lay out the header sets.

    ``sign(endpoint, path, extra_lifetime)`` returns an absolute GET URL valid for the endpoint's
    lifetime plus ``extra_lifetime`` seconds. ``describedby`` is a ``Link`` value pointing to the
    file's metalink, added to every header set.
    """
    now = time.time() if now is None else now
    window_end = (int(now) // SIGNING_WINDOW + 1) * SIGNING_WINDOW
    extra = window_end - now
    accepted = ranking.accepted
    group = max(1, min(ranking.interchangeable, len(accepted)))
    needed = accepted[: max(group, 1 + max_alternatives)]
    urls = [sign(r.endpoint, r.path, extra) for r in needed]
    choices = []
    for first in range(group):
        order = [first, *(i for i in range(len(needed)) if i != first)]
        headers = {"Location": urls[order[0]]}
        alternatives = order[1 : 1 + max_alternatives]
        links = [f"<{urls[i]}>; rel=duplicate; pri={pri}" for pri, i in enumerate(alternatives, start=1)]
        if describedby is not None:
            links.append(describedby)
        if links:
            headers["Link"] = ", ".join(links)
        choices.append((headers, needed[first].endpoint))
    return PreparedRedirect(tuple(choices), float(window_end), generation)
