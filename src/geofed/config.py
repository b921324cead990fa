"""Typed, validated, immutable settings, loaded once from one YAML file.

A configuration is validated completely at load time; any problem is reported as a
:class:`~geofed.errors.ConfigError` whose message names the key (``endpoints[1].prefixes[0].federated``)
and says what is wrong. ``${NAME}`` (or ``${NAME:-default}``) in any string is replaced by the
environment variable, so secrets stay out of the file. The settings objects are frozen: a reload
builds a new object and swaps it whole.
"""

from __future__ import annotations

import ipaddress
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from geofed.auth.settings import AuthSettings, TLSSettings
from geofed.errors import ConfigError
from geofed.settingtypes import Duration
from geofed.settingtypes import Frozen as _Frozen
from geofed.transfer.settings import TransferSettings

_ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")


class Location(_Frozen):
    """A point on Earth, in degrees."""

    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)


class PrefixMapping(_Frozen):
    """``federated`` (a path in geofed's namespace) is served from ``endpoint`` (a path on the endpoint)."""

    federated: str
    endpoint: str = "/"

    @field_validator("federated", "endpoint")
    @classmethod
    def _absolute_clean(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must be an absolute path starting with /")
        parts = [p for p in value.split("/") if p]
        if any(p in (".", "..") for p in parts) or "\x00" in value:
            raise ValueError("must not contain '.', '..' or NUL")
        return "/" + "/".join(parts)


class CredentialSettings(_Frozen):
    """Secrets for an object-store endpoint, given inline (use ``${ENV}``), by environment variable
    name, or (S3) from an AWS-style credentials file. Secrets are ``SecretStr``: they never appear
    in a repr, an error message or a dump of the settings."""

    access_key: SecretStr | None = None
    secret_key: SecretStr | None = None
    access_key_env: str | None = None
    secret_key_env: str | None = None
    file: Path | None = None
    profile: str = "default"
    account_key: SecretStr | None = None
    account_key_env: str | None = None


class EndpointSettings(_Frozen):
    """One storage endpoint: where it is, what it may be used for, and how to talk to it."""

    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$")
    kind: Literal["local", "webdav", "s3", "azure"]
    url: str
    bucket: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$")
    region: str = "us-east-1"
    addressing: Literal["path", "virtual"] = "path"
    account: str | None = None
    container: str | None = Field(default=None, pattern=r"^[a-z0-9][a-z0-9-]{1,61}[a-z0-9]$")
    credentials: CredentialSettings | None = None
    proxy_upload_agents: tuple[str, ...] | None = None
    """User-Agent patterns of clients whose PUTs geofed streams to this endpoint itself instead of
    redirecting them; None means the kind's default (see ``upload_proxy_patterns``)."""
    prefixes: tuple[PrefixMapping, ...] = (PrefixMapping(federated="/", endpoint="/"),)
    readable: bool = True
    listable: bool = True
    writable: bool = False
    location: Location | None = None
    timeout: Duration = 10.0
    max_concurrency: int = Field(default=64, ge=1, le=10000)
    url_lifetime: Duration | None = None
    checksum_metadata: Literal["geofed", "trusted"] = "geofed"
    quota: int | None = Field(default=None, ge=0)
    tpc: bool = False

    @field_validator("prefixes")
    @classmethod
    def _at_least_one(cls, value: tuple[PrefixMapping, ...]) -> tuple[PrefixMapping, ...]:
        if not value:
            raise ValueError("at least one prefix mapping is needed")
        return value

    @model_validator(mode="after")
    def _url_fits_kind(self) -> EndpointSettings:
        parts = urlsplit(self.url)
        if self.kind == "local":
            if parts.scheme != "file" or not parts.path.startswith("/"):
                raise ValueError("a local endpoint's url must be file:///absolute/directory")
        elif parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(f"a {self.kind} endpoint's url must be http:// or https:// with a host")
        if parts.username or parts.password:
            raise ValueError("put credentials under 'credentials', not in the url")
        if self.kind == "s3" and self.bucket is None:
            raise ValueError("an s3 endpoint needs 'bucket'")
        if self.kind == "azure" and (self.account is None or self.container is None):
            raise ValueError("an azure endpoint needs 'account' and 'container'")
        if self.kind not in ("s3", "azure") and self.credentials is not None:
            raise ValueError(f"a {self.kind} endpoint takes no 'credentials'")
        return self

    @field_validator("proxy_upload_agents")
    @classmethod
    def _valid_patterns(cls, value: tuple[str, ...] | None) -> tuple[str, ...] | None:
        for pattern in value or ():
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {pattern!r} ({exc})") from exc
        return value

    @property
    def upload_proxy_patterns(self) -> tuple[str, ...]:
        """Whose uploads are proxied. For ``azure`` by default davix and gfal2: davix 0.8 follows a
        PUT redirect to an Azure SAS URL with its block upload, stores the blob, then fails
        ("No request started"), so those clients are served by streaming instead."""
        if self.proxy_upload_agents is not None:
            return self.proxy_upload_agents
        return ("libdavix", "gfal2") if self.kind == "azure" else ()

    @property
    def host(self) -> str | None:
        """The host name of the endpoint's URL (None for local endpoints)."""
        return urlsplit(self.url).hostname


class ClientNetwork(_Frozen):
    """Clients from ``cidr`` are placed at ``location``, or sent to ``endpoint`` first when healthy."""

    cidr: str
    location: Location | None = None
    endpoint: str | None = None

    @field_validator("cidr")
    @classmethod
    def _valid_cidr(cls, value: str) -> str:
        try:
            return str(ipaddress.ip_network(value, strict=False))
        except ValueError as exc:
            raise ValueError(f"not a network in CIDR notation: {value!r}") from exc

    @model_validator(mode="after")
    def _one_target(self) -> ClientNetwork:
        if (self.location is None) == (self.endpoint is None):
            raise ValueError("give exactly one of 'location' or 'endpoint'")
        return self


class ServerSettings(_Frozen):
    host: str = "127.0.0.1"
    port: int = Field(default=8080, ge=0, le=65535)
    public_url: str | None = None
    trusted_proxies: tuple[str, ...] = ()
    max_propfind_body: int = Field(default=65536, ge=1024)
    max_unread_put_body: int = Field(default=1 << 20, ge=0)
    access_log: bool = True
    access_log_format: Literal["text", "json"] = "text"
    tls: TLSSettings | None = None

    @field_validator("trusted_proxies")
    @classmethod
    def _valid_networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError as exc:
                raise ValueError(f"not an address or network: {item!r}") from exc
        return value


class SigningSettings(_Frozen):
    """The HMAC secret that signs URLs of geofed's own data route (local endpoints)."""

    secret: str = Field(min_length=16)
    url_lifetime: Duration = 600.0


class GeoIPSettings(_Frozen):
    database: Path | None = None


class FederationSettings(_Frozen):
    locate_timeout: Duration = 3.0
    fuzz_km: float = Field(default=50.0, ge=0)
    max_alternatives: int = Field(default=4, ge=0, le=16)
    retry_after: int = Field(default=5, ge=1)


class L2Settings(_Frozen):
    """The second-level cache shared by every front end: memcached (several servers, consistent
    hashing), Redis (one URL) or a Redis Cluster (seed nodes and/or a URL; keys spread by its hash
    slots). Invalidations reach the other front ends through Redis pub/sub (on a cluster, published
    on every master, each front end listening on one), or through a shared sequence that memcached
    front ends poll every ``poll_interval``."""

    kind: Literal["memcached", "redis", "redis-cluster"]
    servers: tuple[str, ...] = ()
    url: str | None = None
    namespace: str = Field(default="geofed:", pattern=r"^[A-Za-z0-9_.:-]{0,40}$")
    timeout: Duration = 0.2
    poll_interval: Duration = 0.05

    @staticmethod
    def _check_servers(servers: tuple[str, ...]) -> None:
        for server in servers:
            host, _, port = server.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"not host:port: {server!r}")

    @model_validator(mode="after")
    def _target_fits_kind(self) -> L2Settings:
        if self.kind == "memcached":
            if not self.servers:
                raise ValueError("memcached needs 'servers' (host:port, one or more)")
            self._check_servers(self.servers)
        elif self.kind == "redis":
            if self.url is None or urlsplit(self.url).scheme not in ("redis", "rediss", "unix"):
                raise ValueError("redis needs 'url' such as redis://127.0.0.1:6379/0")
        else:
            if not self.servers and self.url is None:
                raise ValueError(
                    "redis-cluster needs seed nodes: 'servers' (host:port, one or more) and/or 'url'"
                )
            self._check_servers(self.servers)
            if self.url is not None:
                parts = urlsplit(self.url)
                try:
                    port = parts.port
                except ValueError as exc:
                    raise ValueError(f"redis-cluster 'url' has a bad port: {exc}") from exc
                if parts.scheme not in ("redis", "rediss") or not parts.hostname:
                    raise ValueError(
                        "redis-cluster 'url' must be redis://[user:password@]host:port or rediss://..."
                    )
                if port is None:
                    raise ValueError("redis-cluster 'url' needs the node's port")
                if parts.path.strip("/") not in ("", "0"):
                    raise ValueError("a Redis Cluster has only database 0: drop the /db from 'url'")
        return self


