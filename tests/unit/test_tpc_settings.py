"""Pieces of the third-party copy that need no server: settings, header forwarding, URL redaction,
the bandwidth limiter."""

from __future__ import annotations

import time

import pytest
from pydantic import ValidationError

from geofed.transfer.engine import TokenBucket
from geofed.transfer.remote import denied, forwarded_headers, networks, redact
from geofed.transfer.settings import MiB, TransferSettings


def test_defaults() -> None:
    settings = TransferSettings()
    assert settings.max_concurrent == 8
    assert settings.bandwidth_limit is None
    assert settings.marker_interval == 5.0
    assert settings.verify_checksums is True
    assert settings.checksums == ("adler32", "md5", "sha256", "crc32c")
    assert settings.chunk_size == 4 * MiB


def test_durations_and_limits() -> None:
    settings = TransferSettings.model_validate(
        {"marker_interval": "500ms", "idle_timeout": "2m", "max_duration": "1h", "bandwidth_limit": 10**7}
    )
    assert settings.marker_interval == 0.5
    assert settings.idle_timeout == 120.0
    assert settings.max_duration == 3600.0
    assert settings.bandwidth_limit == 10**7


def test_adler32_is_always_computed() -> None:
    assert TransferSettings(checksums=("md5",)).checksums == ("adler32", "md5")


@pytest.mark.parametrize(
    "bad",
    [
        {"checksums": ["sha1"]},
        {"max_concurrent": 0},
        {"marker_interval": 0},
        {"chunk_size": 1000},
        {"bandwidth_limit": 10},
        {"unknown_key": 1},
    ],
)
def test_invalid_settings(bad: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        TransferSettings.model_validate(bad)


def test_transfer_headers_lose_their_prefix() -> None:
    headers = {
        "TransferHeaderAuthorization": "Bearer abc",
        "transferheaderx-custom": "1",
        "Authorization": "Bearer for-geofed-only",
        "TransferHeader": "empty name",
        "TransferHeaderHost": "evil",
        "TransferHeaderContent-Length": "5",
        "TransferHeaderBad Name": "x",
        "Credential": "none",
    }
    assert forwarded_headers(headers) == {"Authorization": "Bearer abc", "x-custom": "1"}


def test_redact_drops_query_and_userinfo() -> None:
    url = "https://user:pw@s3.example.org:8443/bucket/key%20x?X-Amz-Signature=secret&X-Amz-Credential=c"
    assert redact(url) == "https://s3.example.org:8443/bucket/key%20x"


async def test_token_bucket_paces_to_its_rate() -> None:
    bucket = TokenBucket(1_000_000)
    started = time.monotonic()
    for _ in range(6):
        await bucket.take(500_000)  # 3 MB: 1 MB of burst, then 2 s at 1 MB/s
    elapsed = time.monotonic() - started
    assert 1.8 <= elapsed <= 2.8


def test_token_bucket_needs_a_rate() -> None:
    with pytest.raises(ValueError):
        TokenBucket(0)


def test_deny_networks_default_to_link_local() -> None:
    settings = TransferSettings()
    deny = networks(settings.deny_networks)
    assert denied("169.254.169.254", deny)
    assert denied("fe80::1%eth0", deny)
    assert denied("::ffff:169.254.169.254", deny)
    assert not denied("127.0.0.1", deny)
    assert not denied("2001:db8::1", deny)
    assert not denied("example.org", deny)  # names are checked once resolved


def test_deny_networks_are_validated() -> None:
    assert TransferSettings(deny_networks=("10.1.2.3/8",)).deny_networks == ("10.0.0.0/8",)
    with pytest.raises(ValidationError):
        TransferSettings(deny_networks=("not-a-network",))


def test_the_algorithm_list_matches_the_endpoints() -> None:
    from geofed.endpoints.base import CHECKSUM_ALGORITHMS as ENDPOINTS
    from geofed.transfer.settings import CHECKSUM_ALGORITHMS as TRANSFER

    assert TRANSFER == ENDPOINTS
