"""Profile geofed's warm GET -> 302 path under load: cProfile inside the server, wrk outside.

The server is the real application (``build_app`` with the warm benchmark's configuration, access
log on, uvloop), run in this process and pinned to one CPU; wrk drives it from the other CPU. Only
the wrk run is profiled (not start-up or the cache-warming request), so the statistics are the
steady state of the warm redirect. cProfile adds a constant cost per Python call, so it inflates
call-heavy code: read the ranking, not the absolute times.

``--micro`` instead times each piece of the warm path in a plain in-process loop (no profiler, no
network): the whole ``dispatch``, and separately ranking, signing, the access-log line, the
response object. These are best cases (hot CPU caches, a fake request): inside the loaded server
the same pieces cost about 1.7x more. Compare them with a request's budget (1 / req/s).

Usage: ``.venv/bin/python bench/profile_warm.py [--seconds 5] [--top 30] [--close] [--micro]``
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import cProfile
import hashlib
import hmac
import io
import os
import pstats
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import aiohttp
import uvloop
from aiohttp import web

from bench.procs import Pinning, parse_wrk, shared_tmpdir, wrk_command
from bench.warm import CONNECTIONS, SAMPLE_PATH, _geofed_config
from geofed.app import ACCESS_LOG_KEY, FRONTEND_KEY, build_app
from geofed.config import load_settings
from geofed.geo import great_circle_km
from tests.infra.servers import LOOPBACK, free_port


async def _profile(work: Path, seconds: int, close: bool, profiler: cProfile.Profile) -> str:
    pin = Pinning.detect()
    if pin.server_cpu is not None:
        os.sched_setaffinity(0, {pin.server_cpu})
    settings = load_settings(_geofed_config(work))
    port = free_port()
    with (work / "access.log").open("w", encoding="utf-8") as access:
        runner = web.AppRunner(build_app(settings, access_stream=access), access_log=None)
        await runner.setup()
        try:
            await web.TCPSite(runner, LOOPBACK, port).start()
            url = f"http://{LOOPBACK}:{port}{SAMPLE_PATH}"
            async with (
                aiohttp.ClientSession() as session,
                session.get(url, allow_redirects=False) as response,
            ):
                if response.status != 302:
                    raise RuntimeError(f"geofed answered {response.status}, not 302")
            argv = pin.client(wrk_command(url, connections=CONNECTIONS, duration_s=seconds, close=close))
            wrk = await asyncio.create_subprocess_exec(*argv, stdout=asyncio.subprocess.PIPE)
            profiler.enable()
            try:
                output, _ = await asyncio.wait_for(wrk.communicate(), seconds + 30)
            finally:
                profiler.disable()
        finally:
            await runner.cleanup()
    result = parse_wrk(output.decode())
    mode = "conn-close" if close else "keep-alive"
    return f"wrk under cProfile: {result.rps:,.0f} req/s ({result.requests:,} requests, {mode})"


class _FakeRequest:
    """Just what the warm GET path reads from a request (no transport, no parsing)."""

    method = "GET"
    path = SAMPLE_PATH
    raw_path = SAMPLE_PATH
    remote = "127.0.0.1"
    scheme = "http"
    host = "127.0.0.1:8080"
    headers: dict[str, str] = {}


def _per_call_us(fn: Callable[[], object], loops: int) -> float:
    best = float("inf")
    for _ in range(5):  # best of 5: the least disturbed run
        started = time.perf_counter()
        for _ in range(loops):
            fn()
        best = min(best, time.perf_counter() - started)
    return best / loops * 1e6


async def _micro(work: Path, loops: int) -> list[tuple[str, float]]:
    settings = load_settings(_geofed_config(work))
    with (work / "access.log").open("w", encoding="utf-8") as access:
        app = build_app(settings, access_stream=access, probe_first=True)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()  # starts the federation (probes) and the access-log flusher
        try:
            frontend = app[FRONTEND_KEY]
            fed = frontend.fed
            request = cast(web.Request, _FakeRequest())
            first = await frontend.dispatch(request)  # warms the cache
            if first.status != 302:
                raise RuntimeError(f"dispatch answered {first.status}")
            for _ in range(100):  # the fan-out caches its answer when every endpoint has answered
                if (result := fed.locator.cached(SAMPLE_PATH)) is not None:
                    break
                await asyncio.sleep(0.01)
            else:
                raise RuntimeError("the warm-up request did not fill the cache")
            placement = fed.clients.place("127.0.0.1")
            endpoint = fed.endpoints["geneva"]

            async def dispatch_many() -> float:
                started = time.perf_counter()
                for _ in range(loops):
                    await frontend.dispatch(request)
                return (time.perf_counter() - started) / loops * 1e6

            whole = min([await dispatch_many() for _ in range(5)])
            key = settings.signing.secret.encode()
            message = b"GET\ngeneva\n/bench/sample.dat\n1795656674"
            headers = {"Location": "x" * 118}
            access_log = app[ACCESS_LOG_KEY]
            loc = fed.locations["geneva"]
            assert placement.location is not None and loc is not None
            client_loc = placement.location
            pieces: list[tuple[str, Callable[[], Any]]] = [
                ("federation.rank (selection.rank + Candidates)", lambda: fed.rank(placement, result)),
                ("endpoint.sign_url (one URL; the GET signs 3)", lambda: endpoint.sign_url("GET", "/x", 600)),
                (
                    "  of which hmac.new().digest() + b64",
                    lambda: base64.urlsafe_b64encode(hmac.new(key, message, hashlib.sha256).digest()),
                ),
                (
                    "  one-shot hmac.digest() + b64 (alternative)",
                    lambda: base64.urlsafe_b64encode(hmac.digest(key, message, "sha256")),
                ),
                ("  geo.great_circle_km (rank calls it 3x)", lambda: great_circle_km(client_loc, loc)),
                ("clients.place (cached per address)", lambda: fed.clients.place("127.0.0.1")),
                ("locator.cached (L1 cache hit)", lambda: fed.locator.cached(SAMPLE_PATH)),
                ("frontend.client_address", lambda: frontend.client_address(request)),
                (
                    "access log record",
                    lambda: access_log.record(
                        "GET", SAMPLE_PATH, "127.0.0.1", None, 302, "redirect", "geneva", 0.0
                    ),
                ),
                (
                    "web.Response(302, headers) (also in bare aiohttp)",
                    lambda: web.Response(status=302, headers=headers),
                ),
            ]
            rows = [("frontend.dispatch, whole warm GET (handler only)", whole)]
            rows += [(name, _per_call_us(fn, loops)) for name, fn in pieces]
            return rows
        finally:
            await runner.cleanup()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--top", type=int, default=30)
    parser.add_argument("--close", action="store_true", help="new connection per request")
    parser.add_argument("--dump", type=Path, help="also save the raw profile (for snakeviz, pstats)")
    parser.add_argument("--micro", action="store_true", help="per-call timings of the hot-path pieces")
    parser.add_argument("--loops", type=int, default=20000, help="calls per timing in --micro")
    args = parser.parse_args()
    if args.micro:
        with shared_tmpdir("geofed-bench-micro-") as work:
            rows = uvloop.run(_micro(work, args.loops))
        width = max(len(name) for name, _ in rows)
        print(f"{'warm GET piece':<{width}}  us/call")
        for name, micro in rows:
            print(f"{name:<{width}}  {micro:7.2f}")
        return
    profiler = cProfile.Profile()
    with shared_tmpdir("geofed-bench-profile-") as work:
        summary = uvloop.run(_profile(work, args.seconds, args.close, profiler))
    print(summary)
    if args.dump is not None:
        profiler.dump_stats(args.dump)
    for key in ("tottime", "cumulative"):
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats(key).print_stats(args.top)
        print(f"=== sorted by {key} ===")
        print(out.getvalue().split("\n\n", 1)[-1])


if __name__ == "__main__":
    main()
