"""Parsing of WebDAV multistatus bodies, on samples shaped like what Apache and nginx really send."""

from __future__ import annotations

import time

import pytest

from geofed.endpoints.base import StatResult
from geofed.endpoints.davxml import (
    MAX_TEXT,
    DavItem,
    DavXMLError,
    MultistatusParser,
    href_to_path,
    normalise_path,
    parse_http_date,
    parse_multistatus,
    parse_status,
    propfind_body,
)

# Apache mod_dav_fs: per-property namespace prefixes, a second propstat with 404 for the properties
# it does not have, collection hrefs with a trailing slash, lower-case percent-encoding.
APACHE_DEPTH1 = b"""<?xml version="1.0" encoding="utf-8"?>
<D:multistatus xmlns:D="DAV:" xmlns:ns0="DAV:">
<D:response xmlns:lp1="DAV:" xmlns:lp2="http://apache.org/dav/props/" xmlns:g0="DAV:">
<D:href>/base/sub/</D:href>
<D:propstat>
<D:prop>
<lp1:resourcetype><D:collection/></lp1:resourcetype>
<lp1:getlastmodified>Thu, 26 Nov 2026 01:15:41 GMT</lp1:getlastmodified>
<lp1:getetag>"1000-66123ae9a4c9c"</lp1:getetag>
</D:prop>
<D:status>HTTP/1.1 200 OK</D:status>
</D:propstat>
<D:propstat>
<D:prop>
<g0:getcontentlength/>
<g0:getcontenttype/>
</D:prop>
<D:status>HTTP/1.1 404 Not Found</D:status>
</D:propstat>
</D:response>
<D:response xmlns:lp1="DAV:" xmlns:lp2="http://apache.org/dav/props/" xmlns:g0="DAV:">
<D:href>/base/sub/a%20b%c3%a9.txt</D:href>
<D:propstat>
<D:prop>
<lp1:resourcetype/>
<lp1:getcontentlength>6</lp1:getcontentlength>
<lp1:getlastmodified>Mon, 01 Jan 2024 00:00:00 GMT</lp1:getlastmodified>
<lp1:getetag>"6-66123ae9a4c9c"</lp1:getetag>
</D:prop>
<D:status>HTTP/1.1 200 OK</D:status>
</D:propstat>
<D:propstat>
<D:prop>
<g0:getcontenttype/>
</D:prop>
<D:status>HTTP/1.1 404 Not Found</D:status>
</D:propstat>
</D:response>
</D:multistatus>
"""

# nginx dav-ext: one namespace prefix, no getetag at all, no 404 propstat, collection href as asked
# (here without the trailing slash), upper-case percent-encoding, empty <resourcetype></resourcetype>.
NGINX_DEPTH1 = b"""<?xml version="1.0" encoding="utf-8" ?>
<D:multistatus xmlns:D="DAV:">
<D:response>
<D:href>/sub</D:href>
<D:propstat>
<D:prop>
<D:getlastmodified>Thu, 26 Nov 2026 01:15:41 GMT</D:getlastmodified>
<D:resourcetype><D:collection/></D:resourcetype>
</D:prop>
<D:status>HTTP/1.1 200 OK</D:status>
</D:propstat>
</D:response>
<D:response>
<D:href>/sub/a%20b%C3%A9.txt</D:href>
<D:propstat>
<D:prop>
<D:getcontentlength>3</D:getcontentlength>
<D:getlastmodified>Mon, 01 Jan 2024 00:00:00 GMT</D:getlastmodified>
<D:resourcetype></D:resourcetype>
</D:prop>
<D:status>HTTP/1.1 200 OK</D:status>
</D:propstat>
</D:response>
</D:multistatus>
"""

JAN_2024 = 1704067200.0

BILLION_LAUGHS = b"""<?xml version="1.0"?>
<!DOCTYPE lolz [
 <!ENTITY lol "lol">
 <!ENTITY lol2 "&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;&lol;">
 <!ENTITY lol3 "&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;&lol2;">
 <!ENTITY lol4 "&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;&lol3;">
 <!ENTITY lol5 "&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;&lol4;">
 <!ENTITY lol6 "&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;&lol5;">
 <!ENTITY lol7 "&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;&lol6;">
 <!ENTITY lol8 "&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;&lol7;">
 <!ENTITY lol9 "&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;&lol8;">
]>
<D:multistatus xmlns:D="DAV:"><D:response><D:href>/&lol9;</D:href></D:response></D:multistatus>
"""


def _response(href: str, props: str, status: str = "HTTP/1.1 200 OK") -> str:
    return (
        f"<D:response><D:href>{href}</D:href><D:propstat><D:prop>{props}</D:prop>"
        f"<D:status>{status}</D:status></D:propstat></D:response>"
    )


