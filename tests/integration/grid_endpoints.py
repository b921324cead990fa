"""geofed over HTTPS (the grid layout's test PKI and VOMS) in front of one endpoint of each kind, and
a reader of geofed's access log: shared by the Rucio tests and the job workflow test.

Each :class:`Backend` is one endpoint -- ``local`` (a directory), ``webdav`` (the session's Apache
mod_dav_fs), ``s3`` (Ceph RGW) or ``azure`` (Azurite) -- holding a fresh ``/<run>`` folder or key
prefix, with the federated prefix mapped onto it, and reads what the store itself holds
(``stored``), bypassing geofed.
"""

from __future__ import annotations

import os
import re
import secrets
import shutil
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geofed.config import Settings, settings_from_mapping
from tests.infra.azurite import DEV_ACCOUNT, AzuriteServer
from tests.infra.ceph import CephCluster
from tests.infra.geofed_server import GeofedServer
from tests.infra.pki import Pki
from tests.infra.servers import WORKER_USER, RunningServer

KINDS = ("local", "webdav", "s3", "azure")


def grid_settings(
    pki: Pki,
    endpoints: Sequence[dict[str, Any]],
    policy: Sequence[dict[str, Any]],
    **sections: Any,
) -> Settings:
    """HTTPS with the test host certificate and CA folder, VOMS from the test vomsdir, ``policy``."""
    mapping: dict[str, Any] = {
        "server": {
            "host": "127.0.0.1",
            "port": 0,
            "tls": {
                "cert": str(pki.host.cert_path),
                "key": str(pki.host.key_path),
                "ca_dir": str(pki.ca_dir),
                "client_certificates": "optional",
            },
        },
        "signing": {"secret": secrets.token_urlsafe(32)},
        "health": {"interval": "60s", "timeout": "3s"},
        "auth": {"vomsdir": str(pki.vomsdir), "policy": list(policy)},
        "endpoints": list(endpoints),
    }
    mapping.update(sections)
    return settings_from_mapping(mapping, environ={})


# -- endpoints ---------------------------------------------------------------------------------


@dataclass
class Backend:
    """One endpoint kind, with a fresh folder/key prefix ``run`` on the store."""

    kind: str
    federated: str
    run: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    def mapping(self, name: str | None = None, **extra: Any) -> dict[str, Any]:
        entry = {
            "name": name or self.kind,
            "kind": self.kind,
            "prefixes": [{"federated": self.federated, "endpoint": f"/{self.run}"}],
            "writable": True,
            "timeout": "10s",
            **self.store_mapping(),
        }
        entry.update(extra)
        return entry

    def store_mapping(self) -> dict[str, Any]:
        raise NotImplementedError

    def key(self, federated_path: str) -> str:
        """The key (path below the store's root) that federated ``federated_path`` maps to."""
        relative = federated_path.removeprefix(self.federated).lstrip("/")
        return f"{self.run}/{relative}"

    def stored(self, federated_path: str) -> bytes | None:
        """The bytes the store itself holds for ``federated_path`` (None: absent)."""
        raise NotImplementedError


@dataclass
class DirectoryBackend(Backend):
    """``local`` (geofed's own data route) or ``webdav`` (Apache): both store files in a folder."""

    root: Path = Path("/nonexistent")
    url: str = ""
    owner: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        folder = self.root / self.run
        folder.mkdir(parents=True, exist_ok=True)
        if self.owner is not None:
            os.chown(folder, *self.owner)

    def store_mapping(self) -> dict[str, Any]:
        return {"url": self.url}

    def stored(self, federated_path: str) -> bytes | None:
        target = self.root / self.key(federated_path)
        return target.read_bytes() if target.is_file() else None

    def cleanup(self) -> None:
        shutil.rmtree(self.root / self.run, ignore_errors=True)


