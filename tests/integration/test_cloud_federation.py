"""End to end through geofed over real object stores: three S3 sites on Ceph RGW and two Azure
accounts on Azurite, mixed with a local directory and an nginx WebDAV server in one namespace.
Real clients (curl, davix, gfal2) read, write (small and multipart), stat, list and delete; the
stores themselves check every signature geofed hands out."""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import tempfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest

from tests.infra.azurite import AzuriteServer
from tests.infra.ceph import CephCluster
from tests.infra.geofed_server import GeofedServer
from tests.infra.servers import RunningServer
from tests.integration.cloud_sites import (
    AZURE_SITES,
    CITIES,
    S3_SITES,
    CloudFederation,
    build_geoip,
    client_ip,
    run,
)
from tests.integration.federation_sites import curl, redirect_of

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def cloud(
    ceph_rgw: CephCluster, azurite: AzuriteServer, nginx_dav: RunningServer
) -> Iterator[CloudFederation]:
    base = Path(tempfile.mkdtemp(prefix="geofed-cloud-"))
    (base / "disk").mkdir()
    try:
        yield CloudFederation(ceph_rgw, azurite, nginx_dav, base / "disk", build_geoip(base / "city.mmdb"))
    finally:
        import shutil

        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def geofed(cloud: CloudFederation) -> Iterator[GeofedServer]:
    with GeofedServer(cloud.settings()) as server:
        yield server


def site_of(location: str, cloud: CloudFederation) -> str:
    """Which endpoint a redirect Location points at."""
    for name in S3_SITES:
        site = cloud.rgw.sites[name]
        if location.startswith(f"{site.url}/{site.bucket}/"):
            return name
    for name, container in AZURE_SITES.items():
        account = cloud.azurite.containers[container]
        if location.startswith(f"{cloud.azurite.account_url(account)}/{container}/"):
            return name
    if location.startswith(cloud.nginx.url):
        return "dav"
    if "/_geofed/data/disk/" in location:
        return "disk"
    raise AssertionError(f"redirect to an unknown place: {location}")


def test_every_endpoint_is_up(geofed: GeofedServer) -> None:
    status = json.loads(curl(f"{geofed.url}/_geofed/status").stdout)
    assert {e["name"]: e["state"] for e in status["endpoints"]} == {name: "up" for name in CITIES}


@pytest.mark.parametrize("site", sorted(CITIES))
def test_client_near_each_site_lands_on_it_and_reads_its_bytes(
    geofed: GeofedServer, cloud: CloudFederation, site: str
) -> None:
    for name in CITIES:
        cloud.put(name, "/everywhere.dat", f"replica at {name}\n".encode())
    url = f"{geofed.url}/cloud/everywhere.dat"
    status, location = redirect_of(url, client_ip(site))
    assert status == 302
    assert site_of(location, cloud) == site
    assert curl("-L", "--interface", client_ip(site), url).stdout == f"replica at {site}\n"


def tamper(url: str) -> str:
    parts = urlsplit(url)
    query = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key in ("X-Amz-Signature", "sig"):
            value = ("0" if value[0] != "0" else "1") + value[1:]
        query.append((key, value))
    return urlunsplit(parts._replace(query=urlencode(query)))


@pytest.mark.parametrize("site", ["cern", "azure-b"])
def test_stores_refuse_tampered_and_expired_geofed_urls(
    geofed: GeofedServer, cloud: CloudFederation, site: str
) -> None:
    cloud.put(site, f"/guarded-{site}.dat", b"guarded\n")
    _, location = redirect_of(f"{geofed.url}/cloud/guarded-{site}.dat", client_ip(site))
    assert site_of(location, cloud) == site
    assert curl("-o", "/dev/null", "-w", "%{http_code}", location).stdout == "200"
    assert curl("-o", "/dev/null", "-w", "%{http_code}", tamper(location)).stdout == "403"
    endpoint = geofed.federation.endpoints[site]
    short = endpoint.sign_url("GET", f"/{cloud.run}/guarded-{site}.dat", 1)
    assert curl("-o", "/dev/null", "-w", "%{http_code}", short).stdout == "200"
    time.sleep(2.2)
    assert curl("-o", "/dev/null", "-w", "%{http_code}", short).stdout == "403"
    put_url = endpoint.sign_url("PUT", f"/{cloud.run}/guarded-{site}.dat", 60)
    assert curl("-o", "/dev/null", "-w", "%{http_code}", "-X", "GET", put_url).stdout == "403"


