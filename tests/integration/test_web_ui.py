"""The web UI, end to end: a real geofed over three real sites (a local directory in Geneva, Apache in
Vancouver, nginx in Victoria) and a fourth that is down (Hamburg, nothing listening), looked at by
Debian's real headless Chromium driven through Playwright, and by curl.

Chromium is the system's ``/usr/bin/chromium`` (``apt-get install chromium``, done by
``scripts/install-test-deps.sh``); Playwright is only the driver (the ``playwright`` package from
the test extras) and never downloads a browser. A missing browser or driver fails these tests with
the command that installs it: a web UI that nobody has rendered is not tested.

Screenshots are kept in ``tests/artifacts/web-ui/`` (ignored by git); their paths are printed.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest

from geofed.config import settings_from_mapping
from geofed.ui import worldmap
from tests.infra.geofed_server import GeofedServer
from tests.integration.federation_sites import CITIES, Sites, client_ip, curl, three_sites

pytestmark = pytest.mark.integration

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
]
INSTALL_CHROMIUM = "apt-get install -y chromium (or: bash scripts/install-test-deps.sh)"
INSTALL_PLAYWRIGHT = (
    ".venv/bin/pip install -e '.[test]' (the playwright package; never run `playwright install`: "
    "the tests use Debian's /usr/bin/chromium)"
)
ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts" / "web-ui"
METALINK_NS = "{urn:ietf:params:xml:ns:metalink}"

# the viewer (Chromium and curl from 127.0.0.1) is placed in Vancouver by a client network
VANCOUVER = {"lat": CITIES["triumf"][2], "lon": CITIES["triumf"][3]}
HAMBURG = {"lat": 53.5511, "lon": 9.9937}

SCRIPT_NAME = "<script>alert(1)</script>.txt"  # a path: '/' cannot be in a file name
HOSTILE_NAMES = ("<img src=x onerror=alert(1)>.txt", "q\"uo'te&amp.txt")
POLICY = [
    # the viewer may read and list these, and nothing else: /fed itself is shown only as the way
    # there, /fed/private not at all, /fed/readonly may be read but not listed
    {"path": "/fed/data", "allow": ["read", "list"], "to": ["anyone"]},
    {"path": "/fed/odd", "allow": ["read", "list"], "to": ["anyone"]},
    {"path": "/fed/readonly", "allow": ["read"], "to": ["anyone"]},
]


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def sites() -> Iterator[Sites]:
    with three_sites() as made:
        for site in ("cern", "triumf", "uvic"):
            made.put_file(site, "/data/common.dat", f"replica at {site}\n".encode())
        made.put_file("cern", "/data/only-cern.dat", b"only in Geneva\n")
        made.put_file("triumf", "/data/sub/nested.txt", b"nested\n")
        made.put_file("uvic", "/data/never-hashed.dat", b"nobody asked for my checksum\n")
        made.put_file("cern", "/odd/" + SCRIPT_NAME, b"hostile\n")
        for name in HOSTILE_NAMES:
            made.put_file("cern", "/odd/" + name, b"hostile\n")
        made.put_file("cern", "/private/secret-plans.dat", b"not for you\n")
        made.put_file("cern", "/readonly/readable.dat", b"read me, do not list me\n")
        yield made


@pytest.fixture(scope="module")
def geofed(sites: Sites) -> Iterator[GeofedServer]:
    endpoints: list[dict[str, Any]] = []
    for name, (_city, _cc, lat, lon, _net, _ip) in CITIES.items():
        endpoints.append(
            {
                "name": name,
                "kind": "local" if name == "cern" else "webdav",
                "url": sites.urls[name],
                "prefixes": [{"federated": "/fed", "endpoint": "/"}],
                "writable": True,
                "location": {"lat": lat, "lon": lon},
                "timeout": "2s",
                **({"quota": 50 * 2**30} if name == "cern" else {}),
            }
        )
    endpoints.append(
        {
            "name": "desy",
            "kind": "webdav",
            "url": f"http://127.0.0.1:{_closed_port()}/",
            "prefixes": [{"federated": "/fed/data", "endpoint": "/data"}],
            "location": HAMBURG,
            "timeout": "1s",
        }
    )
    settings = settings_from_mapping(
        {
            "signing": {"secret": "web-ui-test-secret-0123456789abcdef"},
            "auth": {"policy": POLICY},
            "geoip": {"database": str(sites.geoip)},
            "client_networks": [{"cidr": "127.0.0.1/32", "location": VANCOUVER}],
            "federation": {"locate_timeout": "2s", "fuzz_km": 0},
            "health": {"interval": "1s", "timeout": "0.5s"},
            "endpoints": endpoints,
        },
        environ={},
    )
    with GeofedServer(settings) as server:
        states = {n: s.state for n, s in server.federation.health.states.items()}
        assert states == {"cern": "up", "triumf": "up", "uvic": "up", "desy": "down"}, states
        yield server


# -- the browser ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.fail(f"{CHROMIUM} is missing; install it: {INSTALL_CHROMIUM}", pytrace=False)
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        pytest.fail(f"the playwright package is missing; install it: {INSTALL_PLAYWRIGHT}", pytrace=False)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@dataclass
class Watched:
    """A page, and what went wrong in it: console errors, page errors, failed requests, dialogs."""

    page: Any
    problems: list[str] = field(default_factory=list)
    dialogs: list[str] = field(default_factory=list)
    downloads: list[str] = field(default_factory=list)

    def unexpected(self) -> list[str]:
        """The problems, less the aborted navigation that every download is to Chromium."""
        saved = {f"request failed: {url} net::ERR_ABORTED" for url in self.downloads}
        return [p for p in self.problems if p not in saved]


@pytest.fixture
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Watched]:
    """A fresh page; parametrise it indirectly with False for a browser with JavaScript off."""
    javascript = bool(getattr(request, "param", True))
    context = browser.new_context(viewport={"width": 1280, "height": 900}, java_script_enabled=javascript)
    opened = context.new_page()
    watched = Watched(opened)
    opened.on(
        "console",
        lambda m: watched.problems.append(f"console {m.type}: {m.text}") if m.type == "error" else None,
    )
    opened.on("pageerror", lambda e: watched.problems.append(f"page error: {e}"))
    opened.on("requestfailed", lambda r: watched.problems.append(f"request failed: {r.url} {r.failure}"))
    opened.on(
        "response",
        lambda r: watched.problems.append(f"HTTP {r.status}: {r.url}") if r.status >= 400 else None,
    )

    def dismiss(dialog: Any) -> None:
        watched.dialogs.append(dialog.message)
        dialog.dismiss()

    opened.on("dialog", dismiss)
    opened.on("download", lambda d: watched.downloads.append(d.url))
    try:
        yield watched
    finally:
        context.close()
    assert watched.unexpected() == [], watched.problems
    assert watched.dialogs == [], f"a page ran a script: {watched.dialogs}"


def screenshot(page: Any, name: str) -> Path:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    path = ARTIFACTS / name
    page.screenshot(path=str(path), full_page=True)
    print(f"screenshot: {path}")
    return path


# -- in Chromium ------------------------------------------------------------------------------------


def test_dashboard_renders_states_and_a_map_in_chromium(geofed: GeofedServer, page: Watched) -> None:
    p = page.page
    before = _served(geofed, "triumf")
    for _ in range(3):  # three redirects, to Vancouver (127.0.0.1 is placed there)
        done = subprocess.run(
            ["curl", "-s", "-o", "/dev/null", "-w", "%{http_code}", f"{geofed.url}/fed/data/common.dat"],
            capture_output=True, text=True, timeout=20,
        )  # fmt: skip
        assert done.stdout == "302"
    geofed.flush_access_log()
    response = p.goto(f"{geofed.url}/_geofed/ui/")
    assert response is not None and response.status == 200
    screenshot(p, "dashboard.png")
    assert p.title() == "Endpoints · geofed"
    rows = p.locator("table tbody tr")
    assert rows.count() == 4
    states = {
        rows.nth(i).locator("th").inner_text(): rows.nth(i).get_attribute("data-state") for i in range(4)
    }
    assert states == {"cern": "up", "triumf": "up", "uvic": "up", "desy": "down"}
    desy = p.locator("tr#ep-desy")
    assert desy.locator(".state").inner_text() == "down"
    assert "since" in desy.inner_text()
    assert "Cannot connect" in desy.locator("td.err").inner_text()  # why: the last error
    cern = p.locator("tr#ep-cern")
    assert "ms" in cern.locator("td.n").first.inner_text()  # probe latency
    assert "50.0 GiB" in cern.inner_text()  # the quota
    assert "/fed → /" in cern.inner_text()

    svg = p.locator("svg.map")
    assert svg.count() == 1
    markers = svg.locator("g.marker")
    assert markers.count() == 4  # one per endpoint
    by_name = {markers.nth(i).get_attribute("data-endpoint"): markers.nth(i) for i in range(4)}
    assert set(by_name) == {"cern", "triumf", "uvic", "desy"}
    assert "down" in (by_name["desy"].get_attribute("class") or "")
    assert "up" in (by_name["cern"].get_attribute("class") or "")
    for name, marker in by_name.items():
        assert marker.locator("text").text_content() == name
        assert marker.locator("circle").is_visible()
    # equirectangular: x is the longitude, y the negated latitude
    pos = {
        n: tuple(float(m.locator("circle").get_attribute(a) or 0) for a in ("cx", "cy"))
        for n, m in by_name.items()
    }
    assert pos["cern"] == pytest.approx((CITIES["cern"][3], -CITIES["cern"][2]), abs=0.01)
    assert pos["uvic"][0] < pos["triumf"][0] < pos["cern"][0] < pos["desy"][0]
    assert pos["desy"][1] < pos["cern"][1]  # further north is higher up
    # the Vancouver and Victoria labels do not overlap
    baselines = [float(by_name[n].locator("text").get_attribute("y") or 0) for n in ("triumf", "uvic")]
    assert abs(baselines[0] - baselines[1]) >= worldmap.LABEL_SIZE
    assert p.locator("svg.map g.viewer").count() == 1  # the viewer, placed in Vancouver
    assert "Requests served" in p.inner_text("thead")
    assert _served_cell(p, "triumf") == before + 3


def _served(geofed: GeofedServer, endpoint: str) -> int:
    html = subprocess.run(
        ["curl", "-s", f"{geofed.url}/_geofed/ui/"], capture_output=True, text=True, timeout=20
    )
    row = html.stdout.split(f'id="ep-{endpoint}"', 1)[1].split("</tr>", 1)[0]
    return int(row.split('<td class="n served">', 1)[1].split("<", 1)[0].replace(",", ""))


def _served_cell(p: Any, endpoint: str) -> int:
    return int(p.locator(f"tr#ep-{endpoint} td.served").inner_text().replace(",", ""))


@pytest.mark.parametrize("page", [False], indirect=True, ids=["javascript-off"])
def test_browse_links_lead_from_a_directory_to_a_file_and_its_metalink(
    geofed: GeofedServer, page: Watched
) -> None:
    # a checksum known beforehand (asked by a client), to be shown without reading anything again
    head = curl("-I", "-H", "Want-Digest: adler32", f"{geofed.url}/fed/data/common.dat")
    assert "digest: adler32=" in head.stdout.lower(), head.stdout
    p = page.page
    p.goto(f"{geofed.url}/_geofed/ui/")
    p.click("header >> text=Browse")
    assert p.url == f"{geofed.url}/_geofed/ui/browse/"
    p.click("table >> text=fed/")
    assert p.url == f"{geofed.url}/_geofed/ui/browse/fed/"
    names = p.locator("table tbody tr td:first-child a").all_inner_texts()
    assert names == ["../", "data/", "odd/", "readonly/"]  # not private/: the viewer may not see it
    p.click("table >> text=data/")
    assert p.url == f"{geofed.url}/_geofed/ui/browse/fed/data/"
    assert p.locator("h1").inner_text() == "/fed/data"
    crumbs = p.locator("nav.crumbs a").all_inner_texts()
    assert crumbs == ["/", "fed"]
    names = p.locator("table tbody tr td:first-child a").all_inner_texts()
    assert names == ["../", "sub/", "common.dat", "never-hashed.dat", "only-cern.dat"]
    assert "desy: endpoint down" in p.locator(".warn").inner_text()  # its entries are missing
    screenshot(p, "browse.png")
    row = p.locator("tr.file", has_text="only-cern.dat")
    assert row.locator("td.n").inner_text() == "15 B"
    assert re.search(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d UTC", row.inner_text())  # the mtime

    p.click("table >> text=common.dat")
    assert p.url == f"{geofed.url}/_geofed/ui/browse/fed/data/common.dat"
    assert p.locator("h1").inner_text() == "common.dat"
    replicas = p.locator("table tbody tr")
    assert replicas.count() == 3
    order = [replicas.nth(i).get_attribute("data-endpoint") for i in range(3)]
    assert order == ["triumf", "uvic", "cern"]  # from Vancouver: here, Victoria, Geneva
    cells = [replicas.nth(i).locator("td").all_inner_texts() for i in range(3)]
    assert [c[0] for c in cells] == ["1", "2", "3"]
    assert cells[0][2] == "0 km"
    assert 80 <= int(cells[1][2].removesuffix(" km")) <= 110  # Vancouver-Victoria, ~95 km
    assert 8000 <= int(cells[2][2].removesuffix(" km").replace(",", "")) <= 8500
    assert all(c[3] == "up" for c in cells)
    # the adler32 asked for above is known for one replica; the page computed nothing
    assert any("ADLER32" in c[6] for c in cells)
    screenshot(p, "file.png")

    # Chromium saves a metalink (it does not render application/metalink4+xml): a download
    with p.expect_response(lambda r: "?metalink" in r.url) as answer, p.expect_download() as saved:
        p.click("a#metalink")
    assert answer.value.status == 200
    assert answer.value.headers["content-type"].startswith("application/metalink4+xml")
    download = saved.value
    assert download.url == f"{geofed.url}/fed/data/common.dat?metalink"
    root = ET.fromstring(Path(download.path()).read_bytes())
    urls = [u.text or "" for u in root.iter(f"{METALINK_NS}url")]
    assert len(urls) == 3
    assert root.find(f"{METALINK_NS}file/{METALINK_NS}size") is not None

    assert p.url == f"{geofed.url}/_geofed/ui/browse/fed/data/common.dat"  # a download: still here
    p.click("nav.crumbs >> text=data")
    assert p.url == f"{geofed.url}/_geofed/ui/browse/fed/data/"
    p.click("table >> text=sub/")
    assert p.locator("table tbody tr td:first-child a").all_inner_texts() == ["../", "nested.txt"]
    p.click("table >> text=../")
    assert p.url == f"{geofed.url}/_geofed/ui/browse/fed/data/"


def test_hostile_names_stay_text_in_chromium(geofed: GeofedServer, page: Watched) -> None:
    p = page.page
    p.goto(f"{geofed.url}/_geofed/ui/browse/fed/odd/")
    names = p.locator("table tbody tr td:first-child a").all_inner_texts()
    assert names == ["../", "<script>alert(1)</", *sorted(HOSTILE_NAMES, key=str.casefold)]
    p.click("table >> text=<script>alert(1)</")
    p.click("table >> text=script>.txt")
    assert p.locator("h1").inner_text() == "script>.txt"
    assert p.locator("dl.facts code").first.inner_text() == "/fed/odd/" + SCRIPT_NAME
    assert p.locator("script").count() == 0
    screenshot(p, "hostile.png")


# -- over plain HTTP --------------------------------------------------------------------------------


def fetch(url: str, *args: str) -> tuple[int, dict[str, str], str]:
    """Status, headers (lower-cased names) and body of a GET by curl."""
    out = curl("-D", "-", *args, url)
    assert out.returncode == 0, out.stderr
    head, _, body = out.stdout.partition("\n\n")  # curl's CRLFs, as text, are newlines
    lines = head.splitlines()
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers, body


def test_pages_are_small_html_without_scripts(geofed: GeofedServer) -> None:
    for path in ("/_geofed/ui/", "/_geofed/ui/browse/fed/data/", "/_geofed/ui/browse/fed/data/common.dat"):
        status, headers, body = fetch(geofed.url + path)
        assert status == 200, (path, body)
        assert headers["content-type"] == "text/html; charset=utf-8"
        assert "script-src" not in headers["content-security-policy"]
        assert headers["content-security-policy"].startswith("default-src 'none'")
        assert body.startswith("<!doctype html>")
        assert "<script" not in body
        external = body.replace('xmlns="http://www.w3.org/2000/svg"', "")
        assert "http://" not in external and "https://" not in external  # no asset from elsewhere
        assert len(body.encode()) < 40_000, (path, len(body))
    status, headers, _ = fetch(geofed.url + "/_geofed/ui")
    assert status == 301 and headers["location"] == "/_geofed/ui/"


def test_hostile_names_are_escaped(geofed: GeofedServer) -> None:
    status, _, body = fetch(f"{geofed.url}/_geofed/ui/browse/fed/odd/")
    assert status == 200
    assert "&lt;script&gt;alert(1)&lt;/" in body
    assert "&lt;img src=x onerror=alert(1)&gt;.txt" in body
    assert "q&quot;uo&#x27;te&amp;amp.txt" in body or "q\"uo'te&amp;amp.txt" in body
    assert "<script" not in body and "<img" not in body
    assert f'href="/_geofed/ui/browse/fed/odd/{quote(HOSTILE_NAMES[0])}"' in body
    status, _, body = fetch(f"{geofed.url}/_geofed/ui/browse{quote('/fed/odd/' + SCRIPT_NAME)}")
    assert status == 200
    assert "&lt;script&gt;alert(1)&lt;/script&gt;.txt" in body
    assert "<script" not in body
    assert f'href="{quote("/fed/odd/" + SCRIPT_NAME)}?metalink"' in body


def test_a_viewer_without_list_permission_is_refused(geofed: GeofedServer) -> None:
    for path, unseen in (
        ("/fed/private/", "secret-plans"),
        ("/fed/private/secret-plans.dat", "not for you"),
        ("/fed/readonly/", "readable.dat"),  # may read, may not list
    ):
        status, headers, body = fetch(f"{geofed.url}/_geofed/ui/browse{path}")
        assert status == 401, (path, status, body)
        assert headers["www-authenticate"].startswith("Bearer")
        assert headers["content-type"].startswith("text/html")
        assert unseen not in body
    # a file it may read (not list) still has its page
    status, _, body = fetch(f"{geofed.url}/_geofed/ui/browse/fed/readonly/readable.dat")
    assert status == 200 and "Download" in body
    status, _, body = fetch(f"{geofed.url}/_geofed/ui/browse/fed/")
    assert status == 200 and "private" not in body


def test_errors_and_bad_paths(geofed: GeofedServer) -> None:
    status, headers, body = fetch(f"{geofed.url}/_geofed/ui/browse/fed/odd/nowhere.dat")
    assert status == 404 and headers["content-type"].startswith("text/html") and "nowhere.dat" in body
    # desy (down) may hold /fed/data: not "not found", but "cannot say now", as for any GET
    status, headers, body = fetch(f"{geofed.url}/_geofed/ui/browse/fed/data/nowhere.dat")
    assert status == 503 and "desy" in body and headers["retry-after"]
    status, _, _ = fetch(f"{geofed.url}/_geofed/ui/browse/fed/data%2Fcommon.dat")
    assert status == 400


def test_a_file_page_never_computes_a_checksum(geofed: GeofedServer) -> None:
    before = geofed.federation.checksums.computations
    status, _, body = fetch(f"{geofed.url}/_geofed/ui/browse/fed/data/never-hashed.dat")
    assert status == 200
    assert "none known yet" in body
    assert geofed.federation.checksums.computations == before


def test_distances_are_from_the_viewer(geofed: GeofedServer) -> None:
    """curl from Victoria's address (placed by the GeoIP database): uvic comes first, at 0 km."""
    status, _, body = fetch(
        f"{geofed.url}/_geofed/ui/browse/fed/data/common.dat", "--interface", client_ip("uvic")
    )
    assert status == 200
    row = r'<tr data-endpoint="([a-z]+)"><td class="n">(\d)</td>.*?<td class="n">([\d,]+) km</td>'
    rows = re.findall(row, body)
    assert [r[0] for r in rows] == ["uvic", "triumf", "cern"]
    assert rows[0][2] == "0"
    assert "by geoip" in body
