"""Settings of geofed's TLS listener, client authentication and authorization policy.

Kept apart from :mod:`geofed.config` because they form one concept (who gets in, and what they may
do) and are the part an auditor reads. Everything is validated at load time: a policy rule with an
unknown privilege or a subject that names nothing is a configuration error, never a silent deny.
"""

from __future__ import annotations

import ipaddress
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from geofed.auth.identity import ALL_PRIVILEGES, Privilege
from geofed.settingtypes import Duration, Frozen


class TLSSettings(Frozen):
    """geofed's own HTTPS listener.

    ``ca_dir`` is a hashed CA directory in the grid layout (``/etc/grid-security/certificates``:
    ``<hash>.0`` certificates, ``<hash>.r0`` CRLs); with ``crl: auto`` CRLs are enforced for every
    certificate in a client chain when the directory holds any, ``require`` refuses to start without
    them, ``off`` ignores them.
    """

    cert: Path
    key: Path
    ca_dir: Path | None = None
    ca_file: Path | None = None
    client_certificates: Literal["none", "optional", "required"] = "optional"
    crl: Literal["auto", "require", "off"] = "auto"
    session_tickets: bool = True

    @model_validator(mode="after")
    def _trust_for_clients(self) -> TLSSettings:
        if self.client_certificates != "none" and self.ca_dir is None and self.ca_file is None:
            raise ValueError("client certificates need trusted CAs: give 'ca_dir' or 'ca_file'")
        return self


class VOMembers(Frozen):
    """Plain certificates (no VOMS extension) whose DN is in ``file`` are members of ``vo``.

    The file holds one DN per line (slash form, optionally quoted) or is a grid-mapfile
    (``"/DC=org/CN=Someone" account``); ``#`` starts a comment.
    """

    vo: str = Field(min_length=1)
    file: Path


class IdentityHeaders(Frozen):
    """Client identity from a TLS-terminating proxy (nginx, Apache, HAProxy).

    Used only for requests whose peer address is in ``trusted``; from anyone else these headers are
    ignored. ``cert`` names a header holding the client's PEM chain (URL-escaped, as nginx's
    ``$ssl_client_escaped_cert``), which also carries VOMS attributes; ``dn`` a header with the
    subject DN (RFC 2253 or slash form); ``verify`` a header that must say ``SUCCESS``.
    """

    trusted: tuple[str, ...] = Field(min_length=1)
    dn: str | None = "X-SSL-Client-S-DN"
    cert: str | None = None
    verify: str | None = "X-SSL-Client-Verify"

    @field_validator("trusted")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        out = []
        for item in value:
            try:
                out.append(str(ipaddress.ip_network(item, strict=False)))
            except ValueError as exc:
                raise ValueError(f"not an address or network: {item!r}") from exc
        return tuple(out)

    @model_validator(mode="after")
    def _something(self) -> IdentityHeaders:
        if self.dn is None and self.cert is None:
            raise ValueError("give 'dn' or 'cert': the header that carries the client identity")
        return self


class TokenIssuer(Frozen):
    """A trusted WLCG token issuer.

    Keys come from ``jwks_file`` or, without it, from the issuer's discovery document
    (``<issuer>/.well-known/openid-configuration`` → ``jwks_uri``), cached for ``key_cache``.
    ``storage.*`` scope paths are relative to ``base_path`` in the federated namespace.
    """

    issuer: str = Field(min_length=1)
    jwks_file: Path | None = None
    jwks_url: str | None = None
    base_path: str = "/"
    key_cache: Duration = 3600.0
    algorithms: tuple[str, ...] = ("RS256", "RS384", "RS512", "ES256", "ES384", "PS256")

    @field_validator("base_path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must be an absolute path")
        return value.rstrip("/") or "/"

    @field_validator("algorithms")
    @classmethod
    def _no_none(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if any(a.lower() == "none" or a.upper().startswith("HS") for a in value):
            raise ValueError("only public-key algorithms are allowed (no 'none', no shared-secret HS*)")
        return value


class TokenSettings(Frozen):
    """Bearer tokens. ``audiences`` adds to geofed's own ``server.public_url``; ``accept_any_audience``
    takes the WLCG "any" audience ``https://wlcg.cern.ch/jwt/v1/any``."""

    issuers: tuple[TokenIssuer, ...] = ()
    audiences: tuple[str, ...] = ()
    accept_any_audience: bool = True
    leeway: Duration = 60.0
    max_token_bytes: int = Field(default=16384, ge=512)


SubjectKeyword = Literal["anyone", "authenticated", "anonymous"]


class SubjectMatch(Frozen):
    """One kind of subject a rule applies to; exactly one field is given.

    ``fqan`` is a pattern where ``*`` matches any run of characters, e.g. ``/atlas/*``; ``/Role=NULL``
    and ``/Capability=NULL`` are ignored on both sides; ``group`` a token group (``wlcg.groups``)
    or VOMS group;
    ``issuer`` (optionally with ``subject``) a token issuer.
    """

    dn: str | None = None
    vo: str | None = None
    fqan: str | None = None
    group: str | None = None
    issuer: str | None = None
    subject: str | None = None

    @model_validator(mode="after")
    def _exactly_one(self) -> SubjectMatch:
        given = [k for k in ("dn", "vo", "fqan", "group", "issuer") if getattr(self, k) is not None]
        if len(given) != 1:
            raise ValueError("a subject gives exactly one of dn, vo, fqan, group, issuer")
        if self.subject is not None and self.issuer is None:
            raise ValueError("'subject' is only meaningful with 'issuer'")
        return self


class PolicyRule(Frozen):
    """Grant ``allow`` on ``path`` and everything below it (whole segments) to each of ``to``."""

    path: str
    allow: tuple[Privilege | Literal["all"], ...] = Field(min_length=1)
    to: tuple[SubjectKeyword | SubjectMatch, ...] = Field(min_length=1)

    @field_validator("path")
    @classmethod
    def _absolute(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError("must be an absolute path")
        return value.rstrip("/") or "/"

    @property
    def privileges(self) -> frozenset[Privilege]:
        if "all" in self.allow:
            return ALL_PRIVILEGES
        return frozenset(Privilege(p) for p in self.allow)


class AuthSettings(Frozen):
    """Authentication sources and the authorization policy.

    Deny by default: a request is allowed only if a rule in ``policy`` (or in ``policy_file``, a YAML
    list of the same rules) or a verified token scope grants the privilege it needs.
    """

    vomsdir: Path | None = None
    voms_ca_dir: Path | None = None
    vo_members: tuple[VOMembers, ...] = ()
    limited_proxies_may_write: bool = False
    identity_headers: IdentityHeaders | None = None
    tokens: TokenSettings = TokenSettings()
    policy: tuple[PolicyRule, ...] = ()
    policy_file: Path | None = None
    credential_cache_entries: int = Field(default=10_000, ge=1)
