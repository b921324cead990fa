"""Fixtures for end-to-end tests: a real geofed in front of each endpoint kind, driven by real clients.

``fed`` is parametrised over the three back ends -- ``local`` (a directory served by geofed's own
data route), ``apache`` (mod_dav_fs) and ``nginx`` (dav-ext) -- and yields a running geofed whose
single writable endpoint is that back end, mounted at the federated prefix ``/fed`` and mapped to a
fresh ``/<uuid>`` folder on the back end (the Apache/nginx servers are shared by the session).

Tests talk to ``fed.url_for("name")`` (a URL under ``/fed``) and look at the bytes the back end
really stored through ``fed.stored("name")`` -- the back ends all serve a folder on this host.
"""

from __future__ import annotations

import os
import pwd
import secrets
import shutil
import uuid
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from geofed.config import Settings, settings_from_mapping
from tests.infra.geofed_server import GeofedServer
from tests.infra.policies import OPEN_POLICY
from tests.infra.servers import WORKER_USER, RunningServer

BACKENDS = ("local", "apache", "nginx")
FEDERATED_PREFIX = "/fed"
ENDPOINT_NAME = "store"


def endpoint_mapping(
    kind: str,
    url: str,
    *,
    name: str = ENDPOINT_NAME,
    federated: str = FEDERATED_PREFIX,
    endpoint_prefix: str = "/",
    writable: bool = True,
    **extra: Any,
) -> dict[str, Any]:
    """One ``endpoints[]`` entry: ``kind`` is "local" (url file:///dir) or "webdav" (url http://...)."""
    return {
        "name": name,
        "kind": kind,
        "url": url,
        "prefixes": [{"federated": federated, "endpoint": endpoint_prefix}],
        "writable": writable,
        "timeout": "5s",
        **extra,
    }


def build_settings(
    kind: str | None = None,
    url: str | None = None,
    *,
    endpoints: Sequence[Mapping[str, Any]] = (),
    federated: str = FEDERATED_PREFIX,
    endpoint_prefix: str = "/",
    writable: bool = True,
    **sections: Any,
) -> Settings:
    """Validated Settings with a random signing secret and quiet health checks.

    ``kind``/``url`` add one endpoint (named ``store``) mounted at ``federated`` → ``endpoint_prefix``;
    ``endpoints`` adds more (see :func:`endpoint_mapping`); ``sections`` replace or add top-level
    keys (``server={...}``, ``cache={...}``).
    """
    entries = [dict(e) for e in endpoints]
    if kind is not None:
        assert url is not None, "an endpoint needs its url"
        entries.insert(
            0,
            endpoint_mapping(
                kind, url, federated=federated, endpoint_prefix=endpoint_prefix, writable=writable
            ),
        )
    mapping: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0},
        "signing": {"secret": secrets.token_urlsafe(32), "url_lifetime": "10m"},
        "auth": OPEN_POLICY,
        "federation": {"locate_timeout": "5s"},
        "health": {"interval": "60s", "timeout": "3s"},
        "endpoints": entries,
    }
    mapping.update(sections)
    return settings_from_mapping(mapping, environ={})


@pytest.fixture
def make_settings() -> Any:
    """The :func:`build_settings` helper, for tests that need their own federation layout."""
    return build_settings


def _www_data_ids() -> tuple[int, int] | None:
    """(uid, gid) of the servers' worker user when we run as root (they then own the files)."""
    if os.geteuid() != 0:
        return None
    user = pwd.getpwnam(WORKER_USER)
    return user.pw_uid, user.pw_gid


@dataclass
class RunningFederation:
    """A running geofed over one back end, and the folder on disk where that back end stores files."""

    backend: str
    server: GeofedServer
    storage: Path
    """The ``/<uuid>`` folder on the back end, i.e. what ``/fed`` shows."""
    owner: tuple[int, int] | None = None

    @property
    def base(self) -> str:
        """geofed's base URL (scheme, host, port)."""
        return self.server.url

    def path_for(self, name: str = "") -> str:
        """The percent-encoded request path of ``/fed/<name>`` (``name`` is a decoded relative path)."""
        path = FEDERATED_PREFIX + ("/" + name.lstrip("/") if name else "")
        return quote(path, safe="/")

    def url_for(self, name: str = "") -> str:
        """The full geofed URL of ``/fed/<name>``, percent-encoded."""
        return self.base + self.path_for(name)

    def stored(self, name: str) -> Path:
        """Where the back end keeps ``/fed/<name>`` on disk."""
        return self.storage / name.lstrip("/")

    def seed(self, name: str, data: bytes) -> Path:
        """Put a file straight onto the back end (not through geofed), owned like its own files."""
        target = self.stored(name)
        created: list[Path] = []
        parent = target.parent
        while not parent.exists():
            created.append(parent)
            parent = parent.parent
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        if self.owner is not None:
            for path in (*created, target):
                os.chown(path, *self.owner)
        return target

    def seed_dir(self, name: str) -> Path:
        target = self.stored(name)
        target.mkdir(parents=True)
        if self.owner is not None:
            path = target
            while path != self.storage:
                os.chown(path, *self.owner)
                path = path.parent
        return target

    def access_log(self) -> str:
        """geofed's access log so far (flushed on the server's loop first)."""
        return self.server.flush_access_log()


def _backend_storage(
    request: pytest.FixtureRequest, backend: str, tmp_path: Path
) -> tuple[Settings, Path, tuple[int, int] | None]:
    """(settings, storage folder, owner) for a fresh ``/<uuid>`` folder on ``backend``."""
    folder = uuid.uuid4().hex
    if backend == "local":
        root = tmp_path / "local-endpoint"
        storage = root / folder
        storage.mkdir(parents=True)
        settings = build_settings("local", root.resolve().as_uri(), endpoint_prefix=f"/{folder}")
        return settings, storage, None
    server: RunningServer = request.getfixturevalue(f"{backend}_dav")
    assert server.root is not None
    storage = server.root / folder
    storage.mkdir()
    owner = _www_data_ids()
    if owner is not None:
        os.chown(storage, *owner)
    settings = build_settings("webdav", server.url, endpoint_prefix=f"/{folder}")
    return settings, storage, owner


@pytest.fixture(params=BACKENDS)
def fed(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[RunningFederation]:
    """A running geofed whose one writable endpoint is the back end of this parameter, at ``/fed``."""
    backend: str = request.param
    settings, storage, owner = _backend_storage(request, backend, tmp_path)
    try:
        with GeofedServer(settings) as server:
            yield RunningFederation(backend=backend, server=server, storage=storage, owner=owner)
    finally:
        shutil.rmtree(storage, ignore_errors=True)
