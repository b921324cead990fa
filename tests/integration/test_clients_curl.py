"""curl through geofed against every endpoint kind (local directory, Apache mod_dav, nginx dav-ext).

curl is the reference client: it does exactly what it is told, follows redirects only with ``-L``
and shows every byte it sends with ``--trace-ascii``, which is how the PUT tests prove that the body
never went to geofed (the 307 must be answered at ``Expect: 100-continue``, before the body).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urljoin, urlsplit

import pytest

pytestmark = pytest.mark.integration

CURL_TIMEOUT_S = 20
DAV = "{DAV:}"


@dataclass
class Reply:
    """The final response of one curl run (after any redirects it followed)."""

    status: int
    headers: dict[str, str]
    body: bytes
    statuses: list[int]
    """Status of every response curl received, in order (one per hop; interim 100 excluded)."""
    trace: str = ""
    stdout: bytes = b""
    """What curl printed (e.g. for ``--write-out``)."""


def curl_path() -> str:
    found = shutil.which("curl") or shutil.which("curl", path="/usr/bin:/bin")
    if found is None:
        pytest.fail("curl is not installed: run scripts/install-test-deps.sh", pytrace=False)
    return found


def curl(*args: str, tmp: Path, trace: bool = False) -> Reply:
    """Run ``curl -sS`` with ``args``; headers of every hop go to a file, the body to another."""
    headers_file = tmp / "curl-headers"
    body_file = tmp / "curl-body"
    trace_file = tmp / "curl-trace"
    for path in (headers_file, body_file, trace_file):
        path.unlink(missing_ok=True)
    argv = [
        curl_path(),
        "--silent",
        "--show-error",
        "--max-time",
        str(CURL_TIMEOUT_S),
        "--dump-header",
        str(headers_file),
        "--output",
        str(body_file),
    ]
    if trace:
        argv += ["--trace-ascii", str(trace_file)]
    completed = subprocess.run([*argv, *args], capture_output=True, timeout=CURL_TIMEOUT_S + 5, check=False)
    assert completed.returncode == 0, f"curl {args} failed: {completed.stderr.decode(errors='replace')}"
    blocks = [b for b in headers_file.read_bytes().decode("iso-8859-1").split("\r\n\r\n") if b.strip()]
    statuses: list[int] = []
    headers: dict[str, str] = {}
    for block in blocks:
        lines = block.strip("\r\n").split("\r\n")
        match = re.match(r"HTTP/[\d.]+ (\d{3})", lines[0])
        assert match is not None, lines[0]
        status = int(match.group(1))
        if status == 100:
            continue
        statuses.append(status)
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = body_file.read_bytes() if body_file.exists() else b""
    text = trace_file.read_text(errors="replace") if trace else ""
    return Reply(statuses[-1], headers, body, statuses, text, completed.stdout)


def bytes_sent_before_first_answer(trace: str) -> int:
    """Request-body bytes curl sent before it received the first final (non-100) status line."""
    sent = 0
    for line in trace.splitlines():
        if re.match(r"<= Recv header, \d+ bytes", line):
            continue
        if line.startswith("0000: HTTP/") and not line.startswith("0000: HTTP/1.1 100"):
            # the first status line that is not an interim 100: the server's real answer
            return sent
        match = re.match(r"=> Send data, (\d+) bytes", line)
        if match:
            sent += int(match.group(1))
    raise AssertionError(f"no final status line in the trace:\n{trace[-3000:]}")


def payload(size: int, seed: int = 7) -> bytes:
    """Deterministic, non-repeating-looking bytes (so an offset error shows)."""
    block = bytes((i * 31 + seed) % 251 for i in range(251))
    return (block * (size // len(block) + 1))[:size]


def propfind(
    fed_path: str, depth: str, base: str, tmp: Path, body: str | None = None
) -> tuple[Reply, ET.Element]:
    args = ["-X", "PROPFIND", "-H", f"Depth: {depth}"]
    if body is not None:
        args += ["-H", "Content-Type: application/xml", "--data-binary", body]
    reply = curl(*args, base + fed_path, tmp=tmp)
    assert reply.status == 207, (reply.status, reply.body[:500])
    assert reply.headers.get("content-type", "").startswith("application/xml")
    return reply, ET.fromstring(reply.body)


def hrefs(root: ET.Element) -> list[str]:
    return [(r.findtext(f"{DAV}href") or "") for r in root.iter(f"{DAV}response")]


def prop_of(root: ET.Element, href: str, name: str) -> ET.Element | None:
    for response in root.iter(f"{DAV}response"):
        if response.findtext(f"{DAV}href") == href:
            return response.find(f".//{DAV}prop/{DAV}{name}")
    raise AssertionError(f"no response for {href} in {hrefs(root)}")


# -- GET ----------------------------------------------------------------------------------------


def test_get_follows_302_to_exact_bytes(fed, tmp_path: Path) -> None:
    data = payload(200_000)
    fed.seed("data/file.bin", data)
    reply = curl("-L", fed.url_for("data/file.bin"), tmp=tmp_path)
    assert reply.statuses == [302, 200], reply.statuses
    assert reply.body == data


def test_get_without_follow_is_a_302_elsewhere(fed, tmp_path: Path) -> None:
    fed.seed("a.txt", b"hello\n")
    reply = curl(fed.url_for("a.txt"), tmp=tmp_path)
    assert reply.status == 302
    location = reply.headers["location"]
    assert location.startswith("http://")
    assert "/fed/" not in location  # it points at the endpoint, not back at the federation


def test_range_get_through_redirect(fed, tmp_path: Path) -> None:
    data = payload(100_000, seed=3)
    fed.seed("ranged.bin", data)
    reply = curl("-L", "-r", "1000-1999", fed.url_for("ranged.bin"), tmp=tmp_path)
    assert reply.statuses == [302, 206], reply.statuses
    assert reply.body == data[1000:2000]
    assert reply.headers["content-range"] == f"bytes 1000-1999/{len(data)}"
    tail = curl("-L", "-H", "Range: bytes=-10", fed.url_for("ranged.bin"), tmp=tmp_path)
    assert tail.status == 206 and tail.body == data[-10:]


def test_get_missing_is_404(fed, tmp_path: Path) -> None:
    reply = curl("-L", fed.url_for("nope.bin"), tmp=tmp_path)
    assert reply.statuses == [404]


def test_get_with_space_in_name(fed, tmp_path: Path) -> None:
    fed.seed("my dir/a file.txt", b"spaced out\n")
    reply = curl("-L", fed.url_for("my dir/a file.txt"), tmp=tmp_path)
    assert reply.statuses == [302, 200]
    assert reply.body == b"spaced out\n"


# -- PUT ----------------------------------------------------------------------------------------


def _put(fed, tmp_path: Path, name: str, data: bytes) -> Reply:
    source = tmp_path / "upload.src"
    source.write_bytes(data)
    reply = curl("-L", "-T", str(source), fed.url_for(name), tmp=tmp_path, trace=True)
    return reply


def test_put_follows_307_and_body_goes_only_to_the_endpoint(fed, tmp_path: Path) -> None:
    data = payload(300_000, seed=11)
    reply = _put(fed, tmp_path, "up/small.bin", data)
    assert reply.statuses[0] == 307, reply.statuses
    assert reply.statuses[-1] in (200, 201, 204), reply.statuses
    assert len(reply.statuses) == 2, reply.statuses
    # curl sent "Expect: 100-continue"; geofed must answer 307 before any body byte was sent.
    assert "Expect: 100-continue" in reply.trace
    assert bytes_sent_before_first_answer(reply.trace) == 0
    assert fed.stored("up/small.bin").read_bytes() == data
    # and geofed now serves it
    back = curl("-L", fed.url_for("up/small.bin"), tmp=tmp_path)
    assert back.body == data


def test_put_5mb(fed, tmp_path: Path) -> None:
    data = os.urandom(5 * 1024 * 1024)
    reply = _put(fed, tmp_path, "big/five.bin", data)
    assert reply.statuses[0] == 307 and reply.statuses[-1] in (200, 201, 204), reply.statuses
    assert bytes_sent_before_first_answer(reply.trace) == 0
    stored = fed.stored("big/five.bin")
    assert stored.stat().st_size == len(data)
    assert stored.read_bytes() == data
    head = curl("-I", fed.url_for("big/five.bin"), tmp=tmp_path)
    assert head.headers["content-length"] == str(len(data))


def test_put_overwrites(fed, tmp_path: Path) -> None:
    fed.seed("over.txt", b"old contents, longer than the new ones\n")
    reply = _put(fed, tmp_path, "over.txt", b"new\n")
    assert reply.statuses[0] == 307 and reply.statuses[-1] in (200, 201, 204), reply.statuses
    assert fed.stored("over.txt").read_bytes() == b"new\n"
    assert curl("-L", fed.url_for("over.txt"), tmp=tmp_path).body == b"new\n"


def test_put_empty_file(fed, tmp_path: Path) -> None:
    reply = _put(fed, tmp_path, "empty/zero.bin", b"")
    assert reply.statuses[0] == 307 and reply.statuses[-1] in (200, 201, 204), reply.statuses
    assert fed.stored("empty/zero.bin").read_bytes() == b""
    head = curl("-I", fed.url_for("empty/zero.bin"), tmp=tmp_path)
    assert head.status == 200 and head.headers["content-length"] == "0"


# -- HEAD ---------------------------------------------------------------------------------------


def test_head_gives_content_length(fed, tmp_path: Path) -> None:
    fed.seed("h/file.bin", payload(12_345))
    reply = curl("-I", fed.url_for("h/file.bin"), tmp=tmp_path)
    assert reply.statuses == [200]  # answered by geofed itself, no redirect
    assert reply.headers["content-length"] == "12345"
    missing = curl("-I", fed.url_for("h/missing.bin"), tmp=tmp_path)
    assert missing.status == 404


# -- PROPFIND -----------------------------------------------------------------------------------

DAVIX_BODY = (
    '<D:propfind xmlns:D="DAV:" xmlns:L="LCGDM:"><D:prop><D:displayname/><D:getlastmodified/>'
    "<D:creationdate/><D:getcontentlength/><D:quota-used-bytes/><D:resourcetype><D:collection/>"
    "</D:resourcetype><L:mode/><D:owner></D:owner><D:group></D:group></D:prop></D:propfind>"
)


def test_propfind_depth0_file(fed, tmp_path: Path) -> None:
    fed.seed("p/file.bin", payload(4321))
    path = fed.path_for("p/file.bin")
    _, root = propfind(path, "0", fed.base, tmp_path)
    assert hrefs(root) == [path]
    length = prop_of(root, path, "getcontentlength")
    assert length is not None and length.text == "4321"
    resourcetype = prop_of(root, path, "resourcetype")
    assert resourcetype is not None and resourcetype.find(f"{DAV}collection") is None


def test_propfind_depth1_collection(fed, tmp_path: Path) -> None:
    fed.seed("col/one.txt", b"1")
    fed.seed("col/two.txt", b"22")
    fed.seed_dir("col/sub")
    for path in (fed.path_for("col"), fed.path_for("col") + "/"):
        _, root = propfind(path, "1", fed.base, tmp_path)
        got = hrefs(root)
        assert got[0] == path, got  # the collection itself, byte for byte as requested
        base = path.rstrip("/") + "/"
        assert sorted(got[1:]) == sorted([base + "one.txt", base + "two.txt", base + "sub/"])
        assert prop_of(root, path, "resourcetype").find(f"{DAV}collection") is not None
        assert prop_of(root, base + "two.txt", "getcontentlength").text == "2"


def test_propfind_with_davix_body(fed, tmp_path: Path) -> None:
    fed.seed("dx/f.txt", b"abc")
    path = fed.path_for("dx")
    _, root = propfind(path, "1", fed.base, tmp_path, body=DAVIX_BODY)
    assert hrefs(root) == [path, path + "/f.txt"]
    assert prop_of(root, path + "/f.txt", "getcontentlength").text == "3"


def test_propfind_href_with_space_is_byte_for_byte(fed, tmp_path: Path) -> None:
    fed.seed("with space/a b.txt", b"x")
    directory = fed.path_for("with space")
    assert "%20" in directory
    _, root = propfind(directory, "0", fed.base, tmp_path)
    assert hrefs(root) == [directory]
    _, root = propfind(directory, "1", fed.base, tmp_path)
    assert hrefs(root) == [directory, directory + "/a%20b.txt"]
    file_path = fed.path_for("with space/a b.txt")
    _, root = propfind(file_path, "0", fed.base, tmp_path)
    assert hrefs(root) == [file_path]


def test_propfind_href_keeps_the_clients_own_encoding(fed, tmp_path: Path) -> None:
    """Lower-case escapes and escaped unreserved characters come back exactly as sent."""
    fed.seed("caf\u00e9/x-y.txt", b"x")
    for path in ("/fed/caf%c3%a9", "/fed/caf%C3%A9", "/fed/caf%c3%a9/x%2Dy.txt", "/fed/caf%C3%A9/x-y.txt"):
        _, root = propfind(path, "0", fed.base, tmp_path)
        assert hrefs(root) == [path]
    _, root = propfind("/fed/caf%c3%a9/", "1", fed.base, tmp_path)
    assert hrefs(root)[0] == "/fed/caf%c3%a9/"
    assert hrefs(root)[1:] == ["/fed/caf%c3%a9/x-y.txt"]


def test_propfind_of_federated_prefix(fed, tmp_path: Path) -> None:
    fed.seed("top.txt", b"t")
    _, root = propfind("/fed", "1", fed.base, tmp_path)
    assert hrefs(root) == ["/fed", "/fed/top.txt"]
    _, root = propfind("/", "1", fed.base, tmp_path)
    assert hrefs(root) == ["/", "/fed/"]


def test_propfind_missing_is_404(fed, tmp_path: Path) -> None:
    reply = curl("-X", "PROPFIND", "-H", "Depth: 0", fed.url_for("absent"), tmp=tmp_path)
    assert reply.status == 404


# -- MKCOL, DELETE, OPTIONS -----------------------------------------------------------------------


def test_mkcol_201_then_405(fed, tmp_path: Path) -> None:
    url = fed.url_for("newdir")
    first = curl("-X", "MKCOL", url, tmp=tmp_path)
    assert first.statuses == [201], first.body
    assert fed.stored("newdir").is_dir()
    second = curl("-X", "MKCOL", url, tmp=tmp_path)
    assert second.statuses == [405], second.body
    _, root = propfind(fed.path_for("newdir"), "0", fed.base, tmp_path)
    assert prop_of(root, fed.path_for("newdir"), "resourcetype").find(f"{DAV}collection") is not None


def test_mkcol_without_parent_is_409(fed, tmp_path: Path) -> None:
    reply = curl("-X", "MKCOL", fed.url_for("no/such/parent"), tmp=tmp_path)
    assert reply.status == 409
    assert not fed.stored("no").exists()


def test_delete_file_204_then_404(fed, tmp_path: Path) -> None:
    fed.seed("d/gone.txt", b"bye")
    url = fed.url_for("d/gone.txt")
    assert curl("-I", url, tmp=tmp_path).status == 200  # known to geofed (and cached) first
    first = curl("-X", "DELETE", url, tmp=tmp_path)
    assert first.statuses == [204], first.body
    assert not fed.stored("d/gone.txt").exists()
    second = curl("-X", "DELETE", url, tmp=tmp_path)
    assert second.statuses == [404]
    assert curl("-I", url, tmp=tmp_path).status == 404


def test_delete_collection(fed, tmp_path: Path) -> None:
    fed.seed("tree/leaf.txt", b"leaf")
    first = curl("-X", "DELETE", fed.url_for("tree"), tmp=tmp_path)
    assert first.statuses == [204], first.body
    assert not fed.stored("tree").exists()
    assert curl("-X", "DELETE", fed.url_for("tree"), tmp=tmp_path).status == 404


def test_options(fed, tmp_path: Path) -> None:
    reply = curl("-X", "OPTIONS", fed.url_for(""), tmp=tmp_path)
    assert reply.status == 200
    assert "1" in [v.strip() for v in reply.headers["dav"].split(",")]
    allowed = {m.strip() for m in reply.headers["allow"].split(",")}
    assert {"GET", "HEAD", "PUT", "DELETE", "MKCOL", "PROPFIND", "OPTIONS"} <= allowed


# -- listings -----------------------------------------------------------------------------------


def test_get_collection_html(fed, tmp_path: Path) -> None:
    fed.seed("list/alpha.txt", b"a")
    fed.seed("list/be ta.txt", b"bb")
    fed.seed_dir("list/gamma")
    reply = curl("-L", fed.url_for("list"), tmp=tmp_path)
    assert reply.statuses == [200]
    assert reply.headers["content-type"].startswith("text/html")
    text = reply.body.decode()
    assert "alpha.txt" in text and "be%20ta.txt" in text and "gamma/" in text


def test_get_collection_json(fed, tmp_path: Path) -> None:
    fed.seed("list/alpha.txt", b"a")
    fed.seed("list/be ta.txt", b"bb")
    fed.seed_dir("list/gamma")
    reply = curl("-L", "-H", "Accept: application/json", fed.url_for("list"), tmp=tmp_path)
    assert reply.statuses == [200]
    assert reply.headers["content-type"].startswith("application/json")
    doc = json.loads(reply.body)
    entries = {e["name"]: e for e in doc["entries"]}
    assert set(entries) == {"alpha.txt", "be ta.txt", "gamma"}
    assert entries["be ta.txt"]["type"] == "file" and entries["be ta.txt"]["size"] == 2
    assert entries["gamma"]["type"] == "collection"
    assert doc["errors"] == {}


# -- the macaroon request gfal2 may send ------------------------------------------------------------


def test_macaroon_request_post_is_refused_fast(fed, tmp_path: Path) -> None:
    """gfal2's token request (clients.md §7.1) must get a fast non-200, so gfal2 carries on."""
    fed.seed("m.txt", b"m")
    reply = curl(
        "-X",
        "POST",
        "-H",
        "Content-Type: application/macaroon-request",
        "--data-binary",
        '{"caveats": ["activity:DOWNLOAD,LIST"], "validity": "PT180M"}',
        "--write-out",
        "%{time_total}",
        fed.url_for("m.txt"),
        tmp=tmp_path,
    )
    assert reply.statuses == [405], reply.statuses
    assert "POST" not in reply.headers["allow"]
    assert float(reply.stdout) < 1.0


