"""The load clients of the TLS benchmark (:mod:`bench.tls`) and what they cost.

* **wrk with a client certificate**: wrk cannot send one, so :func:`build_shim` compiles
  :data:`SHIM_SOURCE` into a tiny ``LD_PRELOAD`` library that wraps ``SSL_CTX_new`` and loads
  ``$BENCH_TLS_CLIENT_CERT`` into every context wrk makes; :func:`run_wrk` runs it;
* **openssl s_time**: :func:`run_stime` runs several sequential s_time clients at once and sums
  their connections (full handshakes, or resumed sessions) over the wall time;
* both measure the CPU use of the server, of the clients and of every other process during the
  run (:class:`Usage`), to show which side was the limit and whether the run was noisy.

Apart from :mod:`bench.tls` (the servers, their set-up and checks, the rounds and the report) so
that each module is one concept: how the load is made and measured, and what is measured.
"""

from __future__ import annotations

import contextlib
import os
import re
import resource
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.procs import WRK_TIMEOUT_MARGIN_S, WrkResult, parse_wrk, require

_CLOCK_TICKS = os.sysconf("SC_CLK_TCK")

SHIM_SOURCE = r"""/* bench/tls.py: LD_PRELOAD into wrk so that every SSL_CTX it makes presents the client
 * certificate chain and key in the PEM file named by $BENCH_TLS_CLIENT_CERT (a grid proxy file:
 * proxy, key, then the certificates that signed it). Empty or unset: nothing changes. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>

typedef void SSL_CTX;
typedef void SSL_METHOD;

SSL_CTX *SSL_CTX_new(const SSL_METHOD *method) {
    SSL_CTX *(*real)(const SSL_METHOD *) = (SSL_CTX *(*)(const SSL_METHOD *))dlsym(RTLD_NEXT, "SSL_CTX_new");
    SSL_CTX *ctx = real(method);
    const char *path = getenv("BENCH_TLS_CLIENT_CERT");
    if (ctx == NULL || path == NULL || *path == '\0')
        return ctx;
    int (*chain)(SSL_CTX *, const char *) =
        (int (*)(SSL_CTX *, const char *))dlsym(RTLD_DEFAULT, "SSL_CTX_use_certificate_chain_file");
    int (*key)(SSL_CTX *, const char *, int) =
        (int (*)(SSL_CTX *, const char *, int))dlsym(RTLD_DEFAULT, "SSL_CTX_use_PrivateKey_file");
    int (*check)(SSL_CTX *) = (int (*)(SSL_CTX *))dlsym(RTLD_DEFAULT, "SSL_CTX_check_private_key");
    /* 1 = SSL_FILETYPE_PEM */
    if (chain == NULL || key == NULL || check == NULL || chain(ctx, path) != 1 || key(ctx, path, 1) != 1
        || check(ctx) != 1) {
        fprintf(stderr, "wrk client-certificate shim: cannot use %s\n", path);
        exit(97);
    }
    return ctx;
}
"""


@dataclass
class Usage:
    """What one run cost, in CPUs (CPU seconds per second of the run)."""

    seconds: float
    server: float
    client: float
    others: float
    """User CPU of every other process on the machine: above ~0.1 the run is noisy."""


@dataclass
class KeepAliveRun:
    wrk: WrkResult
    usage: Usage


@dataclass
class HandshakeRun:
    connections: int
    resumed: int
    bytes_per_connection: list[int]
    usage: Usage

    @property
    def per_s(self) -> float:
        return self.connections / self.usage.seconds


# -- the wrk client-certificate shim ---------------------------------------------------------------


