from __future__ import annotations

import xml.etree.ElementTree as ET

import pytest

from geofed.endpoints.base import StatResult
from geofed.errors import BadRequest, Forbidden
from geofed.frontend.propfind import (
    PropfindRequest,
    child_href,
    parse_body,
    parse_depth,
    render_all,
    render_response,
)

DAVIX_BODY = (
    b'<D:propfind xmlns:D="DAV:" xmlns:L="LCGDM:"><D:prop><D:displayname/><D:getlastmodified/>'
    b"<D:creationdate/><D:getcontentlength/><D:quota-used-bytes/><D:resourcetype><D:collection/>"
    b"</D:resourcetype><L:mode/><D:owner></D:owner><D:group></D:group></D:prop></D:propfind>"
)
BOMB = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [<!ENTITY lol "lol"><!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">]>
<D:propfind xmlns:D="DAV:"><D:prop><D:displayname>&lol2;</D:displayname></D:prop></D:propfind>"""
FILE = StatResult(is_dir=False, size=1234, mtime=0.0, etag='"abc"')
DIR = StatResult(is_dir=True)


@pytest.mark.parametrize(("header", "depth"), [("0", 0), ("1", 1), (" 1 ", 1), (None, 1)])
def test_depth(header: str | None, depth: int) -> None:
    assert parse_depth(header) == depth


def test_depth_infinity_is_forbidden_and_garbage_is_bad() -> None:
    with pytest.raises(Forbidden):
        parse_depth("infinity")
    with pytest.raises(BadRequest, match="invalid Depth"):
        parse_depth("2")


def test_empty_body_and_allprop() -> None:
    assert parse_body(b"") == PropfindRequest()
    assert parse_body(b'<propfind xmlns="DAV:"><allprop/></propfind>') == PropfindRequest()


def test_davix_property_body() -> None:
    wanted = parse_body(DAVIX_BODY)
    assert not wanted.allprop
    assert ("DAV:", "getcontentlength") in wanted.props
    assert ("LCGDM:", "mode") in wanted.props


def test_propname() -> None:
    assert parse_body(b'<D:propfind xmlns:D="DAV:"><D:propname/></D:propfind>').propname


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (BOMB, "DTDs or entity"),
        (b"<propfind", "not well-formed"),
        (b'<D:other xmlns:D="DAV:"/>', "must be a DAV: propfind"),
        (b'<D:propfind xmlns:D="DAV:"/>', "empty propfind"),
        (b'<D:propfind xmlns:D="DAV:"><D:what/></D:propfind>', "allprop, propname or prop"),
    ],
)
def test_bad_bodies(body: bytes, message: str) -> None:
    with pytest.raises(BadRequest, match=message):
        parse_body(body)


def _parse(xml: str) -> ET.Element:
    return ET.fromstring(xml)


def test_render_file_allprop() -> None:
    root = _parse(render_all([render_response("/a%20b/f.root", "f.root", FILE, PropfindRequest())]))
    ns = {"D": "DAV:"}
    assert root.findtext("D:response/D:href", namespaces=ns) == "/a%20b/f.root"
    prop = root.find("D:response/D:propstat/D:prop", ns)
    assert prop is not None
    assert prop.findtext("D:getcontentlength", namespaces=ns) == "1234"
    assert prop.findtext("D:getlastmodified", namespaces=ns) == "Thu, 01 Jan 1970 00:00:00 GMT"
    assert prop.find("D:resourcetype/D:collection", ns) is None
    assert prop.findtext("D:getetag", namespaces=ns) == '"abc"'


def test_render_requested_props_with_unknown_ones_in_404_propstat() -> None:
    xml = render_all([render_response("/d", "d", DIR, parse_body(DAVIX_BODY))])
    root = _parse(xml)
    ns = {"D": "DAV:"}
    propstats = root.findall("D:response/D:propstat", ns)
    assert [p.findtext("D:status", namespaces=ns) for p in propstats] == [
        "HTTP/1.1 200 OK",
        "HTTP/1.1 404 Not Found",
    ]
    ok = propstats[0].find("D:prop", ns)
    assert ok is not None and ok.find("D:resourcetype/D:collection", ns) is not None
    missing = propstats[1].find("D:prop", ns)
    assert missing is not None
    assert missing.find("{LCGDM:}mode") is not None
    assert missing.find("D:getcontentlength", ns) is not None  # a collection has no length


def test_render_escapes_names() -> None:
    xml = render_all([render_response("/x&y", "<x&y>", FILE, PropfindRequest())])
    root = _parse(xml)
    assert root.findtext(".//{DAV:}displayname") == "<x&y>"
    assert root.findtext(".//{DAV:}href") == "/x&y"


def test_child_href_builds_on_client_spelling() -> None:
    assert child_href("/fed/dir", "a b.txt", False) == "/fed/dir/a%20b.txt"
    assert child_href("/fed/dir/", "sub", True) == "/fed/dir/sub/"
    assert child_href("/fed/d%C3%BCr", "ü", False) == "/fed/d%C3%BCr/%C3%BC"
