"""A geofed served over HTTPS with the test PKI, a VOMS server, a member list, a token issuer and a
policy of the kind a grid site writes; used by the security tests and the TLS benchmark.

Layout of the federated namespace (one writable ``local`` endpoint mounted at ``/fed``):

=====================  =========================================================================
``/fed/public``        read and list for anyone, even without a credential
``/fed/testvo``        read, list, write, modify, delete for VO ``testvo`` (VOMS or member list)
``/fed/prod``          everything for FQAN ``/testvo/prod/Role=production``
``/fed/tokens``        granted by token scopes only (issuer base path ``/fed/tokens``)
``/fed/groups``        read and list for token or VOMS group ``/testvo/analysis``
``/``                  everything for the admin DN (``Other User``, who is not in testvo)
=====================  =========================================================================
"""

from __future__ import annotations

import datetime as dt
import secrets
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from geofed.config import Settings, settings_from_mapping
from tests.infra.pki import Credential, Pki, make_proxy, make_voms_ac
from tests.infra.token_issuer import TokenIssuer

AUDIENCE = "https://geofed.test"
MEMBER_RIGHTS = ("read", "list", "write", "modify", "delete")
TESTVO_FQANS = ("/testvo/Role=NULL/Capability=NULL", "/testvo/prod/Role=production/Capability=NULL")


def policy_rules() -> list[dict[str, Any]]:
    return [
        {"path": "/fed/public", "allow": ["read", "list"], "to": ["anyone"]},
        {"path": "/fed/testvo", "allow": [*MEMBER_RIGHTS], "to": [{"vo": "testvo"}]},
        {"path": "/fed/prod", "allow": ["all"], "to": [{"fqan": "/testvo/prod/Role=production"}]},
        {"path": "/fed/groups", "allow": ["read", "list"], "to": [{"group": "/testvo/analysis"}]},
        {"path": "/", "allow": ["all"], "to": [{"dn": "/DC=org/DC=test/OU=Users/CN=Other User"}]},
    ]


def filler_rules(count: int) -> list[dict[str, Any]]:
    """Rules for other VOs' areas, to give the policy a realistic size (a few hundred rules)."""
    return [
        {"path": f"/vo{i}/data", "allow": ["read", "list"], "to": [{"vo": f"vo{i}"}, {"fqan": f"/vo{i}/*"}]}
        for i in range(count)
    ]


@dataclass
class Proxies:
    """Proxy files of the test users, each for one kind of test."""

    voms: Credential  # Test User, testvo AC with two FQANs
    other_vo: Credential  # Test User with an othervo AC only
    member: Credential  # Plain Member: no VOMS, listed in the testvo member file
    limited: Credential  # Test User, limited proxy with the testvo AC
    forged_ac: Credential  # Test User, testvo AC signed by a key that is not the VOMS server's
    expired: Credential  # Test User, proxy expired an hour ago
    foreign_key: Credential  # "proxy" of Test User signed with another user's key
    revoked: Credential  # proxy of the revoked user
    untrusted: Credential  # proxy of a user of an untrusted CA
    proxy_of_proxy: Credential  # a proxy of the VOMS proxy
    admin: Credential  # Other User: the admin DN, no VOMS
    plain: Credential  # Test User without any VOMS attributes


def make_proxies(pki: Pki, directory: Path) -> Proxies:
    directory.mkdir(parents=True, exist_ok=True)
    user = pki.user

    def ac(vo: str, voms: Credential, fqans: tuple[str, ...], **kw: Any) -> bytes:
        return make_voms_ac(voms.cert, voms.key, user.cert, vo, fqans, **kw)

    def proxy(name: str, issuer: Credential = user, **kw: Any) -> Credential:
        return make_proxy(issuer.cert, issuer.key, issuer.chain, directory / f"{name}.pem", **kw)

    testvo_ac = ac("testvo", pki.voms, TESTVO_FQANS)
    voms = proxy("voms", ac=testvo_ac)
    past = dt.datetime.now(dt.UTC) - dt.timedelta(hours=3)
    forged = make_voms_ac(pki.voms.cert, pki.other_user.key, user.cert, "testvo", TESTVO_FQANS)
    return Proxies(
        voms=voms,
        other_vo=proxy("othervo", ac=ac("othervo", pki.voms_other, ("/othervo",), uri="voms.other.org:1")),
        member=proxy("member", pki.member),
        limited=proxy("limited", ac=testvo_ac, limited=True),
        forged_ac=proxy("forged-ac", ac=forged),
        expired=proxy("expired", ac=testvo_ac, not_before=past, hours=2),
        foreign_key=proxy("foreign-key", signing_key=pki.other_user.key),
        revoked=proxy("revoked", pki.revoked),
        untrusted=proxy("untrusted", pki.untrusted_user),
        proxy_of_proxy=make_proxy(voms.cert, voms.key, voms.chain, directory / "proxy-of-proxy.pem"),
        admin=proxy("admin", pki.other_user),
        plain=proxy("plain"),
    )


@dataclass
class GridLayout:
    pki: Pki
    proxies: Proxies
    issuer: TokenIssuer
    store: Path  # the local endpoint's directory (what really got stored)
    jwks_file: Path
    extra: dict[str, Any] = field(default_factory=dict)

    def settings(self, *, filler: int = 0, client_certificates: str = "optional", **auth: Any) -> Settings:
        pki = self.pki
        mapping: dict[str, Any] = {
            "server": {
                "host": "127.0.0.1",
                "port": 0,
                "tls": {
                    "cert": str(pki.host.cert_path),
                    "key": str(pki.host.key_path),
                    "ca_dir": str(pki.ca_dir),
                    "client_certificates": client_certificates,
                },
            },
            "signing": {"secret": secrets.token_urlsafe(32)},
            "health": {"interval": "60s"},
            "auth": {
                "vomsdir": str(pki.vomsdir),
                "vo_members": [{"vo": "testvo", "file": str(pki.members_file)}],
                "tokens": {
                    "issuers": [
                        {
                            "issuer": self.issuer.issuer,
                            "jwks_file": str(self.jwks_file),
                            "base_path": "/fed/tokens",
                        }
                    ],
                    "audiences": [AUDIENCE],
                    "accept_any_audience": False,
                },
                "policy": policy_rules() + filler_rules(filler),
                **auth,
            },
            "endpoints": [
                {
                    "name": "store",
                    "kind": "local",
                    "url": self.store.resolve().as_uri(),
                    "prefixes": [{"federated": "/fed", "endpoint": "/"}],
                    "writable": True,
                }
            ],
        }
        return settings_from_mapping(mapping, environ={})


def make_layout(pki: Pki, directory: Path) -> GridLayout:
    issuer = TokenIssuer("https://issuer.test", audience=AUDIENCE, subject="robot")
    jwks_file = directory / "jwks.json"
    jwks_file.write_text(issuer.jwks_json())
    store = directory / "store"
    for sub in ("public", "testvo", "prod", "tokens", "groups"):
        (store / sub).mkdir(parents=True, exist_ok=True)
    return GridLayout(pki, make_proxies(pki, directory / "proxies"), issuer, store, jwks_file)
