"""Self-tests of the S3 (Ceph RGW) and Azure (Azurite) fixtures: they really check signatures.

geofed's signing tests are only worth something if the servers reject a wrong signature; s3rver and
moto, for instance, accept tampered SigV4 URLs. So these prove, with URLs signed by the vendors'
own SDKs (boto3, azure-storage-blob) and sent by a plain HTTP client, that a valid signature
passes and a tampered, expired or wrong-method one gets 403 -- and that the servers listen on
loopback only.
"""

from __future__ import annotations

import http.client
import ipaddress
import os
import time
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest
from azure.storage.blob import BlobSasPermissions, generate_blob_sas
from botocore.exceptions import ClientError

from tests.infra.azurite import DEV_ACCOUNT, AzuriteServer
from tests.infra.ceph import CephCluster
from tests.infra.fixtures import AZURITE_CONTAINERS, CEPH_SITES

pytestmark = pytest.mark.integration

HTTP_TIMEOUT_S = 10


@dataclass
class Reply:
    """Status, headers (lower-cased names) and body of one HTTP exchange."""

    status: int
    headers: dict[str, str]
    body: bytes


def send(method: str, url: str, body: bytes | None = None, headers: dict[str, str] | None = None) -> Reply:
    """Send one request with http.client, exactly as given (no redirects, no retries, no signing)."""
    parts = urlsplit(url)
    assert parts.hostname is not None
    connection = http.client.HTTPConnection(parts.hostname, parts.port, timeout=HTTP_TIMEOUT_S)
    try:
        target = parts.path + (f"?{parts.query}" if parts.query else "")
        connection.request(method, target, body=body, headers=headers or {})
        response = connection.getresponse()
        data = response.read()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()}, data)
    finally:
        connection.close()


def with_param(url: str, name: str, change: str | None = None, value: str | None = None) -> str:
    """``url`` with query parameter ``name`` replaced by ``value``, or its first character changed."""
    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    assert name in dict(query), f"{name} not in {url}"
    replaced = []
    for key, old in query:
        if key == name:
            if value is None:
                assert change is not None
                new_first = change[0] if old[0] != change[0] else change[1]
                old = new_first + old[1:]
            else:
                old = value
        replaced.append((key, old))
    return urlunsplit(parts._replace(query=urlencode(replaced)))


