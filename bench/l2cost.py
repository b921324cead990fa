"""What an L1 miss costs when L2 has the answer, against an L1 hit and a fan-out to an endpoint.

Runs geofed's real locator in this process over one local endpoint, with a real memcached and a
real Redis on loopback (started here, stopped by PID). For each L2 kind it times, per path:

* L1 hit:  ``locate()`` when this process already knows the answer;
* L2 hit:  ``locate()`` after this process's L1 was cleared, while L2 holds the answer
  (what a second front end pays for an answer the first one found);
* fan-out: ``locate()`` with neither cache (a stat on the local endpoint, in a worker thread).

Usage: ``.venv/bin/python bench/l2cost.py [--paths 2000]``; prints medians in microseconds and ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import sys
import tempfile
import time
from pathlib import Path

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from geofed.config import Settings, settings_from_mapping
from geofed.federation.locator import Want
from geofed.runtime import Federation
from tests.infra.kv import start_memcached, start_redis
from tests.infra.policies import OPEN_POLICY


def _settings(root: Path, l2: dict[str, object]) -> Settings:
    return settings_from_mapping(
        {
            "signing": {"secret": secrets.token_urlsafe(24)},
            "auth": OPEN_POLICY,
            "cache": {"l2": l2, "max_entries": 1_000_000},
            "health": {"interval": "1h"},
            "endpoints": [{"name": "disk", "kind": "local", "url": root.as_uri()}],
        },
        environ={},
    )


async def _measure(settings: Settings, paths: list[str]) -> dict[str, float]:
    federation = Federation(settings)
    await federation.start(probe_first=False)
    locator = federation.locator
    assert federation.shared is not None
    try:

        async def timed() -> list[float]:
            samples = []
            for path in paths:
                started = time.perf_counter()
                await locator.locate(path, Want.FIRST)
                samples.append((time.perf_counter() - started) * 1e6)
            return samples

        fanout = await timed()  # nothing cached yet: every locate asks the endpoint
        await asyncio.sleep(0.5)  # background writes to L2 finish
        l1 = await timed()
        federation.locations_cache.clear()
        l2 = await timed()
        return {"l1": statistics.median(l1), "l2": statistics.median(l2), "fanout": statistics.median(fanout)}
    finally:
        await federation.stop()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--paths", type=int, default=2000)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="geofed-bench-l2-"))
    root = work / "disk"
    (root / "data").mkdir(parents=True)
    paths = []
    for i in range(args.paths):
        (root / "data" / f"f{i:05d}").write_bytes(b"x")
        paths.append(f"/data/f{i:05d}")
    memcached = start_memcached()
    (work / "redis").mkdir()
    redis = start_redis(work / "redis")
    try:
        results = {
            "memcached": asyncio.run(
                _measure(_settings(root, {"kind": "memcached", "servers": [memcached.url]}), paths)
            ),
            "redis": asyncio.run(_measure(_settings(root, {"kind": "redis", "url": redis.url}), paths)),
        }
    finally:
        memcached.stop()
        redis.stop()
    print(f"locate() cost per path, median of {args.paths} paths (microseconds), one process, loopback")
    print(f"{'L2':<10} {'L1 hit':>9} {'L2 hit':>9} {'fan-out':>9} {'L2/L1':>7} {'fan-out/L2':>11}")
    for kind, r in results.items():
        print(
            f"{kind:<10} {r['l1']:>9.1f} {r['l2']:>9.1f} {r['fanout']:>9.1f} "
            f"{r['l2'] / r['l1']:>7.1f} {r['fanout'] / r['l2']:>11.2f}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
