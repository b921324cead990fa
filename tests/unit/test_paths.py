from __future__ import annotations

import pytest

from geofed.errors import BadRequest
from geofed.federation.paths import basename, check_raw_path, is_within, join, normalise, parent


@pytest.mark.parametrize(
    ("raw", "expected"),
    [("/", "/"), ("/a/b/", "/a/b"), ("//a//b", "/a/b"), ("/a/./b", "/a/b"), ("/a b/ü", "/a b/ü")],
)
def test_normalise_canonical_forms(raw: str, expected: str) -> None:
    assert normalise(raw) == expected


@pytest.mark.parametrize("bad", ["/a/../b", "/..", "/a/..", "relative", "/a\x00b", "/a\\b", "/a\nb"])
def test_normalise_refuses_unsafe_paths(bad: str) -> None:
    with pytest.raises(BadRequest):
        normalise(bad)


@pytest.mark.parametrize("raw", ["/a%2fb", "/a%2Fb", "/a%5cb", "/a%00b", "/x/%2F/y?q=1"])
def test_raw_path_with_encoded_separators_is_refused(raw: str) -> None:
    with pytest.raises(BadRequest):
        check_raw_path(raw)


def test_raw_path_query_may_contain_encoded_slash() -> None:
    check_raw_path("/a/b?next=%2Fc")


def test_overlong_path_is_refused() -> None:
    with pytest.raises(BadRequest, match="longer"):
        check_raw_path("/" + "a" * 5000)


def test_parent_basename_join() -> None:
    assert parent("/a/b/c") == "/a/b"
    assert parent("/a") == "/"
    assert parent("/") == "/"
    assert basename("/a/b") == "b"
    assert basename("/") == ""
    assert join("/", "a", "b/") == "/a/b"
    assert join("/a/", "/b") == "/a/b"


def test_is_within_is_segment_wise() -> None:
    assert is_within("/atlas/x", "/atlas")
    assert is_within("/atlas", "/atlas")
    assert not is_within("/atlasx", "/atlas")
    assert is_within("/anything", "/")


@pytest.mark.parametrize(
    "raw",
    [
        "/",
        "/a/b",
        "/a/b/",
        "//a",
        "/a/./b",
        "/a%20b",
        "/ü/x",
        "/a/.hidden",
        "/a\\b",
        "/a%2fb",
        "/../x",
        "/a\x00",
        "/a/..",
        "/" + "x" * 5000,
        "/a?q=%2F",
    ],
)
def test_request_path_fast_exit_agrees_with_full_checks(raw: str) -> None:
    from urllib.parse import unquote

    from geofed.federation.paths import request_path

    decoded = unquote(raw.split("?", 1)[0])
    try:
        check_raw_path(raw)
        expected: str | type[BadRequest] = normalise(decoded)
    except BadRequest:
        expected = BadRequest
    if expected is BadRequest:
        with pytest.raises(BadRequest):
            request_path(raw, decoded)
    else:
        assert request_path(raw, decoded) == expected
