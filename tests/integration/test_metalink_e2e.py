"""Metalinks end to end: three sites at real coordinates (a local directory in Geneva, a real Apache
in Vancouver, a real nginx in Victoria), clients placed by the loopback address they connect from.

* ``GET ?metalink`` and ``GET`` with ``Accept: application/metalink4+xml`` answer an RFC 5854
  document (parsed with defusedxml) listing every replica, closest to the requesting client
  first, with the size, and the hashes once geofed knows them; every URL in it serves the bytes;
* redirects and HEAD answers point at it with ``Link: <…?metalink>; rel=describedby``;
* davix's failover (clients.md §5): the closest replica breaks after geofed cached where the file
  is; ``davix-get`` of the federated URL retries, asks the metalink, and reads the next replica.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import zlib
from collections.abc import Iterator
from urllib.parse import urljoin

import google_crc32c
import pytest
from defusedxml.ElementTree import fromstring

from tests.infra.geofed_server import GeofedServer
from tests.integration.federation_sites import CITIES, Sites, client_ip, three_sites

pytestmark = pytest.mark.integration

ML = "{urn:ietf:params:xml:ns:metalink}"
MEDIA_TYPE = "application/metalink4+xml"
DAVIX_TIMEOUT_S = 20

EVERYWHERE = os.urandom(200_000)
WEST_COAST = os.urandom(150_000)
GENEVA_VICTORIA = os.urandom(90_000)
# the order of the sites by distance from a client in each city (fuzz_km is 0 in these sites)
CLOSEST_FIRST = {
    "cern": ["cern", "triumf", "uvic"],  # Vancouver is a little closer to Geneva than Victoria
    "triumf": ["triumf", "uvic", "cern"],
    "uvic": ["uvic", "triumf", "cern"],
}


@pytest.fixture(scope="module")
def sites() -> Iterator[Sites]:
    with three_sites() as made:
        for site in ("cern", "triumf", "uvic"):
            made.put_file(site, "/ml/everywhere.bin", EVERYWHERE)
        for site in ("triumf", "uvic"):
            made.put_file(site, "/ml/west-coast.bin", WEST_COAST)
        for site in ("cern", "uvic"):
            made.put_file(site, "/ml/geneva-victoria.bin", GENEVA_VICTORIA)
        yield made


@pytest.fixture(scope="module")
def geofed(sites: Sites) -> Iterator[GeofedServer]:
    with GeofedServer(sites.settings()) as server:
        yield server


def site_of(url: str, sites: Sites, geofed: GeofedServer) -> str:
    """Which site a replica URL of a metalink points at."""
    if url.startswith(geofed.url + "/_geofed/data/cern/"):
        return "cern"
    for name, server in sites.servers.items():
        if url.startswith(server.url + "/"):
            return name
    raise AssertionError(f"{url} points at no site")


def fetch(url: str, *args: str) -> tuple[int, dict[str, str], bytes]:
    """(status, headers of the last response, body) of one curl run."""
    out = subprocess.run(
        ["curl", "--noproxy", "*", "-sS", "--max-time", "20", "-D", "-", *args, url],
        capture_output=True,
        timeout=25,
        check=False,
    )
    assert out.returncode == 0, out.stderr.decode(errors="replace")
    raw = out.stdout
    status, headers = 0, {}
    while raw.startswith(b"HTTP/"):
        block, _, raw = raw.partition(b"\r\n\r\n")
        lines = block.decode("iso-8859-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    return status, headers, raw


def parse_metalink(body: bytes) -> tuple[str, int | None, dict[str, str], list[str]]:
    """(file name, size, {hash type: value}, urls by priority) of a one-file metalink."""
    root = fromstring(body)
    assert root.tag == f"{ML}metalink"
    files = root.findall(f"{ML}file")
    assert len(files) == 1
    element = files[0]
    size_text = element.findtext(f"{ML}size")
    hashes = {h.get("type", ""): h.text or "" for h in element.findall(f"{ML}hash")}
    ranked = sorted(element.findall(f"{ML}url"), key=lambda u: int(u.get("priority", "0")))
    priorities = [int(u.get("priority", "0")) for u in ranked]
    assert priorities == list(range(1, len(ranked) + 1)), priorities
    return (
        element.get("name", ""),
        None if size_text is None else int(size_text),
        hashes,
        [u.text or "" for u in ranked],
    )


def metalink_from(geofed: GeofedServer, path: str, client: str, *, accept: bool = False) -> bytes:
    url = geofed.url + path + ("" if accept else "?metalink")
    args = ["--interface", client_ip(client)]
    if accept:
        args += ["-H", f"Accept: {MEDIA_TYPE}"]
    status, headers, body = fetch(url, *args)
    assert status == 200, body[:300]
    assert headers["content-type"] == MEDIA_TYPE
    return body


# -- the document ---------------------------------------------------------------------------------


@pytest.mark.parametrize("client", sorted(CITIES))
def test_metalink_lists_every_replica_closest_first(sites: Sites, geofed: GeofedServer, client: str) -> None:
    for accept in (False, True):
        body = metalink_from(geofed, "/fed/ml/everywhere.bin", client, accept=accept)
        name, size, _, urls = parse_metalink(body)
        assert name == "everywhere.bin"
        assert size == len(EVERYWHERE)
        assert [site_of(u, sites, geofed) for u in urls] == CLOSEST_FIRST[client]
    for path, data, holders in (
        ("/fed/ml/west-coast.bin", WEST_COAST, {"triumf", "uvic"}),
        ("/fed/ml/geneva-victoria.bin", GENEVA_VICTORIA, {"cern", "uvic"}),
    ):
        _, size, _, urls = parse_metalink(metalink_from(geofed, path, client))
        assert size == len(data)
        assert [site_of(u, sites, geofed) for u in urls] == [s for s in CLOSEST_FIRST[client] if s in holders]


def test_every_url_of_the_metalink_serves_the_bytes(sites: Sites, geofed: GeofedServer) -> None:
    _, _, _, urls = parse_metalink(metalink_from(geofed, "/fed/ml/everywhere.bin", "triumf"))
    assert len(urls) == 3
    for url in urls:
        status, _, body = fetch(url)
        assert status == 200, url
        assert body == EVERYWHERE, url


def test_hashes_appear_once_known(sites: Sites, geofed: GeofedServer) -> None:
    path = "/fed/ml/geneva-victoria.bin"
    _, _, hashes, _ = parse_metalink(metalink_from(geofed, path, "cern"))
    assert hashes == {}  # a metalink never waits for a checksum to be computed
    status, headers, _ = fetch(geofed.url + path, "-I", "-H", "Want-Digest: adler32")
    assert status == 200
    assert headers["digest"] == f"adler32={zlib.adler32(GENEVA_VICTORIA):08x}"
    _, _, hashes, _ = parse_metalink(metalink_from(geofed, path, "uvic"))
    assert hashes == {
        "adler32": f"{zlib.adler32(GENEVA_VICTORIA):08x}",
        "md5": hashlib.md5(GENEVA_VICTORIA).hexdigest(),
        "sha-256": hashlib.sha256(GENEVA_VICTORIA).hexdigest(),
        "crc32c": f"{google_crc32c.value(GENEVA_VICTORIA):08x}",
    }


def test_metalink_of_a_missing_file_is_404(geofed: GeofedServer) -> None:
    status, _, _ = fetch(geofed.url + "/fed/ml/absent.bin?metalink")
    assert status == 404
    status, _, _ = fetch(geofed.url + "/fed/ml/absent.bin", "-H", f"Accept: {MEDIA_TYPE}")
    assert status == 404


# -- pointing at it: Link rel=describedby --------------------------------------------------------


def describedby(headers: dict[str, str]) -> str:
    """The target of the ``rel=describedby`` member of a ``Link`` header."""
    for member in headers.get("link", "").split(","):
        target, _, params = member.strip().partition(";")
        if "rel=describedby" in params.replace(" ", ""):
            assert f'type="{MEDIA_TYPE}"' in params
            return target.strip().strip("<>")
    raise AssertionError(f"no rel=describedby in {headers.get('link')!r}")


def test_redirect_and_head_point_at_the_metalink(sites: Sites, geofed: GeofedServer) -> None:
    url = geofed.url + "/fed/ml/west-coast.bin"
    for attempt in range(2):  # the first redirect is prepared, the second served from the prepared one
        status, headers, _ = fetch(url, "--interface", client_ip("uvic"))
        assert status == 302, attempt
        assert site_of(headers["location"], sites, geofed) == "uvic"
        assert describedby(headers) == "/fed/ml/west-coast.bin?metalink"
    status, headers, _ = fetch(url, "-I")
    assert status == 200
    link = urljoin(url, describedby(headers))
    status, headers, body = fetch(link)
    assert status == 200 and headers["content-type"] == MEDIA_TYPE
    assert parse_metalink(body)[1] == len(WEST_COAST)


# -- davix failover ----------------------------------------------------------------------------------


def davix(tool: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    path = shutil.which(tool) or shutil.which(tool, path="/usr/bin:/bin")
    if path is None:
        pytest.fail(f"{tool} is not installed (Debian package davix)", pytrace=False)
    return subprocess.run(
        [path, "--timeout", str(DAVIX_TIMEOUT_S), *args],
        capture_output=True,
        timeout=DAVIX_TIMEOUT_S * 3,
        check=False,
    )


def test_davix_fails_over_through_the_metalink(sites: Sites) -> None:
    """davix cannot bind a source address, so its address (127.0.0.1) is placed in Geneva by a
    client network: the closest replica is then cern's, which is removed after geofed cached the
    locate answer, so the redirect still points at it and the data route answers 404."""
    data = os.urandom(400_000)
    for site in ("cern", "triumf", "uvic"):
        sites.put_file(site, "/ml/failover.bin", data)
    lat, lon = CITIES["cern"][2], CITIES["cern"][3]
    settings = sites.settings(
        client_networks=[{"cidr": "127.0.0.1/32", "location": {"lat": lat, "lon": lon}}]
    )
    with GeofedServer(settings) as server:
        url = server.url + "/fed/ml/failover.bin"
        status, headers, _ = fetch(url)
        assert status == 302 and site_of(headers["location"], sites, server) == "cern"
        (sites.roots["cern"] / "ml" / "failover.bin").unlink()
        status, _, _ = fetch(headers["location"])
        assert status == 404  # the closest replica is broken; geofed still sends clients there

        # without metalink failover davix gives up ...
        completed = davix("davix-get", "--metalink", "no", url)
        assert completed.returncode != 0
        assert b"404" in completed.stderr
        # ... with it (the default) it asks the metalink and reads the next replica
        completed = davix("davix-get", "--trace", "header", url)
        trace = completed.stderr.decode(errors="replace")
        assert completed.returncode == 0, trace[-3000:]
        assert completed.stdout == data
        assert "> HEAD /fed/ml/failover.bin HTTP/1.1" in trace
        assert f"> Accept: {MEDIA_TYPE}" in trace
        assert "> GET /fed/ml/failover.bin?metalink HTTP/1.1" in trace
        assert f"> GET /{'ml/failover.bin'} HTTP/1.1" in trace  # from the next closest site
        log = server.flush_access_log()
        assert " HEAD /fed/ml/failover.bin 200 stat " in log
        assert " GET /fed/ml/failover.bin 200 metalink " in log
        assert " GET /_geofed/data/cern/ml/failover.bin 404 data cern " in log
    # the replica davix read is the Apache one (Vancouver is closer to Geneva than Victoria)
    apache_log = (sites.base / "triumf" / "work" / "access.log").read_text()
    assert '"GET /ml/failover.bin HTTP/1.1" 200' in apache_log
