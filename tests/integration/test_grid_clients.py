"""Grid clients over HTTPS: the davix CLI and gfal2 (Python bindings) read and write through geofed
with RFC 3820 proxies carrying VOMS attributes, a plain member certificate and WLCG tokens.

The layout is the one of ``test_grid_security`` (``grid_federation.py``): the ``/fed/testvo`` area
is open to VO ``testvo`` (VOMS or the member list), ``/fed/tokens`` to token scopes only.

How each client takes its credentials (observed with davix 0.8.4 and gfal2 2.21.3):

* **davix CLI**: ``--cert <proxy file>`` (the file holds proxy, key and chain, so no ``--key``) and
  ``--capath <hashed CA dir>``. It ignores ``X509_USER_PROXY``: with only the variable set it sends
  no client certificate and geofed answers 401 (davix even retries that three times).
* **gfal2**: ``X509_USER_PROXY`` and ``X509_CERT_DIR`` are read when the context is created
  (``gfal2.creat_context()``), not per operation: the proxy path is copied into the ``X509``
  ``CERT``/``KEY`` options of that context, and the CA directory into the davix context of its
  http plugin. Setting either variable after the context exists has no effect on it. The
  credential can also be given as ``ctx.set_opt_string("X509", "CERT"/"KEY", path)`` after
  creation; there is no option for the CA directory (``("X509", "CA_PATH")`` does nothing), so
  ``X509_CERT_DIR`` must be in the environment when the context is created.
* **gfal2 macaroon request**: with ``RETRIEVE_BEARER_TOKEN`` at its default (on, in
  ``/etc/gfal2.d/http_plugin.conf``) gfal2 sends ``POST <url>`` with ``Content-Type:
  application/macaroon-request`` before each operation on an https:// or davs:// URL; geofed answers
  405 and gfal2 carries on with its proxy. It asks again before every operation (mkdir asks twice,
  once for ``<dir>/gfal2_mkdir.reserved``): gfal2 does not remember the 405.
* **gfal2 errno**: a 403 on PROPFIND/HEAD/MKCOL/DELETE becomes ``EPERM`` (davix "Permission
  refused"); a 403 on the PUT of a streamed ``filecopy`` becomes ``EEXIST`` -- gfal2's own mapping
  (the same against a bare server that answers every PUT 403), after which gfal2 also skips the
  clean-up DELETE ("The transfer failed because the file exists. Do not clean!").
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import stat
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.infra.geofed_server import GeofedServer
from tests.infra.pki import Credential, Pki
from tests.integration.grid_federation import GridLayout, make_layout

try:
    import gfal2
except ImportError as exc:  # pragma: no cover - the environment is broken, not the test
    gfal2 = None
    _IMPORT_ERROR: ImportError | None = exc
else:
    _IMPORT_ERROR = None

pytestmark = pytest.mark.integration

DAVIX_TIMEOUT_S = 20
GFAL_TIMEOUT_S = 20
USER_DN = "/DC=org/DC=test/OU=Users/CN=Test User"
MEMBER_DN = "/DC=org/DC=test/OU=Users/CN=Plain Member"
REFUSED = (errno.EACCES, errno.EPERM)


@pytest.fixture(scope="module")
def grid(grid_pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> GridLayout:
    return make_layout(grid_pki, tmp_path_factory.mktemp("grid-clients"))


@pytest.fixture(scope="module")
def fed(grid: GridLayout) -> Iterator[GeofedServer]:
    with GeofedServer(grid.settings()) as server:
        yield server


def stored(grid: GridLayout, path: str) -> Path:
    """Where the local endpoint keeps federated ``path`` (mounted at /fed)."""
    return grid.store / path.removeprefix("/fed/")


def unique(area: str, suffix: str = ".dat") -> str:
    return f"/fed/{area}/{uuid.uuid4().hex}{suffix}"


def seed(grid: GridLayout, path: str, data: bytes) -> None:
    target = stored(grid, path)
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)


# -- the access log --------------------------------------------------------------------------------

# "<time> <client> <identity> METHOD /path status decision endpoint locate"; the identity is a DN and
# may hold spaces ("CN=Test User"), so the line is read from its end.
_LOG_LINE = re.compile(
    r"^\S+ \S+ (?P<identity>.+) (?P<method>[A-Z]+) (?P<path>/\S*) (?P<status>\d{3}) \S+ \S+ \S+$"
)


@dataclass(frozen=True)
class Logged:
    identity: str
    method: str
    path: str
    status: int


def log_mark(fed: GeofedServer) -> int:
    return len(fed.flush_access_log())


def logged_since(fed: GeofedServer, mark: int) -> list[Logged]:
    entries = []
    for line in fed.flush_access_log()[mark:].splitlines():
        match = _LOG_LINE.match(line.strip())
        if match:
            entries.append(Logged(match["identity"], match["method"], match["path"], int(match["status"])))
    return entries


def wait_logged(fed: GeofedServer, mark: int, method: str, path: str, status: int) -> list[Logged]:
    """The log since ``mark`` once it holds ``method path status`` (a record can be appended just
    after the client has its answer, so poll briefly rather than read once)."""
    deadline = time.monotonic() + 5
    while True:
        entries = logged_since(fed, mark)
        if any(
            (e.method, e.path.rstrip("/"), e.status) == (method, path.rstrip("/"), status) for e in entries
        ):
            return entries
        if time.monotonic() > deadline:
            shown = "\n".join(f"{e.identity} {e.method} {e.path} {e.status}" for e in entries)
            raise AssertionError(f"no {method} {path} {status} in the access log since the mark:\n{shown}")
        time.sleep(0.05)


# -- davix CLI -------------------------------------------------------------------------------------


def davix(
    tool: str, *args: str, cred: Credential | None = None, grid: GridLayout, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[bytes]:
    """One davix CLI call trusting the test CA (``--capath``), with ``--cert`` when ``cred`` is given.
    A missing tool fails the test; it never skips."""
    path = shutil.which(tool) or shutil.which(tool, path="/usr/bin:/bin")
    if path is None:
        pytest.fail(f"{tool} is not installed (Debian package davix): run scripts/install-test-deps.sh")
    command = [path, "--timeout", str(DAVIX_TIMEOUT_S), "--capath", str(grid.pki.ca_dir)]
    if cred is not None:
        command += ["--cert", str(cred.cert_path)]
    return subprocess.run(
        [*command, *args],
        capture_output=True,
        timeout=DAVIX_TIMEOUT_S * 4 + 10,  # davix retries some failures up to three times
        check=False,
        env=env,
    )


def ok(completed: subprocess.CompletedProcess[bytes]) -> bytes:
    assert completed.returncode == 0, (
        f"{completed.args} exited {completed.returncode}: {completed.stderr.decode(errors='replace')}"
    )
    return completed.stdout


def failed(completed: subprocess.CompletedProcess[bytes], status: str) -> str:
    stderr = completed.stderr.decode(errors="replace")
    assert completed.returncode != 0, f"{completed.args} succeeded: {completed.stdout[:200]!r}"
    assert status in stderr, stderr
    return stderr


def test_davix_with_a_voms_proxy_puts_gets_lists_and_removes(
    grid: GridLayout, fed: GeofedServer, tmp_path: Path
) -> None:
    voms = grid.proxies.voms
    folder = unique("testvo", "")
    path = f"{folder}/data.bin"
    data = os.urandom(1_200_000)
    source = tmp_path / "up.bin"
    source.write_bytes(data)
    mark = log_mark(fed)

    ok(davix("davix-mkdir", fed.url + folder, cred=voms, grid=grid))
    assert stored(grid, folder).is_dir()
    ok(davix("davix-put", str(source), fed.url + path, cred=voms, grid=grid))
    assert stored(grid, path).read_bytes() == data
    assert ok(davix("davix-get", fed.url + path, cred=voms, grid=grid)) == data
    out = tmp_path / "down.bin"
    ok(davix("davix-get", fed.url + path, str(out), cred=voms, grid=grid))
    assert out.read_bytes() == data
    assert ok(davix("davix-ls", fed.url + folder, cred=voms, grid=grid)).decode().split() == ["data.bin"]
    ok(davix("davix-rm", fed.url + path, cred=voms, grid=grid))
    assert not stored(grid, path).exists()
    assert ok(davix("davix-ls", fed.url + folder, cred=voms, grid=grid)).strip() == b""

    entries = wait_logged(fed, mark, "DELETE", path, 204)
    mine = {(e.method, e.status) for e in entries if e.path.rstrip("/") in (folder, path)}
    assert {("MKCOL", 201), ("PUT", 307), ("GET", 302), ("PROPFIND", 207), ("DELETE", 204)} <= mine
    assert all(e.identity == USER_DN for e in entries if e.path.startswith("/fed/")), entries
    assert not any(e.method == "POST" for e in entries), "davix never asks for a macaroon"


def test_davix_member_of_another_vo_is_refused(grid: GridLayout, fed: GeofedServer, tmp_path: Path) -> None:
    other = grid.proxies.other_vo
    existing = unique("testvo")
    seed(grid, existing, b"testvo only\n")
    failed(davix("davix-get", fed.url + existing, cred=other, grid=grid), "403")
    source = tmp_path / "intruder.txt"
    source.write_bytes(b"intruder\n")
    target = unique("testvo")
    failed(davix("davix-put", str(source), fed.url + target, cred=other, grid=grid), "403")
    assert not stored(grid, target).exists()
    failed(davix("davix-rm", fed.url + existing, cred=other, grid=grid), "403")
    assert stored(grid, existing).read_bytes() == b"testvo only\n"
    failed(davix("davix-ls", fed.url + "/fed/testvo", cred=other, grid=grid), "403")


def test_davix_plain_member_gets_in(grid: GridLayout, fed: GeofedServer, tmp_path: Path) -> None:
    member = grid.proxies.member
    path = unique("testvo")
    source = tmp_path / "member.txt"
    source.write_bytes(b"member data\n")
    mark = log_mark(fed)
    ok(davix("davix-put", str(source), fed.url + path, cred=member, grid=grid))
    assert stored(grid, path).read_bytes() == b"member data\n"
    assert ok(davix("davix-get", fed.url + path, cred=member, grid=grid)) == b"member data\n"
    entries = wait_logged(fed, mark, "GET", path, 302)
    assert {e.identity for e in entries if e.path == path} == {MEMBER_DN}


def test_davix_ignores_x509_user_proxy(grid: GridLayout, fed: GeofedServer) -> None:
    """The CLI sends no client certificate unless told with --cert (clients.md 9.1)."""
    path = unique("testvo")
    seed(grid, path, b"x\n")
    env = {**os.environ, "X509_USER_PROXY": str(grid.proxies.voms.cert_path)}
    failed(davix("davix-get", fed.url + path, grid=grid, env=env), "401")
    assert ok(davix("davix-get", fed.url + path, cred=grid.proxies.voms, grid=grid, env=env)) == b"x\n"


def test_davix_with_a_token(grid: GridLayout, fed: GeofedServer, tmp_path: Path) -> None:
    run = uuid.uuid4().hex
    folder = f"/fed/tokens/{run}"
    path = f"{folder}/t.dat"
    writer = grid.issuer.mint(scope=f"storage.read:/{run} storage.create:/{run} storage.modify:/{run}")
    reader = grid.issuer.mint(scope=f"storage.read:/{run}")
    source = tmp_path / "t.dat"
    source.write_bytes(b"token data\n")

    def bearer(token: str) -> tuple[str, str]:
        return "-H", f"Authorization: Bearer {token}"

    failed(davix("davix-put", *bearer(reader), str(source), fed.url + path, grid=grid), "403")
    assert not stored(grid, path).exists()
    ok(davix("davix-put", *bearer(writer), str(source), fed.url + path, grid=grid))
    assert stored(grid, path).read_bytes() == b"token data\n"
    assert ok(davix("davix-get", *bearer(reader), fed.url + path, grid=grid)) == b"token data\n"
    assert ok(davix("davix-ls", *bearer(reader), fed.url + folder, grid=grid)).decode().split() == ["t.dat"]
    failed(davix("davix-rm", *bearer(reader), fed.url + path, grid=grid), "403")
    ok(davix("davix-rm", *bearer(writer), fed.url + path, grid=grid))
    assert not stored(grid, path).exists()
    # the token's scope is relative to /fed/tokens: it opens nothing in /fed/testvo
    failed(davix("davix-ls", *bearer(writer), fed.url + "/fed/testvo", grid=grid), "403")


# -- gfal2 -----------------------------------------------------------------------------------------


def require_gfal2() -> None:
    """A missing gfal2 fails the test, never skips."""
    if gfal2 is None:
        pytest.fail(
            f"cannot import gfal2 ({_IMPORT_ERROR}): install python3-gfal2 and gfal2-plugin-http, "
            "then run `bash scripts/venv.sh test` to link the module into the venv",
            pytrace=False,
        )


def gfal_context(monkeypatch: pytest.MonkeyPatch, grid: GridLayout, cred: Credential | None) -> Any:
    """A gfal2 context holding ``cred`` (None: no credential) and trusting the test CA.

    gfal2 reads X509_USER_PROXY and X509_CERT_DIR when the context is created, so they are set
    first.
    """
    require_gfal2()
    monkeypatch.setenv("X509_CERT_DIR", str(grid.pki.ca_dir))
    if cred is None:
        monkeypatch.delenv("X509_USER_PROXY", raising=False)
    else:
        monkeypatch.setenv("X509_USER_PROXY", str(cred.cert_path))
    for name in ("X509_USER_CERT", "X509_USER_KEY", "BEARER_TOKEN", "BEARER_TOKEN_FILE"):
        monkeypatch.delenv(name, raising=False)
    context = gfal2.creat_context()
    context.set_opt_integer("HTTP PLUGIN", "OPERATION_TIMEOUT", GFAL_TIMEOUT_S)
    context.set_opt_integer("CORE", "NAMESPACE_TIMEOUT", GFAL_TIMEOUT_S)
    # No context.free(): see test_clients_gfal2 (freed when garbage-collected).
    return context


def params(ctx: Any) -> Any:
    p = ctx.transfer_parameters()
    p.overwrite = True
    p.timeout = GFAL_TIMEOUT_S
    # geofed serves no checksums yet (a separate issue), so no ADLER32 verification
    p.set_checksum(gfal2.checksum_mode.none, "", "")
    return p


def gerror(call: Any, *args: Any) -> Any:
    """The GError raised by ``call(*args)`` (fails if nothing is raised)."""
    with pytest.raises(gfal2.GError) as info:
        call(*args)
    return info.value


def test_gfal2_takes_its_credentials_from_the_environment_at_context_creation(
    grid: GridLayout, fed: GeofedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = unique("testvo")
    seed(grid, path, b"who am i\n")
    url = fed.url + path
    # created before the variables are set: no trust in the test CA, whatever is set later
    monkeypatch.delenv("X509_CERT_DIR", raising=False)
    monkeypatch.delenv("X509_USER_PROXY", raising=False)
    require_gfal2()
    early = gfal2.creat_context()
    early.set_opt_integer("HTTP PLUGIN", "OPERATION_TIMEOUT", GFAL_TIMEOUT_S)
    ctx = gfal_context(monkeypatch, grid, grid.proxies.voms)
    failure = gerror(early.stat, url)
    # davix files a failed TLS verification under "connection problem": EHOSTDOWN in gfal2
    assert "not trusted" in failure.message, (failure.code, failure.message)
    # the context made after them holds the proxy as its X509 CERT/KEY options
    assert ctx.get_opt_string("X509", "CERT") == str(grid.proxies.voms.cert_path)
    assert ctx.get_opt_string("X509", "KEY") == str(grid.proxies.voms.cert_path)
    assert ctx.stat(url).st_size == 9
    # and keeps it when the variable changes afterwards
    monkeypatch.setenv("X509_USER_PROXY", str(grid.proxies.other_vo.cert_path))
    assert ctx.stat(url).st_size == 9


def test_gfal2_x509_options_select_the_credential(
    grid: GridLayout, fed: GeofedServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The alternative to X509_USER_PROXY: the X509 CERT/KEY options (the CA still comes from
    X509_CERT_DIR); the plain member's DN in the access log shows which certificate was sent."""
    path = unique("testvo")
    seed(grid, path, b"options\n")
    ctx = gfal_context(monkeypatch, grid, None)
    member = str(grid.proxies.member.cert_path)
    ctx.set_opt_string("X509", "CERT", member)
    ctx.set_opt_string("X509", "KEY", member)
    mark = log_mark(fed)
    assert ctx.stat(fed.url + path).st_size == 8
    entries = wait_logged(fed, mark, "PROPFIND", path, 207)
    assert {e.identity for e in entries if e.method == "PROPFIND"} == {MEMBER_DN}


