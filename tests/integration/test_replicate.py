"""Bulk replication: ``POST /_geofed/admin/replicate`` and ``geofed replicate``, end to end.

A real geofed (the full application on loopback) over a local endpoint ``disk`` (federated ``/fed``
and ``/elsewhere``) and a real Apache mod_dav_fs server ``apache`` (``/fed`` only, in a fresh folder
of its own); one test replicates to Ceph RGW (S3) as well. Files are put straight onto ``disk``,
replicated with the command line (click's runner, against the running server over HTTP), and the
bytes the destination server really stored are read from its own storage.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import shutil
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from geofed.cli import main
from geofed.config import Settings, settings_from_mapping
from tests.infra.ceph import CephCluster
from tests.infra.geofed_server import GeofedServer
from tests.infra.policies import OPEN_POLICY
from tests.infra.servers import WORKER_USER, RunningServer

pytestmark = pytest.mark.integration

ADMIN = "/_geofed/admin"
ADMIN_DN = "/DC=org/DC=test/CN=Operator"
OTHER_DN = "/DC=org/DC=test/CN=Somebody"
FILES = {
    "dir/a.bin": os.urandom(300_000),
    "dir/b.txt": b"bulk replication\n" * 100,
    "dir/empty": b"",
    "dir/sub/c.bin": os.urandom(1_200_000),
}


def adler32(data: bytes) -> str:
    return f"{zlib.adler32(data) & 0xFFFFFFFF:08x}"


@dataclass
class Answer:
    status: int
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def call(
    server: GeofedServer, method: str, path: str, body: Any = None, headers: dict[str, str] | None = None
) -> Answer:
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    try:
        data = json.dumps(body).encode() if body is not None else None
        sent = {"Content-Type": "application/json", **(headers or {})} if data is not None else headers or {}
        connection.request(method, path, body=data, headers=sent)
        response = connection.getresponse()
        return Answer(response.status, response.read())
    finally:
        connection.close()


def wait_for_job(server: GeofedServer, job: str, timeout: float = 60) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = call(server, "GET", f"{ADMIN}/replicate/{job}").json()
        if status["state"] != "running":
            return dict(status)
        time.sleep(0.1)
    raise AssertionError(f"job {job} still running after {timeout} s")


def replicate(server: GeofedServer, *args: str) -> Result:
    return CliRunner().invoke(main, ["replicate", *args, "--url", server.url])


def report(result: Result) -> dict[str, dict[str, str]]:
    """The sections of the text report: {section: {path: reason}}."""
    sections: dict[str, dict[str, str]] = {}
    section: dict[str, str] | None = None
    for line in result.stdout.splitlines()[1:]:
        if not line.startswith(" "):
            section = sections.setdefault(line.rstrip(":"), {})
            continue
        assert section is not None, result.stdout
        path, _, reason = line.strip().partition(": ")
        section[path] = reason
    return sections


def owned_by_worker(path: Path, root: Path) -> None:
    if os.geteuid() == 0:
        for item in (path, *[p for p in path.parents if root in p.parents]):
            shutil.chown(item, WORKER_USER, WORKER_USER)


# -- a local endpoint and Apache ---------------------------------------------------------------------


@dataclass
class Layout:
    server: GeofedServer
    disk: Path
    """The local endpoint's root: /fed is disk/fed, /elsewhere disk/elsewhere."""
    dav: Path
    """Apache's folder for /fed."""

    def seed(self, files: dict[str, bytes]) -> None:
        for name, data in files.items():
            target = self.disk / "fed" / name
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)


def layout_settings(disk: Path, dav_url: str, folder: str, **sections: Any) -> Settings:
    mapping: dict[str, Any] = {
        "server": {"host": "127.0.0.1", "port": 0},
        "signing": {"secret": secrets.token_urlsafe(24)},
        "auth": OPEN_POLICY,
        "health": {"interval": "60s", "timeout": "3s"},
        "federation": {"locate_timeout": "5s"},
        "endpoints": [
            {
                "name": "disk",
                "kind": "local",
                "url": disk.resolve().as_uri(),
                "writable": True,
                "prefixes": [
                    {"federated": "/fed", "endpoint": "/fed"},
                    {"federated": "/elsewhere", "endpoint": "/elsewhere"},
                ],
                "location": {"lat": 46.2, "lon": 6.1},
            },
            {
                "name": "apache",
                "kind": "webdav",
                "url": dav_url,
                "writable": True,
                "timeout": "10s",
                "prefixes": [{"federated": "/fed", "endpoint": f"/{folder}"}],
                "location": {"lat": 49.3, "lon": -123.1},
            },
        ],
        **sections,
    }
    return settings_from_mapping(mapping, environ={})


