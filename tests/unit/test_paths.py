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
