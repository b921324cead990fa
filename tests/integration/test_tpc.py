"""WLCG HTTP third-party copy, end to end: the protocol against real WebDAV servers.

geofed does the copies itself (pull: ``COPY`` with ``Source``; push: ``COPY`` with ``Destination``)
between its endpoints (local, nginx WebDAV) and real WebDAV servers (Apache, nginx), driven by curl,
gfal2 (``ctx.filecopy`` in "3rd pull" and "3rd push" mode, no fallback to a streamed copy) and
davix-cp. Every response body is read the way davix reads it. Failures -- source missing, source
cut midway, destination refusing, destination down, destination cut midway, the client going away
-- must each end with a ``failure:`` line (or a cancelled copy), leave no object at the
destination, and leave geofed serving.

The copies between endpoint kinds (Ceph RGW, Azurite) are :mod:`tests.integration.test_tpc_cloud`;
the helpers both use are :mod:`tests.integration.tpc_support`. The misbehaving peers
(:mod:`tests.infra.tpc`) are small HTTP servers in this process.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from geofed.config import Settings
from geofed.transfer.engine import TransferEngine
from geofed.transfer.remote import client_ssl_context
from geofed.transfer.settings import TransferSettings
from tests.infra.geofed_server import GeofedServer
from tests.infra.pki import Credential, Pki
from tests.infra.servers import RunningServer
from tests.infra.tpc import closed_port_url, peer
from tests.integration.conftest import build_settings, endpoint_mapping
from tests.integration.grid_federation import GridLayout, make_layout
from tests.integration.tpc_support import (
    Answer,
    MiB,
    adler32,
    curl,
    curl_copy,
    gfal2,
    gfal_context,
    gfal_params,
    install_engine,
    no_leftovers,
    owned_by_worker,
    stats,
    still_serving,
    wait_for,
)

pytestmark = pytest.mark.integration


# -- a federation of a local directory and an nginx WebDAV server, next to Apache ---------------------


@dataclass
class Site:
    server: GeofedServer
    engine: TransferEngine
    disk: Path
    """The local endpoint's directory: federated /fed."""
    dav: Path
    """The nginx folder of federated /dav."""
    nginx: RunningServer
    apache: RunningServer
    run: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    def url(self, path: str) -> str:
        return self.server.url + quote(path)

    def remote_file(self, server: RunningServer, name: str, data: bytes | None = None) -> tuple[str, Path]:
        """(URL, path on disk) of a file at the top of a WebDAV server, outside the federation;
        written there first when ``data`` is given."""
        assert server.root is not None
        target = server.root / f"{self.run}-{name}"
        if data is not None:
            target.write_bytes(data)
            os.chmod(target, 0o644)
            owned_by_worker(target, server.root)
        return f"{server.url}/{self.run}-{name}", target

    def seed(self, name: str, data: bytes) -> Path:
        target = self.disk / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return target

    def copy(self, path: str, headers: dict[str, str], *extra: str) -> Answer:
        return curl_copy(self.url(path), headers, *extra)


def site_settings(disk: Path, dav_url: str, dav_folder: str, **sections: Any) -> Settings:
    return build_settings(
        endpoints=[
            endpoint_mapping("local", disk.as_uri(), name="disk", federated="/fed"),
            endpoint_mapping(
                "webdav", dav_url, name="dav", federated="/dav", endpoint_prefix=f"/{dav_folder}"
            ),
        ],
        **sections,
    )


@pytest.fixture
def site(nginx_dav: RunningServer, apache_dav: RunningServer, tmp_path: Path) -> Iterator[Site]:
    assert nginx_dav.root is not None and apache_dav.root is not None
    folder = uuid.uuid4().hex
    dav = nginx_dav.root / folder
    dav.mkdir()
    owned_by_worker(dav, nginx_dav.root)
    disk = tmp_path / "disk"
    disk.mkdir()
    with GeofedServer(site_settings(disk, nginx_dav.url, folder)) as server:
        result = Site(server, install_engine(server), disk, dav, nginx_dav, apache_dav)
        try:
            yield result
        finally:
            shutil.rmtree(dav, ignore_errors=True)
            for root in (nginx_dav.root, apache_dav.root):
                for leftover in root.glob(f"{result.run}-*"):
                    leftover.unlink(missing_ok=True)


