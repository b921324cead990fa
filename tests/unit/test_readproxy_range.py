"""Range headers of proxied reads: one range is honoured, anything else reads the whole file."""

from __future__ import annotations

import pytest

from geofed.errors import RangeNotSatisfiable
from geofed.frontend.readproxy import parse_range


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (None, None),
        ("bytes=0-99", (0, 100)),
        ("bytes=100-", (100, 900)),
        ("bytes=-100", (900, 100)),
        ("bytes=-5000", (0, 1000)),  # more than the file: the whole file
        ("bytes=990-5000", (990, 10)),  # the end is clamped
        ("bytes = 5 - 9", (5, 5)),
        ("bytes=0-1,5-9", None),  # several ranges: the whole file (RFC 9110 allows it)
        ("items=0-5", None),  # another unit: ignored
        ("bytes=-", None),
    ],
)
def test_ranges(header: str | None, expected: tuple[int, int] | None) -> None:
    assert parse_range(header, 1000) == expected


@pytest.mark.parametrize("header", ["bytes=1000-", "bytes=5000-6000", "bytes=9-3", "bytes=-0"])
def test_unsatisfiable(header: str) -> None:
    with pytest.raises(RangeNotSatisfiable):
        parse_range(header, 1000)