@pytest.fixture
def make_layout(apache_dav: RunningServer, tmp_path: Path) -> Iterator[Any]:
    assert apache_dav.root is not None
    folders: list[Path] = []

    def make(**sections: Any) -> tuple[Settings, Path, Path]:
        folder = uuid.uuid4().hex
        dav = apache_dav.root / folder  # type: ignore[operator]
        dav.mkdir()
        owned_by_worker(dav, apache_dav.root)  # type: ignore[arg-type]
        folders.append(dav)
        disk = tmp_path / f"disk-{len(folders)}"
        (disk / "fed").mkdir(parents=True)
        (disk / "elsewhere").mkdir()
        return layout_settings(disk, apache_dav.url, folder, **sections), disk, dav

    try:
        yield make
    finally:
        for folder in folders:
            shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def layout(make_layout: Any) -> Iterator[Layout]:
    settings, disk, dav = make_layout()
    with GeofedServer(settings) as server:
        yield Layout(server, disk, dav)


def test_replicate_copies_every_file_then_skips_them(layout: Layout) -> None:
    layout.seed(FILES)
    first = replicate(layout.server, "/fed/dir", "--recursive", "--to", "apache", "--parallel", "3")
    assert first.exit_code == 0, first.output
    summary = first.stdout.splitlines()[0]
    assert summary.startswith("replicate to apache: 4 done, 0 skipped, 0 failed;"), first.stdout
    done = report(first)["done"]
    assert set(done) == {f"/fed/{name}" for name in FILES}
    for name, data in FILES.items():
        assert (layout.dav / name).read_bytes() == data  # what Apache really stored
        assert done[f"/fed/{name}"] == f"copied from disk ({len(data)} bytes, adler32 {adler32(data)})"

    again = replicate(layout.server, "/fed/dir", "--recursive", "--to", "apache")
    assert again.exit_code == 0, again.output
    assert again.stdout.startswith("replicate to apache: 0 done, 4 skipped, 0 failed;"), again.stdout
    skipped = report(again)["skipped"]
    assert skipped == {f"/fed/{name}": "already present, adler32 matches" for name in FILES}

    # without --recursive: the files directly in the collection only
    flat = replicate(layout.server, "/fed/dir", "--to", "apache")
    assert flat.exit_code == 0, flat.output
    assert set(report(flat)["skipped"]) == {"/fed/dir/a.bin", "/fed/dir/b.txt", "/fed/dir/empty"}


def test_a_corrupted_or_truncated_replica_is_copied_again(layout: Layout, tmp_path: Path) -> None:
    layout.seed(FILES)
    assert replicate(layout.server, "/fed/dir", "-r", "--to", "apache").exit_code == 0
    # same size, other bytes, written behind geofed's back (the stored checksum's stamp is stale)
    corrupted = layout.dav / "dir/sub/c.bin"
    good = FILES["dir/sub/c.bin"]
    bad = bytes(b ^ 0xFF for b in good[:4096]) + good[4096:]
    with corrupted.open("r+b") as handle:
        handle.write(bad[:4096])
    later = time.time() + 5
    os.utime(corrupted, (later, later))
    truncated = layout.dav / "dir/b.txt"
    truncated.write_bytes(FILES["dir/b.txt"][:10])

    paths = tmp_path / "paths.txt"
    paths.write_text("# what to check\n/fed/dir/sub/c.bin\n\n/fed/dir/b.txt\n/fed/dir/a.bin\n")
    result = replicate(layout.server, "--from-file", str(paths), "--to", "apache")
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("replicate to apache: 2 done, 1 skipped, 0 failed;"), result.stdout
    sections = report(result)
    assert sections["skipped"] == {"/fed/dir/a.bin": "already present, adler32 matches"}
    recopied = sections["done"]["/fed/dir/sub/c.bin"]
    assert recopied.startswith(
        f"re-copied from disk: the replica on apache differs (adler32 {adler32(bad)} there, "
        f"{adler32(good)} on disk); overwritten"
    ), recopied
    assert sections["done"]["/fed/dir/b.txt"].startswith(
        f"re-copied from disk: the replica on apache has 10 bytes, the one on disk {len(FILES['dir/b.txt'])}"
    )
    assert corrupted.read_bytes() == good
    assert truncated.read_bytes() == FILES["dir/b.txt"]


