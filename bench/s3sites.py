"""S3 sites for the warm benchmark's S3 variant: a real Ceph RGW on 127.0.0.1 (``tests/infra/ceph.py``).

:func:`rgw_sites` starts RGW once (mon + memstore OSD + radosgw, ~15 s), creates one site per
benchmark location -- a user with its own keys owning its own bucket; the first site uses the first
gateway, the others get a radosgw of their own, so every site has its own endpoint URL -- puts the
sample object in each bucket, and always stops the whole cluster by its own ``stop()`` (daemons by
PID) when the block ends, whatever happened inside it.

:func:`check_presigned` proves, with curl, that a Location geofed handed out is a presigned URL of the
expected site that RGW actually honours (200 and the sample's bytes): a redirect the store would
refuse is not a redirect worth measuring.
"""

from __future__ import annotations

import contextlib
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

from bench.procs import require
from tests.infra.ceph import CephCluster, S3Site, start_ceph_rgw


@dataclass(frozen=True)
class RgwSites:
    """The running cluster and, per benchmark site name, its S3 site (bucket, keys, gateway URL)."""

    cluster: CephCluster
    sites: dict[str, S3Site]
    version: str

    def endpoint(self, name: str) -> dict[str, Any]:
        """The ``kind: s3`` part of geofed's endpoint configuration for site ``name``."""
        site = self.sites[name]
        return {
            "name": name,
            "kind": "s3",
            "url": site.url,
            "bucket": site.bucket,
            "credentials": {"access_key": site.access_key, "secret_key": site.secret_key},
        }


def bucket_of(name: str) -> str:
    return f"bench-{name}"


def ceph_version() -> str:
    """``ceph --version`` without the commit hash, e.g. ``16.2.15 pacific (stable)``."""
    proc = subprocess.run(
        [require("ceph"), "--version"], capture_output=True, text=True, timeout=10, check=False
    )
    words = (proc.stdout or proc.stderr).split()
    # "ceph version 16.2.15 (618f44...) pacific (stable)"
    return " ".join(w for w in words[2:] if not w.startswith("(") or w == "(stable)") or "unknown"


@contextlib.contextmanager
def rgw_sites(
    work: Path, names: list[str], key: str, body: bytes, log: Callable[[str], None]
) -> Iterator[RgwSites]:
    """Start RGW below ``work/ceph``, one site per name with ``key`` holding ``body``; stop RGW after."""
    log("  starting Ceph RGW (mon + memstore OSD + radosgw, ~15 s) ...")
    cluster = start_ceph_rgw(work / "ceph")
    try:
        sites: dict[str, S3Site] = {}
        for index, name in enumerate(names):
            site = cluster.add_site(name, bucket_of(name), own_gateway=index > 0)
            # Through the site's own gateway and with the site's own keys, as its owner would.
            client = cluster.client(site.access_key, site.secret_key, site.url)
            client.put_object(Bucket=site.bucket, Key=key, Body=body)
            sites[name] = site
        log("  RGW sites: " + ", ".join(f"{n} {s.url}/{s.bucket}" for n, s in sites.items()))
        yield RgwSites(cluster, sites, ceph_version())
    finally:
        cluster.stop()


def fetch(url: str) -> tuple[int, bytes]:
    """GET ``url`` once with curl (no redirect following): the status and the body."""
    with tempfile.NamedTemporaryFile(prefix="geofed-bench-") as out:
        proc = subprocess.run(
            [require("curl"), "-sS", "-o", out.name, "-w", "%{http_code}", "--max-time", "10", url],
            capture_output=True,
            text=True,
            timeout=20,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"curl {url} failed: {proc.stderr.strip()}")
        return int(proc.stdout.strip()), Path(out.name).read_bytes()


def link_urls(headers: str) -> list[str]:
    """The URLs of a ``Link`` header (``<url>; rel=duplicate; pri=N, ...``) in raw response headers."""
    for line in headers.splitlines():
        name, _, value = line.partition(":")
        if name.strip().lower() == "link":
            return [part.split(">", 1)[0].strip().lstrip("<") for part in value.split(",")]
    return []


def check_presigned(location: str, site: S3Site, key: str, body: bytes) -> None:
    """Raise unless ``location`` is a SigV4-presigned GET of ``key`` at ``site`` that RGW answers 200.

    Checks the URL's shape (gateway, path-style bucket and key, X-Amz-* query with the site's own
    access key), then GETs it once with curl: status 200 and exactly the sample's bytes.
    """
    expected_prefix = f"{site.url}/{site.bucket}/{quote(key)}?"
    if not location.startswith(expected_prefix):
        raise RuntimeError(f"Location {location!r} is not {expected_prefix}...")
    query = parse_qs(urlsplit(location).query)
    for name in ("X-Amz-Algorithm", "X-Amz-Credential", "X-Amz-Date", "X-Amz-Expires", "X-Amz-Signature"):
        if name not in query:
            raise RuntimeError(f"Location {location!r} has no {name}: not a presigned S3 URL")
    if query["X-Amz-Algorithm"] != ["AWS4-HMAC-SHA256"]:
        raise RuntimeError(f"Location {location!r} is not signed with AWS4-HMAC-SHA256")
    if not query["X-Amz-Credential"][0].startswith(site.access_key + "/"):
        raise RuntimeError(f"Location {location!r} is not signed with the site's own access key")
    status, got = fetch(location)
    if status != 200:
        raise RuntimeError(
            f"RGW answered {status} to geofed's presigned Location {location!r}: {got[:300]!r}"
        )
    if got != body:
        raise RuntimeError(f"RGW answered 200 to {location!r} but not with the sample ({len(got)} bytes)")
