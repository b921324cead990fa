"""Helpers shared by the third-party-copy tests (:mod:`tests.integration.test_tpc` and
:mod:`tests.integration.test_tpc_cloud`): the curl client of ``COPY``, the transfer engine set-up,
waiting and leftover checks, and the gfal2 context.

A plain module rather than conftest fixtures, so that each test module states what it uses; the
fixtures themselves (``site``, ``cloud``, ``ctx``) stay with the tests that need them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
import uuid
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from geofed.transfer.engine import TransferEngine
from geofed.transfer.remote import client_ssl_context
from geofed.transfer.settings import TransferSettings
from tests.infra.geofed_server import GeofedServer
from tests.infra.servers import WORKER_USER
from tests.infra.tpc import DavixMarkerReader

try:
    import gfal2
except ImportError as exc:  # pragma: no cover - the environment is broken, not the test
    gfal2 = None
    _IMPORT_ERROR: ImportError | None = exc
else:
    _IMPORT_ERROR = None


MiB = 1024 * 1024
CURL_TIMEOUT = 120
GFAL_TIMEOUT = 60


# -- helpers --------------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    @property
    def reader(self) -> DavixMarkerReader:
        return DavixMarkerReader().feed(self.body)

    @property
    def text(self) -> str:
        return self.body.decode(errors="replace")


def curl_copy(url: str, headers: dict[str, str], *extra: str, timeout: float = CURL_TIMEOUT) -> Answer:
    """One ``curl -X COPY`` (the real client); the last status, its headers and the body."""
    work = Path(tempfile.mkdtemp(prefix="geofed-tpc-curl-"))
    try:
        command = ["curl", "--noproxy", "*", "-sS", "--max-time", str(timeout), "-X", "COPY"]
        for name, value in headers.items():
            command += ["-H", f"{name}: {value}"]
        command += ["-D", str(work / "h"), "-o", str(work / "b"), *extra, url]
        done = subprocess.run(command, capture_output=True, timeout=timeout + 10, check=False)
        assert done.returncode == 0, done.stderr.decode()
        blocks = (work / "h").read_text().replace("\r\n", "\n").strip().split("\n\n")
        lines = blocks[-1].split("\n")
        parsed = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            parsed[name.strip().lower()] = value.strip()
        body = (work / "b").read_bytes() if (work / "b").exists() else b""
        return Answer(int(lines[0].split()[1]), parsed, body)
    finally:
        shutil.rmtree(work, ignore_errors=True)


def curl(*args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["curl", "--noproxy", "*", "-sS", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


def http_status(*args: str) -> int:
    return int(curl("-o", "/dev/null", "-w", "%{http_code}", *args).stdout or 0)


def adler32(data: bytes) -> str:
    return f"{zlib.adler32(data):08x}"


def install_engine(server: GeofedServer, **options: Any) -> TransferEngine:
    """Give the running geofed a transfer engine with these ``transfer`` settings (the fast marker
    interval of the tests unless given), as ``federation.transfers``."""
    settings = TransferSettings.model_validate({"marker_interval": "200ms", "idle_timeout": "20s", **options})
    tls = server.settings.server.tls
    engine = TransferEngine(
        settings, client_ssl_context(tls.ca_file if tls else None, tls.ca_dir if tls else None)
    )
    server.run(lambda: setattr(server.federation, "transfers", engine))
    return engine


def stats(server: GeofedServer, engine: TransferEngine) -> dict[str, int]:
    return server.run(engine.stats)


def wait_for(condition: Any, timeout: float = 20.0, what: str = "condition") -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def still_serving(server: GeofedServer, prefix: str = "/fed") -> None:
    """geofed answers a write and a read after the failure."""
    data = os.urandom(1000)
    name = f"{prefix}/alive-{uuid.uuid4().hex}.txt"
    src = Path(tempfile.mkdtemp()) / "alive"
    src.write_bytes(data)
    try:
        assert http_status("-L", "-T", str(src), server.url + name) in (201, 204)
        got = subprocess.run(
            ["curl", "--noproxy", "*", "-sS", "-L", server.url + name], capture_output=True, check=False
        )
        assert got.stdout == data
    finally:
        shutil.rmtree(src.parent, ignore_errors=True)


def owned_by_worker(path: Path, root: Path) -> None:
    if os.geteuid() == 0:
        for item in (path, *[p for p in path.parents if root in p.parents]):
            shutil.chown(item, WORKER_USER, WORKER_USER)


def no_leftovers(directory: Path) -> list[str]:
    """Files below ``directory`` (temporary upload files included)."""
    if not directory.exists():
        return []
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*") if p.is_file())


# -- gfal2 ----------------------------------------------------------------------------------------


def gfal_context() -> Any:
    """A gfal2 context that does third-party copies or fails (no fallback to a streamed copy);
    fails the test when gfal2 cannot be imported."""
    if gfal2 is None:
        pytest.fail(f"cannot import gfal2 ({_IMPORT_ERROR})", pytrace=False)
    context = gfal2.creat_context()
    context.set_opt_integer("HTTP PLUGIN", "OPERATION_TIMEOUT", GFAL_TIMEOUT)
    context.set_opt_integer("CORE", "NAMESPACE_TIMEOUT", GFAL_TIMEOUT)
    context.set_opt_boolean("HTTP PLUGIN", "ENABLE_REMOTE_COPY", True)
    context.set_opt_boolean("HTTP PLUGIN", "ENABLE_FALLBACK_TPC_COPY", False)  # TPC or fail
    return context


def gfal_params(ctx: Any, mode: str, checksum: str | None = None, where: Any = None) -> Any:
    ctx.set_opt_string("HTTP PLUGIN", "DEFAULT_COPY_MODE", mode)
    params = ctx.transfer_parameters()
    params.overwrite = True
    params.create_parent = True
    params.timeout = GFAL_TIMEOUT
    if checksum is not None or where is not None:
        params.set_checksum(where or gfal2.checksum_mode.both, "ADLER32", checksum or "")
    return params
