"""Rucio's RSE protocols driven without a Rucio server (clients.md 9.3), from geofed's tests.

rucio-clients lives in its own virtual environment, ``.cache/rucio-venv`` (``scripts/rucio-venv.sh``,
run by ``make test``), with Debian's gfal2 module linked in. A test builds the ``rse_settings``
dict a Rucio server would hand out (:func:`rse_settings`) and runs a list of steps -- upload,
exists, stat, digest, download, delete -- in one subprocess of that environment
(``tests/infra/rucio_driver.py``), with:

* ``RUCIO_CONFIG``: a minimal config file in the client's work folder (``[client]`` points at an
  unused loopback URL: no Rucio server is ever asked);
* ``X509_USER_PROXY`` (the VOMS proxy) and ``X509_CERT_DIR`` (the hashed test CA folder) for
  gfal2, and ``SSL_CERT_FILE``/``REQUESTS_CA_BUNDLE`` (the test CA) for python-requests;
* no ``BEARER_TOKEN*`` or ``X509_USER_CERT/KEY`` from the caller's environment.

Rucio's gfal protocol turns gfal2's macaroon request off itself (``RETRIEVE_BEARER_TOKEN`` false in
``connect``), so nothing is set for it here. A missing rucio environment fails the test with the
command that makes it; it never skips.
"""

from __future__ import annotations

import json
import os
import subprocess
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

PROJECT = Path(__file__).resolve().parents[2]
RUCIO_VENV = PROJECT / ".cache" / "rucio-venv"
DRIVER = Path(__file__).with_name("rucio_driver.py")
INSTALL_HINT = "bash scripts/rucio-venv.sh"

GFAL = "rucio.rse.protocols.gfal.Default"
WEBDAV = "rucio.rse.protocols.webdav.Default"

CONFIG = """\
[common]
multi_vo = False
loglevel = DEBUG

[client]
rucio_host = https://127.0.0.1:1
auth_host = https://127.0.0.1:1
auth_type = userpass
account = root

[policy]
permission = generic
schema = generic
lfn2pfn_algorithm_default = hash

[deletion]
# gfal2's HTTP operation timeout, set by Rucio's gfal protocol (seconds)
timeout = {gfal_timeout}
"""

_SCRUBBED = ("X509_USER_CERT", "X509_USER_KEY", "BEARER_TOKEN", "BEARER_TOKEN_FILE", "RUCIO_CLIENT_MODE")


def rucio_python() -> Path:
    """The rucio environment's interpreter; fails the test (never skips) when it is missing."""
    python = RUCIO_VENV / "bin" / "python"
    if not python.exists():
        pytest.fail(
            f"rucio-clients is not installed in {RUCIO_VENV}: run `{INSTALL_HINT}` (part of `make test`)",
            pytrace=False,
        )
    return python


def rse_settings(
    hostname: str,
    port: int,
    prefix: str,
    impl: str,
    *,
    scheme: str = "https",
    rse: str = "GEOFED_TEST",
) -> dict[str, Any]:
    """The RSE description a Rucio server would give its clients, for one protocol (clients.md 9.3)."""
    ops = {op: 1 for op in ("read", "write", "delete", "third_party_copy_read", "third_party_copy_write")}
    return {
        "rse": rse,
        "id": uuid.uuid5(uuid.NAMESPACE_URL, f"{rse}{hostname}{port}{prefix}").hex,
        "rse_type": "DISK",
        "deterministic": True,
        "volatile": False,
        "staging_area": False,
        "availability_read": True,
        "availability_write": True,
        "availability_delete": True,
        "credentials": None,
        "lfn2pfn_algorithm": "hash",
        "qos_class": None,
        "sign_url": None,
        "verify_checksum": True,
        "domain": ["wan", "lan"],
        "protocols": [
            {
                "scheme": scheme,
                "hostname": hostname,
                "port": port,
                "prefix": prefix,
                "impl": impl,
                "domains": {"wan": dict(ops), "lan": dict(ops)},
                "extended_attributes": None,
            }
        ],
    }