def _proc_address(hex_address: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    """Decode an address as /proc/net/tcp{,6} prints it (32-bit words in host byte order)."""
    raw = bytes.fromhex(hex_address)
    words = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
    return ipaddress.ip_address(words)


def listening_addresses(pid: int) -> set[tuple[str, int]]:
    """(address, port) of every TCP socket process ``pid`` listens on, IPv4 and IPv6 (from /proc)."""
    listeners: dict[str, tuple[str, int]] = {}
    for table in (Path("/proc/net/tcp"), Path("/proc/net/tcp6")):
        for line in table.read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A":  # LISTEN
                address, port = fields[1].rsplit(":", 1)
                listeners[fields[9]] = (str(_proc_address(address)), int(port, 16))
    found: set[tuple[str, int]] = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:[") and target[8:-1] in listeners:
            found.add(listeners[target[8:-1]])
    return found


# -- Ceph RGW ---------------------------------------------------------------------------------------


def test_rgw_sites_are_ready(ceph_rgw: CephCluster) -> None:
    """Three sites, each with its bucket and keys; two of them on gateways of their own."""
    assert set(ceph_rgw.sites) == set(CEPH_SITES)
    for name, (bucket, _own) in CEPH_SITES.items():
        site = ceph_rgw.sites[name]
        assert site.bucket == bucket
        client = ceph_rgw.client(site.access_key, site.secret_key, site.url)
        assert client.list_objects_v2(Bucket=bucket)["KeyCount"] >= 0
    assert len({site.url for site in ceph_rgw.sites.values()}) == 3
    assert ceph_rgw.sites["cern"].url == ceph_rgw.url


def test_rgw_presigned_get_and_put(ceph_rgw: CephCluster) -> None:
    """boto3-presigned PUT then GET, sent by a plain client, both succeed; another gateway serves it."""
    site = ceph_rgw.sites["cern"]
    client = ceph_rgw.client(site.access_key, site.secret_key)
    key = f"infra/{uuid.uuid4().hex}/blob.bin"
    payload = os.urandom(4096)
    put_url = client.generate_presigned_url(
        "put_object", Params={"Bucket": site.bucket, "Key": key}, ExpiresIn=300
    )
    assert send("PUT", put_url, body=payload).status == 200
    get_url = client.generate_presigned_url(
        "get_object", Params={"Bucket": site.bucket, "Key": key}, ExpiresIn=300
    )
    reply = send("GET", get_url)
    assert (reply.status, reply.body) == (200, payload)
    # Same data, other endpoint: a second gateway of the same cluster.
    other = ceph_rgw.client(site.access_key, site.secret_key, ceph_rgw.sites["triumf"].url)
    assert other.get_object(Bucket=site.bucket, Key=key)["Body"].read() == payload


def test_rgw_rejects_tampered_signature(ceph_rgw: CephCluster) -> None:
    """A presigned GET/PUT with one hex digit of the signature changed is 403; nothing is written."""
    site = ceph_rgw.sites["cern"]
    client = ceph_rgw.client(site.access_key, site.secret_key)
    key = f"infra/{uuid.uuid4().hex}"
    client.put_object(Bucket=site.bucket, Key=key, Body=b"original")
    params = {"Bucket": site.bucket, "Key": key}
    get_url = client.generate_presigned_url("get_object", Params=params, ExpiresIn=300)
    reply = send("GET", with_param(get_url, "X-Amz-Signature", change="01"))
    assert reply.status == 403, reply.body
    assert b"SignatureDoesNotMatch" in reply.body
    put_url = client.generate_presigned_url("put_object", Params=params, ExpiresIn=300)
    assert send("PUT", with_param(put_url, "X-Amz-Signature", change="01"), body=b"evil").status == 403
    assert client.get_object(Bucket=site.bucket, Key=key)["Body"].read() == b"original"


def test_rgw_method_is_signed(ceph_rgw: CephCluster) -> None:
    """A GET-signed URL used for HEAD is 403 (the method is part of SigV4); a HEAD-signed one is 200."""
    site = ceph_rgw.sites["cern"]
    client = ceph_rgw.client(site.access_key, site.secret_key)
    key = f"infra/{uuid.uuid4().hex}"
    client.put_object(Bucket=site.bucket, Key=key, Body=b"x")
    params = {"Bucket": site.bucket, "Key": key}
    get_url = client.generate_presigned_url("get_object", Params=params, ExpiresIn=300)
    assert send("HEAD", get_url).status == 403
    assert send("PUT", get_url, body=b"y").status == 403
    head_url = client.generate_presigned_url("head_object", Params=params, ExpiresIn=300)
    assert send("HEAD", head_url).status == 200


def test_rgw_rejects_expired_url(ceph_rgw: CephCluster) -> None:
    """A URL presigned with ExpiresIn=1 is 403 two seconds later."""
    site = ceph_rgw.sites["cern"]
    client = ceph_rgw.client(site.access_key, site.secret_key)
    key = f"infra/{uuid.uuid4().hex}"
    client.put_object(Bucket=site.bucket, Key=key, Body=b"x")
    url = client.generate_presigned_url("get_object", Params={"Bucket": site.bucket, "Key": key}, ExpiresIn=1)
    time.sleep(2)
    assert send("GET", url).status == 403


def test_rgw_checks_keys_and_ownership(ceph_rgw: CephCluster) -> None:
    """Header auth with a wrong secret is 403, and one site's user cannot read another's bucket."""
    cern, triumf = ceph_rgw.sites["cern"], ceph_rgw.sites["triumf"]
    wrong = ceph_rgw.client(cern.access_key, cern.secret_key[::-1])
    with pytest.raises(ClientError) as bad_secret:
        wrong.list_objects_v2(Bucket=cern.bucket)
    assert bad_secret.value.response["Error"]["Code"] == "SignatureDoesNotMatch"
    stranger = ceph_rgw.client(cern.access_key, cern.secret_key)
    with pytest.raises(ClientError) as not_owner:
        stranger.list_objects_v2(Bucket=triumf.bucket)
    assert not_owner.value.response["Error"]["Code"] == "AccessDenied"
    assert send("GET", f"{ceph_rgw.url}/{cern.bucket}").status == 403  # anonymous


def test_rgw_listens_on_loopback_only(ceph_rgw: CephCluster) -> None:
    """mon, OSD and every gateway listen on 127.0.0.1 and nowhere else."""
    for name, pid in ceph_rgw.pids.items():
        addresses = listening_addresses(pid)
        assert addresses, f"{name} (pid {pid}) listens nowhere"
        assert {address for address, _port in addresses} == {"127.0.0.1"}, (name, addresses)


# -- Azurite ----------------------------------------------------------------------------------------


def _blob_with_sas(
    azurite: AzuriteServer,
    account: str,
    container: str,
    *,
    read: bool = False,
    write: bool = False,
    create: bool = False,
    key: str | None = None,
) -> tuple[str, str]:
    """A fresh blob name and its SAS URL (path-style) signed with ``key`` (default: the account's)."""
    blob = f"infra/{uuid.uuid4().hex}.bin"
    sas = generate_blob_sas(
        account_name=account,
        container_name=container,
        blob_name=blob,
        account_key=key or azurite.accounts[account],
        permission=BlobSasPermissions(read=read, write=write, create=create),
        expiry=datetime.now(UTC) + timedelta(minutes=10),
    )
    return blob, f"{azurite.account_url(account)}/{container}/{blob}?{sas}"


def test_azurite_accounts_and_containers(azurite: AzuriteServer) -> None:
    """Both accounts exist with their containers; site2 has its own random key."""
    assert set(azurite.accounts) >= {DEV_ACCOUNT, "site2"}
    assert azurite.accounts[DEV_ACCOUNT] != azurite.accounts["site2"]
    assert azurite.containers == AZURITE_CONTAINERS
    for container, account in AZURITE_CONTAINERS.items():
        with azurite.service_client(account) as client:
            assert container in {c.name for c in client.list_containers()}


def test_azurite_read_sas(azurite: AzuriteServer) -> None:
    """A read SAS GETs the blob; a tampered sig, a site2-signed SAS and PUT with the read SAS are 403."""
    account, container = DEV_ACCOUNT, "fed-a"
    blob, url = _blob_with_sas(azurite, account, container, read=True)
    payload = os.urandom(2048)
    with azurite.service_client(account) as client:
        client.get_blob_client(container, blob).upload_blob(payload)
    reply = send("GET", url)
    assert (reply.status, reply.body) == (200, payload)
    assert send("GET", with_param(url, "sig", change="AB")).status == 403
    _, foreign = _blob_with_sas(azurite, account, container, read=True, key=azurite.accounts["site2"])
    assert send("GET", foreign.replace(foreign.split("?")[0], url.split("?")[0])).status == 403
    overwrite = send("PUT", url, body=b"evil", headers={"x-ms-blob-type": "BlockBlob"})
    assert overwrite.status == 403, overwrite.body
    assert send("GET", url).body == payload


def test_azurite_write_sas(azurite: AzuriteServer) -> None:
    """A write SAS PUT with x-ms-blob-type is 201 (in the second account); a tampered one is 403."""
    account, container = "site2", "fed-b"
    blob, url = _blob_with_sas(azurite, account, container, write=True, create=True)
    headers = {"x-ms-blob-type": "BlockBlob", "x-ms-meta-origin": "geofed"}
    tampered = send("PUT", with_param(url, "sig", change="AB"), body=b"x", headers=headers)
    assert tampered.status == 403
    reply = send("PUT", url, body=b"written via SAS", headers=headers)
    assert reply.status == 201, reply.body
    with azurite.service_client(account) as client:
        blob_client = client.get_blob_client(container, blob)
        assert blob_client.download_blob().readall() == b"written via SAS"
        assert blob_client.get_blob_properties().metadata == {"origin": "geofed"}


def test_azurite_listens_on_loopback_only(azurite: AzuriteServer) -> None:
    """Azurite listens on 127.0.0.1:port only."""
    assert listening_addresses(azurite.pid) == {("127.0.0.1", azurite.port)}