def test_failures_are_reported_with_their_reasons(layout: Layout) -> None:
    layout.seed({"dir/a.bin": FILES["dir/a.bin"]})
    (layout.disk / "elsewhere" / "x.txt").write_bytes(b"not for apache\n")
    result = replicate(layout.server, "/elsewhere/x.txt", "/fed/dir/a.bin", "/fed/nowhere", "--to", "apache")
    assert result.exit_code == 1, result.output
    assert result.stdout.startswith("replicate to apache: 1 done, 0 skipped, 2 failed;"), result.stdout
    assert report(result)["failed"] == {
        "/elsewhere/x.txt": "endpoint apache does not serve this path",
        "/fed/nowhere": "no such file or collection",
    }
    assert (layout.dav / "dir/a.bin").read_bytes() == FILES["dir/a.bin"]

    unknown = replicate(layout.server, "/fed/dir", "--to", "tape")
    assert unknown.exit_code == 1
    assert "400 no endpoint named 'tape' (configured: disk, apache)" in unknown.output
    assert replicate(layout.server, "--to", "apache").exit_code == 2  # no path at all

    # the JSON report: every item with its reason
    document = json.loads(replicate(layout.server, "/fed/dir", "--to", "apache", "--json").stdout)
    assert document["state"] == "finished" and document["counts"]["skipped"] == 1
    assert document["skipped"] == [{"path": "/fed/dir/a.bin", "reason": "already present, adler32 matches"}]


def test_the_progress_api(make_layout: Any) -> None:
    # slow copies (64 KiB/s, in 64 KiB chunks) so that a job is seen while it copies
    settings, disk, dav = make_layout(transfer={"bandwidth_limit": 65536, "chunk_size": 65536})
    big = os.urandom(256 * 1024)
    with GeofedServer(settings) as server:
        layout = Layout(server, disk, dav)
        layout.seed({"slow/big.bin": big, "slow/small.txt": b"small\n", "cancel/big.bin": big})
        body = {"paths": ["/fed/slow/"], "to": "apache", "recursive": True, "parallel": 2}
        started = call(server, "POST", f"{ADMIN}/replicate", body)
        assert started.status == 202, started.body
        job = started.json()["id"]
        assert started.json() == {"id": job, "new": True, "status": f"{ADMIN}/replicate/{job}"}
        again = call(server, "POST", f"{ADMIN}/replicate", body)  # the same job, still running
        assert again.status == 200 and again.json()["id"] == job and again.json()["new"] is False

        deadline = time.monotonic() + 20
        while True:
            status = call(server, "GET", f"{ADMIN}/replicate/{job}?items=0").json()
            moving = [c for c in status["current"] if c["bytes"] > 0]
            if moving or time.monotonic() > deadline:
                break
            time.sleep(0.05)
        assert moving, status
        assert moving[0] == {
            "path": "/fed/slow/big.bin",
            "action": "copying",
            "from": "disk",
            "bytes": moving[0]["bytes"],
            "size": len(big),
        }
        assert 0 < moving[0]["bytes"] < len(big)
        assert status["state"] == "running" and "done" not in status  # ?items=0: counts only
        assert status["request"] == {
            "paths": ["/fed/slow"],
            "to": "apache",
            "recursive": True,
            "parallel": 2,
        }
        assert status["counts"]["found"] == 2 and status["bytes"]["found"] == len(big) + 6

        final = wait_for_job(server, job)
        assert final["counts"] == {
            "found": 2,
            "done": 2,
            "skipped": 0,
            "failed": 0,
            "handled": 2,
            "pending": 0,
        }
        assert final["bytes"]["copied"] == len(big) + 6
        assert final["current"] == [] and final["walking"] is False and final["ended"] is not None
        assert {item["path"]: (item["from"], item["adler32"]) for item in final["done"]} == {
            "/fed/slow/big.bin": ("disk", adler32(big)),
            "/fed/slow/small.txt": ("disk", adler32(b"small\n")),
        }
        assert final["skipped"] == [] and final["failed"] == []
        assert (dav / "slow/big.bin").read_bytes() == big

        # cancelling a job stops its copy and leaves nothing half-written on the destination
        job = call(server, "POST", f"{ADMIN}/replicate", {"paths": ["/fed/cancel/big.bin"], "to": "apache"})
        job_id = job.json()["id"]
        deadline = time.monotonic() + 20
        while not any(
            c["bytes"] for c in call(server, "GET", f"{ADMIN}/replicate/{job_id}").json()["current"]
        ):
            assert time.monotonic() < deadline, "the copy did not start"
            time.sleep(0.05)
        cancelled = call(server, "POST", f"{ADMIN}/replicate/{job_id}/cancel")
        assert cancelled.status == 200 and cancelled.json()["state"] == "cancelled", cancelled.body
        assert cancelled.json()["counts"]["done"] == 0
        leftovers = (
            [p for p in (dav / "cancel").rglob("*") if p.is_file()] if (dav / "cancel").exists() else []
        )
        assert leftovers == []  # neither the file nor a temporary upload

        assert call(server, "GET", f"{ADMIN}/replicate/nope").status == 404
        assert call(server, "GET", f"{ADMIN}/replicate").status == 405
        assert call(server, "POST", f"{ADMIN}/replicate", {"paths": [], "to": "apache"}).status == 400
        bad = call(server, "POST", f"{ADMIN}/replicate", {"paths": ["/fed/../x"], "to": "apache"})
        assert bad.status == 400 and "'..' in the path" in bad.json()["error"]
        bad = call(server, "POST", f"{ADMIN}/replicate", {"paths": ["/fed"], "to": "apache", "parallel": 0})
        assert bad.status == 400 and '"parallel"' in bad.json()["error"]


