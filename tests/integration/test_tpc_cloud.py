"""WLCG HTTP third-party copy between endpoint kinds: Ceph RGW, Azurite, nginx WebDAV, local.

The :class:`Cloud` federation (module-scoped: starting Ceph and Azurite is slow) maps one endpoint
of each kind; the tests copy across kinds with gfal2 and curl, check that a failed or abandoned
copy leaves no object and no multipart upload in RGW, that a large copy runs in flat memory, and
that a copy inside one S3 endpoint is done by the store itself. Split from
:mod:`tests.integration.test_tpc` (the protocol against WebDAV servers) because it needs the cloud
services and their fixture; the shared helpers are :mod:`tests.integration.tpc_support`.
"""

from __future__ import annotations

import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from geofed.config import Settings
from geofed.transfer.engine import TransferEngine
from tests.infra.azurite import AzuriteServer
from tests.infra.ceph import CephCluster
from tests.infra.geofed_server import GeofedServer
from tests.infra.servers import RunningServer
from tests.infra.tpc import peer
from tests.integration.conftest import build_settings, endpoint_mapping
from tests.integration.tpc_support import (
    MiB,
    adler32,
    curl,
    curl_copy,
    gfal2,
    gfal_context,
    gfal_params,
    install_engine,
    owned_by_worker,
    stats,
    still_serving,
    wait_for,
)

pytestmark = pytest.mark.integration


@pytest.fixture
def ctx() -> Any:
    return gfal_context()


# -- between endpoint kinds: Ceph RGW, Azurite, nginx, local -------------------------------------------


@dataclass
class Cloud:
    server: GeofedServer
    engine: TransferEngine
    rgw: CephCluster
    azurite: AzuriteServer
    disk: Path
    dav: Path
    run: str

    def url(self, path: str) -> str:
        return self.server.url + quote(path)

    def s3(self) -> Any:
        site = self.rgw.sites["cern"]
        return self.rgw.client(site.access_key, site.secret_key)

    def s3_key(self, name: str) -> str:
        return f"{self.run}/{name}"

    def s3_get(self, name: str) -> bytes | None:
        client = self.s3()
        try:
            return bytes(
                client.get_object(Bucket=self.rgw.sites["cern"].bucket, Key=self.s3_key(name))["Body"].read()
            )
        except client.exceptions.NoSuchKey:
            return None

    def s3_put(self, name: str, data: bytes) -> None:
        self.s3().put_object(Bucket=self.rgw.sites["cern"].bucket, Key=self.s3_key(name), Body=data)

    def collect_garbage(self) -> None:
        """Free deleted objects' data now: RGW's GC would wait hours, and the OSD keeps it in RAM."""
        admin = shutil.which("radosgw-admin") or "/usr/bin/radosgw-admin"
        command = [admin, "-c", str(self.rgw.conf), "gc", "process", "--include-all"]
        subprocess.run(command, env=self.rgw.env(), capture_output=True, timeout=120, check=False)

    def s3_uploads(self) -> list[str]:
        """Multipart uploads left in the bucket under this run."""
        answer = self.s3().list_multipart_uploads(Bucket=self.rgw.sites["cern"].bucket, Prefix=self.run + "/")
        return [u["Key"] for u in answer.get("Uploads", [])]

    def azure_put(self, name: str, data: bytes) -> None:
        with self.azurite.service_client(self.azurite.containers["fed-a"]) as service:
            service.get_blob_client("fed-a", f"{self.run}/{name}").upload_blob(data, overwrite=True)

    def azure_get(self, name: str) -> bytes | None:
        from azure.core.exceptions import ResourceNotFoundError

        account = self.azurite.containers["fed-a"]
        with self.azurite.service_client(account) as service:
            try:
                return bytes(service.get_blob_client("fed-a", f"{self.run}/{name}").download_blob().readall())
            except ResourceNotFoundError:
                return None


def cloud_settings(rgw: CephCluster, azurite: AzuriteServer, disk: Path, dav_url: str, run: str) -> Settings:
    site = rgw.sites["cern"]
    account = azurite.containers["fed-a"]
    return build_settings(
        endpoints=[
            endpoint_mapping(
                "s3",
                site.url,
                name="rgw",
                federated="/rgw",
                endpoint_prefix=f"/{run}",
                bucket=site.bucket,
                credentials={"access_key": site.access_key, "secret_key": site.secret_key},
            ),
            endpoint_mapping(
                "azure",
                azurite.account_url(account),
                name="azure",
                federated="/azure",
                endpoint_prefix=f"/{run}",
                account=account,
                container="fed-a",
                credentials={"account_key": azurite.accounts[account]},
            ),
            endpoint_mapping("local", disk.as_uri(), name="disk", federated="/disk"),
            endpoint_mapping("webdav", dav_url, name="dav", federated="/dav", endpoint_prefix=f"/{run}"),
        ]
    )


