"""Benchmark: an HTTP third-party copy through geofed against a direct ``curl GET | curl PUT`` pipe.

The same bytes go between the same two real servers both ways, in one run:

* **source**: Apache mod_dav_fs (``tests.infra.servers.start_apache_dav``) serving one file of
  ``--size`` MiB of random bytes from disk;
* **destination**: a real Ceph RGW (``tests.infra.ceph``, memstore OSD), one bucket;
* **geofed**: ``geofed serve`` with that bucket as its one writable ``kind: s3`` endpoint; the client
  (curl) sends ``COPY /rgw/<key>`` with ``Source: <Apache URL>`` and reads the performance markers
  until ``success: Created``. geofed GETs from Apache, hashes the bytes (adler32, md5, sha256,
  crc32c), uploads them as an S3 multipart upload of 16 MiB parts (each with ``Content-MD5``),
  asks RGW for the result, and stores the checksums with the object (a CopyObject onto itself);
* **pipe**: ``curl -sS <Apache URL> | curl -sS -T - <pre-signed PUT URL>`` -- one PutObject of the
  whole file, no checksum, nothing stored besides the bytes.

Rounds alternate the order of the two. Each copy is checked (the object's size), then deleted, and
RGW's garbage collection is run so that the memstore OSD does not fill up. Reported: the median
throughput of each, their ratio, and geofed's memory: resident size before the first copy and its
peak (``VmHWM``) after the last, read from ``/proc/<pid>/status``; and geofed's CPU time per GB.

Run: ``.venv/bin/python bench/tpc.py [--size 512] [--rounds 3] [--checksums adler32]`` (starts Apache
and RGW, ~15 s, and stops them by PID at the end). ``run(work, TpcOptions(...), log)`` returns a
:class:`TpcResults` (``rows()``, ``render()``, ``ratio``) for ``bench/main.py``.
"""

from __future__ import annotations

import argparse
import contextlib
import secrets
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # run as a script: make bench.* and tests.infra.* importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml

from bench.procs import VENV_BIN, launch, require
from bench.report import table
from tests.infra.ceph import CephCluster, S3Site, start_ceph_rgw
from tests.infra.policies import OPEN_POLICY
from tests.infra.servers import LOOPBACK, RunningServer, start_apache_dav

MiB = 1024 * 1024
BUCKET = "bench-tpc"
COPY_TIMEOUT_S = 600
SOURCE_NAME = "tpc-source.bin"


@dataclass(frozen=True)
class TpcOptions:
    size_mib: int = 512
    rounds: int = 3
    checksums: tuple[str, ...] | None = None
    """``transfer.checksums`` for geofed (None: its default, all four algorithms)."""


@dataclass
class Copy:
    who: str
    seconds: float
    size: int
    cpu_seconds: float | None = None
    """geofed's CPU time (user + system) during this copy; None for the pipe."""

    @property
    def mb_per_s(self) -> float:
        return self.size / self.seconds / 1e6


@dataclass
class TpcResults:
    size: int
    copies: list[Copy] = field(default_factory=list)
    geofed_rss_before_mib: float | None = None
    geofed_peak_mib: float | None = None
    commands: dict[str, str] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)

    def median(self, who: str) -> float:
        values = [c.mb_per_s for c in self.copies if c.who == who]
        return statistics.median(values) if values else 0.0

    @property
    def ratio(self) -> float:
        pipe = self.median("pipe")
        return self.median("geofed") / pipe if pipe else 0.0

    def rows(self) -> list[list[str]]:
        """One row per way of copying: median and range of MB/s, and geofed's CPU per GB."""
        out = []
        for who in ("geofed", "pipe"):
            runs = [c for c in self.copies if c.who == who]
            if not runs:
                continue
            rates = [c.mb_per_s for c in runs]
            cpu = [c.cpu_seconds / (c.size / 1e9) for c in runs if c.cpu_seconds is not None]
            out.append(
                [
                    who,
                    f"{self.median(who):.0f}",
                    f"{min(rates):.0f}-{max(rates):.0f}",
                    f"{statistics.median(c.seconds for c in runs):.2f}",
                    f"{statistics.median(cpu):.1f}" if cpu else "-",
                ]
            )
        return out

    def render(self) -> str:
        title = (
            f"Third-party copy, Apache WebDAV -> Ceph RGW, {self.size / MiB:.0f} MiB, "
            f"{len(self.copies) // 2} round(s)"
        )
        lines = [table(["copy", "MB/s median", "MB/s range", "s median", "CPU s/GB"], self.rows(), title)]
        lines.append(f"geofed / pipe throughput = {self.ratio:.2f} (medians)")
        if self.geofed_peak_mib is not None and self.geofed_rss_before_mib is not None:
            lines.append(
                f"geofed memory: {self.geofed_rss_before_mib:.0f} MiB resident before the copies, "
                f"peak {self.geofed_peak_mib:.0f} MiB (VmHWM)"
            )
        for name, command in self.commands.items():
            lines.append(f"  {name}: {command}")
        lines += [f"PROBLEM: {p}" for p in self.problems]
        return "\n".join(lines)