def _multistatus(*responses: str) -> bytes:
    return (
        '<?xml version="1.0"?><D:multistatus xmlns:D="DAV:">' + "".join(responses) + "</D:multistatus>"
    ).encode()


def test_apache_listing_keeps_200_props_and_ignores_404_propstat() -> None:
    collection, file = parse_multistatus(APACHE_DEPTH1)
    assert collection == DavItem(
        "/base/sub",
        StatResult(is_dir=True, mtime=1795655741.0, etag='"1000-66123ae9a4c9c"'),
    )
    assert file == DavItem(
        "/base/sub/a bé.txt", StatResult(is_dir=False, size=6, mtime=JAN_2024, etag='"6-66123ae9a4c9c"')
    )


def test_nginx_listing_without_etag() -> None:
    collection, file = parse_multistatus(NGINX_DEPTH1)
    assert collection == DavItem("/sub", StatResult(is_dir=True, mtime=1795655741.0))
    assert file == DavItem("/sub/a bé.txt", StatResult(is_dir=False, size=3, mtime=JAN_2024))


def test_props_of_a_404_propstat_are_not_used_even_when_filled() -> None:
    body = _multistatus(
        "<D:response><D:href>/f</D:href>"
        "<D:propstat><D:prop><D:getcontentlength>5</D:getcontentlength></D:prop>"
        "<D:status>HTTP/1.1 200 OK</D:status></D:propstat>"
        '<D:propstat><D:prop><D:getetag>"bogus"</D:getetag><D:resourcetype><D:collection/></D:resourcetype>'
        "</D:prop><D:status>HTTP/1.1 404 Not Found</D:status></D:propstat></D:response>"
    )
    assert parse_multistatus(body) == [DavItem("/f", StatResult(is_dir=False, size=5))]


def test_response_level_404_is_dropped() -> None:
    body = _multistatus(
        _response("/d/", "<D:resourcetype><D:collection/></D:resourcetype>"),
        "<D:response><D:href>/d/gone</D:href><D:status>HTTP/1.1 404 Not Found</D:status></D:response>",
    )
    assert [item.path for item in parse_multistatus(body)] == ["/d"]


def test_all_properties_and_content_type() -> None:
    body = _multistatus(
        _response(
            "/x.nc",
            "<D:resourcetype/><D:getcontentlength> 1234 </D:getcontentlength>"
            "<D:getlastmodified>Mon, 01 Jan 2024 00:00:00 GMT</D:getlastmodified>"
            '<D:getetag>W/"abc"</D:getetag><D:getcontenttype>application/x-netcdf</D:getcontenttype>',
        )
    )
    assert parse_multistatus(body)[0].stat == StatResult(
        is_dir=False, size=1234, mtime=JAN_2024, etag='W/"abc"', content_type="application/x-netcdf"
    )


def test_missing_and_invalid_props_become_none() -> None:
    body = _multistatus(
        _response("/a", ""),
        _response(
            "/b",
            "<D:getcontentlength>-3</D:getcontentlength><D:getlastmodified>yesterday</D:getlastmodified>",
        ),
    )
    assert [item.stat for item in parse_multistatus(body)] == [StatResult(is_dir=False)] * 2


def test_absolute_url_hrefs_become_decoded_paths() -> None:
    body = _multistatus(
        _response(
            "http://127.0.0.1:8080/base/dir%20one/", "<D:resourcetype><D:collection/></D:resourcetype>"
        ),
        _response("https://user@host.example/base/dir%20one/%E2%82%AC%3F%23.txt", ""),
    )
    assert [item.path for item in parse_multistatus(body)] == ["/base/dir one", "/base/dir one/€?#.txt"]


def test_default_namespace_and_other_prefixes() -> None:
    body = (
        b'<multistatus xmlns="DAV:"><response><href>/p/</href><propstat><prop>'
        b"<resourcetype><collection/></resourcetype></prop><status>HTTP/1.1 200 OK</status>"
        b"</propstat></response></multistatus>"
    )
    assert parse_multistatus(body) == [DavItem("/p", StatResult(is_dir=True))]


def test_collection_outside_resourcetype_does_not_count() -> None:
    body = _multistatus(_response("/f", '<X:collection xmlns:X="DAV:"/><D:resourcetype/>'))
    assert parse_multistatus(body)[0].stat.is_dir is False


def test_href_with_non_utf8_bytes_is_skipped() -> None:
    body = _multistatus(_response("/ok", ""), _response("/bad%FF", ""))
    assert [item.path for item in parse_multistatus(body)] == ["/ok"]


def test_billion_laughs_is_refused_without_expansion() -> None:
    started = time.perf_counter()
    with pytest.raises(DavXMLError, match="DTDForbidden"):
        parse_multistatus(BILLION_LAUGHS)
    assert time.perf_counter() - started < 1.0