# -- the protocol -----------------------------------------------------------------------------------


def test_options_lists_copy(site: Site) -> None:
    out = curl("-i", "-X", "OPTIONS", site.url("/fed"))
    allow = next(line for line in out.stdout.splitlines() if line.lower().startswith("allow:"))
    assert "COPY" in allow


def test_pull_from_nginx(site: Site) -> None:
    data = os.urandom(5 * MiB + 123)
    source, _ = site.remote_file(site.nginx, "src.bin", data)
    answer = site.copy(
        "/fed/pulled/file.bin", {"Source": source, "Credential": "none", "X-Number-Of-Streams": "1"}
    )
    assert answer.status == 202
    assert answer.headers["content-type"] == "text/plain"
    assert answer.headers["transfer-encoding"] == "chunked"
    reader = answer.reader
    assert reader.outcome == "success", answer.text
    assert reader.unknown == []
    assert reader.markers and all(m.count == 1 and m.index == 0 for m in reader.markers)
    assert b"\r\n" in answer.body
    assert (site.disk / "pulled/file.bin").read_bytes() == data
    # the checksums computed on the way are what geofed answers for the copy
    head = curl("-I", "-H", "Want-Digest: adler32", site.url("/fed/pulled/file.bin")).stdout
    assert f"adler32={adler32(data)}" in head.lower()
    assert "tpc-pull disk" in site.server.flush_access_log()


def test_copies_are_counted_in_the_metrics(site: Site) -> None:
    def scrape() -> dict[str, float]:
        text = curl(site.url("/_geofed/metrics")).stdout
        wanted = ("geofed_transfers_finished_total", "geofed_copied_bytes_total")
        values: dict[str, float] = {}
        for line in text.splitlines():
            if line.startswith(wanted):
                name_labels, value = line.rsplit(" ", 1)
                values[name_labels] = float(value)
        return values

    before = scrape()
    data = os.urandom(MiB + 7)
    source, _ = site.remote_file(site.nginx, "counted.bin", data)
    answer = site.copy("/fed/counted/file.bin", {"Source": source, "Credential": "none"})
    assert answer.reader.outcome == "success", answer.text
    after = scrape()
    ok = 'geofed_transfers_finished_total{result="ok"}'
    assert after.get(ok, 0) == before.get(ok, 0) + 1
    assert after["geofed_copied_bytes_total"] >= before.get("geofed_copied_bytes_total", 0) + len(data)


def test_markers_report_progress_at_the_interval(site: Site) -> None:
    engine = install_engine(
        site.server, bandwidth_limit=4 * MiB, marker_interval="200ms", chunk_size=256 * 1024
    )
    data = os.urandom(8 * MiB)
    source, _ = site.remote_file(site.nginx, "paced.bin", data)
    started = time.monotonic()
    answer = site.copy("/fed/paced.bin", {"Source": source})
    elapsed = time.monotonic() - started
    reader = answer.reader
    assert reader.outcome == "success", answer.text
    assert elapsed >= 0.9  # 4 MiB of burst, then 4 MiB at 4 MiB/s
    moved = [m.transferred for m in reader.markers]
    assert len(moved) >= 4
    assert moved == sorted(moved)
    assert any(0 < n < len(data) for n in moved)
    assert all(abs(m.latest - time.time()) < 60 for m in reader.markers)
    assert stats(site.server, engine)["bytes"] == len(data)


@pytest.mark.parametrize("server_name", ["apache", "nginx"])
def test_push_to_webdav_server(site: Site, server_name: str) -> None:
    server = site.apache if server_name == "apache" else site.nginx
    data = os.urandom(3 * MiB + 7)
    site.seed("push/me.bin", data)
    destination, stored = site.remote_file(server, "pushed.bin")
    answer = site.copy("/fed/push/me.bin", {"Destination": destination, "Credential": "none"})
    assert answer.reader.outcome == "success", answer.text
    assert stored.read_bytes() == data
    assert "tpc-push disk" in site.server.flush_access_log()


def test_empty_files_are_copied_both_ways(site: Site) -> None:
    source, _ = site.remote_file(site.nginx, "empty.bin", b"")
    pulled = site.copy("/fed/empty.bin", {"Source": source})
    assert pulled.reader.outcome == "success", pulled.text
    assert (site.disk / "empty.bin").read_bytes() == b""
    destination, stored = site.remote_file(site.apache, "empty-pushed.bin")
    pushed = site.copy("/fed/empty.bin", {"Destination": destination})
    assert pushed.reader.outcome == "success", pushed.text
    assert stored.read_bytes() == b""