@pytest.mark.parametrize("site", ["triumf", "azure-a"])
def test_curl_upload_lands_on_the_nearest_store(
    geofed: GeofedServer, cloud: CloudFederation, site: str, tmp_path: Path
) -> None:
    source = tmp_path / "small.dat"
    source.write_bytes(os.urandom(300_000))
    args = ["-L", "--interface", client_ip(site), "-T", str(source), "-w", "%{http_code}", "-o", "/dev/null"]
    if site in AZURE_SITES:
        args += ["-H", "x-ms-blob-type: BlockBlob"]  # Azure's Put Blob needs it; S3 ignores it
    out = curl(*args, f"{geofed.url}/cloud/up/{site}.dat")
    assert out.stdout in ("200", "201"), out
    assert cloud.get(site, f"/up/{site}.dat") == source.read_bytes()
    others = [name for name in CITIES if name != site]
    assert all(cloud.get(name, f"/up/{site}.dat") is None for name in others)
    # found at once through geofed (no cached 404), from anywhere
    assert curl("-L", f"{geofed.url}/cloud/up/{site}.dat", "-o", str(tmp_path / "back")).returncode == 0
    assert (tmp_path / "back").read_bytes() == source.read_bytes()


def test_davix_multipart_upload_lands_as_multipart_object(
    geofed: GeofedServer, cloud: CloudFederation, tmp_path: Path
) -> None:
    source = tmp_path / "big.dat"
    source.write_bytes(os.urandom(12 * 1024 * 1024))
    url = f"{geofed.url}/cloud/multi/big.dat"
    # davix has no --interface: place its client (127.0.0.1) by a client network rule instead
    settings = cloud.settings(
        client_networks=[
            {"cidr": "127.0.0.1/32", "location": {"lat": CITIES["cern"][2], "lon": CITIES["cern"][3]}}
        ]
    )
    with GeofedServer(settings) as near_cern:
        url = f"{near_cern.url}/cloud/multi/big.dat"
        out = run("davix-put", str(source), f"{url}#forceMultiPart")
        assert out.returncode == 0, out.stderr
        log = near_cern.flush_access_log()
    assert cloud.get("cern", "/multi/big.dat") == source.read_bytes()
    head = cloud.s3_head("cern", "/multi/big.dat")
    assert "-" in head["ETag"], head["ETag"]  # a multipart object's ETag is md5-of-md5s "-N"
    assert " PUT /cloud/multi/big.dat 200 multipart cern " in log


@pytest.mark.parametrize("site", ["uvic", "azure-b"])
def test_davix_put_get_ls(geofed: GeofedServer, cloud: CloudFederation, site: str, tmp_path: Path) -> None:
    source = tmp_path / "d.dat"
    source.write_bytes(os.urandom(2 * 1024 * 1024))
    settings = cloud.settings(
        client_networks=[
            {"cidr": "127.0.0.1/32", "location": {"lat": CITIES[site][2], "lon": CITIES[site][3]}}
        ]
    )
    with GeofedServer(settings) as near:
        url = f"{near.url}/cloud/davix-{site}/d.dat"
        put = run("davix-put", str(source), url)
        assert put.returncode == 0, put.stderr
        assert cloud.get(site, f"/davix-{site}/d.dat") == source.read_bytes()
        got = tmp_path / "got.dat"
        get = run("davix-get", url, str(got))
        assert get.returncode == 0, get.stderr
        assert hashlib.sha256(got.read_bytes()).digest() == hashlib.sha256(source.read_bytes()).digest()
        listing = run("davix-ls", "-l", f"{near.url}/cloud/davix-{site}/")
        assert listing.returncode == 0, listing.stderr
        assert "d.dat" in listing.stdout and str(source.stat().st_size) in listing.stdout


@pytest.mark.parametrize("site", ["cern", "azure-a"])
def test_gfal2_stat_list_read_delete(geofed: GeofedServer, cloud: CloudFederation, site: str) -> None:
    import gfal2

    cloud.put(site, f"/g-{site}/one.dat", b"one\n")
    cloud.put(site, f"/g-{site}/sub/two.dat", b"two\n")
    ctx = gfal2.creat_context()
    base = f"{geofed.url}/cloud/g-{site}"
    info = ctx.stat(f"{base}/one.dat")
    assert info.st_size == 4
    assert sorted(ctx.listdir(base)) == ["one.dat", "sub"]
    handle = ctx.open(f"{base}/one.dat", "r")
    assert handle.read(100) == "one\n"
    ctx.unlink(f"{base}/one.dat")
    assert cloud.get(site, f"/g-{site}/one.dat") is None
    with pytest.raises(gfal2.GError):
        ctx.stat(f"{base}/one.dat")


