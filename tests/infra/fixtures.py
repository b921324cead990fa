"""pytest fixtures for real servers (loaded from ``tests/conftest.py`` via ``pytest_plugins``).

WebDAV (Apache, nginx), S3 (Ceph RGW), Azure Blob (Azurite), memcached/Redis for the shared
(L2) cache, and the X509 test PKI. The servers are session-scoped
because starting them costs ~50 ms (WebDAV), ~2 s (Azurite) and ~15 s (Ceph) while a test suite
makes hundreds of requests; tests share them and must therefore use unique paths or keys (e.g. a
uuid prefix). A missing component makes the fixture raise, so its tests fail instead of skipping.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.infra.azurite import DEV_ACCOUNT, AzuriteServer, start_azurite
from tests.infra.ceph import CephCluster, start_ceph_rgw
from tests.infra.kv import start_memcached, start_redis
from tests.infra.pki import Pki, make_pki
from tests.infra.servers import RunningServer, start_apache_dav, start_nginx_dav

# The three S3 "sites" of the ceph_rgw fixture: name → (bucket, own radosgw gateway?). CERN uses
# the first gateway; the others get their own, so sites differ in endpoint URL as in real life.
CEPH_SITES: dict[str, tuple[str, bool]] = {
    "cern": ("site-cern", False),
    "triumf": ("site-triumf", True),
    "uvic": ("site-uvic", True),
}
# The azurite fixture's containers: container → account.
AZURITE_CONTAINERS: dict[str, str] = {"fed-a": DEV_ACCOUNT, "fed-b": "site2"}


@pytest.fixture(scope="session")
def server_tmp_dir() -> Iterator[Path]:
    """A session folder that Apache/nginx workers (``www-data``) can traverse.

    pytest's ``tmp_path_factory`` folders live below a mode-0700 directory owned by the test user,
    which ``www-data`` cannot enter, so servers get their own 0755 folder in the system temp dir.
    Removed at the end of the session.
    """
    base = Path(tempfile.mkdtemp(prefix="geofed-servers-"))
    os.chmod(base, 0o755)
    try:
        yield base
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def apache_dav(server_tmp_dir: Path) -> Iterator[RunningServer]:
    """Apache mod_dav_fs (RFC-strict) serving an initially empty ``.root`` at ``.url``."""
    server = start_apache_dav(server_tmp_dir / "apache" / "dav", server_tmp_dir / "apache" / "work")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def nginx_dav(server_tmp_dir: Path) -> Iterator[RunningServer]:
    """nginx + dav-ext (creates missing parents on PUT) serving an initially empty ``.root``."""
    server = start_nginx_dav(server_tmp_dir / "nginx" / "dav", server_tmp_dir / "nginx" / "work")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def ceph_rgw(server_tmp_dir: Path) -> Iterator[CephCluster]:
    """Ceph mon + memstore OSD + radosgw with three S3 sites, started once per session (~15 s).

    ``.sites[name]`` is an :class:`~tests.infra.ceph.S3Site` ``(bucket, access_key, secret_key,
    url)`` for ``cern``, ``triumf`` and ``uvic`` (see :data:`CEPH_SITES`); each site's user owns only
    its bucket, and all gateways see the same data. Data and logs live below the session's temp
    folder, which is removed at the end.
    """
    cluster = start_ceph_rgw(server_tmp_dir / "ceph")
    try:
        for name, (bucket, own_gateway) in CEPH_SITES.items():
            cluster.add_site(name, bucket, own_gateway)
        yield cluster
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def azurite(server_tmp_dir: Path) -> Iterator[AzuriteServer]:
    """Azurite (blob) with ``devstoreaccount1`` and ``site2``, containers ``fed-a`` and ``fed-b``.

    ``.accounts`` maps account → base64 key, ``.containers`` container → account (see
    :data:`AZURITE_CONTAINERS`).
    """
    server = start_azurite(server_tmp_dir / "azurite")
    try:
        for container, account in AZURITE_CONTAINERS.items():
            server.create_container(account, container)
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def memcached_server() -> Iterator[RunningServer]:
    """memcached on loopback; ``.url`` is ``127.0.0.1:PORT``. Shared: use a unique L2 namespace."""
    server = start_memcached()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def memcached_pair() -> Iterator[tuple[RunningServer, RunningServer]]:
    """Two memcached servers, for keys spread by consistent hashing (shared, like the others)."""
    first = start_memcached()
    try:
        second = start_memcached()
        try:
            yield first, second
        finally:
            second.stop()
    finally:
        first.stop()


@pytest.fixture(scope="session")
def redis_server(server_tmp_dir: Path) -> Iterator[RunningServer]:
    """redis-server on loopback, in memory only; ``.url`` is ``redis://127.0.0.1:PORT/0``."""
    server = start_redis(server_tmp_dir / "redis")
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def grid_pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    """The test PKI (CA with CRL, host, users, VOMS servers, vomsdir, member list), made once."""
    return make_pki(tmp_path_factory.mktemp("pki"))


# Appended with its import (the fixtures above stay as they were).
from tests.infra.kv import RedisClusterServers, start_redis_cluster  # noqa: E402


@pytest.fixture(scope="session")
def redis_cluster(server_tmp_dir: Path) -> Iterator[RedisClusterServers]:
    """A Redis Cluster of three masters on loopback, in memory only (``cluster-node-timeout``
    1 s); ``.seeds`` are their ``127.0.0.1:PORT``, ``.url`` a ``redis://`` URL of the first.
    Shared: use a unique L2 namespace, and start a cluster of your own to stop nodes."""
    cluster = start_redis_cluster(server_tmp_dir / "redis-cluster")
    try:
        yield cluster
    finally:
        cluster.stop()
