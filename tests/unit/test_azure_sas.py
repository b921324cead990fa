"""AzureEndpoint.sign_url, offline: each method gets exactly its permissions, and the key stays home.

Whether Azurite accepts these URLs is for tests/integration/test_azure_endpoint.py; here the query
is parsed and checked field by field, so a wrong permission or lifetime shows up without a server.
"""

from __future__ import annotations

import base64
import time
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs, quote, unquote, urlsplit

import pytest

from geofed.config import EndpointSettings
from geofed.endpoints.azure import AzureEndpoint
from geofed.errors import ConfigError
from geofed.runtime import build_endpoint
from geofed.signing import URLSigner

KEY = base64.b64encode(b"k" * 64).decode()
AZURITE = "http://127.0.0.1:10000/devstoreaccount1"


def settings(url: str = AZURITE, key: str = KEY) -> EndpointSettings:
    return EndpointSettings.model_validate(
        {
            "name": "blob",
            "kind": "azure",
            "url": url,
            "account": "devstoreaccount1",
            "container": "fed-a",
            "credentials": {"account_key": key},
        }
    )


def query(url: str) -> dict[str, str]:
    parsed = parse_qs(urlsplit(url).query, strict_parsing=True)
    assert all(len(values) == 1 for values in parsed.values()), parsed
    return {name: values[0] for name, values in parsed.items()}


def sas_time(value: str) -> float:
    return datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=UTC).timestamp()


@pytest.mark.parametrize(
    ("method", "permissions"), [("GET", "r"), ("HEAD", "r"), ("PUT", "cw"), ("DELETE", "d"), ("get", "r")]
)
def test_each_method_gets_exactly_its_permissions(method: str, permissions: str) -> None:
    sas = query(AzureEndpoint(settings()).sign_url(method, "/dir/file.dat", 600))
    assert sas["sp"] == permissions
    assert sas["sr"] == "b"  # one blob, not the container
    # davix switches to Azure block upload on sig + sr + sp (clients.md §8)
    assert {"sig", "sr", "sp", "se", "st", "sv"} <= sas.keys()


@pytest.mark.parametrize("lifetime", [60, 600, 86400])
def test_expiry_is_the_lifetime_and_start_allows_for_clock_skew(lifetime: int) -> None:
    before = time.time()
    sas = query(AzureEndpoint(settings()).sign_url("GET", "/f", lifetime))
    after = time.time()
    expiry = sas_time(sas["se"])
    assert before + lifetime - 1 <= expiry <= after + lifetime
    assert sas_time(sas["st"]) <= before - 60


def test_url_is_the_blob_under_the_container_path_style_for_azurite() -> None:
    url = AzureEndpoint(settings()).sign_url("GET", "/a b/ünï+%#?.dat", 60)
    parts = urlsplit(url)
    assert (parts.scheme, parts.netloc) == ("http", "127.0.0.1:10000")
    assert parts.path == "/devstoreaccount1/fed-a/a%20b/%C3%BCn%C3%AF%2B%25%23%3F.dat"
    assert unquote(parts.path) == "/devstoreaccount1/fed-a/a b/ünï+%#?.dat"
    assert not parts.fragment


def test_url_on_real_azure_is_virtual_host_style() -> None:
    endpoint = AzureEndpoint(settings(url="https://acct.blob.core.windows.net/"))
    parts = urlsplit(endpoint.sign_url("PUT", "/x/y.bin", 60))
    assert (parts.scheme, parts.netloc, parts.path) == (
        "https",
        "acct.blob.core.windows.net",
        "/fed-a/x/y.bin",
    )


def test_the_key_appears_in_no_url_and_no_repr() -> None:
    endpoint = AzureEndpoint(settings())
    for method in ("GET", "PUT", "DELETE"):
        url = endpoint.sign_url(method, "/f", 60)
        assert KEY not in url and quote(KEY, safe="") not in url
    assert KEY not in repr(endpoint)


def test_methods_without_a_blob_permission_are_not_signed() -> None:
    with pytest.raises(ValueError, match="MKCOL"):
        AzureEndpoint(settings()).sign_url("MKCOL", "/f", 60)


def test_a_key_that_is_not_base64_is_a_config_error_that_does_not_quote_it() -> None:
    bad = "not-base64!" + "x" * 20
    with pytest.raises(ConfigError, match="not valid base64") as info:
        AzureEndpoint(settings(key=bad))
    assert bad not in str(info.value)


def test_a_missing_key_is_a_config_error(monkeypatch: pytest.MonkeyPatch) -> None:
    raw: dict[str, Any] = settings().model_dump()
    raw["credentials"] = {"account_key_env": "GEOFED_TEST_NO_SUCH_KEY"}
    monkeypatch.delenv("GEOFED_TEST_NO_SUCH_KEY", raising=False)
    with pytest.raises(ConfigError, match="GEOFED_TEST_NO_SUCH_KEY"):
        AzureEndpoint(EndpointSettings.model_validate(raw))


def test_build_endpoint_makes_an_azure_endpoint_without_connecting() -> None:
    endpoint = build_endpoint(settings(), URLSigner("s" * 32))
    assert isinstance(endpoint, AzureEndpoint)
