"""A mixed federation for end-to-end tests: three S3 sites on real Ceph RGW, two Azure accounts on
real Azurite, a local directory and a real nginx WebDAV server, each at its own coordinates, all
mounted at ``/cloud``. A test GeoIP database places a loopback sub-network at each site's city."""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geofed.config import Settings, settings_from_mapping
from tests.infra.azurite import AzuriteServer
from tests.infra.ceph import CephCluster
from tests.infra.geoip import build_city_db
from tests.infra.policies import OPEN_POLICY
from tests.infra.servers import RunningServer

# endpoint name → (city, country, lat, lon, client network, a client address there)
CITIES: dict[str, tuple[str, str, float, float, str, str]] = {
    "cern": ("Geneva", "CH", 46.2044, 6.1432, "127.0.1.0/24", "127.0.1.20"),
    "triumf": ("Vancouver", "CA", 49.2827, -123.1207, "127.0.2.0/24", "127.0.2.20"),
    "uvic": ("Victoria", "CA", 48.4284, -123.3656, "127.0.3.0/24", "127.0.3.20"),
    "azure-a": ("Amsterdam", "NL", 52.3676, 4.9041, "127.0.4.0/24", "127.0.4.20"),
    "azure-b": ("Chicago", "US", 41.8781, -87.6298, "127.0.5.0/24", "127.0.5.20"),
    "disk": ("Tokyo", "JP", 35.6762, 139.6503, "127.0.6.0/24", "127.0.6.20"),
    "dav": ("Hamburg", "DE", 53.5511, 9.9937, "127.0.7.0/24", "127.0.7.20"),
}
S3_SITES = ("cern", "triumf", "uvic")
AZURE_SITES = {"azure-a": "fed-a", "azure-b": "fed-b"}


def client_ip(site: str) -> str:
    return CITIES[site][5]


@dataclass
class CloudFederation:
    """The backends, the unique prefix this test run uses inside them, and how to reach them."""

    rgw: CephCluster
    azurite: AzuriteServer
    nginx: RunningServer
    local_root: Path
    geoip: Path
    run: str = field(default_factory=lambda: uuid.uuid4().hex[:12])

    def endpoint_mappings(self) -> list[dict[str, Any]]:
        prefix = [{"federated": "/cloud", "endpoint": f"/{self.run}"}]
        endpoints: list[dict[str, Any]] = []
        for name in S3_SITES:
            site = self.rgw.sites[name]
            endpoints.append(
                {
                    "name": name,
                    "kind": "s3",
                    "url": site.url,
                    "bucket": site.bucket,
                    "credentials": {"access_key": site.access_key, "secret_key": site.secret_key},
                }
            )
        for name, container in AZURE_SITES.items():
            account = self.azurite.containers[container]
            endpoints.append(
                {
                    "name": name,
                    "kind": "azure",
                    "url": self.azurite.account_url(account),
                    "account": account,
                    "container": container,
                    "credentials": {"account_key": self.azurite.accounts[account]},
                }
            )
        endpoints.append({"name": "disk", "kind": "local", "url": self.local_root.as_uri()})
        endpoints.append({"name": "dav", "kind": "webdav", "url": self.nginx.url})
        for endpoint in endpoints:
            city = CITIES[endpoint["name"]]
            endpoint |= {
                "prefixes": prefix,
                "writable": True,
                "location": {"lat": city[2], "lon": city[3]},
                "timeout": "5s",
            }
        return endpoints

    def settings(self, **sections: Any) -> Settings:
        mapping: dict[str, Any] = {
            "signing": {"secret": secrets.token_urlsafe(24)},
            "auth": OPEN_POLICY,
            "geoip": {"database": str(self.geoip)},
            "federation": {"locate_timeout": "3s", "fuzz_km": 0},
            "health": {"interval": "30s", "timeout": "3s"},
            "endpoints": self.endpoint_mappings(),
        }
        mapping.update(sections)
        return settings_from_mapping(mapping, environ={})

    # -- putting replicas straight into the backends -------------------------------------------

    def put(self, site: str, path: str, data: bytes) -> None:
        """Store ``data`` at federated ``/cloud/<path>`` on ``site`` without going through geofed."""
        key = f"{self.run}/{path.lstrip('/')}"
        if site in S3_SITES:
            s3 = self.rgw.sites[site]
            self.rgw.client(s3.access_key, s3.secret_key).put_object(Bucket=s3.bucket, Key=key, Body=data)
        elif site in AZURE_SITES:
            container = AZURE_SITES[site]
            with self.azurite.service_client(self.azurite.containers[container]) as service:
                service.get_blob_client(container, key).upload_blob(data, overwrite=True)
        else:
            root = self.local_root if site == "disk" else self.nginx.root
            assert root is not None
            target = root / key
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
            if site == "dav" and os.geteuid() == 0:
                for owned in (target, *[p for p in target.parents if root in p.parents]):
                    shutil.chown(owned, "www-data", "www-data")

    def get(self, site: str, path: str) -> bytes | None:
        """The bytes stored at federated ``/cloud/<path>`` on ``site`` (None when absent)."""
        key = f"{self.run}/{path.lstrip('/')}"
        if site in S3_SITES:
            s3 = self.rgw.sites[site]
            client = self.rgw.client(s3.access_key, s3.secret_key)
            try:
                return bytes(client.get_object(Bucket=s3.bucket, Key=key)["Body"].read())
            except client.exceptions.NoSuchKey:
                return None
        if site in AZURE_SITES:
            from azure.core.exceptions import ResourceNotFoundError

            container = AZURE_SITES[site]
            with self.azurite.service_client(self.azurite.containers[container]) as service:
                try:
                    return bytes(service.get_blob_client(container, key).download_blob().readall())
                except ResourceNotFoundError:
                    return None
        root = self.local_root if site == "disk" else self.nginx.root
        assert root is not None
        target = root / key
        return target.read_bytes() if target.exists() else None

    def s3_head(self, site: str, path: str) -> dict[str, Any]:
        s3 = self.rgw.sites[site]
        client = self.rgw.client(s3.access_key, s3.secret_key)
        return dict(client.head_object(Bucket=s3.bucket, Key=f"{self.run}/{path.lstrip('/')}"))


def build_geoip(path: Path) -> Path:
    return build_city_db(
        path, {net: (city, cc, lat, lon) for city, cc, lat, lon, net, _ip in CITIES.values()}
    )


def run(
    *argv: str, timeout: float = 120, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False, env=env)