def test_push_overwrite_false_refuses_an_existing_destination(site: Site) -> None:
    site.seed("keep.bin", b"new")
    destination, stored = site.remote_file(site.nginx, "kept.bin", b"old")
    answer = site.copy("/fed/keep.bin", {"Destination": destination, "Overwrite": "F", "Credential": "none"})
    assert answer.status == 412
    assert stored.read_bytes() == b"old"


def test_local_copy_between_endpoints_with_tpc_headers(site: Site) -> None:
    """gfal2 copying between two paths of one geofed: Source is geofed itself; no HTTP hop."""
    data = os.urandom(2 * MiB)
    site.seed("here.bin", data)
    answer = site.copy("/dav/there.bin", {"Source": site.url("/fed/here.bin"), "Credential": "none"})
    assert answer.reader.outcome == "success", answer.text
    assert (site.dav / "there.bin").read_bytes() == data
    answer = site.copy(
        "/dav/there.bin", {"Destination": site.url("/fed/back.bin"), "X-Number-Of-Streams": "1"}
    )
    assert answer.reader.outcome == "success", answer.text
    assert (site.disk / "back.bin").read_bytes() == data
    log = site.server.flush_access_log()
    assert "tpc-pull dav" in log and "tpc-local disk" in log
    assert "GET /fed/here.bin" not in log  # the bytes did not go through geofed's front door


def test_transfer_headers_are_forwarded_and_nothing_else(site: Site) -> None:
    data = os.urandom(100_000)
    with peer(files={"/f.bin": data}, required_token="s3cr3t") as remote:
        answer = site.copy(
            "/fed/token.bin",
            {
                "Source": remote.url + "/f.bin",
                "Credential": "none",
                "TransferHeaderAuthorization": "Bearer s3cr3t",
                "TransferHeaderX-Custom": "yes",
                "X-Custom-For-Geofed": "not forwarded",
            },
        )
        assert answer.reader.outcome == "success", answer.text
        assert (site.disk / "token.bin").read_bytes() == data
        _, sent = remote.seen("GET")[-1]
        names = {name.lower() for name in sent}
        assert sent["Authorization"] == "Bearer s3cr3t"
        assert sent["X-Custom"] == "yes"
        assert sent["User-Agent"].startswith("geofed/")
        assert not names & {"credential", "x-custom-for-geofed", "cookie", "x-number-of-streams", "source"}
        assert not any(n.startswith("transferheader") for n in names)
        refused = site.copy("/fed/token2.bin", {"Source": remote.url + "/f.bin", "Credential": "none"})
    assert refused.status == 202
    assert refused.reader.outcome == "failure"
    assert "401" in refused.reader.message
    assert not (site.disk / "token2.bin").exists()


def test_redirects_are_followed_without_the_token(site: Site) -> None:
    """A federation answering with a pre-signed URL elsewhere: the bearer token stays at home."""
    data = os.urandom(300_000)
    with peer(files={"/r.bin": data}) as store, peer(redirect_to=store.url) as federation:
        headers = {"Source": federation.url + "/r.bin", "TransferHeaderAuthorization": "Bearer tok"}
        answer = site.copy("/fed/redirected.bin", headers)
        assert answer.reader.outcome == "success", answer.text
        assert (site.disk / "redirected.bin").read_bytes() == data
        assert federation.seen("GET")[-1][1]["Authorization"] == "Bearer tok"
        assert "Authorization" not in store.seen("GET")[-1][1]
        # push: the PUT is redirected before any byte of the body was sent (Expect: 100-continue)
        site.seed("up.bin", data)
        answer = site.copy("/fed/up.bin", {"Destination": federation.url + "/put.bin"})
        assert answer.reader.outcome == "success", answer.text
        assert store.files["/put.bin"] == data


