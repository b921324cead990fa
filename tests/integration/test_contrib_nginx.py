"""contrib/nginx-geofed.conf, run for real: nginx terminates TLS with client certificates in front
of geofed and passes the identity in headers that geofed trusts only from nginx's address.

The file is used as shipped; only the site-specific paths and ports are substituted.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.infra.geofed_server import GeofedServer
from tests.infra.pki import Pki
from tests.infra.servers import RunningServer, _launch, _prepare_worker_dirs
from tests.integration.grid_federation import GridLayout, make_layout

pytestmark = pytest.mark.integration

CONTRIB = Path(__file__).resolve().parents[2] / "contrib" / "nginx-geofed.conf"
ADMIN_DN = "/DC=org/DC=test/OU=Users/CN=Other User"


def render(pki: Pki, workdir: Path, port: int, upstream: int, as_root: bool) -> str:
    site = CONTRIB.read_text()
    for old, new in {
        "listen 443 ssl;": f"listen 127.0.0.1:{port} ssl;",
        "server 127.0.0.1:8080;": f"server 127.0.0.1:{upstream};",
        "/etc/grid-security/hostcert.pem": str(pki.host.cert_path),
        "/etc/grid-security/hostkey.pem": str(pki.host.key_path),
        "/etc/grid-security/ca-bundle.pem": str(pki.ca.cert_path),
        "/etc/grid-security/crl-bundle.pem": str(pki.crl_path),
    }.items():
        assert old in site, f"contrib/nginx-geofed.conf no longer has {old!r}"
        site = site.replace(old, new)
    temp = workdir / "temp"
    user = "user www-data www-data;\n" if as_root else ""
    return (
        f"{user}worker_processes 1;\npid {workdir}/nginx.pid;\nerror_log {workdir}/error.log warn;\n"
        "events { worker_connections 256; }\n"
        f"http {{\n access_log {workdir}/access.log;\n client_body_temp_path {temp}/body;\n"
        f" proxy_temp_path {temp}/proxy;\n fastcgi_temp_path {temp}/fastcgi;\n"
        f" uwsgi_temp_path {temp}/uwsgi;\n scgi_temp_path {temp}/scgi;\n{site}\n}}\n"
    )


@pytest.fixture(scope="module")
def grid(grid_pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> GridLayout:
    return make_layout(grid_pki, tmp_path_factory.mktemp("contrib"))


@pytest.fixture(scope="module")
def behind_nginx(grid: GridLayout) -> Iterator[tuple[GeofedServer, RunningServer]]:
    settings = grid.settings(
        identity_headers={
            "trusted": ["127.0.0.1"],
            "dn": "X-SSL-Client-S-DN",
            "cert": "X-SSL-Client-Cert",
            "verify": "X-SSL-Client-Verify",
        },
        voms_ca_dir=str(grid.pki.ca_dir),
    )
    plain = settings.model_copy(update={"server": settings.server.model_copy(update={"tls": None})})
    workdir = Path(tempfile.mkdtemp(prefix="geofed-contrib-nginx-"))
    workdir.chmod(0o755)  # nginx's workers (www-data when we are root) use its temp folders
    temp = workdir / "temp"
    as_root = _prepare_worker_dirs(
        workdir / "root", [temp, *(temp / s for s in ("body", "proxy", "fastcgi", "uwsgi", "scgi"))]
    )
    with GeofedServer(plain) as geofed:

        def build(port: int) -> tuple[list[str], tuple[Path, ...]]:
            conf = workdir / "nginx.conf"
            conf.write_text(render(grid.pki, workdir, port, geofed.port, as_root))
            argv = ["nginx", "-p", str(workdir), "-e", str(workdir / "error.log"), "-c", str(conf)]
            return [*argv, "-g", "daemon off;"], (workdir / "error.log",)

        nginx = _launch("nginx-contrib", build, lambda: (workdir / "nginx.out").open("w+b"), None)
        try:
            yield geofed, nginx
        finally:
            nginx.stop()
            shutil.rmtree(workdir, ignore_errors=True)


def curl(grid: GridLayout, url: str, *args: str, cert: Path | None = None, key: Path | None = None) -> str:
    command = ["curl", "-sS", "--max-time", "10", "--cacert", str(grid.pki.ca.cert_path), "-o", "/dev/null"]
    if cert is not None and key is not None:
        command += ["--cert", str(cert), "--key", str(key)]
    done = subprocess.run([*command, "-w", "%{http_code}", *args, url], capture_output=True, timeout=20)
    return done.stdout.decode()


def test_the_shipped_config_is_valid_nginx(behind_nginx: tuple[GeofedServer, RunningServer]) -> None:
    _, nginx = behind_nginx
    assert nginx.process.poll() is None


def test_a_client_certificate_through_nginx_is_geofeds_identity(
    grid: GridLayout, behind_nginx: tuple[GeofedServer, RunningServer]
) -> None:
    geofed, nginx = behind_nginx
    url = f"https://127.0.0.1:{nginx.port}/fed/tokens/"
    other = grid.pki.other_user  # the admin DN of the test policy
    assert curl(grid, url, "-X", "PROPFIND", cert=other.cert_path, key=other.key_path) == "207"
    assert curl(grid, url, "-X", "PROPFIND") == "401"  # no certificate: anonymous
    # a client's own identity headers are replaced by nginx's
    forged = ("-H", f"X-SSL-Client-S-DN: {ADMIN_DN}", "-H", "X-SSL-Client-Verify: SUCCESS")
    assert curl(grid, url, "-X", "PROPFIND", *forged) == "401"
    assert ADMIN_DN in geofed.flush_access_log()


def test_a_proxy_certificate_is_refused_by_nginx_as_documented(
    grid: GridLayout, behind_nginx: tuple[GeofedServer, RunningServer]
) -> None:
    _, nginx = behind_nginx
    proxy = grid.proxies.voms.cert_path
    status = curl(
        grid, f"https://127.0.0.1:{nginx.port}/fed/testvo/", "-X", "PROPFIND", cert=proxy, key=proxy
    )
    assert status == "400"  # nginx: "The SSL certificate error" (proxy certificates not allowed)