@pytest.fixture(scope="module")
def cloud(ceph_rgw: CephCluster, azurite: AzuriteServer, nginx_dav: RunningServer) -> Iterator[Cloud]:
    run = uuid.uuid4().hex[:12]
    base = Path(tempfile.mkdtemp(prefix="geofed-tpc-cloud-"))
    disk = base / "disk"
    disk.mkdir()
    assert nginx_dav.root is not None
    dav = nginx_dav.root / run
    dav.mkdir()
    owned_by_worker(dav, nginx_dav.root)
    try:
        with GeofedServer(cloud_settings(ceph_rgw, azurite, disk, nginx_dav.url, run)) as server:
            yield Cloud(server, install_engine(server), ceph_rgw, azurite, disk, dav, run)
    finally:
        shutil.rmtree(base, ignore_errors=True)
        shutil.rmtree(dav, ignore_errors=True)


@pytest.mark.parametrize(
    ("source", "destination"),
    [("rgw", "azure"), ("dav", "rgw"), ("disk", "rgw"), ("azure", "dav")],
)
def test_gfal2_copies_between_endpoint_kinds(cloud: Cloud, ctx: Any, source: str, destination: str) -> None:
    data = os.urandom(3 * MiB + 17)
    name = f"kinds-{source}-{destination}.bin"
    if source == "rgw":
        cloud.s3_put(name, data)
    elif source == "dav":
        (cloud.dav / name).write_bytes(data)
        os.chmod(cloud.dav / name, 0o644)
    elif source == "disk":
        (cloud.disk / name).write_bytes(data)
    else:
        cloud.azure_put(name, data)
    params = gfal_params(ctx, "3rd pull", adler32(data), gfal2.checksum_mode.both)
    ctx.filecopy(params, cloud.url(f"/{source}/{name}"), cloud.url(f"/{destination}/{name}"))
    if destination == "rgw":
        assert cloud.s3_get(name) == data
    elif destination == "azure":
        assert cloud.azure_get(name) == data
    else:
        assert (cloud.dav / name).read_bytes() == data
    log = cloud.server.flush_access_log()
    assert f"COPY /{destination}/{name} 202 tpc-pull {destination}" in log


def test_gfal2_push_between_endpoint_kinds(cloud: Cloud, ctx: Any) -> None:
    data = os.urandom(2 * MiB)
    (cloud.disk / "push-kinds.bin").write_bytes(data)
    params = gfal_params(ctx, "3rd push", adler32(data), gfal2.checksum_mode.both)
    ctx.filecopy(params, cloud.url("/disk/push-kinds.bin"), cloud.url("/rgw/push-kinds.bin"))
    assert cloud.s3_get("push-kinds.bin") == data
    assert "COPY /disk/push-kinds.bin 202 tpc-local rgw" in cloud.server.flush_access_log()


def test_source_cut_midway_leaves_no_object_in_rgw(cloud: Cloud) -> None:
    data = os.urandom(40 * MiB)
    with peer(files={"/big.bin": data}, cut_after=30 * MiB) as remote:
        answer = curl_copy(cloud.url("/rgw/cut.bin"), {"Source": remote.url + "/big.bin"})
    assert answer.reader.outcome == "failure", answer.text
    assert cloud.s3_get("cut.bin") is None
    wait_for(lambda: cloud.s3_uploads() == [], what="the multipart upload to be aborted")
    still_serving(cloud.server, "/disk")


def test_client_going_away_aborts_the_multipart_upload(cloud: Cloud) -> None:
    engine = install_engine(cloud.server, bandwidth_limit=16 * MiB)
    (cloud.disk / "slow.bin").write_bytes(os.urandom(96 * MiB))
    command = [
        "curl",
        "--noproxy",
        "*",
        "-sS",
        "-N",
        "-X",
        "COPY",
        "-H",
        f"Source: {cloud.url('/disk/slow.bin')}",
    ]
    client = subprocess.Popen(
        [*command, cloud.url("/rgw/slow.bin")], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    )
    try:
        wait_for(lambda: stats(cloud.server, engine)["bytes"] > 40 * MiB, what="some parts uploaded")
        assert cloud.s3_uploads() != []  # a multipart upload is under way
    finally:
        client.kill()
        client.wait(10)
    wait_for(lambda: stats(cloud.server, engine)["cancelled"] == 1, what="the copy to be cancelled")
    wait_for(lambda: cloud.s3_uploads() == [], what="the multipart upload to be aborted")
    assert cloud.s3_get("slow.bin") is None
    (cloud.disk / "slow.bin").unlink()
    install_engine(cloud.server)


