from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from geofed.config import EndpointSettings
from geofed.endpoints.credentials import azure_account_key, s3_keys
from geofed.errors import ConfigError


def s3(credentials: dict[str, Any] | None) -> EndpointSettings:
    return EndpointSettings.model_validate(
        {
            "name": "s",
            "kind": "s3",
            "url": "http://127.0.0.1:7480",
            "bucket": "bkt",
            "credentials": credentials,
        }
    )


def test_inline_keys_are_secrets_in_settings() -> None:
    settings = s3({"access_key": "AK", "secret_key": "very-secret"})
    assert "very-secret" not in repr(settings) and "very-secret" not in str(settings.model_dump())
    keys = s3_keys(settings)
    assert (keys.access_key, keys.secret_key) == ("AK", "very-secret")
    assert "very-secret" not in repr(keys)


def test_keys_from_named_environment_variables() -> None:
    settings = s3({"access_key_env": "MY_AK", "secret_key_env": "MY_SK"})
    keys = s3_keys(settings, environ={"MY_AK": "a", "MY_SK": "b"})
    assert (keys.access_key, keys.secret_key) == ("a", "b")
    with pytest.raises(ConfigError, match="secret key environment variable MY_SK is not set"):
        s3_keys(settings, environ={"MY_AK": "a"})


def test_keys_from_a_credentials_file(tmp_path: Path) -> None:
    path = tmp_path / "credentials"
    path.write_text(
        "[default]\naws_access_key_id = D\naws_secret_access_key = DS\n[site]\naws_access_key_id = S\n"
    )
    assert s3_keys(s3({"file": str(path)})).access_key == "D"
    with pytest.raises(ConfigError, match="profile 'site'") as error:
        s3_keys(s3({"file": str(path), "profile": "site"}))
    assert "DS" not in str(error.value)
    with pytest.raises(ConfigError, match="cannot read credentials file"):
        s3_keys(s3({"file": str(tmp_path / "absent")}))


def test_missing_credentials_are_named() -> None:
    with pytest.raises(ConfigError, match="endpoint s: an s3 endpoint needs 'credentials'"):
        s3_keys(s3(None))
    with pytest.raises(ConfigError, match="give access_key and secret_key"):
        s3_keys(s3({"access_key": "only-half"}))


def test_azure_key_inline_or_from_environment() -> None:
    settings = EndpointSettings.model_validate(
        {
            "name": "a",
            "kind": "azure",
            "url": "http://127.0.0.1:10000/acct",
            "account": "acct",
            "container": "cont",
            "credentials": {"account_key_env": "AZ_KEY"},
        }
    )
    assert azure_account_key(settings, environ={"AZ_KEY": "k=="}) == "k=="
    with pytest.raises(ConfigError, match="AZ_KEY is not set"):
        azure_account_key(settings, environ={})


@pytest.mark.parametrize(
    ("mapping", "message"),
    [
        ({"kind": "s3", "url": "http://h:1"}, "needs 'bucket'"),
        ({"kind": "azure", "url": "http://h:1", "container": "abc"}, "needs 'account' and 'container'"),
        (
            {"kind": "webdav", "url": "http://h:1", "credentials": {"access_key": "x"}},
            "takes no 'credentials'",
        ),
        ({"kind": "s3", "url": "http://ak:sk@h:1", "bucket": "bkt"}, "not in the url"),
        ({"kind": "s3", "url": "http://h:1", "bucket": "Bad_Bucket"}, "bucket"),
        (
            {
                "kind": "azure",
                "url": "http://h:1",
                "account": "a",
                "container": "x",
                "proxy_upload_agents": ["("],
            },
            "regular",
        ),
    ],
)
def test_object_store_settings_are_validated(mapping: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        EndpointSettings.model_validate({"name": "e", **mapping})


def test_upload_proxy_defaults_by_kind() -> None:
    azure = EndpointSettings.model_validate(
        {"name": "a", "kind": "azure", "url": "http://h:1/a", "account": "a", "container": "abc"}
    )
    assert azure.upload_proxy_patterns == ("libdavix", "gfal2")
    assert s3({"access_key": "a", "secret_key": "b"}).upload_proxy_patterns == ()
    never = azure.model_copy(update={"proxy_upload_agents": ()})
    assert never.upload_proxy_patterns == ()