def test_source_checksum_is_verified(site: Site) -> None:
    data = os.urandom(200_000)
    with peer(files={"/c.bin": data}, digest={"/c.bin": "adler32=00000001"}) as remote:
        answer = site.copy("/fed/bad-sum.bin", {"Source": remote.url + "/c.bin"})
        assert answer.reader.outcome == "failure"
        assert "checksum mismatch" in answer.reader.message
        assert "adler32" in answer.reader.message
        assert no_leftovers(site.disk) == []
        unverified = site.copy(
            "/fed/unverified.bin", {"Source": remote.url + "/c.bin", "RequireChecksumVerification": "false"}
        )
        assert unverified.reader.outcome == "success", unverified.text
        remote.digest["/c.bin"] = f"adler32={adler32(data)}"
        verified = site.copy("/fed/verified.bin", {"Source": remote.url + "/c.bin"})
        assert verified.reader.outcome == "success", verified.text
    assert (site.disk / "verified.bin").read_bytes() == data


@pytest.mark.parametrize(
    ("path", "headers", "status", "message"),
    [
        ("/fed/x.bin", {}, 400, "needs a Source header"),
        (
            "/fed/x.bin",
            {"Source": "http://127.0.0.1:1/a", "Destination": "http://127.0.0.1:1/b"},
            400,
            "not both",
        ),
        ("/fed/x.bin", {"Source": "http://127.0.0.1:1/a", "Credential": "gridsite"}, 400, "delegation"),
        ("/fed/x.bin", {"Source": "ftp://127.0.0.1/a"}, 400, "http:// or https://"),
        ("/fed/x.bin", {"Source": "relative/path"}, 400, "absolute"),
        ("/fed/x.bin", {"Source": "http://127.0.0.1:1/a", "RequireChecksumVerification": "maybe"}, 400, ""),
        ("/fed/x.bin", {"Source": "http://127.0.0.1:1/a", "X-Number-Of-Streams": "many"}, 400, ""),
        ("/fed/x.bin", {"Source": "http://127.0.0.1:1/a", "Overwrite": "maybe"}, 400, ""),
        ("/fed/missing.bin", {"Destination": "http://127.0.0.1:1/b"}, 404, ""),
        ("/fed", {"Source": "http://127.0.0.1:1/a"}, 405, ""),
    ],
)
def test_bad_requests_are_refused_before_the_copy(
    site: Site, path: str, headers: dict[str, str], status: int, message: str
) -> None:
    answer = site.copy(path, headers)
    assert answer.status == status, answer.text
    assert message in answer.text
    assert "Perf Marker" not in answer.text


def test_delegation_refusal_message(site: Site) -> None:
    answer = site.copy("/fed/x.bin", {"Source": "http://127.0.0.1:1/a", "Credential": "gridsite"})
    assert (
        answer.text.strip()
        == "delegation is not supported; use Credential: none with TransferHeaderAuthorization"
    )


def test_overwrite_false_refuses_an_existing_destination(site: Site) -> None:
    site.seed("exists.bin", b"old")
    source, _ = site.remote_file(site.nginx, "new.bin", b"new")
    answer = site.copy("/fed/exists.bin", {"Source": source, "Overwrite": "F"})
    assert answer.status == 412
    assert (site.disk / "exists.bin").read_bytes() == b"old"
    answer = site.copy("/fed/exists.bin", {"Source": source, "Overwrite": "T"})
    assert answer.reader.outcome == "success"
    assert (site.disk / "exists.bin").read_bytes() == b"new"


def test_the_copy_privilege_is_needed(nginx_dav: RunningServer, tmp_path: Path) -> None:
    policy = {
        "policy": [
            {"path": "/fed", "allow": ["read", "list", "write", "modify", "delete"], "to": ["anyone"]},
            {"path": "/fed/copies", "allow": ["all"], "to": ["anyone"]},
        ]
    }
    disk = tmp_path / "disk"
    (disk / "copies").mkdir(parents=True)
    (disk / "plain.bin").write_bytes(b"x" * 100)
    settings = build_settings("local", disk.as_uri(), auth=policy)
    assert nginx_dav.root is not None
    source = nginx_dav.root / f"{uuid.uuid4().hex}.bin"
    source.write_bytes(b"y" * 100)
    os.chmod(source, 0o644)
    try:
        with GeofedServer(settings) as server:
            install_engine(server)
            refused = curl_copy(server.url + "/fed/nocopy.bin", {"Source": f"{nginx_dav.url}/{source.name}"})
            assert refused.status == 401, refused.text
            assert "copy" in refused.text
            pushed = curl_copy(
                server.url + "/fed/plain.bin", {"Destination": f"{nginx_dav.url}/{source.name}.x"}
            )
            assert pushed.status == 401
            allowed = curl_copy(
                server.url + "/fed/copies/ok.bin", {"Source": f"{nginx_dav.url}/{source.name}"}
            )
            assert allowed.reader.outcome == "success", allowed.text
            assert not (disk / "nocopy.bin").exists()
            assert (disk / "copies/ok.bin").read_bytes() == b"y" * 100
    finally:
        source.unlink(missing_ok=True)