# -- measuring ------------------------------------------------------------------------------------


def _status_kib(pid: int, field_name: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field_name + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"no {field_name} for process {pid}")


def _cpu_seconds(pid: int) -> float:
    import os

    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = int(fields[11]) + int(fields[12])  # utime, stime
    return ticks / os.sysconf("SC_CLK_TCK")


def _geofed_copy(geofed: RunningServer, source_url: str, key: str) -> tuple[float, float, str]:
    """(seconds, geofed CPU seconds, last line) of one COPY, as curl sees it."""
    argv = ["curl", "--noproxy", "*", "-sS", "--max-time", str(COPY_TIMEOUT_S), "-X", "COPY"]
    argv += ["-H", f"Source: {source_url}", "-H", "Credential: none", f"{geofed.url}/rgw/{key}"]
    cpu = _cpu_seconds(geofed.pid)
    started = time.monotonic()
    done = subprocess.run(argv, capture_output=True, timeout=COPY_TIMEOUT_S + 10, check=False)
    seconds = time.monotonic() - started
    lines = done.stdout.decode(errors="replace").strip().splitlines()
    return seconds, _cpu_seconds(geofed.pid) - cpu, lines[-1] if lines else done.stderr.decode()


def _pipe_copy(source_url: str, put_url: str, size: int) -> tuple[float, str]:
    """(seconds, problem or "") of ``curl GET | curl -T - PUT`` with the length announced."""
    get = ["curl", "--noproxy", "*", "-sS", "--fail", source_url]
    put = ["curl", "--noproxy", "*", "-sS", "--fail", "-o", "/dev/null", "-T", "-"]
    put += ["-H", f"Content-Length: {size}", "-H", "Transfer-Encoding:", put_url]
    started = time.monotonic()
    reader = subprocess.Popen(get, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert reader.stdout is not None
    writer = subprocess.run(
        put, stdin=reader.stdout, capture_output=True, timeout=COPY_TIMEOUT_S, check=False
    )
    reader.stdout.close()
    reader.wait(30)
    seconds = time.monotonic() - started
    problem = ""
    if reader.returncode != 0 or writer.returncode != 0:
        problem = (
            f"pipe failed: GET exit {reader.returncode}, PUT exit {writer.returncode}: {writer.stderr!r}"
        )
    return seconds, problem


# -- the servers ----------------------------------------------------------------------------------


def _geofed_config(work: Path, site: S3Site, checksums: tuple[str, ...] | None) -> Path:
    config: dict[str, Any] = {
        "server": {"host": LOOPBACK, "port": 0, "access_log": False},
        "signing": {"secret": secrets.token_urlsafe(32)},
        "auth": OPEN_POLICY,
        "health": {"interval": "6h", "timeout": "5s"},
        "endpoints": [
            {
                "name": "rgw",
                "kind": "s3",
                "url": site.url,
                "bucket": site.bucket,
                "credentials": {"access_key": site.access_key, "secret_key": site.secret_key},
                "prefixes": [{"federated": "/rgw", "endpoint": "/"}],
                "writable": True,
                "timeout": "60s",
            }
        ],
    }
    if checksums is not None:
        from geofed.config import Settings

        if "transfer" not in Settings.model_fields:
            raise RuntimeError("--checksums needs the 'transfer' section in geofed's configuration")
        config["transfer"] = {"checksums": list(checksums)}
    path = work / "geofed-tpc.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    path.chmod(0o600)  # S3 keys inside
    return path


@contextlib.contextmanager
def _servers(
    work: Path, size: int, log: Callable[[str], None]
) -> Iterator[tuple[RunningServer, CephCluster, S3Site]]:
    with contextlib.ExitStack() as stack:
        apache = start_apache_dav(work / "apache" / "dav", work / "apache" / "work")
        stack.callback(apache.stop)
        assert apache.root is not None
        source = apache.root / SOURCE_NAME
        with source.open("wb") as out:
            remaining = size
            while remaining:
                block = secrets.token_bytes(min(4 * MiB, remaining))
                out.write(block)
                remaining -= len(block)
        source.chmod(0o644)
        log(f"  source: {apache.url}/{SOURCE_NAME} ({size / MiB:.0f} MiB on disk, Apache mod_dav_fs)")
        log("  starting Ceph RGW (mon + memstore OSD + radosgw, ~15 s) ...")
        cluster = start_ceph_rgw(work / "ceph")
        stack.callback(cluster.stop)
        site = cluster.add_site("tpc", BUCKET, own_gateway=False)
        yield apache, cluster, site


def _collect_garbage(cluster: CephCluster) -> None:
    """Free the deleted objects' data now (memstore keeps it until RGW's GC runs, hours later)."""
    admin = require("radosgw-admin")
    subprocess.run(
        [admin, "-c", str(cluster.conf), "gc", "process", "--include-all"],
        env=cluster.env(),
        capture_output=True,
        timeout=120,
        check=False,
    )


def _warm_up(geofed: RunningServer, source_url: str, client: Any, cluster: CephCluster) -> None:
    """One unmeasured copy first: geofed's connections, RGW's first multipart upload of the bucket."""
    _geofed_copy(geofed, source_url, "warm-up.bin")
    client.delete_object(Bucket=BUCKET, Key="warm-up.bin")
    _collect_garbage(cluster)


def run(work: Path, options: TpcOptions, log: Callable[[str], None]) -> TpcResults:
    """Start Apache, RGW and geofed below ``work``; copy ``rounds`` times each way; stop them all."""
    size = options.size_mib * MiB
    results = TpcResults(size)
    with _servers(work, size, log) as (apache, cluster, site):
        client = cluster.client(site.access_key, site.secret_key)
        config = _geofed_config(work, site, options.checksums)
        argv_of: dict[str, list[str]] = {}

        def geofed_argv(port: int) -> list[str]:
            argv_of["geofed"] = [
                str(VENV_BIN / "geofed"),
                "serve",
                "--config",
                str(config),
                "--port",
                str(port),
            ]
            return argv_of["geofed"]

        geofed = launch("geofed", geofed_argv, work / "geofed-tpc.out")
        try:
            source_url = f"{apache.url}/{SOURCE_NAME}"
            results.commands["geofed"] = shlex.join(argv_of["geofed"])
            results.commands["geofed copy"] = f"curl -X COPY -H 'Source: {source_url}' {geofed.url}/rgw/<key>"
            put = f"curl -T - -H 'Content-Length: {size}' -H 'Transfer-Encoding:' <pre-signed PUT URL>"
            results.commands["pipe"] = f"curl {source_url} | {put}"
            results.geofed_rss_before_mib = _status_kib(geofed.pid, "VmRSS") / 1024
            _warm_up(geofed, source_url, client, cluster)
            for round_number in range(options.rounds):
                order = ("geofed", "pipe") if round_number % 2 == 0 else ("pipe", "geofed")
                for who in order:
                    key = f"{who}-{round_number}.bin"
                    if who == "geofed":
                        seconds, cpu, last = _geofed_copy(geofed, source_url, key)
                        if not last.startswith("success"):
                            results.problems.append(f"geofed copy {key}: {last}")
                        results.copies.append(Copy(who, seconds, size, cpu))
                    else:
                        put_url = client.generate_presigned_url(
                            "put_object", Params={"Bucket": BUCKET, "Key": key}, ExpiresIn=3600
                        )
                        seconds, problem = _pipe_copy(source_url, put_url, size)
                        if problem:
                            results.problems.append(problem)
                        results.copies.append(Copy(who, seconds, size))
                    stored = client.head_object(Bucket=BUCKET, Key=key)["ContentLength"]
                    if stored != size:
                        results.problems.append(f"{who} copy {key}: RGW holds {stored} bytes, not {size}")
                    log(f"  round {round_number + 1} {who}: {results.copies[-1].mb_per_s:.0f} MB/s")
                    client.delete_object(Bucket=BUCKET, Key=key)
                    _collect_garbage(cluster)
            results.geofed_peak_mib = _status_kib(geofed.pid, "VmHWM") / 1024
        finally:
            geofed.stop()
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=TpcOptions.size_mib, help="MiB copied (default 512)")
    parser.add_argument("--rounds", type=int, default=TpcOptions.rounds, help="rounds (default 3)")
    parser.add_argument(
        "--checksums", help="transfer.checksums for geofed, comma separated (default: all four)"
    )
    args = parser.parse_args(argv)
    if not 1 <= args.size <= 1500 or not 1 <= args.rounds <= 10:
        parser.error("need 1 <= --size <= 1500 (RGW's memstore holds 2 GiB) and 1 <= --rounds <= 10")

    def log(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="geofed-bench-tpc-") as tmp:
        work = Path(tmp)
        work.chmod(0o755)  # Apache's workers (www-data) must traverse it
        checksums = tuple(args.checksums.split(",")) if args.checksums else None
        results = run(work, TpcOptions(args.size, args.rounds, checksums), log)
    print(results.render())
    return 1 if results.problems else 0


if __name__ == "__main__":
    sys.exit(main())