class CacheSettings(_Frozen):
    max_entries: int = Field(default=100_000, ge=1)
    ttl: Duration = 300.0
    negative_ttl: Duration = 10.0
    max_listing_entries: int = Field(default=10_000, ge=0)
    l2: L2Settings | None = None


class ChecksumSettings(_Frozen):
    """Checksums geofed computes when an endpoint has none: how many files are read at once, and
    how long one computation may take before the client is told to retry."""

    max_concurrent: int = Field(default=4, ge=1, le=256)
    timeout: Duration = 600.0


class ProxySettings(_Frozen):
    """Clients whose transfers geofed streams itself instead of redirecting them: those that
    cannot replay a PUT body after a 307 (Rucio's webdav protocol, rclone), matched by User-Agent
    (regular expressions), by federated path prefix, or by coming through ``url_prefix``."""

    user_agents: tuple[str, ...] = ()
    path_prefixes: tuple[str, ...] = ()
    url_prefix: str | None = None
    reads: bool = False

    @field_validator("user_agents")
    @classmethod
    def _patterns(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for pattern in value:
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ValueError(f"not a regular expression: {pattern!r} ({exc})") from exc
        return value

    @field_validator("path_prefixes")
    @classmethod
    def _absolute(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for prefix in value:
            if not prefix.startswith("/"):
                raise ValueError(f"must be an absolute path: {prefix!r}")
        return tuple(p.rstrip("/") or "/" for p in value)

    @field_validator("url_prefix")
    @classmethod
    def _prefix(cls, value: str | None) -> str | None:
        if value is None:
            return None
        if not value.startswith("/") or value.rstrip("/") == "" or value.startswith("/_geofed"):
            raise ValueError("must be an absolute path other than / and outside /_geofed")
        return value.rstrip("/")


class HealthSettings(_Frozen):
    interval: Duration = 10.0
    timeout: Duration = 3.0
    failures_to_down: int = Field(default=1, ge=1)


class Settings(_Frozen):
    """The whole configuration of one geofed process."""

    server: ServerSettings = ServerSettings()
    signing: SigningSettings
    geoip: GeoIPSettings = GeoIPSettings()
    federation: FederationSettings = FederationSettings()
    cache: CacheSettings = CacheSettings()
    health: HealthSettings = HealthSettings()
    client_networks: tuple[ClientNetwork, ...] = ()
    checksums: ChecksumSettings = ChecksumSettings()
    proxy: ProxySettings = ProxySettings()
    transfer: TransferSettings = TransferSettings()
    auth: AuthSettings = AuthSettings()
    endpoints: tuple[EndpointSettings, ...]

    @model_validator(mode="after")
    def _cross_checks(self) -> Settings:
        names = [e.name for e in self.endpoints]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise ValueError(f"endpoint names must be unique; repeated: {', '.join(duplicates)}")
        for net in self.client_networks:
            if net.endpoint is not None and net.endpoint not in names:
                raise ValueError(f"client network {net.cidr} names unknown endpoint {net.endpoint!r}")
        return self

    def endpoint(self, name: str) -> EndpointSettings:
        for settings in self.endpoints:
            if settings.name == name:
                return settings
        raise KeyError(name)


def substitute_env(value: Any, environ: Mapping[str, str], where: str = "") -> Any:
    """Replace ``${NAME}`` / ``${NAME:-default}`` in every string of a parsed YAML tree."""
    if isinstance(value, str):

        def replace(match: re.Match[str]) -> str:
            name, default = match.group(1), match.group(2)
            if name in environ:
                return environ[name]
            if default is not None:
                return default
            raise ConfigError(f"{where or 'value'}: environment variable {name} is not set")

        return _ENV_REF.sub(replace, value)
    if isinstance(value, dict):
        return {k: substitute_env(v, environ, _join(where, str(k))) for k, v in value.items()}
    if isinstance(value, list):
        return [substitute_env(v, environ, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def _join(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


def _location_of(error: Mapping[str, Any]) -> str:
    out = ""
    for part in error["loc"]:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "(top level)"


def settings_from_mapping(data: Any, environ: Mapping[str, str] | None = None) -> Settings:
    """Validate a parsed configuration tree; raise ConfigError naming every bad key."""
    if not isinstance(data, dict):
        raise ConfigError("the configuration must be a YAML mapping at the top level")
    data = substitute_env(data, os.environ if environ is None else environ)
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        lines = []
        for error in exc.errors():
            message = str(error["msg"]).removeprefix("Value error, ")
            if error["type"] == "extra_forbidden":
                message = "unknown key (misspelt?)"
            lines.append(f"{_location_of(error)}: {message}")
        raise ConfigError("invalid configuration:\n  " + "\n  ".join(lines)) from None


def load_settings(path: str | os.PathLike[str], environ: Mapping[str, str] | None = None) -> Settings:
    """Read, substitute and validate one YAML configuration file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    return settings_from_mapping(data, environ)
