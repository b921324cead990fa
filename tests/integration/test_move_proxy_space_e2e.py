"""MOVE, proxy mode and space end to end, against a local directory, a real Apache mod_dav_fs and a
real nginx dav-ext, driven by curl, davix, gfal2 and python-requests.

* MOVE (Rucio renames every upload with it, clients.md §3.3): 201 new, 204 overwrite, 412 with
  ``Overwrite: F``, 404 without a source, 403 for mount points; the bytes are where they should be
  and the caches agree (HEAD before and after); gfal2's ``rename``, ``davix-mv``; every replica is
  renamed where it is, and an overwritten destination leaves no stale replica elsewhere;
* proxy mode: uploads of matched clients (python-requests, or anyone through ``/proxy``) are
  streamed through geofed, 201 without a 307; a client that goes away midway leaves nothing;
* space: RFC 4331 quota properties at the root and at mount points, the status page, and a PUT
  too big for one endpoint's quota placed on another (or 503 saying why).
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import socket
import subprocess
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import requests
from defusedxml.ElementTree import fromstring

from geofed.config import settings_from_mapping
from geofed.endpoints.local import UPLOAD_PREFIX
from tests.infra.geofed_server import GeofedServer
from tests.infra.policies import OPEN_POLICY
from tests.infra.servers import LOOPBACK, WORKER_USER, RunningServer

try:
    import gfal2
except ImportError as exc:  # pragma: no cover - the environment is broken, not the test
    gfal2 = None
    _GFAL2_IMPORT_ERROR: ImportError | None = exc
else:
    _GFAL2_IMPORT_ERROR = None

pytestmark = pytest.mark.integration

BACKENDS = ("local", "apache", "nginx")
CLIENT_TIMEOUT_S = 20
DAV = "{DAV:}"
REQUESTS_UA = "python-requests/2.31.0"


# -- stores and federations --------------------------------------------------------------------------


@dataclass
class Store:
    """A fresh folder on one back end."""

    backend: str
    url: str
    folder: Path
    owner: tuple[int, int] | None

    def endpoint(self, name: str = "store", federated: str = "/fed", **extra: Any) -> dict[str, Any]:
        return {
            "name": name,
            "kind": "local" if self.backend == "local" else "webdav",
            "url": self.url,
            "prefixes": [{"federated": federated, "endpoint": "/" + self.folder.name}],
            "writable": True,
            "timeout": "5s",
            **extra,
        }

    def stored(self, name: str) -> Path:
        return self.folder / name.lstrip("/")

    def seed(self, name: str, data: bytes) -> Path:
        target = self.stored(name)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        if self.owner is not None:
            path = target
            while path != self.folder:
                os.chown(path, *self.owner)
                path = path.parent
        return target

    def files(self) -> list[str]:
        """Every file below the folder (hidden temporary ones included), relative."""
        return sorted(str(p.relative_to(self.folder)) for p in self.folder.rglob("*") if not p.is_dir())


def make_store(request: pytest.FixtureRequest, backend: str, tmp_path: Path) -> Store:
    folder_name = uuid.uuid4().hex
    if backend == "local":
        folder = tmp_path / f"local-{folder_name[:8]}" / folder_name
        folder.mkdir(parents=True)
        return Store(backend, folder.parent.resolve().as_uri(), folder, None)
    server: RunningServer = request.getfixturevalue(f"{backend}_dav")
    assert server.root is not None
    folder = server.root / folder_name
    folder.mkdir()
    owner = None
    if os.geteuid() == 0:
        user = pwd.getpwnam(WORKER_USER)
        owner = (user.pw_uid, user.pw_gid)
        os.chown(folder, *owner)
    request.addfinalizer(lambda: shutil.rmtree(folder, ignore_errors=True))
    return Store(backend, server.url, folder, owner)


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    return make_store(request, request.param, tmp_path)


def config(*endpoints: dict[str, Any], **sections: Any) -> dict[str, Any]:
    mapping: dict[str, Any] = {
        "server": {"host": LOOPBACK, "port": 0},
        "signing": {"secret": secrets.token_urlsafe(32), "url_lifetime": "10m"},
        "auth": OPEN_POLICY,
        "federation": {"locate_timeout": "5s"},
        "health": {"interval": "60s", "timeout": "3s"},
        "endpoints": list(endpoints),
    }
    mapping.update(sections)
    return mapping


@contextmanager
def serve(mapping: dict[str, Any]) -> Iterator[GeofedServer]:
    with GeofedServer(settings_from_mapping(mapping, environ={})) as server:
        yield server


# -- clients --------------------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def curl(*args: str) -> Answer:
    """One curl run: the last response's status and headers (lower-case names), and the body."""
    dump = [] if "-I" in args else ["-D", "-"]
    completed = subprocess.run(
        ["curl", "--noproxy", "*", "-sS", "--max-time", str(CLIENT_TIMEOUT_S), *dump, *args],
        capture_output=True,
        timeout=CLIENT_TIMEOUT_S + 5,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr.decode(errors="replace")
    rest = completed.stdout
    found: list[tuple[int, dict[str, str]]] = []
    while rest.startswith(b"HTTP/"):
        block, _, rest = rest.partition(b"\r\n\r\n")
        lines = block.decode("iso-8859-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if status != 100:
            found.append((status, headers))
    assert found, completed.stdout[:300]
    return Answer(found[-1][0], found[-1][1], rest)


def move(url: str, destination: str, *headers: str) -> Answer:
    args = ["-X", "MOVE", "-H", f"Destination: {destination}"]
    for header in headers:
        args += ["-H", header]
    return curl(*args, url)


def head_status(url: str) -> tuple[int, str | None]:
    answer = curl("-I", url)
    return answer.status, answer.headers.get("content-length")


def get(url: str) -> bytes:
    answer = curl("-L", url)
    assert answer.status == 200, (url, answer.status, answer.body[:200])
    return answer.body


def listing(url: str) -> list[str]:
    """The names of a collection's members, from a PROPFIND Depth 1 through geofed."""
    answer = curl("-X", "PROPFIND", "-H", "Depth: 1", url)
    assert answer.status == 207
    hrefs = [r.findtext(f"{DAV}href") or "" for r in fromstring(answer.body).iter(f"{DAV}response")]
    own = urlsplit(url).path.rstrip("/")
    return sorted(h.rstrip("/").rsplit("/", 1)[-1] for h in hrefs if h.rstrip("/") != own)


def gfal2_context() -> Any:
    if gfal2 is None:
        pytest.fail(f"cannot import gfal2 ({_GFAL2_IMPORT_ERROR}): install python3-gfal2", pytrace=False)
    context = gfal2.creat_context()
    context.set_opt_integer("HTTP PLUGIN", "OPERATION_TIMEOUT", CLIENT_TIMEOUT_S)
    context.set_opt_integer("CORE", "NAMESPACE_TIMEOUT", CLIENT_TIMEOUT_S)
    return context


def davix(tool: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    path = shutil.which(tool) or shutil.which(tool, path="/usr/bin:/bin")
    if path is None:
        pytest.fail(f"{tool} is not installed (Debian package davix)", pytrace=False)
    return subprocess.run(
        [path, "--timeout", str(CLIENT_TIMEOUT_S), *args],
        capture_output=True,
        timeout=CLIENT_TIMEOUT_S + 10,
        check=False,
    )


def status_document(server: GeofedServer) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(curl(server.url + "/_geofed/status").body)
    return document


# -- MOVE ----------------------------------------------------------------------------------------------


def test_move_to_a_new_name(fed: Any) -> None:
    data = os.urandom(250_000)
    fed.seed("mv/a.bin", data)
    source, target = fed.url_for("mv/a.bin"), fed.url_for("mv/b.bin")
    # warm the caches: the source is known to exist, the target to be absent
    assert head_status(source) == (200, str(len(data)))
    assert head_status(target)[0] == 404
    assert listing(fed.url_for("mv")) == ["a.bin"]
    answer = move(source, target)
    assert answer.status == 201, answer
    assert head_status(source)[0] == 404
    assert head_status(target) == (200, str(len(data)))
    assert get(target) == data
    assert curl("-L", source).status == 404
    assert listing(fed.url_for("mv")) == ["b.bin"]
    assert not fed.stored("mv/a.bin").exists()
    assert fed.stored("mv/b.bin").read_bytes() == data
    assert f" MOVE {fed.path_for('mv/a.bin')} 201 move store " in fed.access_log()


def test_move_over_an_existing_file(fed: Any) -> None:
    new, old = os.urandom(100_000), os.urandom(120_000)
    fed.seed("ow/src.bin", new)
    fed.seed("ow/dst.bin", old)
    source, target = fed.url_for("ow/src.bin"), fed.url_for("ow/dst.bin")
    assert head_status(target) == (200, str(len(old)))
    # Overwrite: F refuses, and nothing changes
    answer = move(source, target, "Overwrite: F")
    assert answer.status == 412, answer
    assert fed.stored("ow/src.bin").read_bytes() == new
    assert fed.stored("ow/dst.bin").read_bytes() == old
    assert head_status(source)[0] == 200
    # the default (T) replaces it
    answer = move(source, target)
    assert answer.status == 204, answer
    assert head_status(target) == (200, str(len(new)))
    assert get(target) == new
    assert head_status(source)[0] == 404
    assert not fed.stored("ow/src.bin").exists()
    assert fed.stored("ow/dst.bin").read_bytes() == new


def test_move_errors(fed: Any) -> None:
    fed.seed("er/file.bin", b"x" * 10)
    assert move(fed.url_for("er/nothing.bin"), fed.url_for("er/other.bin")).status == 404
    # the mount point /fed and the root are part of the configuration, not of any endpoint
    answer = move(fed.url_for(""), fed.base + "/elsewhere")
    assert answer.status == 403 and b"mount point" in answer.body
    assert move(fed.url_for("er/file.bin"), fed.url_for("")).status == 403
    assert move(fed.base + "/", fed.url_for("x")).status == 403
    assert move(fed.url_for("er"), fed.url_for("er/inside")).status == 403  # into itself
    assert curl("-X", "MOVE", fed.url_for("er/file.bin")).status == 400  # no Destination
    assert move(fed.url_for("er/file.bin"), fed.url_for("er/f2"), "Overwrite: maybe").status == 400
    assert fed.stored("er/file.bin").read_bytes() == b"x" * 10


def test_move_into_new_folders_and_by_path(fed: Any) -> None:
    fed.seed("np/f.bin", b"payload")
    # Destination as a bare path works too, and missing parents are created
    answer = move(fed.url_for("np/f.bin"), fed.path_for("np/deep/er/g.bin"))
    assert answer.status == 201, answer
    assert fed.stored("np/deep/er/g.bin").read_bytes() == b"payload"
    assert get(fed.url_for("np/deep/er/g.bin")) == b"payload"
    assert listing(fed.url_for("np")) == ["deep"]


def test_move_a_collection(fed: Any) -> None:
    fed.seed("col/src/one.txt", b"1")
    fed.seed("col/src/sub/two.txt", b"22")
    assert listing(fed.url_for("col")) == ["src"]
    answer = move(fed.url_for("col/src"), fed.url_for("col/dst"))
    assert answer.status == 201, answer
    assert listing(fed.url_for("col")) == ["dst"]
    assert listing(fed.url_for("col/dst")) == ["one.txt", "sub"]
    assert get(fed.url_for("col/dst/sub/two.txt")) == b"22"
    assert not fed.stored("col/src").exists()


def test_gfal2_rename(fed: Any) -> None:
    data = os.urandom(50_000)
    fed.seed("gf/upload.bin.rucio.upload", data)
    ctx = gfal2_context()
    ctx.rename(fed.url_for("gf/upload.bin.rucio.upload"), fed.url_for("gf/upload.bin"))
    assert ctx.stat(fed.url_for("gf/upload.bin")).st_size == len(data)
    with pytest.raises(gfal2.GError):
        ctx.stat(fed.url_for("gf/upload.bin.rucio.upload"))
    assert fed.stored("gf/upload.bin").read_bytes() == data
    assert f" MOVE {fed.path_for('gf/upload.bin.rucio.upload')} 201 move " in fed.access_log()


def test_davix_mv(fed: Any) -> None:
    data = os.urandom(60_000)
    fed.seed("dx/a.bin", data)
    # davix-mv 0.8.4 exits 255 even when the MOVE succeeded (it does so against Apache directly
    # too), and --timeout makes it exit at once without a word: judge it by what went over the wire
    path = shutil.which("davix-mv") or "/usr/bin/davix-mv"
    completed = subprocess.run(
        [path, "--trace", "header", fed.url_for("dx/a.bin"), fed.url_for("dx/b.bin")],
        capture_output=True,
        timeout=CLIENT_TIMEOUT_S,
        check=False,
    )
    trace = completed.stderr.decode(errors="replace")
    assert f"> MOVE {fed.path_for('dx/a.bin')} HTTP/1.1" in trace
    assert f"> Destination: {fed.url_for('dx/b.bin')}" in trace
    assert "< HTTP/1.1 201 Created" in trace, trace
    assert "Error" not in trace, trace
    assert fed.stored("dx/b.bin").read_bytes() == data
    assert not fed.stored("dx/a.bin").exists()
    assert davix("davix-get", fed.url_for("dx/b.bin")).stdout == data


@pytest.fixture(params=["apache", "nginx"])
def two_stores(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[Store, Store]:
    """A local directory and a WebDAV server, both writable at /fed."""
    return make_store(request, "local", tmp_path), make_store(request, request.param, tmp_path)


def test_move_renames_every_replica(two_stores: tuple[Store, Store]) -> None:
    local, dav = two_stores
    data = os.urandom(80_000)
    for store in two_stores:
        store.seed("rep/x.bin", data)
    with serve(config(local.endpoint("here"), dav.endpoint("there"))) as server:
        url = server.url + "/fed/rep/x.bin"
        assert head_status(url)[0] == 200
        answer = move(url, server.url + "/fed/rep/y.bin")
        assert answer.status == 201, answer
        for store in two_stores:
            assert store.files() == ["rep/y.bin"], store.backend
            assert store.stored("rep/y.bin").read_bytes() == data
        assert head_status(url)[0] == 404
        assert get(server.url + "/fed/rep/y.bin") == data
        log = server.flush_access_log()
        assert " MOVE /fed/rep/x.bin 201 move here,there " in log


def test_overwriting_move_leaves_no_stale_replica(two_stores: tuple[Store, Store]) -> None:
    """The source is on one endpoint, the old destination on the other: after the MOVE the
    destination is the source's bytes wherever it is read from."""
    local, dav = two_stores
    new, old = os.urandom(30_000), os.urandom(40_000)
    local.seed("st/src.bin", new)
    dav.seed("st/dst.bin", old)
    with serve(config(local.endpoint("here"), dav.endpoint("there"))) as server:
        answer = move(server.url + "/fed/st/src.bin", server.url + "/fed/st/dst.bin")
        assert answer.status == 204, answer
        assert local.files() == ["st/dst.bin"]
        assert dav.files() == []
        assert get(server.url + "/fed/st/dst.bin") == new
        # with Overwrite: F nothing is touched
        local.seed("st/again.bin", new)
        answer = move(server.url + "/fed/st/again.bin", server.url + "/fed/st/dst.bin", "Overwrite: F")
        assert answer.status == 412
        assert local.files() == ["st/again.bin", "st/dst.bin"]


# -- proxy mode -------------------------------------------------------------------------------------------


def test_python_requests_upload_is_streamed_through(store: Store) -> None:
    mapping = config(store.endpoint(), proxy={"user_agents": ["python-requests"]})
    data = os.urandom(3_500_000)
    with serve(mapping) as server:
        url = server.url + "/fed/px/rucio.bin.rucio.upload"
        with requests.Session() as session:
            session.trust_env = False
            assert session.headers["User-Agent"].startswith("python-requests/")
            response = session.put(url, data=data, timeout=CLIENT_TIMEOUT_S)
            assert response.status_code == 201, response.text
            assert response.history == []  # no 307 on the way
            assert store.stored("px/rucio.bin.rucio.upload").read_bytes() == data
            # Rucio's webdav protocol sends a chunked body (an iterator of 10 MB pieces)
            pieces = [data[i : i + 1_000_000] for i in range(0, len(data), 1_000_000)]
            response = session.put(url, data=iter(pieces), timeout=CLIENT_TIMEOUT_S)
            assert response.status_code == 204, response.text  # it existed
            assert response.request.headers.get("Transfer-Encoding") == "chunked"
            assert store.stored("px/rucio.bin.rucio.upload").read_bytes() == data
            # and then renames it, as Rucio does
            response = session.request(
                "MOVE",
                url,
                headers={"Destination": server.url + "/fed/px/rucio.bin"},
                timeout=CLIENT_TIMEOUT_S,
            )
            assert response.status_code == 201
            assert session.get(server.url + "/fed/px/rucio.bin", timeout=CLIENT_TIMEOUT_S).content == data
        assert store.files() == ["px/rucio.bin"]
        # a client that does not match is still redirected
        source = store.folder.parent / f"src-{uuid.uuid4().hex}"
        source.write_bytes(b"by curl\n")
        try:
            answer = curl("-T", str(source), server.url + "/fed/px/curl.txt")
        finally:
            source.unlink()
        assert answer.status == 307
        log = server.flush_access_log()
        assert log.count(" PUT /fed/px/rucio.bin.rucio.upload ") == 2
        assert " PUT /fed/px/rucio.bin.rucio.upload 201 proxy-upload store " in log
        assert " PUT /fed/px/rucio.bin.rucio.upload 204 proxy-upload store " in log


def test_path_prefixes_stream_every_client_below_them(store: Store, tmp_path: Path) -> None:
    mapping = config(store.endpoint(), proxy={"path_prefixes": ["/fed/rucio"]})
    source = tmp_path / "src.bin"
    source.write_bytes(os.urandom(200_000))
    with serve(mapping) as server:
        answer = curl("-T", str(source), server.url + "/fed/rucio/user/a.bin")
        assert answer.status == 201, answer
        assert store.stored("rucio/user/a.bin").read_bytes() == source.read_bytes()
        assert curl("-T", str(source), server.url + "/fed/rucio2/a.bin").status == 307  # whole segments
        assert curl("-T", str(source), server.url + "/fed/other/a.bin").status == 307


def _wait_for_log(server: GeofedServer, needle: str, timeout: float = 15.0) -> str:
    deadline = time.monotonic() + timeout
    while True:
        log = server.flush_access_log()
        if needle in log:
            return log
        if time.monotonic() > deadline:
            raise AssertionError(f"{needle!r} not in the access log:\n{log}")
        time.sleep(0.05)


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_client_that_disconnects_midway_leaves_nothing(store: Store, chunked: bool) -> None:
    mapping = config(store.endpoint(), proxy={"user_agents": ["python-requests"]})
    with serve(mapping) as server:
        framing = "Transfer-Encoding: chunked" if chunked else "Content-Length: 20000000"
        with socket.create_connection((LOOPBACK, server.port)) as sock:
            sock.sendall(
                (
                    f"PUT /fed/cut/partial.bin HTTP/1.1\r\nHost: {LOOPBACK}\r\n"
                    f"User-Agent: {REQUESTS_UA}\r\n{framing}\r\n\r\n"
                ).encode()
            )
            block = os.urandom(1_000_000)
            for _ in range(3):
                sock.sendall(b"%x\r\n%s\r\n" % (len(block), block) if chunked else block)
            time.sleep(0.3)  # let geofed pass some of it on to the endpoint
        log = _wait_for_log(server, " PUT /fed/cut/partial.bin ")
        assert " PUT /fed/cut/partial.bin 400 error " in log
        assert store.files() == []  # neither the object nor a temporary file
        assert head_status(server.url + "/fed/cut/partial.bin")[0] == 404
        if store.backend == "local":
            assert not any(UPLOAD_PREFIX in p for p in store.files())


def test_url_prefix_streams_any_client(store: Store, tmp_path: Path) -> None:
    mapping = config(store.endpoint(), proxy={"url_prefix": "/proxy", "reads": True})
    data = os.urandom(700_000)
    source = tmp_path / "src.bin"
    source.write_bytes(data)
    with serve(mapping) as server:
        proxied = server.url + "/proxy/fed/pre/file.bin"
        answer = curl("-T", str(source), proxied)  # curl: no User-Agent rule, the URL decides
        assert answer.status == 201, answer
        assert store.stored("pre/file.bin").read_bytes() == data
        # the same file without the prefix: the ordinary federation, redirected
        answer = curl("-T", str(source), server.url + "/fed/pre/other.bin")
        assert answer.status == 307
        # namespace operations work through the prefix too
        assert head_status(proxied) == (200, str(len(data)))
        assert listing(server.url + "/proxy/fed/pre") == ["file.bin"]
        answer = move(proxied, server.url + "/proxy/fed/pre/renamed.bin")
        assert answer.status == 201, answer
        assert store.files() == ["pre/renamed.bin"]
        assert curl("-X", "DELETE", server.url + "/proxy/fed/pre/renamed.bin").status == 204
        assert store.files() == []
        log = server.flush_access_log()
        assert " PUT /fed/pre/file.bin 201 proxy-upload store " in log


def test_url_prefix_streams_reads_when_configured(store: Store) -> None:
    data = os.urandom(300_000)
    store.seed("rd/file.bin", data)
    with serve(config(store.endpoint(), proxy={"url_prefix": "/proxy", "reads": True})) as server:
        answer = curl(server.url + "/proxy/fed/rd/file.bin")  # no -L: the bytes must come from geofed
        assert answer.status == 200, answer.status
        assert answer.body == data


# -- space ---------------------------------------------------------------------------------------------

QUOTA_PROPFIND = (
    '<?xml version="1.0" encoding="utf-8"?><D:propfind xmlns:D="DAV:"><D:prop>'
    "<D:quota-available-bytes/><D:quota-used-bytes/></D:prop></D:propfind>"
)


def quota(url: str) -> tuple[int | None, int | None]:
    """(quota-available-bytes, quota-used-bytes) of a PROPFIND Depth 0; None where 404."""
    answer = curl("-X", "PROPFIND", "-H", "Depth: 0", "--data-binary", QUOTA_PROPFIND, url)
    assert answer.status == 207, answer.body[:300]
    values: dict[str, int | None] = {"quota-available-bytes": None, "quota-used-bytes": None}
    for propstat in fromstring(answer.body).iter(f"{DAV}propstat"):
        ok = "200" in (propstat.findtext(f"{DAV}status") or "")
        for name in values:
            element = propstat.find(f"{DAV}prop/{DAV}{name}")
            if element is not None and ok:
                values[name] = int(element.text or "")
    return values["quota-available-bytes"], values["quota-used-bytes"]


def wait_for_space(server: GeofedServer, names: list[str]) -> dict[str, Any]:
    """The status page's endpoints once every one of ``names`` has a space report."""
    deadline = time.monotonic() + 10
    while True:
        endpoints = {e["name"]: e for e in status_document(server)["endpoints"]}
        if all(endpoints[n]["space"] is not None for n in names):
            return endpoints
        assert time.monotonic() < deadline, endpoints
        time.sleep(0.05)


def close_to(value: int | None, expected: int, slack: int = 256 * 1024 * 1024) -> bool:
    """Free disk space moves while the tests run (other files, logs): equal within ``slack``."""
    return value is not None and abs(value - expected) <= slack


def test_quota_properties_of_local_endpoints(tmp_path: Path) -> None:
    a, b, archive = tmp_path / "a", tmp_path / "b", tmp_path / "archive"
    for folder in (a, b, archive):
        folder.mkdir()
    mapping = config(
        {
            "name": "a",
            "kind": "local",
            "url": a.as_uri(),
            "prefixes": [{"federated": "/fed"}],
            "writable": True,
        },
        {
            "name": "b",
            "kind": "local",
            "url": b.as_uri(),
            "prefixes": [{"federated": "/other"}],
            "writable": True,
            "quota": 5_000_000,
        },
        # read-only: its free space is no space a client can write to
        {
            "name": "archive",
            "kind": "local",
            "url": archive.as_uri(),
            "prefixes": [{"federated": "/archive"}],
        },
    )
    free = shutil.disk_usage(a).free
    with serve(mapping) as server:
        endpoints = wait_for_space(server, ["a", "b", "archive"])
        assert quota(server.url + "/archive") == (None, None)
        assert close_to(endpoints["a"]["space"]["available_bytes"], free)
        assert endpoints["a"]["space"]["quota_bytes"] is None
        assert endpoints["b"]["space"] == {
            "used_bytes": None,
            "available_bytes": 5_000_000,
            "quota_bytes": 5_000_000,
        }
        available, used = quota(server.url + "/fed")
        assert close_to(available, free) and used is None  # a local directory does not sum its tree
        assert quota(server.url + "/other") == (5_000_000, None)  # capped by the quota
        available, used = quota(server.url + "/")  # the root: every endpoint below it
        assert close_to(available, free + 5_000_000) and used is None
        # a file has no quota properties
        (a / "f.txt").write_bytes(b"f")
        assert quota(server.url + "/fed/f.txt") == (None, None)


@pytest.mark.parametrize("backend", ["apache", "nginx"])
def test_quota_properties_with_a_webdav_endpoint(
    request: pytest.FixtureRequest, tmp_path: Path, backend: str
) -> None:
    store = make_store(request, backend, tmp_path)
    with serve(config(store.endpoint())) as server:
        time.sleep(0.2)  # the space monitor has asked (Apache and nginx report no quota at all)
        assert status_document(server)["endpoints"][0]["space"] is None
        assert quota(server.url + "/fed") == (None, None)
        assert quota(server.url + "/") == (None, None)


def test_put_too_big_for_one_endpoints_quota_goes_to_another(tmp_path: Path) -> None:
    small, big = tmp_path / "small", tmp_path / "big"
    small.mkdir()
    big.mkdir()
    endpoint = {"kind": "local", "prefixes": [{"federated": "/fed"}], "writable": True}
    mapping = config(
        {"name": "small", "url": small.as_uri(), "quota": 100_000, **endpoint},
        {"name": "big", "url": big.as_uri(), "quota": 1_000_000, **endpoint},
    )
    source = tmp_path / "src.bin"
    with serve(mapping) as server:
        wait_for_space(server, ["small", "big"])
        for attempt in range(5):  # either endpoint would be chosen for a small file: never for this one
            data = os.urandom(500_000)
            source.write_bytes(data)
            answer = curl("-T", str(source), server.url + f"/fed/q/big-{attempt}.bin")
            assert answer.status == 307, answer
            assert "/_geofed/data/big/" in answer.headers["location"]
            assert curl("-L", "-T", str(source), server.url + f"/fed/q/big-{attempt}.bin").status == 201
            assert (big / "q" / f"big-{attempt}.bin").read_bytes() == data
        # too big for both: 503 and the reason
        source.write_bytes(os.urandom(2_000_000))
        answer = curl("-T", str(source), server.url + "/fed/q/huge.bin")
        assert answer.status == 503
        text = answer.body.decode()
        assert "small: not enough space for 2000000 bytes" in text
        assert "big: not enough space for 2000000 bytes" in text
        assert not (small / "q" / "huge.bin").exists() and not (big / "q" / "huge.bin").exists()