@pytest.mark.parametrize("site", ["cern", "azure-a"])
def test_gfal2_write(geofed: GeofedServer, cloud: CloudFederation, site: str, tmp_path: Path) -> None:
    """gfal2 uploads: a redirect to S3; for Azure geofed streams the body (davix 0.8 cannot finish
    a redirected Azure upload, see frontend/uploadproxy.py), which the access log shows."""
    import gfal2

    source = tmp_path / "w.dat"
    source.write_bytes(os.urandom(3 * 1024 * 1024 + 17))
    settings = cloud.settings(
        client_networks=[
            {"cidr": "127.0.0.1/32", "location": {"lat": CITIES[site][2], "lon": CITIES[site][3]}}
        ]
    )
    with GeofedServer(settings) as near:
        ctx = gfal2.creat_context()
        params = ctx.transfer_parameters()
        params.overwrite = True
        ctx.filecopy(params, source.as_uri(), f"{near.url}/cloud/gw-{site}/w.dat")
        log = near.flush_access_log()
    assert cloud.get(site, f"/gw-{site}/w.dat") == source.read_bytes()
    decision = "proxy-upload" if site in AZURE_SITES else "redirect"
    assert f" PUT /cloud/gw-{site}/w.dat " in log and f" {decision} {site} " in log


@pytest.mark.parametrize("site", ["triumf", "azure-b"])
def test_propfind_mkcol_and_collection_delete(
    geofed: GeofedServer, cloud: CloudFederation, site: str
) -> None:
    cloud.put(site, f"/p-{site}/a.dat", b"a")
    cloud.put(site, f"/p-{site}/b.dat", b"bb")
    body = curl("-X", "PROPFIND", "-H", "Depth: 1", f"{geofed.url}/cloud/p-{site}/").stdout
    assert f"<D:href>/cloud/p-{site}/a.dat</D:href>" in body
    assert "<D:getcontentlength>2</D:getcontentlength>" in body
    code = curl(
        "-X",
        "MKCOL",
        "--interface",
        client_ip(site),
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        f"{geofed.url}/cloud/p-{site}/newdir",
    ).stdout
    assert code == "201"
    listing = json.loads(curl("-H", "Accept: application/json", f"{geofed.url}/cloud/p-{site}").stdout)
    assert {e["name"]: e["type"] for e in listing["entries"]}["newdir"] == "collection"
    assert (
        curl("-X", "DELETE", "-o", "/dev/null", "-w", "%{http_code}", f"{geofed.url}/cloud/p-{site}").stdout
        == "204"
    )
    assert cloud.get(site, f"/p-{site}/a.dat") is None
    assert curl("-o", "/dev/null", "-w", "%{http_code}", f"{geofed.url}/cloud/p-{site}/b.dat").stdout == "404"


def test_misconfigured_stores_are_reported_and_others_keep_serving(cloud: CloudFederation) -> None:
    endpoints = cloud.endpoint_mappings()
    for endpoint in endpoints:
        if endpoint["name"] == "cern":
            endpoint["bucket"] = "no-such-bucket"
        if endpoint["name"] == "triumf":
            endpoint["credentials"] = {
                "access_key": endpoint["credentials"]["access_key"],
                "secret_key": "wrong-secret",
            }
        if endpoint["name"] == "azure-a":
            endpoint["container"] = "no-such-container"
        if endpoint["name"] == "azure-b":
            endpoint["credentials"] = {"account_key": cloud.azurite.accounts["devstoreaccount1"]}
    cloud.put("uvic", "/still.dat", b"uvic serves\n")
    settings = cloud.settings(endpoints=endpoints)
    with GeofedServer(settings) as server:
        status = {e["name"]: e for e in json.loads(curl(f"{server.url}/_geofed/status").stdout)["endpoints"]}
        for name in ("cern", "triumf", "azure-a", "azure-b"):
            assert status[name]["state"] == "down", status[name]
            assert status[name]["last_error"]
        assert "NoSuchBucket" in status["cern"]["last_error"] or "404" in status["cern"]["last_error"]
        assert "wrong-secret" not in json.dumps(status)
        assert (
            curl("-L", "--interface", client_ip("cern"), f"{server.url}/cloud/still.dat").stdout
            == "uvic serves\n"
        )
        out = curl("-w", "\n%{http_code}", f"{server.url}/cloud/nowhere.dat").stdout
        body, _, code = out.rpartition("\n")
        assert code == "503" and "cern" in body and "azure-a" in body