def test_webdav_copy_inside_the_federation(site: Site) -> None:
    """A plain WebDAV COPY (no TPC header): done before the answer, RFC 4918 statuses."""
    data = os.urandom(1 * MiB)
    site.seed("a.bin", data)
    copy_to = {"Destination": site.url("/dav/b.bin")}
    assert site.copy("/fed/a.bin", copy_to).status == 201
    assert (site.dav / "b.bin").read_bytes() == data
    assert site.copy("/fed/a.bin", copy_to).status == 204
    assert site.copy("/fed/a.bin", {**copy_to, "Overwrite": "F"}).status == 412
    assert site.copy("/fed/a.bin", {"Destination": site.url("/fed/a.bin")}).status == 403
    site.seed("dir/inner.bin", b"1")
    assert site.copy("/fed/dir", {"Destination": site.url("/dav/dir2")}).status == 501
    assert site.copy("/fed/nothere.bin", copy_to).status == 404
    assert "copy dav" in site.server.flush_access_log()


def test_tpc_capable_endpoint_is_redirected_to(nginx_dav: RunningServer, tmp_path: Path) -> None:
    """An endpoint that does HTTP-TPC itself (here another geofed, as a WebDAV endpoint marked
    ``tpc``) is sent the COPY with a 307, and the client's COPY follows it there."""
    inner_disk = tmp_path / "inner"
    inner_disk.mkdir()
    (inner_disk / "there.bin").write_bytes(b"pushed by the inner geofed")
    assert nginx_dav.root is not None
    source = nginx_dav.root / f"{uuid.uuid4().hex}.bin"
    source.write_bytes(b"pulled by the inner geofed")
    os.chmod(source, 0o644)
    pushed = nginx_dav.root / f"{uuid.uuid4().hex}.bin"
    try:
        with GeofedServer(build_settings("local", inner_disk.as_uri())) as inner:
            install_engine(inner)
            outer_settings = build_settings(
                endpoints=[
                    endpoint_mapping(
                        "webdav", inner.url, name="inner", federated="/tpc", endpoint_prefix="/fed"
                    )
                ]
            )
            marked = outer_settings.endpoints[0].model_copy(update={"tpc": True})
            with GeofedServer(outer_settings.model_copy(update={"endpoints": (marked,)})) as outer:
                install_engine(outer)
                first = curl_copy(outer.url + "/tpc/pulled.bin", {"Source": f"{nginx_dav.url}/{source.name}"})
                assert first.status == 307
                assert first.headers["location"] == inner.url + "/fed/pulled.bin"
                followed = curl_copy(
                    outer.url + "/tpc/pulled.bin", {"Source": f"{nginx_dav.url}/{source.name}"}, "-L"
                )
                assert followed.reader.outcome == "success", followed.text
                assert (inner_disk / "pulled.bin").read_bytes() == b"pulled by the inner geofed"
                push = curl_copy(
                    outer.url + "/tpc/there.bin", {"Destination": f"{nginx_dav.url}/{pushed.name}"}, "-L"
                )
                assert push.reader.outcome == "success", push.text
                assert pushed.read_bytes() == b"pushed by the inner geofed"
                assert "tpc-redirect inner" in outer.flush_access_log()
                assert "tpc-pull store" in inner.flush_access_log()
    finally:
        source.unlink(missing_ok=True)
        pushed.unlink(missing_ok=True)


