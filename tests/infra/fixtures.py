"""pytest fixtures for real WebDAV servers (loaded from ``tests/conftest.py`` via ``pytest_plugins``).

The servers are session-scoped because starting them costs ~50 ms each but a test suite makes
hundreds of requests; tests share them and must therefore use unique paths (e.g. a uuid folder).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.infra.servers import RunningServer, start_apache_dav, start_nginx_dav


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
