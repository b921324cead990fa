"""Checksums end to end: real clients (gfal2, davix, curl) ask geofed for the checksums of files on
a local directory, a real Apache mod_dav_fs and a real nginx dav-ext, and geofed answers from the
bytes the endpoint really holds.

What is checked, per endpoint kind where it differs:

* ``HEAD`` + ``Want-Digest`` as gfal2 (``ctx.checksum``), davix (``davix-http``) and curl send it;
  the values are zlib's and hashlib's of the stored bytes; the client's spelling is echoed
  (clients.md §4.3); q-values, ``Want-Repr-Digest``, crc32c in hex, unknown algorithms;
* the cost model: the first request reads the file once (``checksums.computed`` on the status
  page), later ones are answered without reading; the values are written back (a local file's
  xattrs, an Apache dead property) so that a *new geofed process* answers without reading;
* writes: an overwrite through geofed never gets the old value; a declared ``Digest`` on a
  redirected PUT is checked once the checksum is computed (``X-Checksum-Mismatch``), on a
  proxied PUT before anything becomes visible (400, nothing stored); a malformed one is a 400;
* PROPFIND ``oc:checksums``; a client that may only list gets no digest.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import pwd
import re
import secrets
import shutil
import subprocess
import sys
import time
import uuid
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import google_crc32c
import pytest
import yaml
from defusedxml.ElementTree import fromstring

from geofed.config import settings_from_mapping
from tests.infra.geofed_server import GeofedServer
from tests.infra.policies import OPEN_POLICY
from tests.infra.servers import LOOPBACK, WORKER_USER, RunningServer, free_port

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
OC = "{http://owncloud.org/ns}"
GEOFED_NS = "{https://geofed.org/ns}"
LIST_ONLY_POLICY: dict[str, Any] = {"policy": [{"path": "/", "allow": ["list"], "to": ["anyone"]}]}


# -- the federation under test ------------------------------------------------------------------


@dataclass
class Store:
    """One back end's fresh folder, mounted at ``/fed`` by the federations built on it."""

    backend: str
    url: str
    """The endpoint URL (file:// for local, the server's http:// URL otherwise)."""
    folder: Path
    """The folder on disk that ``/fed`` maps to."""
    owner: tuple[int, int] | None

    @property
    def kind(self) -> str:
        return "local" if self.backend == "local" else "webdav"

    def endpoint(self, **extra: Any) -> dict[str, Any]:
        return {
            "name": "store",
            "kind": self.kind,
            "url": self.url,
            "prefixes": [{"federated": "/fed", "endpoint": "/" + self.folder.name}],
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

    def leftovers(self) -> list[str]:
        """Every file (not collection) below the folder, relative, hidden ones included."""
        return sorted(str(p.relative_to(self.folder)) for p in self.folder.rglob("*") if not p.is_dir())


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    backend: str = request.param
    folder_name = uuid.uuid4().hex
    if backend == "local":
        root = tmp_path / "local-endpoint"
        folder = root / folder_name
        folder.mkdir(parents=True)
        yield Store(backend, root.resolve().as_uri(), folder, None)
        return
    server: RunningServer = request.getfixturevalue(f"{backend}_dav")
    assert server.root is not None
    folder = server.root / folder_name
    folder.mkdir()
    owner = None
    if os.geteuid() == 0:
        user = pwd.getpwnam(WORKER_USER)
        owner = (user.pw_uid, user.pw_gid)
        os.chown(folder, *owner)
    try:
        yield Store(backend, server.url, folder, owner)
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def config(store: Store, endpoint_extra: dict[str, Any] | None = None, **sections: Any) -> dict[str, Any]:
    mapping: dict[str, Any] = {
        "server": {"host": LOOPBACK, "port": 0},
        "signing": {"secret": secrets.token_urlsafe(32), "url_lifetime": "10m"},
        "auth": OPEN_POLICY,
        "federation": {"locate_timeout": "5s"},
        "health": {"interval": "60s", "timeout": "3s"},
        "endpoints": [store.endpoint(**(endpoint_extra or {}))],
    }
    mapping.update(sections)
    return mapping


@contextmanager
def serve(mapping: dict[str, Any]) -> Iterator[GeofedServer]:
    with GeofedServer(settings_from_mapping(mapping, environ={})) as server:
        yield server


# -- clients --------------------------------------------------------------------------------------


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes


def curl(*args: str) -> Answer:
    """One curl run; the headers of the last response (lower-case names) and the body."""
    dump = [] if "-I" in args else ["-D", "-"]  # -I prints the headers itself
    completed = subprocess.run(
        ["curl", "--noproxy", "*", "-sS", "--max-time", str(CLIENT_TIMEOUT_S), *dump, *args],
        capture_output=True,
        timeout=CLIENT_TIMEOUT_S + 5,
        check=False,
    )
    assert completed.returncode == 0, completed.stderr.decode(errors="replace")
    raw = completed.stdout
    blocks: list[tuple[int, dict[str, str]]] = []
    rest = raw
    while rest.startswith(b"HTTP/"):
        head, _, rest = rest.partition(b"\r\n\r\n")
        lines = head.decode("iso-8859-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if status != 100:
            blocks.append((status, headers))
    assert blocks, raw[:500]
    status, headers = blocks[-1]
    return Answer(status, headers, rest)


def head(url: str, *headers: str) -> Answer:
    args: list[str] = ["-I"]
    for header in headers:
        args += ["-H", header]
    return curl(*args, url)


def status_document(server: GeofedServer) -> dict[str, Any]:
    answer = curl(server.url + "/_geofed/status")
    assert answer.status == 200
    document: dict[str, Any] = json.loads(answer.body)
    return document


def computed(server: GeofedServer) -> int:
    return int(status_document(server)["checksums"]["computed"])


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


def upload(url: str, data: bytes, tmp: Path, *headers: str, follow: bool = True) -> Answer:
    """curl -T (Expect: 100-continue), following the 307 unless told not to."""
    source = tmp / f"upload-{uuid.uuid4().hex}"
    source.write_bytes(data)
    args = ["-T", str(source)]
    if follow:
        args.append("-L")
    for header in headers:
        args += ["-H", header]
    return curl(*args, url)


# -- expected values --------------------------------------------------------------------------------


def adler32(data: bytes) -> str:
    return f"{zlib.adler32(data):08x}"


def crc32c(data: bytes) -> str:
    return f"{google_crc32c.value(data):08x}"


def md5_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.md5(data).digest()).decode()


def sha256_b64(data: bytes) -> str:
    return base64.b64encode(hashlib.sha256(data).digest()).decode()


def digest_entries(value: str) -> list[tuple[str, str]]:
    """``Digest: a=1, B=2`` → [("a", "1"), ("B", "2")] in order, names as sent."""
    entries = []
    for item in value.split(","):
        name, _, val = item.strip().partition("=")
        entries.append((name, val))
    return entries


# -- asking: gfal2, davix, curl -----------------------------------------------------------------


def test_gfal2_checksum_adler32_md5_sha256_crc32c(store: Store) -> None:
    data = os.urandom(1_234_567)
    store.seed("ck/gfal.bin", data)
    ctx = gfal2_context()
    with serve(config(store)) as server:
        url = server.url + "/fed/ck/gfal.bin"
        assert ctx.checksum(url, "ADLER32") == adler32(data)
        assert ctx.checksum(url, "MD5") == hashlib.md5(data).hexdigest()
        assert ctx.checksum(url, "SHA256") == hashlib.sha256(data).hexdigest()
        assert ctx.checksum(url, "CRC32C") == crc32c(data)  # hex, handed through verbatim
        # gfal2 sends the name verbatim and geofed echoes it (clients.md §4.3)
        log = server.flush_access_log()
        assert log.count(" HEAD /fed/ck/gfal.bin 200 stat ") >= 4
        assert computed(server) == 1  # one read gave all four


def test_davix_head_want_digest(store: Store) -> None:
    data = os.urandom(300_000)
    store.seed("ck/davix.bin", data)
    with serve(config(store)) as server:
        url = server.url + "/fed/ck/davix.bin"
        completed = davix("davix-http", "-X", "HEAD", "-H", "Want-Digest: adler32", "--trace", "header", url)
        assert completed.returncode == 0, completed.stderr.decode(errors="replace")
        trace = completed.stderr.decode(errors="replace")
        assert "> Want-Digest: adler32" in trace
        match = re.search(r"^< Digest: (.*)$", trace, re.MULTILINE)
        assert match is not None, trace
        assert match.group(1).strip() == f"adler32={adler32(data)}"
        completed = davix("davix-http", "-X", "HEAD", "-H", "Want-Digest: MD5", "--trace", "header", url)
        trace = completed.stderr.decode(errors="replace")
        assert f"< Digest: MD5={md5_b64(data)}" in trace
        # no Content-MD5: davix would hand its base64-decoded raw bytes to gfal2 as "the checksum"
        assert "< Content-MD5:" not in trace


def test_curl_echoes_the_clients_spelling_and_formats(store: Store) -> None:
    data = os.urandom(70_000)
    store.seed("ck/echo.bin", data)
    with serve(config(store)) as server:
        url = server.url + "/fed/ck/echo.bin"

        def digest_of(want: str) -> list[tuple[str, str]]:
            answer = head(url, f"Want-Digest: {want}")
            assert answer.status == 200
            assert answer.headers["content-length"] == str(len(data))
            return digest_entries(answer.headers["digest"])

        assert digest_of("ADLER32") == [("ADLER32", adler32(data))]
        assert digest_of("adler32") == [("adler32", adler32(data))]
        assert digest_of("SHA256") == [("SHA256", sha256_b64(data))]
        assert digest_of("sha-256") == [("sha-256", sha256_b64(data))]
        assert digest_of("md5") == [("md5", md5_b64(data))]
        assert digest_of("crc32c") == [("crc32c", crc32c(data))]  # hex, not base64
        assert digest_of("CRC32c") == [("CRC32c", crc32c(data))]
        # q-values: preference order, q=0 refuses, unknown names are skipped
        assert digest_of("md5;q=0.3, adler32;q=0.9") == [("adler32", adler32(data)), ("md5", md5_b64(data))]
        assert digest_of("adler32;q=0, md5") == [("md5", md5_b64(data))]
        assert digest_of("UNIXsum, sha-256;q=0.5") == [("sha-256", sha256_b64(data))]
        # RFC 9530
        answer = head(url, "Want-Repr-Digest: sha-256=5, adler=3")
        raw_adler = base64.b64encode(zlib.adler32(data).to_bytes(4, "big")).decode()
        assert answer.headers["repr-digest"] == f"sha-256=:{sha256_b64(data)}:, adler=:{raw_adler}:"
        assert "digest" not in answer.headers
        # both asked: both answered
        answer = head(url, "Want-Digest: adler32", "Want-Repr-Digest: md5=1")
        assert answer.headers["digest"] == f"adler32={adler32(data)}"
        assert answer.headers["repr-digest"] == f"md5=:{md5_b64(data)}:"
        # an algorithm geofed does not know: no Digest, and what it could give instead
        answer = head(url, "Want-Digest: UNIXsum")
        assert answer.status == 200
        assert "digest" not in answer.headers
        assert answer.headers["want-digest"] == "adler32, md5, sha-256, crc32c"
        # a GET with Want-Digest: the redirect carries the digest
        answer = curl("-H", "Want-Digest: adler32", url)
        assert answer.status == 302
        assert answer.headers["digest"] == f"adler32={adler32(data)}"
        assert computed(server) == 1


# -- the cost: computed once, then served without reading; stored back ------------------------


def test_first_request_computes_second_does_not(store: Store) -> None:
    data = os.urandom(2_000_000)
    store.seed("ck/once.bin", data)
    with serve(config(store)) as server:
        url = server.url + "/fed/ck/once.bin"
        before = status_document(server)["checksums"]
        assert before == {"computed": 0, "bytes_hashed": 0}
        assert head(url, "Want-Digest: adler32").headers["digest"] == f"adler32={adler32(data)}"
        after_first = status_document(server)["checksums"]
        assert after_first == {"computed": 1, "bytes_hashed": len(data)}
        # the same and the other algorithms: answered from what the one read gave
        assert head(url, "Want-Digest: adler32").headers["digest"] == f"adler32={adler32(data)}"
        assert head(url, "Want-Digest: md5, sha-256, crc32c").headers["digest"] == (
            f"md5={md5_b64(data)}, sha-256={sha256_b64(data)}, crc32c={crc32c(data)}"
        )
        assert status_document(server)["checksums"] == after_first


def _geofed_process(config_file: Path, port: int) -> subprocess.Popen[bytes]:
    script = Path(sys.executable).with_name("geofed")
    argv = [str(script)] if script.exists() else [sys.executable, "-c", "from geofed.cli import main; main()"]
    return subprocess.Popen(
        [*argv, "serve", "--config", str(config_file), "--port", str(port)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )


@contextmanager
def geofed_process(mapping: dict[str, Any], tmp: Path) -> Iterator[str]:
    """A separate ``geofed serve`` process on the same configuration: nothing of a former one's
    caches. Yields its base URL once it answers."""
    config_file = tmp / f"geofed-{uuid.uuid4().hex}.yaml"
    config_file.write_text(yaml.safe_dump(mapping, sort_keys=False), encoding="utf-8")
    port = free_port()
    process = _geofed_process(config_file, port)
    base = f"http://{LOOPBACK}:{port}"
    try:
        deadline = time.monotonic() + 20
        while True:
            probe = subprocess.run(
                [
                    "curl",
                    "--noproxy",
                    "*",
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    base + "/_geofed/status",
                ],
                capture_output=True,
                text=True,
                check=False,
            )
            if probe.stdout == "200":
                break
            if process.poll() is not None or time.monotonic() > deadline:
                _, err = process.communicate(timeout=5)
                raise AssertionError(f"geofed did not start: {err.decode(errors='replace')[-2000:]}")
            time.sleep(0.1)
        yield base
    finally:
        process.terminate()
        try:
            process.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()


def _dead_property(store: Store, name: str) -> str | None:
    body = (
        '<?xml version="1.0"?><D:propfind xmlns:D="DAV:" xmlns:g="https://geofed.org/ns">'
        "<D:prop><g:checksums/></D:prop></D:propfind>"
    )
    answer = curl(
        "-X", "PROPFIND", "-H", "Depth: 0", "--data-binary", body, f"{store.url}/{store.folder.name}/{name}"
    )
    assert answer.status == 207, answer.body[:300]
    element = fromstring(answer.body).find(f".//{GEOFED_NS}checksums")
    return None if element is None else element.text


def test_values_are_stored_back_and_a_new_process_answers_without_reading(
    store: Store, tmp_path: Path
) -> None:
    data = os.urandom(500_000)
    stored = store.seed("ck/kept.bin", data)
    mapping = config(store)
    with serve(mapping) as server:
        url = server.url + "/fed/ck/kept.bin"
        assert head(url, "Want-Digest: ADLER32").headers["digest"] == f"ADLER32={adler32(data)}"
        assert computed(server) == 1
        server.call(server.federation.checksums.wait_idle())  # the write-back is done after the answer
    if store.backend == "local":
        assert os.getxattr(stored, "user.geofed.adler32").decode() == adler32(data)
        assert os.getxattr(stored, "user.geofed.md5").decode() == hashlib.md5(data).hexdigest()
    elif store.backend == "apache":
        kept = _dead_property(store, "ck/kept.bin")
        assert kept is not None and f"adler32:{adler32(data)}" in kept, kept
    else:  # nginx keeps no dead properties (PROPPATCH is 405): nothing to keep them in
        assert _dead_property(store, "ck/kept.bin") is None
    with geofed_process(mapping, tmp_path) as base:
        answer = head(base + "/fed/ck/kept.bin", "Want-Digest: adler32, md5")
        assert answer.headers["digest"] == f"adler32={adler32(data)}, md5={md5_b64(data)}"
        fresh = json.loads(curl(base + "/_geofed/status").body)["checksums"]
        assert fresh["computed"] == (1 if store.backend == "nginx" else 0), fresh


# -- writes ----------------------------------------------------------------------------------------


def test_overwrite_through_geofed_reports_the_new_checksum(store: Store, tmp_path: Path) -> None:
    old, new = os.urandom(400_000), os.urandom(400_000)  # same size: only the content changes
    store.seed("ck/over.bin", old)
    with serve(config(store)) as server:
        url = server.url + "/fed/ck/over.bin"
        assert head(url, "Want-Digest: adler32").headers["digest"] == f"adler32={adler32(old)}"
        server.call(server.federation.checksums.wait_idle())
        answer = upload(url, new, tmp_path)
        assert answer.status in (201, 204), answer
        assert store.stored("ck/over.bin").read_bytes() == new
        answer = head(url, "Want-Digest: adler32, md5")
        assert answer.headers["digest"] == f"adler32={adler32(new)}, md5={md5_b64(new)}"
        assert computed(server) == 2
    if store.backend == "local":
        assert os.getxattr(store.stored("ck/over.bin"), "user.geofed.adler32").decode() == adler32(new)


def test_redirected_put_with_declared_digest(store: Store, tmp_path: Path) -> None:
    good, bad = os.urandom(250_000), os.urandom(260_000)
    with serve(config(store)) as server:
        # a correct declaration: stored, and nothing to report
        url = server.url + "/fed/ck/declared-good.bin"
        answer = upload(url, good, tmp_path, f"Digest: adler32={adler32(good)}")
        assert answer.status == 201
        assert store.stored("ck/declared-good.bin").read_bytes() == good
        answer = head(url, "Want-Digest: adler32")
        assert answer.headers["digest"] == f"adler32={adler32(good)}"
        assert "x-checksum-mismatch" not in answer.headers
        # a wrong one: geofed never sees the body (307), so the bytes are stored; the first checksum
        # computed from them shows the mismatch, and the true value is what is reported
        url = server.url + "/fed/ck/declared-bad.bin"
        answer = upload(url, bad, tmp_path, "Digest: adler32=00000001")
        assert answer.status == 201
        assert store.stored("ck/declared-bad.bin").read_bytes() == bad
        answer = head(url, "Want-Digest: adler32")
        assert answer.headers["digest"] == f"adler32={adler32(bad)}"
        assert answer.headers["x-checksum-mismatch"] == (
            f"adler32: declared 00000001, stored bytes have {adler32(bad)}"
        )
        # a later upload that declares nothing is not judged by the earlier declaration
        answer = upload(url, good, tmp_path)
        assert answer.status in (201, 204)
        answer = head(url, "Want-Digest: adler32")
        assert answer.headers["digest"] == f"adler32={adler32(good)}"
        assert "x-checksum-mismatch" not in answer.headers, answer.headers


def test_proxied_put_with_a_wrong_digest_fails_and_leaves_nothing(store: Store, tmp_path: Path) -> None:
    data = os.urandom(3_000_000)
    with serve(config(store, proxy={"user_agents": ["curl"]})) as server:
        url = server.url + "/fed/ck/proxied.bin"
        answer = upload(url, data, tmp_path, "Digest: adler32=00000001", follow=False)
        assert answer.status == 400
        assert b"checksum mismatch" in answer.body and b"nothing was stored" in answer.body
        assert store.leftovers() == []  # no object, no temporary file
        assert head(url).status == 404
        # MD5 declared in Content-MD5, wrong as well
        answer = upload(url, data, tmp_path, f"Content-MD5: {md5_b64(b'other bytes')}", follow=False)
        assert answer.status == 400 and store.leftovers() == []
        # the right declaration: streamed through, 201 without a redirect
        answer = upload(
            url, data, tmp_path, f"Digest: adler32={adler32(data)}, md5={md5_b64(data)}", follow=False
        )
        assert answer.status == 201
        assert store.stored("ck/proxied.bin").read_bytes() == data
        assert store.leftovers() == ["ck/proxied.bin"]
        log = server.flush_access_log()
        assert " PUT /fed/ck/proxied.bin 201 proxy-upload store " in log
        assert " 307 " not in log


@pytest.mark.parametrize("proxied", [False, True], ids=["redirected", "proxied"])
def test_malformed_declared_digest_is_a_400(store: Store, tmp_path: Path, proxied: bool) -> None:
    sections: dict[str, Any] = {"proxy": {"user_agents": ["curl"]}} if proxied else {}
    with serve(config(store, **sections)) as server:
        url = server.url + "/fed/ck/malformed.bin"
        for header, reason in (
            ("Digest: adler32", "malformed Digest entry"),
            ("Digest: adler32=xyz", "not a adler32 value"),
            ("Digest: md5=not*base64", "not base64"),
            ("Content-MD5: AAAA", "md5 digest has 16 bytes"),
            ("Digest: adler32=00000001, ADLER32=00000002", "conflicting adler32 values"),
        ):
            answer = upload(url, b"some bytes\n", tmp_path, header, follow=False)
            assert answer.status == 400, (header, answer)
            text = answer.body.decode()
            assert text.startswith("declared checksum not understood: "), text
            assert reason in text, (header, text)
        assert store.leftovers() == []
        # an algorithm geofed does not check is ignored, whatever its value
        answer = upload(url, b"some bytes\n", tmp_path, "Digest: UNIXsum=whatever")
        assert answer.status == 201


# -- PROPFIND and privileges -----------------------------------------------------------------------

CHECKSUMS_PROPFIND = (
    '<?xml version="1.0" encoding="utf-8"?>'
    '<D:propfind xmlns:D="DAV:" xmlns:oc="http://owncloud.org/ns">'
    "<D:prop><oc:checksums/><D:getcontentlength/></D:prop></D:propfind>"
)


def propfind_checksums(url: str) -> tuple[str | None, str | None]:
    """(oc:checksum text, getcontentlength) of a Depth-0 PROPFIND asking for them by name."""
    answer = curl(
        "-X",
        "PROPFIND",
        "-H",
        "Depth: 0",
        "-H",
        "Content-Type: application/xml",
        "--data-binary",
        CHECKSUMS_PROPFIND,
        url,
    )
    assert answer.status == 207, answer.body[:300]
    root = fromstring(answer.body)
    found = None
    for propstat in root.iter(f"{DAV}propstat"):
        if "200" in (propstat.findtext(f"{DAV}status") or ""):
            element = propstat.find(f"{DAV}prop/{OC}checksums/{OC}checksum")
            if element is not None:
                found = element.text
    return found, root.findtext(f".//{DAV}getcontentlength")


def test_propfind_oc_checksums(store: Store) -> None:
    data = os.urandom(123_456)
    store.seed("ck/prop.bin", data)
    with serve(config(store)) as server:
        text, length = propfind_checksums(server.url + "/fed/ck/prop.bin")
        assert length == str(len(data))
        assert text == (
            f"ADLER32:{adler32(data)} CRC32C:{crc32c(data)} MD5:{hashlib.md5(data).hexdigest()} "
            f"SHA256:{hashlib.sha256(data).hexdigest()}"
        )
        # a collection has none
        text, _ = propfind_checksums(server.url + "/fed/ck")
        assert text is None


def test_a_client_that_may_only_list_gets_no_digest(store: Store) -> None:
    data = os.urandom(10_000)
    store.seed("ck/secret.bin", data)
    with serve(config(store, auth=LIST_ONLY_POLICY)) as server:
        url = server.url + "/fed/ck/secret.bin"
        answer = head(url, "Want-Digest: adler32")
        assert answer.status == 200  # stat is allowed with list
        assert "digest" not in answer.headers
        assert answer.headers["want-digest"] == "adler32, md5, sha-256, crc32c"
        answer = head(url, "Want-Repr-Digest: sha-256=1")
        assert "repr-digest" not in answer.headers
        text, length = propfind_checksums(url)
        assert text is None and length == str(len(data))
        assert curl("-H", "Want-Digest: adler32", url).status == 401  # anonymous, no read: no redirect
        ctx = gfal2_context()
        with pytest.raises(gfal2.GError):
            ctx.checksum(url, "ADLER32")
        assert computed(server) == 0  # nothing was even read


# -- checksums the site's own tools wrote -------------------------------------------------------------


@pytest.mark.parametrize("metadata", ["geofed", "trusted"])
def test_checksum_metadata_of_a_local_file(tmp_path: Path, metadata: str) -> None:
    """A plain ``user.adler32`` xattr (as a site's tools write it) is reported only when the
    endpoint is configured to trust it; by default geofed computes from the bytes instead."""
    root = tmp_path / "site"
    data = os.urandom(50_000)
    target = root / "ck" / "tool.bin"
    target.parent.mkdir(parents=True)
    target.write_bytes(data)
    os.setxattr(target, "user.adler32", b"0badc0de")  # deliberately not the bytes' value
    store = Store("local", root.resolve().as_uri(), root, None)
    endpoint = {**store.endpoint(checksum_metadata=metadata), "prefixes": [{"federated": "/fed"}]}
    mapping = config(store)
    mapping["endpoints"] = [endpoint]
    with serve(mapping) as server:
        answer = head(server.url + "/fed/ck/tool.bin", "Want-Digest: adler32")
        if metadata == "trusted":
            assert answer.headers["digest"] == "adler32=0badc0de"
            assert computed(server) == 0
        else:
            assert answer.headers["digest"] == f"adler32={adler32(data)}"
            assert computed(server) == 1