@dataclass
class S3Backend(Backend):
    rgw: CephCluster | None = None
    site: str = "cern"

    def store_mapping(self) -> dict[str, Any]:
        assert self.rgw is not None
        s3 = self.rgw.sites[self.site]
        return {
            "url": s3.url,
            "bucket": s3.bucket,
            "credentials": {"access_key": s3.access_key, "secret_key": s3.secret_key},
        }

    def stored(self, federated_path: str) -> bytes | None:
        assert self.rgw is not None
        s3 = self.rgw.sites[self.site]
        client = self.rgw.client(s3.access_key, s3.secret_key)
        try:
            body = client.get_object(Bucket=s3.bucket, Key=self.key(federated_path))["Body"]
        except client.exceptions.NoSuchKey:
            return None
        return bytes(body.read())


@dataclass
class AzureBackend(Backend):
    azurite: AzuriteServer | None = None
    container: str = "fed-a"

    def store_mapping(self) -> dict[str, Any]:
        assert self.azurite is not None
        account = self.azurite.containers[self.container]
        return {
            "url": self.azurite.account_url(account),
            "account": account,
            "container": self.container,
            "credentials": {"account_key": self.azurite.accounts[account]},
        }

    def stored(self, federated_path: str) -> bytes | None:
        from azure.core.exceptions import ResourceNotFoundError

        assert self.azurite is not None
        account = self.azurite.containers.get(self.container, DEV_ACCOUNT)
        with self.azurite.service_client(account) as service:
            blob = service.get_blob_client(self.container, self.key(federated_path))
            try:
                return bytes(blob.download_blob().readall())
            except ResourceNotFoundError:
                return None


def www_data_ids() -> tuple[int, int] | None:
    """(uid, gid) of Apache's worker user when we run as root (it then owns the files)."""
    if os.geteuid() != 0:
        return None
    import pwd

    user = pwd.getpwnam(WORKER_USER)
    return user.pw_uid, user.pw_gid


def local_backend(root: Path, federated: str) -> DirectoryBackend:
    root.mkdir(parents=True, exist_ok=True)
    return DirectoryBackend("local", federated, root=root, url=root.resolve().as_uri())


def apache_backend(server: RunningServer, federated: str) -> DirectoryBackend:
    assert server.root is not None
    return DirectoryBackend("webdav", federated, root=server.root, url=server.url, owner=www_data_ids())


# -- geofed's access log -----------------------------------------------------------------------

# "<time> <client> <identity> METHOD /path status decision endpoint locate"; the identity is a DN and
# may hold spaces ("CN=Test User"), so the line is read from its end.
_LOG_LINE = re.compile(
    r"^\S+ (?P<client>\S+) (?P<identity>.+) (?P<method>[A-Z]+) (?P<path>/\S*) (?P<status>\d{3}) "
    r"(?P<decision>\S+) (?P<endpoint>\S+) \S+$"
)


@dataclass(frozen=True)
class Logged:
    client: str
    identity: str
    method: str
    path: str
    status: int
    decision: str
    endpoint: str

    def brief(self, strip: str = "") -> str:
        path = self.path.replace(strip, "…") if strip else self.path
        shown = f"{self.method} {path} {self.status} {self.decision}"
        return shown + (f"@{self.endpoint}" if self.endpoint != "-" else "")


def log_mark(fed: GeofedServer) -> int:
    return len(fed.flush_access_log())


def logged_since(fed: GeofedServer, mark: int, settle: float = 0.1) -> list[Logged]:
    """Access-log records since ``mark`` (after a short wait: a record may follow the answer)."""
    time.sleep(settle)
    entries = []
    for line in fed.flush_access_log()[mark:].splitlines():
        match = _LOG_LINE.match(line.strip())
        if match:
            entries.append(
                Logged(
                    match["client"],
                    match["identity"],
                    match["method"],
                    match["path"],
                    int(match["status"]),
                    match["decision"],
                    match["endpoint"],
                )
            )
    return entries