def test_only_administrators_may_replicate(make_layout: Any) -> None:
    auth = {
        "identity_headers": {"trusted": ["127.0.0.1/32"], "dn": "X-SSL-Client-S-DN"},
        "policy": [
            {"path": "/", "allow": ["all"], "to": [{"dn": ADMIN_DN}]},
            {"path": "/fed", "allow": ["all"], "to": [{"dn": OTHER_DN}]},
            {"path": "/", "allow": ["read", "list"], "to": ["anyone"]},
        ],
    }
    settings, disk, dav = make_layout(auth=auth)
    with GeofedServer(settings) as server:
        Layout(server, disk, dav).seed({"dir/a.bin": b"abc"})
        body = {"paths": ["/fed/dir"], "to": "apache"}

        def as_dn(dn: str) -> dict[str, str]:
            return {"X-SSL-Client-S-DN": dn, "X-SSL-Client-Verify": "SUCCESS"}

        anonymous = call(server, "POST", f"{ADMIN}/replicate", body)
        assert anonymous.status == 401 and "authentication required" in anonymous.json()["error"]
        other = call(server, "POST", f"{ADMIN}/replicate", body, as_dn(OTHER_DN))
        assert other.status == 403 and "is not an administrator" in other.json()["error"]
        allowed = call(server, "POST", f"{ADMIN}/replicate", body, as_dn(ADMIN_DN))
        assert allowed.status == 202, allowed.body
        job = allowed.json()["id"]
        assert call(server, "GET", f"{ADMIN}/replicate/{job}").status == 401
        assert call(server, "GET", f"{ADMIN}/replicate/{job}", headers=as_dn(OTHER_DN)).status == 403
        assert call(server, "POST", f"{ADMIN}/replicate/{job}/cancel", headers=as_dn(OTHER_DN)).status == 403

        refused = replicate(server, "/fed/dir", "--to", "apache")
        assert refused.exit_code == 1 and "401 authentication required" in refused.output


# -- to Ceph RGW (S3) --------------------------------------------------------------------------------


def test_replicate_to_rgw(ceph_rgw: CephCluster, tmp_path: Path) -> None:
    site = ceph_rgw.sites["cern"]
    prefix = f"replicate-{uuid.uuid4().hex[:10]}"
    disk = tmp_path / "disk"
    (disk / "fed").mkdir(parents=True)
    settings = settings_from_mapping(
        {
            "server": {"host": "127.0.0.1", "port": 0},
            "signing": {"secret": secrets.token_urlsafe(24)},
            "auth": OPEN_POLICY,
            "health": {"interval": "60s", "timeout": "3s"},
            "endpoints": [
                {"name": "disk", "kind": "local", "url": disk.resolve().as_uri(), "writable": True},
                {
                    "name": "rgw",
                    "kind": "s3",
                    "url": site.url,
                    "bucket": site.bucket,
                    "credentials": {"access_key": site.access_key, "secret_key": site.secret_key},
                    "writable": True,
                    "timeout": "20s",
                    "prefixes": [{"federated": "/fed", "endpoint": f"/{prefix}"}],
                },
            ],
        },
        environ={},
    )
    s3 = ceph_rgw.client(site.access_key, site.secret_key, site.url)
    with GeofedServer(settings) as server:
        Layout(server, disk, tmp_path).seed(FILES)
        first = replicate(server, "/fed/dir", "--recursive", "--to", "rgw")
        assert first.exit_code == 0, first.output
        assert first.stdout.startswith("replicate to rgw: 4 done, 0 skipped, 0 failed;"), first.stdout
        for name, data in FILES.items():
            stored = s3.get_object(Bucket=site.bucket, Key=f"{prefix}/{name}")["Body"].read()
            assert stored == data, name
        again = replicate(server, "/fed/dir", "--recursive", "--to", "rgw")
        assert again.exit_code == 0, again.output
        assert again.stdout.startswith("replicate to rgw: 0 done, 4 skipped, 0 failed;"), again.stdout
        assert set(report(again)["skipped"].values()) == {"already present, adler32 matches"}
    for name in FILES:
        s3.delete_object(Bucket=site.bucket, Key=f"{prefix}/{name}")
