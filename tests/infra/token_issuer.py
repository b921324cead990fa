"""A real WLCG token issuer for tests: genuine RSA and EC keys, signed JWTs, and an HTTP server for
its discovery document and JWKS.

Tokens are serialised by hand (base64url header, payload, signature) rather than with
``jwt.encode``, so that the attacks a verifier must refuse — ``alg: none``, an HS256 token keyed
with the issuer's *public* key, a signature by a key the issuer never published — are built exactly
as an attacker would build them, without the library's guard rails in the way.

Usage::

    issuer = TokenIssuer()
    async with serve_issuer(issuer) as server:   # issuer.issuer is now http://127.0.0.1:<port>
        token = issuer.mint(scope="storage.read:/data", wlcg_groups=["/atlas"])
        ...
        assert server.jwks_requests == 1
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm, get_default_algorithms

OMIT: Any = object()
"""Pass as a claim (or header) value to leave it out of the token, e.g. ``mint(aud=OMIT)``."""

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


@dataclass
class SigningKey:
    """One of the issuer's keys: its kid, private key, and default algorithm."""

    kid: str
    private: PrivateKey
    alg: str

    def public_jwk(self) -> dict[str, Any]:
        public = self.private.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            jwk: dict[str, Any] = json.loads(RSAAlgorithm.to_jwk(public))
        else:
            jwk = json.loads(ECAlgorithm.to_jwk(public))
        return {**jwk, "kid": self.kid, "use": "sig", "alg": self.alg}


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def _json(value: Mapping[str, Any]) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def new_key(kind: str, kid: str | None = None, alg: str | None = None) -> SigningKey:
    """A fresh RSA-2048 (``kind="rsa"``, RS256 unless ``alg`` says otherwise) or EC P-256
    (``kind="ec"``, ES256) key; ``alg`` is also the ``alg`` its JWK declares."""
    kid = kid or f"{kind}-{uuid.uuid4().hex[:8]}"
    if kind == "rsa":
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        return SigningKey(kid, private, alg or "RS256")
    if kind == "ec":
        return SigningKey(kid, ec.generate_private_key(ec.SECP256R1()), alg or "ES256")
    raise ValueError(f"unknown key kind {kind!r}")