ODD_NAMES = (
    "a+b&c.txt",
    "caf\u00e9 \u00fcml.txt",
    "100%.txt",
    "semi;colon=eq.txt",
    "hash#tag.txt",
    "q?uestion.txt",
)


def test_child_hrefs_round_trip_with_odd_names(fed, tmp_path: Path) -> None:
    """Every child href of a Depth 1 answer can be requested again: GET gives the file, PROPFIND itself."""
    contents = {name: f"contents of {name}\n".encode() for name in ODD_NAMES}
    for name, data in contents.items():
        fed.seed(f"odd/{name}", data)
    folder = fed.path_for("odd")
    _, root = propfind(folder, "1", fed.base, tmp_path)
    children = hrefs(root)[1:]
    assert len(children) == len(ODD_NAMES), children
    seen = {}
    for href in children:
        assert href.startswith(folder + "/")
        assert "?" not in href and "#" not in href, href  # must be percent-encoded in an href
        _, single = propfind(href, "0", fed.base, tmp_path)
        assert hrefs(single) == [href]
        name = prop_of(single, href, "displayname").text
        body = curl("-L", fed.base + href, tmp=tmp_path)
        assert body.statuses == [302, 200], (href, body.statuses)
        seen[name] = body.body
    assert seen == contents


@pytest.mark.parametrize("slash", ["", "/"], ids=["no-slash", "slash"])
def test_html_listing_links_resolve(fed, tmp_path: Path, slash: str) -> None:
    """A browser resolves each link of the listing against the page URL: each must reach its file.

    (A server may also redirect ``/dir`` to ``/dir/`` first, as Apache does; curl -L follows that.)
    """
    fed.seed("links/alpha.txt", b"alpha\n")
    fed.seed("links/be ta.txt", b"beta\n")
    fed.seed("links/sub/inner.txt", b"inner\n")
    page_url = fed.url_for("links") + slash
    reply = curl("-L", "--write-out", "%{url_effective}", page_url, tmp=tmp_path)
    assert reply.status == 200 and reply.headers["content-type"].startswith("text/html")
    effective = reply.stdout.decode()
    links = re.findall(r'<a href="([^"]+)"', reply.body.decode())
    resolved = {urlsplit(urljoin(effective, link)).path: link for link in links}
    expected = {
        fed.path_for("links/alpha.txt"): b"alpha\n",
        fed.path_for("links/be ta.txt"): b"beta\n",
        fed.path_for("links/sub").rstrip("/") + "/": None,
        fed.path_for("").rstrip("/") + "/": None,
    }
    assert set(resolved) == set(expected), links
    for path, data in expected.items():
        if data is None:  # a collection: the link leads to the right folder
            continue
        got = curl("-L", urljoin(effective, path), tmp=tmp_path)
        assert got.status == 200, f"link {resolved[path]!r} on {effective}: HTTP {got.statuses}"
        assert got.body == data
