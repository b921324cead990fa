"""The seal on stored checksums: values are believed only when geofed's own key sealed them for
an object of that size, so metadata a client set on its upload is never reported."""

from __future__ import annotations

import pytest

from geofed.endpoints.base import checksum_seal, checksums_from_metadata, sealed

KEY = b"k" * 32
VALUES = {"adler32": "0a1b2c3d", "md5": "00112233445566778899aabbccddeeff"}


def as_metadata(values: dict[str, str], prefix: str = "geofed-") -> tuple[tuple[str, str], ...]:
    return tuple((prefix + name, value) for name, value in values.items())


def test_sealed_values_are_believed() -> None:
    stored = sealed(KEY, 1234, VALUES)
    assert checksums_from_metadata(as_metadata(stored), seal_key=KEY, size=1234) == VALUES


@pytest.mark.parametrize("prefix", ["geofed-", "geofed_", "GEOFED_"])
def test_azure_style_names_are_read_too(prefix: str) -> None:
    stored = sealed(KEY, 10, VALUES)
    assert checksums_from_metadata(as_metadata(stored, prefix), seal_key=KEY, size=10) == VALUES


def test_unsealed_values_are_ignored() -> None:
    assert checksums_from_metadata(as_metadata(VALUES), seal_key=KEY, size=1234) == {}


@pytest.mark.parametrize(
    ("key", "size", "change"),
    [
        (b"x" * 32, 1234, {}),  # sealed by someone else's key
        (KEY, 1235, {}),  # for another size: the object was replaced
        (KEY, 1234, {"adler32": "ffffffff"}),  # a value changed after sealing
    ],
)
def test_a_wrong_seal_hides_every_value(key: bytes, size: int, change: dict[str, str]) -> None:
    stored = {**sealed(key, size, VALUES), **change}
    assert checksums_from_metadata(as_metadata(stored), seal_key=KEY, size=1234) == {}


def test_trusted_plain_values_stay_separate_from_the_seal() -> None:
    metadata = (("adler32", "12345678"), *as_metadata(VALUES))  # plain trusted + unsealed ours
    assert checksums_from_metadata(metadata, True, seal_key=KEY, size=1) == {"adler32": "12345678"}


def test_the_seal_depends_on_every_value_and_the_size() -> None:
    base = checksum_seal(KEY, 1, VALUES)
    assert base != checksum_seal(KEY, 2, VALUES)
    assert base != checksum_seal(KEY, 1, {**VALUES, "md5": "f" * 32})
    assert base == checksum_seal(KEY, 1, dict(reversed(list(VALUES.items()))))