def _rss_sampler() -> tuple[threading.Event, list[int]]:
    """Sample this process's resident set size (kB) every 20 ms until the event is set."""
    stop = threading.Event()
    samples: list[int] = []

    def sample() -> None:
        while not stop.is_set():
            for line in Path("/proc/self/status").read_text().splitlines():
                if line.startswith("VmRSS:"):
                    samples.append(int(line.split()[1]))
            time.sleep(0.02)

    threading.Thread(target=sample, daemon=True).start()
    return stop, samples


def test_large_copy_to_rgw_in_flat_memory(cloud: Cloud) -> None:
    """300 MB from the local endpoint to RGW (a multipart upload of 16 MiB parts) through geofed,
    which runs in this process: its resident memory may not grow with the file."""
    size = 300 * 1000 * 1000
    md5, adler = hashlib.md5(), 1
    with (cloud.disk / "large.bin").open("wb") as out:
        remaining = size
        while remaining:
            block = os.urandom(min(4 * MiB, remaining))
            md5.update(block)
            adler = zlib.adler32(block, adler)
            out.write(block)
            remaining -= len(block)
    stop, samples = _rss_sampler()
    time.sleep(0.2)
    try:
        started = time.monotonic()
        answer = curl_copy(cloud.url("/rgw/large.bin"), {"Source": cloud.url("/disk/large.bin")}, timeout=300)
        elapsed = time.monotonic() - started
    finally:
        stop.set()
    assert answer.reader.outcome == "success", answer.text
    growth_mib = (max(samples) - samples[0]) / 1024
    rate = size / elapsed / 1e6
    print(f"\n300 MB local -> RGW: {elapsed:.1f} s ({rate:.0f} MB/s), RSS growth {growth_mib:.0f} MiB")
    assert growth_mib < 100, f"geofed's memory grew by {growth_mib:.0f} MiB"
    head = cloud.s3().head_object(Bucket=cloud.rgw.sites["cern"].bucket, Key=cloud.s3_key("large.bin"))
    assert head["ContentLength"] == size
    assert "-" in head["ETag"]  # a multipart upload
    assert head["Metadata"]["geofed-md5"] == md5.hexdigest()
    assert head["Metadata"]["geofed-adler32"] == f"{adler:08x}"
    digest = curl("-I", "-H", "Want-Digest: adler32", cloud.url("/rgw/large.bin")).stdout.lower()
    assert f"adler32={adler:08x}" in digest
    body = cloud.s3().get_object(Bucket=cloud.rgw.sites["cern"].bucket, Key=cloud.s3_key("large.bin"))["Body"]
    check = hashlib.md5()
    for chunk in iter(lambda: body.read(4 * MiB), b""):
        check.update(chunk)
    assert check.hexdigest() == md5.hexdigest()
    (cloud.disk / "large.bin").unlink()
    cloud.s3().delete_object(Bucket=cloud.rgw.sites["cern"].bucket, Key=cloud.s3_key("large.bin"))
    cloud.collect_garbage()


@pytest.mark.parametrize("how", ["webdav", "tpc"])
def test_copy_inside_one_s3_endpoint_is_done_by_the_store(
    cloud: Cloud, how: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Both ends on the same RGW endpoint: CopyObject, no byte through geofed; the object's
    sealed checksums travel with it and are still reported at the destination."""
    caplog.set_level(logging.INFO, logger="geofed.transfer")
    data = os.urandom(2 * MiB + 5)
    source, target = f"same-{how}-a.bin", f"same-{how}-b.bin"
    cloud.s3_put(source, data)
    head = curl("-sI", "-H", "Want-Digest: adler32", cloud.url(f"/rgw/{source}")).stdout  # compute + seal
    assert f"adler32={adler32(data)}" in head
    headers = {"Destination": cloud.url(f"/rgw/{target}")}
    if how == "tpc":
        headers["Credential"] = "none"
    answer = cloud.copy(f"/rgw/{source}", headers) if hasattr(cloud, "copy") else None
    if answer is None:
        extra = [arg for name, value in headers.items() for arg in ("-H", f"{name}: {value}")]
        done = curl(
            "-sS", "-X", "COPY", *extra, "-o", "-", "-w", "\n%{http_code}", cloud.url(f"/rgw/{source}")
        )
        body, status = done.stdout.rsplit("\n", 1)
        assert status == ("202" if how == "tpc" else "201"), done.stdout
        if how == "tpc":
            assert body.rstrip().endswith("success: Created"), body
    assert cloud.s3_get(target) == data
    assert any("server-side copy" in r.getMessage() for r in caplog.records), [
        r.getMessage() for r in caplog.records
    ]
    head = curl("-sI", "-H", "Want-Digest: adler32", cloud.url(f"/rgw/{target}")).stdout
    assert f"adler32={adler32(data)}" in head