def test_stat_carries_the_metadata_stored_with_objects(geofed: GeofedServer, cloud: CloudFederation) -> None:
    key = f"{cloud.run}/meta.dat"
    s3 = cloud.rgw.sites["uvic"]
    cloud.rgw.client(s3.access_key, s3.secret_key).put_object(
        Bucket=s3.bucket, Key=key, Body=b"m", Metadata={"adler32": "0062006e"}
    )
    with cloud.azurite.service_client(cloud.azurite.containers["fed-a"]) as service:
        service.get_blob_client("fed-a", key).upload_blob(
            b"m", overwrite=True, metadata={"adler32": "0062006e"}
        )
    for name in ("uvic", "azure-a"):
        stat = geofed.call(geofed.federation.endpoints[name].stat(f"/{key}"))
        assert stat is not None and ("adler32", "0062006e") in stat.metadata, (name, stat)


def test_no_secret_leaves_geofed(
    geofed: GeofedServer, cloud: CloudFederation, caplog: pytest.LogCaptureFixture
) -> None:
    """Redirects carry only signatures: no secret key or account key in any header, body or log."""
    caplog.set_level(logging.DEBUG)
    secrets_ = [site.secret_key for site in cloud.rgw.sites.values()] + list(cloud.azurite.accounts.values())
    for name in CITIES:
        cloud.put(name, "/scan.dat", b"scan\n")
    texts = [curl(f"{geofed.url}/_geofed/status").stdout]
    for name in CITIES:
        texts.append(
            curl(
                "-D", "-", "-o", "/dev/null", "--interface", client_ip(name), f"{geofed.url}/cloud/scan.dat"
            ).stdout
        )
        texts.append(
            curl(
                "-D",
                "-",
                "-o",
                "/dev/null",
                "-X",
                "PUT",
                "-H",
                "Expect: 100-continue",
                "-H",
                "Content-Length: 5",
                "--interface",
                client_ip(name),
                f"{geofed.url}/cloud/scan-put.dat",
            ).stdout
        )
    texts.append(curl("-D", "-", f"{geofed.url}/cloud/missing-everywhere.dat").stdout)
    texts.append(geofed.flush_access_log())
    texts += [record.getMessage() for record in caplog.records]
    joined = "\n".join(texts)
    assert "X-Amz-Signature=" in joined and "sig=" in joined  # the scan saw signed URLs of both kinds
    assert "x-ugrs3posturl" in joined.lower()
    for secret in secrets_:
        assert secret not in joined


@pytest.mark.parametrize("site", ["triumf", "azure-a"])
def test_checksum_metadata_forged_on_upload_is_not_reported(
    geofed: GeofedServer, cloud: CloudFederation, site: str, tmp_path: Path
) -> None:
    """A pre-signed PUT lets the client add metadata: one that sets geofed's own checksum names
    (without the seal only geofed can make) gets the checksum of the stored bytes, not its claim."""
    data = os.urandom(200_000)
    source = tmp_path / "forged.dat"
    source.write_bytes(data)
    forged = {"adler32": "00000001", "md5": "0" * 32, "sha256": "0" * 64, "crc32c": "00000002"}
    if site in AZURE_SITES:
        args = ["-H", "x-ms-blob-type: BlockBlob"]
        args += [arg for name, v in forged.items() for arg in ("-H", f"x-ms-meta-geofed_{name}: {v}")]
        args += ["-H", "x-ms-meta-geofed_seal: 0123456789abcdef0123456789abcdef"]
    else:
        args = [arg for name, v in forged.items() for arg in ("-H", f"x-amz-meta-geofed-{name}: {v}")]
        args += ["-H", "x-amz-meta-geofed-seal: 0123456789abcdef0123456789abcdef"]
    url = f"{geofed.url}/cloud/forged/{site}.dat"
    out = curl(
        "-L",
        "--interface",
        client_ip(site),
        "-T",
        str(source),
        *args,
        "-o",
        "/dev/null",
        "-w",
        "%{http_code}",
        url,
    )
    assert out.stdout in ("200", "201"), out
    assert cloud.get(site, f"/forged/{site}.dat") == data  # the store took the metadata too
    head = curl("-sI", "-H", "Want-Digest: adler32, md5", url).stdout
    digest = next(line for line in head.splitlines() if line.lower().startswith("digest:"))
    expected_md5 = base64.b64encode(hashlib.md5(data).digest()).decode()
    assert f"adler32={zlib.adler32(data):08x}" in digest
    assert f"md5={expected_md5}" in digest
