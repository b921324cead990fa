"""Resolving an object-store endpoint's secrets once, at start, from where the configuration says.

Inline values (usually ``${ENV}`` in the file), named environment variables, or an AWS-style
credentials file with a profile. A missing secret is a ConfigError naming the endpoint and the
source, never the value.
"""

from __future__ import annotations

import configparser
import os
from collections.abc import Mapping
from dataclasses import dataclass

from geofed.config import EndpointSettings
from geofed.errors import ConfigError


@dataclass(frozen=True, slots=True)
class S3Keys:
    access_key: str
    secret_key: str

    def __repr__(self) -> str:
        return f"S3Keys(access_key={self.access_key!r}, secret_key='***')"


def _env(name: str, environ: Mapping[str, str], endpoint: str, what: str) -> str:
    value = environ.get(name)
    if not value:
        raise ConfigError(f"endpoint {endpoint}: {what} environment variable {name} is not set")
    return value


def s3_keys(settings: EndpointSettings, environ: Mapping[str, str] | None = None) -> S3Keys:
    env = os.environ if environ is None else environ
    creds = settings.credentials
    if creds is None:
        raise ConfigError(f"endpoint {settings.name}: an s3 endpoint needs 'credentials'")
    if creds.access_key is not None and creds.secret_key is not None:
        return S3Keys(creds.access_key.get_secret_value(), creds.secret_key.get_secret_value())
    if creds.access_key_env and creds.secret_key_env:
        return S3Keys(
            _env(creds.access_key_env, env, settings.name, "access key"),
            _env(creds.secret_key_env, env, settings.name, "secret key"),
        )
    if creds.file is not None:
        parser = configparser.ConfigParser()
        try:
            with open(creds.file.expanduser(), encoding="utf-8") as handle:
                parser.read_file(handle)
        except (OSError, configparser.Error) as exc:
            raise ConfigError(f"endpoint {settings.name}: cannot read credentials file {creds.file}") from exc
        section = parser[creds.profile] if parser.has_section(creds.profile) else None
        if section is None or "aws_access_key_id" not in section or "aws_secret_access_key" not in section:
            raise ConfigError(
                f"endpoint {settings.name}: profile {creds.profile!r} in {creds.file} lacks "
                "aws_access_key_id / aws_secret_access_key"
            )
        return S3Keys(section["aws_access_key_id"], section["aws_secret_access_key"])
    raise ConfigError(
        f"endpoint {settings.name}: give access_key and secret_key, access_key_env and secret_key_env, "
        "or file (with profile)"
    )


def azure_account_key(settings: EndpointSettings, environ: Mapping[str, str] | None = None) -> str:
    env = os.environ if environ is None else environ
    creds = settings.credentials
    if creds is not None and creds.account_key is not None:
        return creds.account_key.get_secret_value()
    if creds is not None and creds.account_key_env:
        return _env(creds.account_key_env, env, settings.name, "account key")
    raise ConfigError(
        f"endpoint {settings.name}: an azure endpoint needs credentials.account_key or account_key_env"
    )
