"""Run geofed's benchmarks: ``.venv/bin/python bench/run.py [--quick]`` (or ``make bench``).

1. warm-cache GET -> 302 throughput: geofed vs bare aiohttp vs nginx (wrk, rotated rounds);
2. cold locate: time to the 302 for uncached paths vs the nearest site's own round trip.

Everything runs on 127.0.0.1; every process started here is stopped by its PID. See bench/README.md.
"""

from __future__ import annotations

import sys
from pathlib import Path

if __name__ == "__main__":
    # Run as a script: make the repository root importable (bench.*, tests.infra.*).
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from bench.main import main

    sys.exit(main())