@dataclass(frozen=True)
class StepResult:
    op: str
    ok: bool
    value: Any = None
    error: str | None = None
    traceback: str | None = None


@dataclass
class RucioRun:
    """The results of one driver run, in step order (``steps[i]`` answered by ``results[i]``)."""

    steps: list[dict[str, Any]]
    results: list[StepResult]
    stderr: str

    def __getitem__(self, label: str) -> StepResult:
        for step, result in zip(self.steps, self.results, strict=False):
            if step.get("label", step["op"]) == label:
                return result
        raise KeyError(label)

    def value(self, label: str) -> Any:
        """The value of step ``label``, failing the test with the step's error if it failed."""
        result = self[label]
        if not result.ok:
            pytest.fail(f"rucio step {label!r} failed: {result.error}\n{result.traceback}\n{self.report()}")
        return result.value

    def report(self) -> str:
        lines = []
        for step, result in zip(self.steps, self.results, strict=False):
            label = step.get("label", step["op"])
            lines.append(f"  {label}: " + (f"ok {result.value!r}" if result.ok else f"FAILED {result.error}"))
        tail = "\n".join(self.stderr.strip().splitlines()[-40:])
        return "rucio steps:\n" + "\n".join(lines) + f"\nrucio stderr (last lines):\n{tail}"


@dataclass
class RucioClient:
    """A Rucio client environment: a work folder (config, result files), a proxy and the test CA."""

    workdir: Path
    proxy: Path
    ca_dir: Path
    ca_file: Path
    timeout: float = 90.0
    gfal_timeout: int = 30

    def __post_init__(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.config = self.workdir / "rucio.cfg"
        self.config.write_text(CONFIG.format(gfal_timeout=self.gfal_timeout))

    def environment(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k not in _SCRUBBED}
        env.update(
            {
                "RUCIO_CONFIG": str(self.config),
                "X509_USER_PROXY": str(self.proxy),
                "X509_CERT_DIR": str(self.ca_dir),
                "SSL_CERT_FILE": str(self.ca_file),
                "REQUESTS_CA_BUNDLE": str(self.ca_file),
                "NO_PROXY": "*",
                "HOME": str(self.workdir),
            }
        )
        for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy", "ALL_PROXY", "all_proxy"):
            env.pop(name, None)
        return env

    def run(self, rse: dict[str, Any], steps: Sequence[dict[str, Any]]) -> RucioRun:
        """Run ``steps`` in one process of the rucio environment; every step runs and reports."""
        python = rucio_python()
        output = self.workdir / f"result-{uuid.uuid4().hex}.json"
        request = {"rse_settings": rse, "steps": list(steps), "output": str(output)}
        try:
            done = subprocess.run(
                # -I: the script's folder (tests/infra, which holds this rucio.py) is not put on
                # sys.path, so ``import rucio`` finds rucio-clients
                [str(python), "-I", str(DRIVER)],
                input=json.dumps(request),
                capture_output=True,
                text=True,
                timeout=self.timeout,
                check=False,
                env=self.environment(),
                cwd=self.workdir,
            )
        except subprocess.TimeoutExpired as exc:
            stderr = exc.stderr.decode(errors="replace") if isinstance(exc.stderr, bytes) else exc.stderr
            pytest.fail(f"rucio driver timed out after {self.timeout}s; stderr:\n{stderr or ''}"[-6000:])
        if not output.exists():
            pytest.fail(f"rucio driver exited {done.returncode} without results:\n{done.stderr[-6000:]}")
        raw = json.loads(output.read_text())
        output.unlink()
        results = [StepResult(**r) for r in raw]
        if results and results[0].op == "import" and not results[0].ok:
            pytest.fail(
                f"cannot import rucio in {RUCIO_VENV} ({results[0].error}): run `{INSTALL_HINT}`",
                pytrace=False,
            )
        return RucioRun(list(steps), results, done.stderr)