def test_concurrency_limit_queues_copies(site: Site) -> None:
    engine = install_engine(site.server, max_concurrent=1, bandwidth_limit=2 * MiB)
    sources = [site.remote_file(site.nginx, f"q{i}.bin", os.urandom(3 * MiB))[0] for i in range(2)]
    seen: list[dict[str, int]] = []
    answers: list[Answer] = []

    def run(i: int) -> None:
        answers.append(site.copy(f"/fed/q{i}.bin", {"Source": sources[i]}))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for thread in threads:
        thread.start()
    try:
        wait_for(
            lambda: seen.append(stats(site.server, engine)) or seen[-1]["queued"] == 1, what="a queued copy"
        )
        assert seen[-1]["running"] == 1
    finally:
        for thread in threads:
            thread.join(60)
    assert [a.reader.outcome for a in answers] == ["success", "success"]
    assert stats(site.server, engine)["succeeded"] == 2


# -- failures ---------------------------------------------------------------------------------------


def test_source_missing(site: Site) -> None:
    source, _ = site.remote_file(site.nginx, "absent.bin")
    answer = site.copy("/fed/from-absent.bin", {"Source": source, "Credential": "none"})
    assert answer.status == 202
    assert answer.reader.outcome == "failure"
    assert "404" in answer.reader.message
    assert no_leftovers(site.disk) == []
    still_serving(site.server)


def test_source_dropping_the_connection_midway(site: Site) -> None:
    data = os.urandom(6 * MiB)
    with peer(files={"/cut.bin": data}, cut_after=2 * MiB) as remote:
        answer = site.copy("/fed/cut.bin", {"Source": remote.url + "/cut.bin"})
    reader = answer.reader
    assert reader.outcome == "failure", answer.text
    assert "connection lost" in reader.message or "of 6291456 bytes" in reader.message
    assert no_leftovers(site.disk) == []
    still_serving(site.server)


def test_a_stalled_source_times_out(site: Site) -> None:
    engine = install_engine(site.server, idle_timeout="1s")
    with peer(files={"/stall.bin": os.urandom(MiB)}, slow_bytes_per_s=16 * 1024) as remote:
        started = time.monotonic()
        answer = site.copy("/fed/stalled.bin", {"Source": remote.url + "/stall.bin"})
    assert answer.reader.outcome == "failure", answer.text
    assert time.monotonic() - started < 10
    message = answer.reader.message.lower()
    assert "no progress for 1 s" in message or "timeout" in message
    assert no_leftovers(site.disk) == []
    assert stats(site.server, engine)["failed"] == 1


def test_max_duration_ends_a_slow_copy(site: Site) -> None:
    install_engine(site.server, bandwidth_limit=256 * 1024, chunk_size=64 * 1024, max_duration="1500ms")
    source, _ = site.remote_file(site.nginx, "too-slow.bin", os.urandom(2 * MiB))
    answer = site.copy("/fed/too-slow.bin", {"Source": source})
    assert answer.reader.outcome == "failure", answer.text
    assert "not finished within 1.5 s" in answer.reader.message
    assert any(m.transferred > 0 for m in answer.reader.markers)
    assert no_leftovers(site.disk) == []


def test_destination_refusing(site: Site) -> None:
    site.seed("refused.bin", os.urandom(MiB))
    with peer(refuse_put=403) as remote:
        answer = site.copy("/fed/refused.bin", {"Destination": remote.url + "/x.bin"})
        assert answer.reader.outcome == "failure", answer.text
        assert "403" in answer.reader.message
        assert remote.files == {} and remote.partial == {}
        assert remote.seen("DELETE") == []  # nothing reached it: nothing of ours to remove
    still_serving(site.server)


def test_destination_down(site: Site) -> None:
    site.seed("nowhere.bin", os.urandom(MiB))
    answer = site.copy("/fed/nowhere.bin", {"Destination": closed_port_url() + "/x.bin"})
    assert answer.reader.outcome == "failure", answer.text
    assert "cannot connect" in answer.reader.message
    still_serving(site.server)


def test_destination_dropping_the_connection_midway_is_cleaned_up(site: Site) -> None:
    site.seed("halfway.bin", os.urandom(8 * MiB))
    with peer(cut_put_after=1 * MiB) as remote:
        answer = site.copy("/fed/halfway.bin", {"Destination": remote.url + "/half.bin"})
        assert answer.reader.outcome == "failure", answer.text
        wait_for(lambda: remote.seen("DELETE") != [], what="the DELETE of the partial copy")
        assert remote.seen("DELETE")[0][0] == "/half.bin"
        assert remote.files == {}
    still_serving(site.server)


