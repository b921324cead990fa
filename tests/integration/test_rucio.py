"""Rucio's RSE protocols through geofed over HTTPS, with a VOMS proxy, in front of each endpoint kind.

Rucio (rucio-clients in ``.cache/rucio-venv``, no Rucio server: clients.md 9.3) runs the cycle a
Rucio upload/download/deletion makes: ``rsemanager.upload`` of a file with its adler32 and md5
(put to ``<pfn>.rucio.upload``, stat to verify, MOVE to the final name), ``exists``, the read
protocol's ``stat`` and ``get``, ``rsemanager.delete``, and ``exists`` again. Two protocols:

* ``gfal``: ``rucio.rse.protocols.gfal.Default`` (gfal2 with davix; Rucio turns gfal2's macaroon
  request off itself). Its stat asks ``HEAD`` + ``Want-Digest: ADLER32``, so Rucio's upload
  verification compares geofed's adler32 with its own.
* ``webdav``: ``rucio.rse.protocols.webdav.Default`` (python-requests), which cannot send a PUT body
  again after a 307, so geofed is in proxy mode for it: ``proxy.user_agents: [python-requests]``
  (``webdav``) or the RSE prefix under ``proxy.url_prefix`` (``webdav-urlprefix``). Its stat is a
  PROPFIND (size only); the adler32 is read with ``HEAD Want-Digest`` by python-requests.

Besides Rucio's own answers, each case checks the store itself: the final object holds the bytes,
no ``.rucio.upload`` object is left, and nothing remains after the deletion; and geofed's access log
shows the requests each protocol made.
"""

from __future__ import annotations

import os
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.infra.geofed_server import GeofedServer
from tests.infra.pki import Pki
from tests.infra.rucio import GFAL, WEBDAV, RucioClient, RucioRun, rse_settings
from tests.integration.grid_endpoints import (
    KINDS,
    AzureBackend,
    Backend,
    Logged,
    S3Backend,
    apache_backend,
    grid_settings,
    local_backend,
    log_mark,
    logged_since,
)
from tests.integration.grid_federation import Proxies, make_proxies

pytestmark = pytest.mark.integration

FEDERATED = "/rucio"
PROXY_PREFIX = "/proxy"
SCOPE = "user.test"
USER_DN = "/DC=org/DC=test/OU=Users/CN=Test User"
POLICY = [{"path": FEDERATED, "allow": ["all"], "to": [{"vo": "testvo"}]}]
FILE_BYTES = 96 * 1024


@dataclass(frozen=True)
class Protocol:
    impl: str
    proxy: dict[str, Any]  # geofed's proxy section
    rse_prefix: str  # the RSE protocol's prefix


PROTOCOLS = {
    "gfal": Protocol(GFAL, {}, FEDERATED + "/"),
    "webdav": Protocol(WEBDAV, {"user_agents": ["python-requests"]}, FEDERATED + "/"),
    "webdav-urlprefix": Protocol(WEBDAV, {"url_prefix": PROXY_PREFIX}, PROXY_PREFIX + FEDERATED + "/"),
}


@pytest.fixture(scope="module")
def proxies(grid_pki: Pki, tmp_path_factory: pytest.TempPathFactory) -> Proxies:
    return make_proxies(grid_pki, tmp_path_factory.mktemp("rucio-proxies"))


@pytest.fixture
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    kind: str = request.param
    if kind == "local":
        made: Backend = local_backend(tmp_path / "local-store", FEDERATED)
    elif kind == "webdav":
        made = apache_backend(request.getfixturevalue("apache_dav"), FEDERATED)
    elif kind == "s3":
        made = S3Backend("s3", FEDERATED, rgw=request.getfixturevalue("ceph_rgw"))
    else:
        made = AzureBackend("azure", FEDERATED, azurite=request.getfixturevalue("azurite"))
    yield made
    cleanup = getattr(made, "cleanup", None)
    if cleanup is not None:
        cleanup()


def hash_path(scope: str, name: str) -> str:
    """Rucio's ``hash`` lfn2pfn: ``scope/with/dots/as/slashes/<md5[0:2]>/<md5[2:4]>/name``."""
    import hashlib

    digest = hashlib.md5(f"{scope}:{name}".encode()).hexdigest()
    return f"{scope.replace('.', '/')}/{digest[0:2]}/{digest[2:4]}/{name}"


def adler32_hex(data: bytes) -> str:
    return f"{zlib.adler32(data) & 0xFFFFFFFF:08x}"


def sequence(entries: list[Logged], final: str) -> list[str]:
    """The requests under the RSE's area, with the final path shortened to ``…``."""
    return [e.brief(final) for e in entries if e.path.startswith(FEDERATED)]