class TokenIssuer:
    """Keys, a JWKS and WLCG-profile tokens for one issuer URL.

    ``keys`` maps a name (``"rsa"``, ``"ec"`` and whatever :meth:`add_key` added) to a key; all of
    them are published in :meth:`jwks`. A key made with ``publish=False`` signs but is not published
    (an unknown kid to a verifier).
    """

    def __init__(
        self,
        issuer: str = "https://issuer.test",
        *,
        audience: str | list[str] = "https://geofed.test",
        subject: str = "test-user",
        scope: str = "storage.read:/ storage.create:/",
        groups: tuple[str, ...] = ("/test",),
        lifetime: float = 3600.0,
    ) -> None:
        self.issuer = issuer
        self.audience = audience
        self.subject = subject
        self.scope = scope
        self.groups = groups
        self.lifetime = lifetime
        self.keys: dict[str, SigningKey] = {}
        self._unpublished: set[str] = set()
        self.add_key("rsa", "rsa")
        self.add_key("ec", "ec")
        self._foreign = new_key("rsa")

    def add_key(
        self, name: str, kind: str = "rsa", *, alg: str | None = None, publish: bool = True
    ) -> SigningKey:
        """Add (and by default publish) a new key, as an issuer does when it rotates keys."""
        key = new_key(kind, alg=alg)
        self.keys[name] = key
        if not publish:
            self._unpublished.add(name)
        return key

    def publish(self, name: str) -> None:
        self._unpublished.discard(name)

    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.public_jwk() for name, k in self.keys.items() if name not in self._unpublished]}

    def jwks_json(self) -> str:
        return json.dumps(self.jwks())

    def public_pem(self, key: str = "rsa") -> bytes:
        return (
            self.keys[key]
            .private.public_key()
            .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        )

    # ---- tokens

    def claims(self, **overrides: Any) -> dict[str, Any]:
        """WLCG-profile claims; ``wlcg_ver``/``wlcg_groups`` name ``wlcg.ver``/``wlcg.groups``, and
        :data:`OMIT` removes a claim."""
        now = int(time.time())
        claims: dict[str, Any] = {
            "iss": self.issuer,
            "sub": self.subject,
            "aud": self.audience,
            "exp": now + int(self.lifetime),
            "nbf": now,
            "iat": now,
            "jti": str(uuid.uuid4()),
            "wlcg.ver": "1.0",
            "wlcg.groups": list(self.groups),
            "scope": self.scope,
        }
        for name, value in overrides.items():
            claim = "wlcg." + name[5:] if name.startswith("wlcg_") else name
            if value is OMIT:
                claims.pop(claim, None)
            else:
                claims[claim] = value
        return claims

    def mint(
        self,
        *,
        key: str = "rsa",
        alg: str | None = None,
        headers: Mapping[str, Any] | None = None,
        **claims: Any,
    ) -> str:
        """A token signed by the named key (``alg`` defaults to the key's own)."""
        signing = self.keys[key]
        return self._sign(signing.private, alg or signing.alg, signing.kid, headers, self.claims(**claims))

    def mint_foreign(self, **claims: Any) -> str:
        """A token signed by a key the issuer never published, under the kid of its real RSA key:
        a forgery whose only flaw is the signature."""
        return self._sign(self._foreign.private, "RS256", self.keys["rsa"].kid, None, self.claims(**claims))

    def mint_alg_none(self, **claims: Any) -> str:
        """An unsigned token (``alg: none``, empty signature)."""
        header = {"alg": "none", "typ": "JWT"}
        return f"{_b64(_json(header))}.{_b64(_json(self.claims(**claims)))}."

    def mint_hs256_with_public_key(self, **claims: Any) -> str:
        """The algorithm-confusion attack: HS256 with the issuer's public RSA key (PEM) as the
        HMAC secret. A verifier that lets the header pick the algorithm accepts it."""
        header = {"alg": "HS256", "typ": "JWT", "kid": self.keys["rsa"].kid}
        signing_input = f"{_b64(_json(header))}.{_b64(_json(self.claims(**claims)))}"
        mac = hmac.new(self.public_pem("rsa"), signing_input.encode(), hashlib.sha256).digest()
        return f"{signing_input}.{_b64(mac)}"

    @staticmethod
    def _sign(
        private: PrivateKey,
        alg: str,
        kid: str,
        headers: Mapping[str, Any] | None,
        claims: Mapping[str, Any],
    ) -> str:
        header: dict[str, Any] = {"alg": alg, "typ": "JWT", "kid": kid}
        for name, value in (headers or {}).items():
            if value is OMIT:
                header.pop(name, None)
            else:
                header[name] = value
        signing_input = f"{_b64(_json(header))}.{_b64(_json(claims))}"
        signature = get_default_algorithms()[alg].sign(signing_input.encode(), private)
        return f"{signing_input}.{_b64(signature)}"


class IssuerServer:
    """Serves an issuer's discovery document and JWKS on 127.0.0.1, counting requests.

    ``fail`` makes every answer a 500 (an issuer that is down); ``delay`` holds each answer that
    many seconds (to test that concurrent fetches are coalesced).
    """

    def __init__(self, issuer: TokenIssuer) -> None:
        self.issuer = issuer
        self.requests: Counter[str] = Counter()
        self.fail = False
        self.delay = 0.0
        self.url = ""
        self._runner: web.AppRunner | None = None

    @property
    def discovery_requests(self) -> int:
        return self.requests["/.well-known/openid-configuration"]

    @property
    def jwks_requests(self) -> int:
        return self.requests["/jwks"]

    async def start(self) -> str:
        """Start serving; sets ``issuer.issuer`` to this server's URL, and returns it."""
        app = web.Application()
        app.router.add_get("/.well-known/openid-configuration", self._discovery)
        app.router.add_get("/jwks", self._jwks)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = self._runner.addresses[0][1]
        self.url = f"http://127.0.0.1:{port}"
        self.issuer.issuer = self.url
        return self.url

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _answer(self, request: web.Request, body: Mapping[str, Any]) -> web.Response:
        self.requests[request.path] += 1
        if self.delay:
            await asyncio.sleep(self.delay)
        if self.fail:
            return web.Response(status=500, text="issuer down")
        return web.json_response(body)

    async def _discovery(self, request: web.Request) -> web.Response:
        return await self._answer(request, {"issuer": self.url, "jwks_uri": f"{self.url}/jwks"})

    async def _jwks(self, request: web.Request) -> web.Response:
        return await self._answer(request, self.issuer.jwks())


@contextlib.asynccontextmanager
async def serve_issuer(issuer: TokenIssuer) -> AsyncIterator[IssuerServer]:
    """Run an :class:`IssuerServer` for ``issuer`` for the duration of the block."""
    server = IssuerServer(issuer)
    await server.start()
    try:
        yield server
    finally:
        await server.stop()