def test_client_going_away_cancels_the_copy(site: Site) -> None:
    engine = install_engine(site.server, bandwidth_limit=1 * MiB, chunk_size=256 * 1024)
    source, _ = site.remote_file(site.nginx, "long.bin", os.urandom(6 * MiB))
    command = [
        "curl",
        "--noproxy",
        "*",
        "-sS",
        "-N",
        "-X",
        "COPY",
        "-H",
        f"Source: {source}",
        site.url("/fed/gone.bin"),
    ]
    client = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        assert client.stdout is not None
        assert client.stdout.readline().startswith(b"Perf Marker")
        wait_for(lambda: stats(site.server, engine)["bytes"] > 0, what="bytes moving")
    finally:
        client.kill()
        client.wait(10)
    wait_for(lambda: stats(site.server, engine)["cancelled"] == 1, what="the copy to be cancelled")
    assert no_leftovers(site.disk) == []
    assert stats(site.server, engine)["running"] == 0
    still_serving(site.server)


def test_denied_networks_are_never_contacted(site: Site) -> None:
    """Link-local addresses (cloud metadata services) by default, and whatever the site adds."""
    metadata = site.copy("/fed/metadata.bin", {"Source": "http://169.254.169.254/latest/meta-data/"})
    assert metadata.reader.outcome == "failure"
    assert "may not connect" in metadata.reader.message
    with peer(redirect_to="http://169.254.169.254") as remote:
        redirected = site.copy("/fed/metadata.bin", {"Source": remote.url + "/x"})
    assert redirected.reader.outcome == "failure"
    assert "may not connect" in redirected.reader.message
    install_engine(site.server, deny_networks=["127.0.0.0/8", "::1/128"])
    data_source, _ = site.remote_file(site.nginx, "internal.bin", b"internal")
    by_name = site.copy("/fed/internal.bin", {"Source": data_source.replace("127.0.0.1", "localhost")})
    assert by_name.reader.outcome == "failure"
    assert "resolves only to addresses geofed may not connect to" in by_name.reader.message
    assert no_leftovers(site.disk) == []


# -- over HTTPS, with X509 proxies and tokens -------------------------------------------------------


def grid_copy(layout: GridLayout, url: str, headers: dict[str, str], cred: Credential | None) -> Answer:
    extra = ["--cacert", str(layout.pki.ca.cert_path)]
    if cred is not None:
        extra += ["--cert", str(cred.cert_path), "--key", str(cred.key_path)]
    return curl_copy(url, headers, *extra)


def test_copies_between_two_https_federations(grid_pki: Pki, tmp_path: Path) -> None:
    """geofed A pulls from and pushes to geofed B over HTTPS: B's certificate is verified with A's
    ``server.tls.ca_dir``; the client authenticates to A with an X509 proxy and hands A a token
    for B in ``TransferHeaderAuthorization``; the ``copy`` privilege decides at A."""
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    near, far = make_layout(grid_pki, tmp_path / "a"), make_layout(grid_pki, tmp_path / "b")
    data = os.urandom(MiB + 5)
    (far.store / "public" / "src.dat").write_bytes(data)
    (far.store / "tokens" / "run1").mkdir(parents=True)
    (far.store / "tokens" / "run1" / "secret.dat").write_bytes(data[::-1])
    (near.store / "testvo" / "local.dat").write_bytes(data)
    admin, member = near.proxies.admin, near.proxies.voms
    with GeofedServer(far.settings()) as b, GeofedServer(near.settings()) as a:
        install_engine(a)  # trusts the CA directory of A's server.tls
        public = b.url + "/fed/public/src.dat"
        answer = grid_copy(near, a.url + "/fed/testvo/pulled.dat", {"Source": public}, admin)
        assert answer.reader.outcome == "success", answer.text
        assert (near.store / "testvo" / "pulled.dat").read_bytes() == data
        # a testvo member may write there, but not copy
        refused = grid_copy(near, a.url + "/fed/testvo/member.dat", {"Source": public}, member)
        assert refused.status == 403 and "may not copy" in refused.text
        # the token for B goes to B, and only to B
        reader = far.issuer.mint(scope="storage.read:/run1")
        secret = b.url + "/fed/tokens/run1/secret.dat"
        headers = {"Source": secret, "Credential": "none", "TransferHeaderAuthorization": f"Bearer {reader}"}
        answer = grid_copy(near, a.url + "/fed/testvo/secret.dat", headers, admin)
        assert answer.reader.outcome == "success", answer.text
        assert (near.store / "testvo" / "secret.dat").read_bytes() == data[::-1]
        without = grid_copy(near, a.url + "/fed/testvo/secret2.dat", {"Source": secret}, admin)
        assert without.reader.outcome == "failure" and "401" in without.reader.message
        # push: B redirects the PUT (307) to its data route before the body is sent
        creator = far.issuer.mint(scope="storage.create:/run1")
        pushed = b.url + "/fed/tokens/run1/pushed.dat"
        headers = {"Destination": pushed, "TransferHeaderAuthorization": f"Bearer {creator}"}
        answer = grid_copy(near, a.url + "/fed/testvo/local.dat", headers, admin)
        assert answer.reader.outcome == "success", answer.text
        assert (far.store / "tokens" / "run1" / "pushed.dat").read_bytes() == data
        # without the test CA, B's certificate is not trusted
        engine = TransferEngine(TransferSettings(marker_interval=0.2), client_ssl_context())
        a.run(lambda: setattr(a.federation, "transfers", engine))
        untrusted = grid_copy(near, a.url + "/fed/testvo/untrusted.dat", {"Source": public}, admin)
        assert untrusted.reader.outcome == "failure"
        assert "certificate" in untrusted.reader.message.lower()
        assert not (near.store / "testvo" / "untrusted.dat").exists()


