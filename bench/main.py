"""Command line of the benchmarks (entry point: ``bench/run.py``)."""

from __future__ import annotations

import argparse
import json
import shlex
import sys
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from bench.cold import MAX_PATHS, ColdOptions, ColdResults, run_cold
from bench.procs import shared_tmpdir
from bench.report import machine_busy, table, versions
from bench.tls import DEFAULT_ROUNDS as TLS_ROUNDS
from bench.tls import TlsOptions, TlsResults, run_tls
from bench.tpc import TpcOptions, TpcResults
from bench.tpc import run as run_tpc
from bench.warm import WarmOptions, WarmResults, compare_variants, run_warm, run_warm_s3
from bench.workers import WorkersResults, run_workers

FULL = {"duration": 5, "rounds": 3, "warmup": 2, "paths": 100}
BUSY_WARNING = 0.05
QUICK = {"duration": 1, "rounds": 2, "warmup": 1, "paths": 10}
BENCHMARKS = ("warm", "warm-s3", "cold", "workers", "tls", "tpc")
DEFAULT_RUN = ("warm", "warm-s3", "cold")  # workers, tls: only on request (see below)


def _parse(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/run.py", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="short durations: a smoke run (~1 min)")
    parser.add_argument(
        "--only",
        action="append",
        choices=BENCHMARKS,
        help="run only this benchmark (repeatable): warm (local endpoints), warm-s3 (S3 endpoints on "
        "Ceph RGW), cold, workers and tls (these two only run on request); default: warm, warm-s3 and cold",
    )
    parser.add_argument(
        "--duration", type=int, help="whole seconds per wrk run and s_time -time (default 5, quick 1)"
    )
    parser.add_argument(
        "--rounds", type=int, help="wrk rounds per server and mode (default 3, quick 2; tls: 2)"
    )
    parser.add_argument("--paths", type=int, help="uncached paths for the cold benchmark (default 100)")
    parser.add_argument("--json", type=Path, help="also write the raw results to this JSON file")
    args = parser.parse_args(argv)
    defaults = QUICK if args.quick else FULL
    args.rounds_given = args.rounds is not None
    for key in ("duration", "rounds", "paths"):
        if getattr(args, key) is None:
            setattr(args, key, defaults[key])
    args.warmup = min(defaults["warmup"], args.duration)
    args.only = set(args.only or DEFAULT_RUN)
    if not 1 <= args.duration <= 600 or not 1 <= args.rounds <= 20 or not 1 <= args.paths <= MAX_PATHS:
        parser.error(f"need 1 <= --duration <= 600, 1 <= --rounds <= 20, 1 <= --paths <= {MAX_PATHS}")
    return args


def _log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = _parse(argv)
    started = time.monotonic()
    command = shlex.join(
        [Path(sys.executable).name, "bench/run.py", *(sys.argv[1:] if argv is None else argv)]
    )
    print(table(["component", "version"], versions(), "geofed benchmarks -- " + command))
    print()
    busy = machine_busy()
    print(f"other load before the run: {busy:.0%} of all CPUs busy while idle", end="")
    print("  -- WARNING: the machine is not idle, expect noisy figures" if busy > BUSY_WARNING else "")
    print()
    warm: WarmResults | None = None
    warm_s3: WarmResults | None = None
    cold: ColdResults | None = None
    warm_options = WarmOptions(args.duration, args.rounds, args.warmup)
    if "warm" in args.only:
        _log("running: warm GET -> 302 throughput, local endpoints ...")
        with shared_tmpdir("geofed-bench-warm-") as work:
            warm = run_warm(work, warm_options, _log)
        print(warm.render())
        print()
    if "warm-s3" in args.only:
        _log("running: warm GET -> 302 throughput, S3 endpoints (Ceph RGW) ...")
        with shared_tmpdir("geofed-bench-warm-s3-") as work:
            warm_s3 = run_warm_s3(work, warm_options, _log)
        print(warm_s3.render())
        print()
        if warm is not None:
            print(compare_variants(warm, warm_s3))
            print()
    if "cold" in args.only:
        _log("running: cold locate ...")
        with shared_tmpdir("geofed-bench-cold-") as work:
            cold = run_cold(work, ColdOptions(args.paths), _log)
        print(cold.render())
        print()
    workers: WorkersResults | None = None
    if "workers" in args.only:  # only on request: it cannot pin the servers to one CPU as the others do
        _log("running: geofed serve --workers 1 vs 2 ...")
        with shared_tmpdir("geofed-bench-workers-") as work:
            workers = run_workers(work, warm_options, _log)
        print(workers.render())
        print()
    tls: TlsResults | None = None
    if "tls" in args.only:  # only on request: it needs a C compiler, and takes ~2 min
        _log("running: TLS with X509 proxy clients: keep-alive throughput and handshakes ...")
        rounds = args.rounds if args.rounds_given else min(args.rounds, TLS_ROUNDS)
        with shared_tmpdir("geofed-bench-tls-") as work:
            tls = run_tls(work, TlsOptions(args.duration, rounds, min(args.warmup, 1)), _log)
        print(tls.render())
        print()
    tpc: TpcResults | None = None
    if "tpc" in args.only:  # only on request: it moves GBs through Apache and Ceph RGW
        _log("running: third-party copy through geofed vs a curl | curl pipe ...")
        with shared_tmpdir("geofed-bench-tpc-") as work:
            tpc = run_tpc(work, TpcOptions(size_mib=256 if args.quick else 512), _log)
        print(tpc.render())
        print()
    busy = machine_busy()
    print(f"other load after the run: {busy:.0%} of all CPUs busy while idle")
    print(f"total time {time.monotonic() - started:.0f} s")
    if args.json is not None:
        document: dict[str, Any] = {"command": command, "versions": dict(versions())}
        document["warm"] = None if warm is None else asdict(warm)
        document["warm_s3"] = None if warm_s3 is None else asdict(warm_s3)
        document["cold"] = None if cold is None else asdict(cold)
        document["workers"] = None if workers is None else asdict(workers)
        document["tls"] = None if tls is None else asdict(tls)
        document["tpc"] = None if tpc is None else asdict(tpc)
        args.json.write_text(json.dumps(document, indent=2), encoding="utf-8")
    problems = [p for r in (warm, warm_s3, cold, workers, tls, tpc) if r is not None for p in r.problems]
    return 1 if problems else 0