@pytest.mark.parametrize("protocol", list(PROTOCOLS))
@pytest.mark.parametrize("backend", KINDS, indirect=True)
def test_rucio_upload_stat_download_delete(
    backend: Backend, protocol: str, grid_pki: Pki, proxies: Proxies, tmp_path: Path
) -> None:
    proto = PROTOCOLS[protocol]
    settings = grid_settings(grid_pki, [backend.mapping()], POLICY, proxy=proto.proxy)
    name = f"file_{uuid.uuid4().hex}.dat"
    final = f"{FEDERATED}/{hash_path(SCOPE, name)}"
    data = os.urandom(FILE_BYTES)
    source_dir = tmp_path / "source"
    source_dir.mkdir()
    (source_dir / name).write_bytes(data)
    dest = tmp_path / "download" / name
    dest.parent.mkdir()
    client = RucioClient(
        tmp_path / "rucio", proxies.voms.cert_path, grid_pki.ca_dir, grid_pki.ca.cert_path, timeout=120
    )
    lfn = {"scope": SCOPE, "name": name}

    with GeofedServer(settings) as fed:
        rse = rse_settings("127.0.0.1", fed.port, proto.rse_prefix, proto.impl)
        mark = log_mark(fed)
        first = client.run(
            rse,
            [
                {"op": "pfn", **lfn},
                {"op": "upload", **lfn, "source_dir": str(source_dir)},
                {"op": "exists", **lfn},
                {"op": "stat", **lfn},
                {"op": "digest", **lfn},
                {"op": "download", **lfn, "dest": str(dest)},
            ],
        )
        upload_log = logged_since(fed, mark)
        after_upload = {p: backend.stored(p) for p in (final, final + ".rucio.upload")}
        mark = log_mark(fed)
        second = client.run(
            rse,
            [{"op": "delete", **lfn}, {"op": "exists", "label": "exists_after_delete", **lfn}],
        )
        delete_log = logged_since(fed, mark)

    steps = sequence(upload_log + delete_log, final)
    print(f"\n{backend.kind} + {protocol}: geofed saw\n  " + "\n  ".join(steps))
    context = f"{first.report()}\n{second.report()}\ngeofed saw:\n  " + "\n  ".join(steps)
    check_cycle(first, second, proto, fed_port=fed.port, final=final, data=data, dest=dest, context=context)

    # the store itself: the final object, no temporary one; nothing after the deletion
    assert after_upload[final] == data, context
    assert after_upload[final + ".rucio.upload"] is None, context
    assert backend.stored(final) is None, context

    # what each protocol sent, from geofed's access log
    entries = [e for e in upload_log + delete_log if e.path.startswith(FEDERATED)]
    assert entries and all(e.identity == USER_DN for e in entries), context
    seen = {(e.method, e.path, e.status) for e in entries}
    assert ("MOVE", final + ".rucio.upload", 201) in seen, context
    assert ("DELETE", final, 204) in seen, context
    assert not any(e.method == "POST" for e in entries), "Rucio turns gfal2's macaroon request off"
    put = [e for e in entries if e.method == "PUT" and e.path == final + ".rucio.upload"]
    if proto.impl == WEBDAV:
        assert [(e.status, e.decision) for e in put] == [(201, "proxy-upload")], context
        assert ("PROPFIND", final + ".rucio.upload", 207) in seen, context
    else:
        expected = (201, "proxy-upload") if backend.kind == "azure" else (307, "redirect")
        assert [(e.status, e.decision) for e in put] == [expected], context
        assert ("HEAD", final + ".rucio.upload", 200) in seen, "gfal's stat asks for the checksum"


def check_cycle(
    first: RucioRun,
    second: RucioRun,
    proto: Protocol,
    *,
    fed_port: int,
    final: str,
    data: bytes,
    dest: Path,
    context: str,
) -> None:
    expected_adler = adler32_hex(data)
    pfn = first.value("pfn")
    assert pfn == f"https://127.0.0.1:{fed_port}{proto.rse_prefix.rstrip('/')}{final[len(FEDERATED) :]}"

    upload = first.value("upload")
    assert upload["result"]["success"] is True, context
    assert upload["lfn"]["adler32"] == expected_adler  # Rucio's own adler32 of the file
    assert first.value("exists") is True, context

    stat = first.value("stat")
    assert int(stat["filesize"]) == len(data), context
    if proto.impl == GFAL:
        # the checksum Rucio verified the upload with: geofed's, from HEAD Want-Digest
        assert stat["adler32"] == expected_adler, context
    else:
        assert set(stat) == {"filesize"}, "Rucio's webdav stat is a PROPFIND: size only"
    digest = first.value("digest")
    assert digest["status"] == 200, context
    assert digest["digest"] == f"ADLER32={expected_adler}", context

    first.value("download")
    assert dest.read_bytes() == data, context

    assert second.value("delete") is True, context
    assert second.value("exists_after_delete") is False, context
