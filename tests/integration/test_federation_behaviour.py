"""Namespace behaviour across real endpoints: merged listings with mount points, cache invalidation
by writes through geofed, status, access log, endpoint recovery and `geofed locate`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml

from tests.infra.geofed_server import GeofedServer
from tests.integration.federation_sites import Sites, client_ip, curl, redirect_of, three_sites

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def sites() -> Iterator[Sites]:
    with three_sites() as made:
        made.put_file("cern", "/mix/a.dat", b"a at cern\n")
        made.put_file("triumf", "/mix/a.dat", b"a at triumf\n")
        made.put_file("triumf", "/mix/b.dat", b"b\n")
        made.put_file("uvic", "/mix/c.dat", b"c\n")
        made.put_file("uvic", "/mix/sub/d.dat", b"d\n")
        yield made


@pytest.fixture(scope="module")
def geofed(sites: Sites) -> Iterator[GeofedServer]:
    with GeofedServer(sites.settings()) as server:
        yield server


def test_listing_is_the_deduplicated_union(geofed: GeofedServer) -> None:
    out = curl("-H", "Accept: application/json", f"{geofed.url}/fed/mix/")
    doc = json.loads(out.stdout)
    names = [e["name"] for e in doc["entries"]]
    assert sorted(names) == ["a.dat", "b.dat", "c.dat", "sub"]
    assert len(names) == len(set(names))
    types = {e["name"]: e["type"] for e in doc["entries"]}
    assert types["sub"] == "collection" and types["a.dat"] == "file"
    assert doc["errors"] == {}


def test_mount_points_show_as_collections(geofed: GeofedServer) -> None:
    doc = json.loads(curl("-H", "Accept: application/json", f"{geofed.url}/").stdout)
    assert doc["entries"] == [{"name": "fed", "type": "collection", "size": None, "mtime": None}]
    propfind = curl("-X", "PROPFIND", "-H", "Depth: 0", f"{geofed.url}/fed").stdout
    assert "<D:collection/>" in propfind and "<D:href>/fed</D:href>" in propfind


def test_html_listing_for_browsers(geofed: GeofedServer) -> None:
    out = curl("-D", "-", f"{geofed.url}/fed/mix")
    assert "Content-Type: text/html; charset=utf-8" in out.stdout
    assert '<a href="/fed/mix/a.dat">a.dat</a>' in out.stdout
    assert '<a href="/fed/mix/sub/">sub/</a>' in out.stdout


def test_propfind_depth1_lists_union_with_client_hrefs(geofed: GeofedServer) -> None:
    body = curl("-X", "PROPFIND", "-H", "Depth: 1", f"{geofed.url}/fed/mix/").stdout
    hrefs = [chunk.split("</D:href>")[0] for chunk in body.split("<D:href>")[1:]]
    assert hrefs[0] == "/fed/mix/"
    assert sorted(hrefs[1:]) == ["/fed/mix/a.dat", "/fed/mix/b.dat", "/fed/mix/c.dat", "/fed/mix/sub/"]


def test_write_through_geofed_is_found_at_once_despite_cached_404(geofed: GeofedServer, sites: Sites) -> None:
    url = f"{geofed.url}/fed/mix/new-{os.getpid()}.dat"
    assert redirect_of(url, client_ip("triumf"))[0] == 404  # now a negative cache entry
    src = sites.base / "upload.dat"
    src.write_bytes(b"fresh data\n" * 100)
    put = curl(
        "-L", "--interface", client_ip("triumf"), "-T", str(src), "-w", "%{http_code}", "-o", "/dev/null", url
    )
    assert put.stdout in ("201", "204"), put
    assert (sites.roots["triumf"] / "mix" / url.rsplit("/", 1)[1]).read_bytes() == src.read_bytes()
    status, location = redirect_of(url, client_ip("triumf"))
    assert status == 302 and location.startswith(sites.urls["triumf"])
    names = [
        e["name"]
        for e in json.loads(curl("-H", "Accept: application/json", f"{geofed.url}/fed/mix").stdout)["entries"]
    ]
    assert url.rsplit("/", 1)[1] in names
    # and a DELETE through geofed is seen at once too
    assert curl("-X", "DELETE", "-w", "%{http_code}", url).stdout == "204"
    assert redirect_of(url, client_ip("triumf"))[0] == 404


def test_mkcol_created_exists_and_missing_parent(geofed: GeofedServer, sites: Sites) -> None:
    base = f"{geofed.url}/fed/mix/newdir-{os.getpid()}"
    assert (
        curl(
            "-X", "MKCOL", "-w", "%{http_code}", "-o", "/dev/null", "--interface", client_ip("uvic"), base
        ).stdout
        == "201"
    )
    assert curl("-X", "MKCOL", "-w", "%{http_code}", "-o", "/dev/null", base).stdout == "405"
    assert (sites.roots["uvic"] / "mix" / base.rsplit("/", 1)[1]).is_dir()
    missing_parent = curl("-X", "MKCOL", "-w", "%{http_code}", "-o", "/dev/null", f"{base}/x/y").stdout
    assert missing_parent == "409"


def test_put_creates_missing_parents_on_apache(geofed: GeofedServer, sites: Sites) -> None:
    url = f"{geofed.url}/fed/deep-{os.getpid()}/a/b/c.dat"
    src = sites.base / "deep.dat"
    src.write_bytes(b"deep\n")
    out = curl(
        "-L", "--interface", client_ip("triumf"), "-T", str(src), "-w", "%{http_code}", "-o", "/dev/null", url
    )
    assert out.stdout == "201"
    assert (sites.roots["triumf"] / f"deep-{os.getpid()}" / "a" / "b" / "c.dat").read_bytes() == b"deep\n"


def test_status_document_and_access_log(geofed: GeofedServer) -> None:
    doc = json.loads(curl(f"{geofed.url}/_geofed/status").stdout)
    states = {e["name"]: e for e in doc["endpoints"]}
    assert set(states) == {"cern", "triumf", "uvic"}
    for state in states.values():
        assert state["state"] == "up" and state["latency_ms"] is not None and state["last_error"] is None
        assert "last_change" in state
    redirect_of(f"{geofed.url}/fed/mix/a.dat", client_ip("uvic"))
    deadline = time.monotonic() + 3
    line = ""
    while time.monotonic() < deadline:
        lines = [ln for ln in geofed.access_log.getvalue().splitlines() if "GET /fed/mix/a.dat" in ln]
        if lines:
            line = lines[-1]
            break
        time.sleep(0.1)
    fields = line.split()
    assert fields[1] == client_ip("uvic")
    assert fields[3:9] == ["GET", "/fed/mix/a.dat", "302", "redirect", "triumf", fields[8]]
    assert fields[8].endswith("ms")


def test_endpoint_comes_back_by_itself(sites: Sites, tmp_path: Path) -> None:
    settings = sites.settings()
    with GeofedServer(settings) as server:
        cern_root = sites.roots["cern"]
        hidden = cern_root.with_name("cern-hidden")
        cern_root.rename(hidden)
        try:
            wait_for(server, "cern", "down")
            assert redirect_of(f"{server.url}/fed/mix/a.dat", client_ip("cern"))[1].startswith(
                sites.urls["triumf"]
            )
        finally:
            hidden.rename(cern_root)
        wait_for(server, "cern", "up")
        server.run(server.federation.locations_cache.clear)
        assert "/_geofed/data/cern/" in redirect_of(f"{server.url}/fed/mix/a.dat", client_ip("cern"))[1]


def wait_for(server: GeofedServer, name: str, state: str) -> None:
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if server.run(lambda: server.federation.health.states[name].state) == state:
            return
        time.sleep(0.05)
    raise AssertionError(f"{name} never became {state}")


def test_locate_command_explains_the_ranking(sites: Sites, tmp_path: Path) -> None:
    settings = sites.settings()
    config = tmp_path / "geofed.yaml"
    config.write_text(yaml.safe_dump(json.loads(settings.model_dump_json())))
    geofed = Path(sys.executable).with_name("geofed")
    run = subprocess.run(
        [
            str(geofed),
            "locate",
            "/fed/mix/a.dat",
            "--config",
            str(config),
            "--client-ip",
            client_ip("cern"),
            "--json",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert run.returncode == 0, run.stderr
    doc = json.loads(run.stdout)
    assert [r["endpoint"] for r in doc["ranked"]] == ["cern", "triumf"]
    assert doc["ranked"][0]["reason"].startswith("closest")
    assert doc["client"]["source"] == "geoip"
    table = subprocess.run(
        [str(geofed), "locate", "/fed/mix/a.dat", "--config", str(config), "--client-ip", client_ip("uvic")],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert table.returncode == 0
    first = next(line for line in table.stdout.splitlines() if line.strip().startswith("1."))
    assert "triumf" in first and "km" in first
    missing = subprocess.run(
        [str(geofed), "locate", "/fed/none", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert missing.returncode == 1


def test_delete_reports_the_endpoints_that_failed(sites: Sites) -> None:
    sites.put_file("cern", "/mix/del.dat", b"x\n")
    sites.put_file("triumf", "/mix/del.dat", b"x\n")
    settings = sites.settings()
    read_only_cern = tuple(
        e.model_copy(update={"writable": False}) if e.name == "cern" else e for e in settings.endpoints
    )
    with GeofedServer(settings.model_copy(update={"endpoints": read_only_cern})) as server:
        out = curl("-X", "DELETE", "-w", "\n%{http_code}", f"{server.url}/fed/mix/del.dat")
        body, _, code = out.stdout.rpartition("\n")
        assert code == "502"
        assert "deleted on triumf" in body and "cern: endpoint is read-only" in body
    assert not (sites.roots["triumf"] / "mix" / "del.dat").exists()
    assert (sites.roots["cern"] / "mix" / "del.dat").exists()