# -- gfal2 and davix ------------------------------------------------------------------------------


@pytest.fixture
def ctx() -> Any:
    return gfal_context()


def test_gfal2_pull_from_nginx(site: Site, ctx: Any) -> None:
    data = os.urandom(4 * MiB + 1)
    source, _ = site.remote_file(site.nginx, "gfal-src.bin", data)
    params = gfal_params(ctx, "3rd pull", adler32(data), gfal2.checksum_mode.target)
    ctx.filecopy(params, source, site.url("/fed/gfal/pulled.bin"))
    assert (site.disk / "gfal/pulled.bin").read_bytes() == data
    log = site.server.flush_access_log()
    assert "COPY /fed/gfal/pulled.bin 202 tpc-pull disk" in log
    assert "PUT /fed/gfal/pulled.bin" not in log  # not a streamed copy


def test_gfal2_push_to_apache(site: Site, ctx: Any) -> None:
    data = os.urandom(3 * MiB)
    site.seed("gfal/push.bin", data)
    destination, stored = site.remote_file(site.apache, "gfal-pushed.bin")
    params = gfal_params(ctx, "3rd push", adler32(data), gfal2.checksum_mode.source)
    ctx.filecopy(params, site.url("/fed/gfal/push.bin"), destination)
    assert stored.read_bytes() == data
    assert "COPY /fed/gfal/push.bin 202 tpc-push disk" in site.server.flush_access_log()


def test_gfal2_sees_a_failed_copy(site: Site, ctx: Any) -> None:
    """The source answers a HEAD but cuts its GET: gfal2 gets the failure line and says so."""
    with peer(files={"/t.bin": os.urandom(4 * MiB)}, cut_after=MiB) as remote:
        params = gfal_params(ctx, "3rd pull")
        with pytest.raises(gfal2.GError) as info:
            ctx.filecopy(params, remote.url + "/t.bin", site.url("/fed/gfal/never.bin"))
    assert "Transfer failed" in str(info.value) or "failure" in str(info.value)
    assert no_leftovers(site.disk / "gfal") == []
    assert "COPY /fed/gfal/never.bin 202 tpc-pull disk" in site.server.flush_access_log()


@pytest.mark.parametrize("mode", ["pull", "push"])
def test_davix_cp(site: Site, mode: str) -> None:
    data = os.urandom(2 * MiB)
    if mode == "pull":
        source, _ = site.remote_file(site.nginx, "davix-src.bin", data)
        destination, stored = site.url("/fed/davix.bin"), site.disk / "davix.bin"
    else:
        site.seed("davix-push.bin", data)
        source = site.url("/fed/davix-push.bin")
        destination, stored = site.remote_file(site.nginx, "davix-pushed.bin")
    done = subprocess.run(
        ["davix-cp", "--copy-mode", mode, source, destination],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert stored.read_bytes() == data
    assert f"tpc-{mode}" in site.server.flush_access_log()
