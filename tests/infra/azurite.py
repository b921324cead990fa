"""A real Azure Blob endpoint on 127.0.0.1 for tests: Azurite 3.35.0 (npm), several accounts.

Why Azurite: geofed signs SAS URLs for Azure sites and must prove them right. Azurite checks the
SAS signature, expiry, permissions and resource (tampered sig, read SAS used for PUT → 403;
reference ``test-infrastructure.md`` §4), so a broken signer fails here as it would on Azure.

* Installed by ``scripts/install-test-deps.sh`` into the project-local ``.cache/azurite`` (pinned:
  3.37+ needs Node >= 22). Missing → :class:`RuntimeError` naming the script (tests fail, never
  skip).
* Several accounts in one process (``AZURITE_ACCOUNTS``) play several Azure "sites"; Azurite drops
  ``devstoreaccount1`` once that variable is set, so it is listed explicitly with its well-known
  key.
* ``--skipApiVersionCheck``: azure-storage-blob 12.31 sends ``x-ms-version: 2026-10-06``, newer
  than Azurite 3.35 knows (every call would be 400 InvalidHeaderValue). Our own helper clients also
  pin :data:`AZURITE_API_VERSION`, so they keep working even without the flag.
* ``--disableTelemetry`` (no network here), ``--inMemoryPersistence`` (every session starts
  empty, nothing written), bound to 127.0.0.1 on a free port, in the foreground as our child and
  stopped by its PID (:meth:`RunningServer.stop`).
"""

from __future__ import annotations

import base64
import os
import secrets
import shutil
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, TYPE_CHECKING

from tests.infra.ceph import die_with_parent
from tests.infra.servers import (
    LOOPBACK,
    RunningServer,
    _format_logs,
    _kill_unready,
    _listener_is_ours,
    _port_accepts,
    free_port,
)

if TYPE_CHECKING:
    from azure.storage.blob import BlobServiceClient

AZURITE_VERSION = "3.35.0"
AZURITE_DIR = Path(__file__).resolve().parents[2] / ".cache" / "azurite"
AZURITE_MAIN = AZURITE_DIR / "node_modules" / "azurite" / "dist" / "src" / "blob" / "main.js"
# The newest x-ms-version Azurite 3.35.0 knows.
AZURITE_API_VERSION = "2025-11-05"
DEV_ACCOUNT = "devstoreaccount1"
DEV_ACCOUNT_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
READY_TIMEOUT_S = 30.0
POLL_S = 0.05
START_ATTEMPTS = 3
# In-memory blob data cap (MB); Azurite's default is half the machine's RAM.
EXTENT_MEMORY_LIMIT_MB = 1024


def random_account_key() -> str:
    """A fresh 64-byte base64 account key, like Azure's."""
    return base64.b64encode(secrets.token_bytes(64)).decode()


def default_accounts() -> dict[str, str]:
    """``devstoreaccount1`` (well-known key, what SDK samples expect) and ``site2`` (random key)."""
    return {DEV_ACCOUNT: DEV_ACCOUNT_KEY, "site2": random_account_key()}


@dataclass
class AzuriteServer(RunningServer):
    """Azurite's blob service: ``url`` is ``http://127.0.0.1:PORT``; accounts are path-style below it."""

    accounts: dict[str, str] = field(default_factory=dict)
    """Account name → base64 key."""
    containers: dict[str, str] = field(default_factory=dict)
    """Container name → account, for the containers made with :meth:`create_container`."""

    def account_url(self, account: str) -> str:
        """Blob endpoint of ``account``: ``http://127.0.0.1:PORT/<account>`` (path-style)."""
        self._key(account)
        return f"{self.url}/{account}"

    def connection_string(self, account: str) -> str:
        """An Azure Storage connection string for ``account`` on this server."""
        return (
            f"DefaultEndpointsProtocol=http;AccountName={account};AccountKey={self._key(account)};"
            f"BlobEndpoint={self.account_url(account)};"
        )

    def service_client(self, account: str) -> BlobServiceClient:
        """A shared-key ``BlobServiceClient`` for ``account``, pinned to Azurite's API version."""
        from azure.storage.blob import BlobServiceClient

        return BlobServiceClient(
            self.account_url(account),
            credential={"account_name": account, "account_key": self._key(account)},
            api_version=AZURITE_API_VERSION,
        )

    def create_container(self, account: str, name: str) -> None:
        """Create container ``name`` in ``account`` (names need >= 3 characters)."""
        with self.service_client(account) as client:
            client.create_container(name)
        self.containers[name] = account

    def _key(self, account: str) -> str:
        try:
            return self.accounts[account]
        except KeyError:
            raise KeyError(f"Azurite has no account {account!r}; it has {sorted(self.accounts)}") from None


def _require_azurite() -> str:
    """Return the node executable, or explain how to install what is missing."""
    node = shutil.which("node")
    if node is None:
        raise RuntimeError("node is not installed: run scripts/install-test-deps.sh as root")
    if not AZURITE_MAIN.is_file():
        raise RuntimeError(
            f"Azurite {AZURITE_VERSION} is not installed in {AZURITE_DIR}: run scripts/install-test-deps.sh"
        )
    return node


def start_azurite(workdir: Path, accounts: Mapping[str, str] | None = None) -> AzuriteServer:
    """Start Azurite's blob service on 127.0.0.1 and a free port with ``accounts`` (name → key).

    ``None`` gives :func:`default_accounts`. ``workdir`` is Azurite's working directory and receives
    its output (``--location`` is refused together with ``--inMemoryPersistence``, so the cwd is
    set instead: nothing may land in the project folder). Ready in ~2 s.
    """
    node = _require_azurite()
    chosen = dict(default_accounts() if accounts is None else accounts)
    if not chosen:
        raise ValueError("Azurite needs at least one account")
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "AZURITE_ACCOUNTS": ";".join(f"{name}:{key}" for name, key in chosen.items())}
    last_error = ""
    for _ in range(START_ATTEMPTS):
        port = free_port()
        argv = [
            node,
            str(AZURITE_MAIN),
            "--blobHost",
            LOOPBACK,
            "--blobPort",
            str(port),
            "--inMemoryPersistence",
            f"--extentMemoryLimit={EXTENT_MEMORY_LIMIT_MB}",
            "--disableTelemetry",
            "--skipApiVersionCheck",
        ]
        out: IO[bytes] = (workdir / "azurite.out").open("w+b")
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=workdir,
            start_new_session=True,
            preexec_fn=die_with_parent,
        )
        deadline = time.monotonic() + READY_TIMEOUT_S
        ready = False
        while time.monotonic() < deadline and process.poll() is None:
            if _port_accepts(port) and _listener_is_ours(process.pid, port):
                ready = True
                break
            time.sleep(POLL_S)
        if ready:
            return AzuriteServer(
                name="azurite",
                url=f"http://{LOOPBACK}:{port}",
                port=port,
                pid=process.pid,
                process=process,
                _owned_files=[out],
                accounts=chosen,
            )
        status = process.poll()
        last_error = _format_logs((), [out])
        _kill_unready(process)
        out.close()
        if status is not None and "eaddrinuse" in last_error.lower():
            continue
        raise RuntimeError(
            f"azurite did not listen on {LOOPBACK}:{port} within {READY_TIMEOUT_S:.0f} s "
            f"(exit status {status})\n{last_error}"
        )
    raise RuntimeError(f"azurite: no free port after {START_ATTEMPTS} attempts\n{last_error}")