def build_shim(work: Path) -> Path:
    compiler = _compiler()
    source = work / "wrk-client-cert.c"
    source.write_text(SHIM_SOURCE, encoding="utf-8")
    library = work / "wrk-client-cert.so"
    proc = subprocess.run(
        [compiler, "-shared", "-fPIC", "-O2", "-o", str(library), str(source), "-ldl"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"cannot build the wrk client-certificate shim:\n{proc.stderr}")
    return library


def _compiler() -> str:
    for name in ("cc", "gcc", "clang"):
        with contextlib.suppress(RuntimeError):
            return require(name)
    raise RuntimeError("the TLS benchmark needs a C compiler (cc/gcc) for wrk's client-certificate shim")


# -- CPU use --------------------------------------------------------------------------------------


def _cpu_seconds(pids: Sequence[int], user_only: bool = False) -> float:
    """CPU time of these processes so far (user + system, or user only)."""
    total = 0
    for pid in pids:
        with contextlib.suppress(OSError):
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
            total += int(fields[11]) + (0 if user_only else int(fields[12]))
    return total / _CLOCK_TICKS


def _children_cpu(user_only: bool = False) -> float:
    """CPU time of our finished children (the clients: wrk, s_time)."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + (0.0 if user_only else usage.ru_stime)


def _machine_user_cpu() -> float:
    """User CPU seconds of the whole machine so far (/proc/stat: user + nice)."""
    with open("/proc/stat", encoding="ascii") as stat:
        user, nice = stat.readline().split()[1:3]
    return (int(user) + int(nice)) / _CLOCK_TICKS


class _Meter:
    """CPU use of the server, the clients and everything else between start and :meth:`stop`.

    "Everything else" is user time only: the kernel's loopback work is system time that /proc/stat
    does not charge to our processes."""

    def __init__(self, pids: Sequence[int]) -> None:
        self._pids = pids
        self._server = _cpu_seconds(pids)
        self._client = _children_cpu()
        self._ours_user = _cpu_seconds(pids, user_only=True) + _children_cpu(user_only=True)
        self._machine_user = _machine_user_cpu()
        self._started = time.monotonic()

    def stop(self) -> Usage:
        seconds = time.monotonic() - self._started
        ours_user = _cpu_seconds(self._pids, user_only=True) + _children_cpu(user_only=True)
        others = (_machine_user_cpu() - self._machine_user) - (ours_user - self._ours_user)
        return Usage(
            seconds,
            (_cpu_seconds(self._pids) - self._server) / seconds,
            (_children_cpu() - self._client) / seconds,
            max(0.0, others) / seconds,
        )


def process_tree(pid: int) -> list[int]:
    """``pid`` and its children (nginx: the master and its worker)."""
    pids = [pid]
    with contextlib.suppress(OSError):
        pids += [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    return pids


def run_wrk(argv: list[str], env: dict[str, str], duration_s: int, pids: list[int]) -> KeepAliveRun:
    meter = _Meter(pids)
    proc = subprocess.run(
        argv, capture_output=True, text=True, env=env, timeout=duration_s + WRK_TIMEOUT_MARGIN_S, check=False
    )
    usage = meter.stop()
    if proc.returncode != 0:
        raise RuntimeError(f"wrk failed ({proc.returncode}): {proc.stderr or proc.stdout}")
    return KeepAliveRun(parse_wrk(proc.stdout), usage)


_STIME_COUNT = re.compile(r"^(\d+) connections in \d+ real seconds, (\d+) bytes read per connection", re.M)
_STIME_PROGRESS = re.compile(r"^[r*]+$", re.M)


def run_stime(argvs: list[list[str]], duration_s: int, pids: list[int]) -> HandshakeRun:
    """Run the s_time clients at once; their connections over the wall time of the slowest."""
    meter = _Meter(pids)
    processes = [
        subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) for argv in argvs
    ]
    outputs = [p.communicate(timeout=duration_s + WRK_TIMEOUT_MARGIN_S)[0] for p in processes]
    usage = meter.stop()
    connections = resumed = 0
    per_connection = []
    for process, out in zip(processes, outputs, strict=True):
        found = _STIME_COUNT.search(out)
        if process.returncode != 0 or found is None:
            raise RuntimeError(f"openssl s_time failed ({process.returncode}):\n{out[-2000:]}")
        connections += int(found.group(1))
        per_connection.append(int(found.group(2)))
        resumed += sum(line.count("r") for line in _STIME_PROGRESS.findall(out))
    return HandshakeRun(connections, resumed, per_connection, usage)