def test_external_entity_is_refused() -> None:
    body = (
        b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
        b'<D:multistatus xmlns:D="DAV:"><D:response><D:href>&e;</D:href></D:response></D:multistatus>'
    )
    with pytest.raises(DavXMLError, match=r"(?i)forbidden"):
        parse_multistatus(body)


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"", "empty body"),
        (b"<html><body>Not WebDAV</body></html>", "DAV:multistatus"),
        (b'<D:multistatus xmlns:D="DAV:"><D:response>', "invalid multistatus XML"),
        (b"not xml at all", "invalid multistatus XML"),
    ],
)
def test_malformed_bodies(body: bytes, message: str) -> None:
    with pytest.raises(DavXMLError, match=message):
        parse_multistatus(body)


def test_giant_text_node_is_refused() -> None:
    body = _multistatus(_response("/" + "a" * (MAX_TEXT + 1), ""))
    with pytest.raises(DavXMLError, match="longer than"):
        parse_multistatus(body)


def test_deep_nesting_is_refused() -> None:
    body = b'<D:multistatus xmlns:D="DAV:">' + b"<x>" * 100 + b"</x>" * 100 + b"</D:multistatus>"
    with pytest.raises(DavXMLError, match="nested deeper"):
        parse_multistatus(body)


def test_incremental_feeding_byte_by_byte_gives_the_same_items() -> None:
    parser = MultistatusParser()
    items: list[DavItem] = []
    for i in range(len(NGINX_DEPTH1)):
        items.extend(parser.feed(NGINX_DEPTH1[i : i + 1]))
    items.extend(parser.close())
    assert items == parse_multistatus(NGINX_DEPTH1)


def test_items_are_handed_back_as_soon_as_their_response_ends() -> None:
    parser = MultistatusParser()
    head, _, tail = APACHE_DEPTH1.partition(b"</D:response>")
    assert parser.feed(head) == []
    assert [item.path for item in parser.feed(b"</D:response>")] == ["/base/sub"]
    assert len(parser.feed(tail)) == 1
    assert parser.close() == []


def test_ten_thousand_entries_parse_fast() -> None:
    entry = (
        "<D:response><D:href>/base/dir/file%20{i}.dat</D:href><D:propstat><D:prop><D:resourcetype/>"
        "<D:getcontentlength>{i}</D:getcontentlength>"
        "<D:getlastmodified>Mon, 01 Jan 2024 00:00:00 GMT</D:getlastmodified>"
        '<D:getetag>"e{i}"</D:getetag></D:prop><D:status>HTTP/1.1 200 OK</D:status></D:propstat></D:response>'
    )
    body = _multistatus(*(entry.format(i=i) for i in range(10_000)))
    chunks = [body[i : i + 65536] for i in range(0, len(body), 65536)]
    started = time.perf_counter()
    items = parse_multistatus(chunks)
    elapsed = time.perf_counter() - started
    assert len(items) == 10_000
    assert items[-1] == DavItem("/base/dir/file 9999.dat", StatResult(False, 9999, JAN_2024, '"e9999"'))
    assert elapsed < 2.0, f"10k entries took {elapsed:.2f}s"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("/", "/"), ("", "/"), ("/a/", "/a"), ("//a//b///", "/a/b"), ("a", "/a"), ("///", "/")],
)
def test_normalise_path(raw: str, expected: str) -> None:
    assert normalise_path(raw) == expected


def test_href_to_path_ignores_query_and_fragment() -> None:
    assert href_to_path(" http://h:1/a%2Fb/c?x=1#frag ") == "/a/b/c"


@pytest.mark.parametrize(
    ("line", "code"),
    [("HTTP/1.1 200 OK", 200), (" HTTP/1.0 404 Not Found", 404), ("HTTP/2 207", 207), ("garbage", None)],
)
def test_parse_status(line: str, code: int | None) -> None:
    assert parse_status(line) == code


def test_parse_http_date() -> None:
    assert parse_http_date("Mon, 01 Jan 2024 00:00:00 GMT") == JAN_2024
    assert parse_http_date("not a date") is None
    assert parse_http_date(None) is None


def test_propfind_body_asks_for_exactly_the_stat_properties() -> None:
    from xml.etree import ElementTree

    root = ElementTree.fromstring(propfind_body())
    assert root.tag == "{DAV:}propfind"
    prop = root.find("{DAV:}prop")
    assert prop is not None
    assert sorted(child.tag for child in prop) == sorted(
        "{DAV:}" + name
        for name in ("resourcetype", "getcontentlength", "getlastmodified", "getetag", "getcontenttype")
    )