def test_gfal2_with_a_voms_proxy_over_https(
    grid: GridLayout, fed: GeofedServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """filecopy up, stat, listdir, filecopy down, mkdir, unlink -- each preceded by gfal2's
    macaroon POST, which geofed refuses with 405 and gfal2 shrugs off."""
    ctx = gfal_context(monkeypatch, grid, grid.proxies.voms)
    assert ctx.get_opt_boolean("HTTP PLUGIN", "RETRIEVE_BEARER_TOKEN") is True, "default must be on"
    folder = unique("testvo", "")
    path = f"{folder}/up.bin"
    subdir = f"{folder}/sub"
    url = fed.url + path
    data = os.urandom(2_500_000)
    source = tmp_path / "up.bin"
    source.write_bytes(data)
    mark = log_mark(fed)

    ctx.mkdir(fed.url + folder, 0o755)
    assert stored(grid, folder).is_dir()
    ctx.filecopy(params(ctx), source.as_uri(), url)
    assert stored(grid, path).read_bytes() == data
    st = ctx.stat(url)
    assert stat.S_ISREG(st.st_mode) and st.st_size == len(data)
    assert stat.S_ISDIR(ctx.stat(fed.url + folder).st_mode)
    ctx.mkdir(fed.url + subdir, 0o755)
    assert stored(grid, subdir).is_dir()
    assert sorted(ctx.listdir(fed.url + folder)) == ["sub", "up.bin"]
    back = tmp_path / "back.bin"
    ctx.filecopy(params(ctx), url, back.as_uri())
    assert back.read_bytes() == data
    ctx.unlink(url)
    assert not stored(grid, path).exists()
    assert gerror(ctx.stat, url).code == errno.ENOENT

    entries = wait_logged(fed, mark, "DELETE", path, 204)
    posts = [e for e in entries if e.method == "POST"]
    assert posts, "gfal2 sent no macaroon request: is RETRIEVE_BEARER_TOKEN really on?"
    assert {e.status for e in posts} == {405}, posts
    assert {e.path.rstrip("/") for e in posts} >= {folder, path, subdir}
    # after each 405 the real operation went through
    done = {(e.method, e.path.rstrip("/"), e.status) for e in entries}
    assert {
        ("MKCOL", folder, 201),
        ("PUT", path, 307),
        ("MKCOL", subdir, 201),
        ("GET", path, 302),
        ("DELETE", path, 204),
    } <= done, sorted(done)
    assert all(e.identity == USER_DN for e in entries if e.method != "POST" and e.path.startswith("/fed/"))


def test_gfal2_davs_read(
    grid: GridLayout, fed: GeofedServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = unique("testvo")
    data = os.urandom(400_000)
    seed(grid, path, data)
    ctx = gfal_context(monkeypatch, grid, grid.proxies.voms)
    davs = fed.url.replace("https://", "davs://", 1) + path
    mark = log_mark(fed)
    assert ctx.stat(davs).st_size == len(data)
    target = tmp_path / "davs.bin"
    ctx.filecopy(params(ctx), davs, target.as_uri())
    assert target.read_bytes() == data
    entries = wait_logged(fed, mark, "GET", path, 302)
    assert ("POST", 405) in {(e.method, e.status) for e in entries if e.path == path}
    assert ("PROPFIND", 207) in {(e.method, e.status) for e in entries if e.path == path}


def test_gfal2_member_of_another_vo_is_refused(
    grid: GridLayout, fed: GeofedServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ctx = gfal_context(monkeypatch, grid, grid.proxies.other_vo)
    existing = unique("testvo")
    seed(grid, existing, b"testvo only\n")
    assert gerror(ctx.stat, fed.url + existing).code in REFUSED
    assert gerror(ctx.listdir, fed.url + "/fed/testvo").code in REFUSED
    assert gerror(ctx.filecopy, params(ctx), fed.url + existing, (tmp_path / "x").as_uri()).code in REFUSED
    source = tmp_path / "intruder.txt"
    source.write_bytes(b"intruder\n")
    target = unique("testvo")
    failure = gerror(ctx.filecopy, params(ctx), source.as_uri(), fed.url + target)
    assert failure.code in REFUSED and "403" in failure.message, (failure.code, failure.message)
    assert not stored(grid, target).exists()
    assert gerror(ctx.unlink, fed.url + existing).code in REFUSED
    assert stored(grid, existing).read_bytes() == b"testvo only\n"
    assert gerror(ctx.mkdir, fed.url + unique("testvo", ""), 0o755).code in REFUSED


def test_gfal2_limited_proxy_reads_but_does_not_write(
    grid: GridLayout, fed: GeofedServer, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    ctx = gfal_context(monkeypatch, grid, grid.proxies.limited)
    existing = unique("testvo")
    seed(grid, existing, b"for the limited proxy\n")
    assert ctx.stat(fed.url + existing).st_size == 22
    down = tmp_path / "down.txt"
    ctx.filecopy(params(ctx), fed.url + existing, down.as_uri())
    assert down.read_bytes() == b"for the limited proxy\n"

    source = tmp_path / "new.txt"
    source.write_bytes(b"not allowed\n")
    target = unique("testvo")
    mark = log_mark(fed)
    failure = gerror(ctx.filecopy, params(ctx), source.as_uri(), fed.url + target)
    # geofed refuses the PUT itself with 403; gfal2 reports a 403 on a streamed PUT as EEXIST
    assert "HTTP 403" in failure.message, failure.message
    assert failure.code in (*REFUSED, errno.EEXIST), (failure.code, failure.message)
    wait_logged(fed, mark, "PUT", target, 403)
    assert not stored(grid, target).exists()
    assert gerror(ctx.unlink, fed.url + existing).code in REFUSED
    assert stored(grid, existing).exists()
    folder = unique("testvo", "")
    assert gerror(ctx.mkdir, fed.url + folder, 0o755).code in REFUSED
    assert not stored(grid, folder).exists()
