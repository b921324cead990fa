"""Verification of WLCG JWT bearer tokens, and the storage capabilities their scopes grant.

A token is only believed when every check passes: a public-key algorithm the issuer is configured
for (never ``none``, never a shared-secret ``HS*``, which would let anyone who knows the issuer's
*public* key forge tokens), an issuer configured by exact string, a signature by one of that
issuer's published keys, a current ``exp``/``nbf``/``iat``, and an audience this federation answers
to. Only then are its ``storage.*`` scopes turned into :class:`Capability` values, rebased from the
issuer's ``base_path`` onto the federated namespace.

Verifying costs a signature check (~100 µs for RSA), so verified tokens are kept in a small LRU
keyed by the token string until their ``exp``: the request hot path calls :meth:`TokenVerifier.cached`
first, and a client that sends the same token with every request pays a dict lookup.

Issuer keys are fetched (discovery document, then JWKS) with one shared aiohttp session, cached for
the issuer's ``key_cache``; concurrent fetches for one issuer are coalesced into one request, and a
token naming an unknown ``kid`` triggers at most one refetch per issuer per minute, so a flood of
made-up tokens cannot be turned into a flood of requests to the issuer.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import jwt
from jwt.exceptions import InvalidJTIError, InvalidSubjectError

from geofed.auth.identity import Capability, Identity, Method, Privilege
from geofed.auth.settings import TokenIssuer, TokenSettings

log = logging.getLogger("geofed.tokens")

ANY_AUDIENCES: tuple[str, ...] = ("https://wlcg.cern.ch/jwt/v1/any", "any")
"""The WLCG profile's "any relying party" audience, and the short form some issuers use."""

KID_REFETCH_INTERVAL = 60.0
"""At most one refetch of an issuer's keys per this many seconds because a token named an unknown kid."""

FETCH_TIMEOUT = 5.0
"""Seconds for a whole discovery or JWKS request: a slow issuer must not hold requests for long."""

FETCH_RETRY_AFTER = 10.0
"""After a failed key fetch, the issuer is not asked again for this many seconds."""

MAX_DOCUMENT_BYTES = 1 << 20
"""Largest discovery document or JWKS read from an issuer."""

_SCOPE_PRIVILEGES: dict[str, frozenset[Privilege]] = {
    "storage.read": frozenset({Privilege.READ, Privilege.LIST}),
    "storage.create": frozenset({Privilege.WRITE}),
    "storage.modify": frozenset({Privilege.WRITE, Privilege.MODIFY, Privilege.DELETE}),
    "storage.stage": frozenset({Privilege.READ}),
    # SciTokens spellings, as XRootD accepts them
    "read": frozenset({Privilege.READ, Privilege.LIST}),
    "write": frozenset({Privilege.WRITE, Privilege.MODIFY, Privilege.DELETE}),
}

# The key type (and EC curve) each algorithm verifies with: a key of another type is never tried.
_ALG_KEY_TYPES: dict[str, tuple[str, str | None]] = {
    **{alg: ("RSA", None) for alg in ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512")},
    "ES256": ("EC", "P-256"),
    "ES256K": ("EC", "secp256k1"),
    "ES384": ("EC", "P-384"),
    "ES512": ("EC", "P-521"),
    "EdDSA": ("OKP", None),
}


class TokenRejected(Exception):
    """A bearer token that does not grant anything.

    ``reason`` is shown to the client (in ``WWW-Authenticate`` and the error body), so it says what
    is wrong in plain words and never contains the token: a token is a credential, and echoing it
    would put it in logs and proxies that never should have seen it.
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


# --------------------------------------------------------------------------------------------------
# Scopes and capabilities


def parse_scopes(scope: str, base_path: str = "/") -> tuple[Capability, ...]:
    """The capabilities a ``scope`` claim grants, rebased onto ``base_path``.

    Scopes that are not storage scopes (``openid``, ``offline_access``...) are ignored; a storage
    scope without a path means the whole ``base_path``. A path with a ``..`` segment, or one that
    is not absolute, is ignored rather than normalised: a scope that tries to climb out of its base
    is either a bug or an attack, and neither should grant anything. Privileges on the same path
    are merged; the result is sorted by path so equal scopes give equal identities.
    """
    merged: dict[str, set[Privilege]] = {}
    for item in scope.split():
        name, _, path = item.partition(":")
        privileges = _SCOPE_PRIVILEGES.get(name)
        if privileges is None:
            continue
        full = _rebase(path or "/", base_path)
        if full is not None:
            merged.setdefault(full, set()).update(privileges)
    return tuple(Capability(frozenset(privs), path) for path, privs in sorted(merged.items()))


def _rebase(path: str, base_path: str) -> str | None:
    """``path`` (absolute, relative to the issuer's base) in the federated namespace, or None."""
    if not path.startswith("/"):
        return None
    segments = [s for s in path.split("/") if s not in ("", ".")]
    if ".." in segments:
        return None
    if not segments:
        return base_path
    prefix = "" if base_path == "/" else base_path.rstrip("/")
    return prefix + "/" + "/".join(segments)


def capability_allows(capabilities: Iterable[Capability], privilege: Privilege, path: str) -> bool:
    """Whether a capability grants ``privilege`` on ``path`` (an absolute federated path).

    Matching is on whole segments, as the WLCG profile requires: ``/a/b`` covers ``/a/b`` and
    ``/a/b/c`` but not ``/a/bc``; ``/`` covers everything. A path with a ``..`` segment is never
    allowed: callers pass normalised paths, so one that is not is suspicious.
    """
    if "/../" in path + "/" or not path.startswith("/"):
        return False
    for capability in capabilities:
        if privilege in capability.privileges and _covers(capability.path, path):
            return True
    return False


def _covers(scope_path: str, path: str) -> bool:
    base = scope_path.rstrip("/")
    if not base:
        return True
    return path == base or path.startswith(base + "/")


# --------------------------------------------------------------------------------------------------
# Keys


@dataclass(frozen=True, slots=True)
class _Key:
    """One usable public key from a JWKS, with what it may verify."""

    kid: str | None
    kty: str
    crv: str | None
    alg: str | None  # the JWK's own "alg": when given, the key verifies only that algorithm
    key: Any  # a cryptography public key

    def fits(self, alg: str) -> bool:
        kty, crv = _ALG_KEY_TYPES.get(alg, ("", None))
        return self.kty == kty and (crv is None or self.crv == crv) and (self.alg is None or self.alg == alg)


def _parse_jwks(document: object) -> tuple[_Key, ...]:
    """The signature keys of a JWKS document. Keys that are not public signature keys (``oct``
    secrets, ``use: enc``, unknown types or malformed entries) are skipped, not fatal: one odd key
    in an issuer's set must not make its other keys unusable. Raises ValueError without any key."""
    if not isinstance(document, dict) or not isinstance(document.get("keys"), list):
        raise ValueError("not a JWKS document (no 'keys' list)")
    keys: list[_Key] = []
    for entry in document["keys"]:
        if not isinstance(entry, dict) or entry.get("kty") not in ("RSA", "EC", "OKP"):
            continue
        if entry.get("use", "sig") != "sig" or "d" in entry:  # "d": a private key, never trust it
            continue
        kid, crv, alg = entry.get("kid"), entry.get("crv"), entry.get("alg")
        if not all(v is None or isinstance(v, str) for v in (kid, crv, alg)):
            continue
        try:
            jwk = jwt.PyJWK(entry)
        except (jwt.PyJWTError, KeyError, TypeError, ValueError):
            continue
        keys.append(_Key(kid=kid, kty=entry["kty"], crv=crv, alg=alg, key=jwk.key))
    if not keys:
        raise ValueError("the JWKS holds no usable signature key")
    return tuple(keys)


def _load_jwks_file(path: Path) -> tuple[_Key, ...]:
    try:
        return _parse_jwks(json.loads(path.read_text(encoding="utf-8")))
    except (OSError, ValueError) as exc:
        raise ValueError(f"jwks_file {path}: {exc}") from exc


class _IssuerState:
    """An issuer's configuration and the keys currently known for it."""

    def __init__(self, config: TokenIssuer) -> None:
        self.config = config
        self.static = config.jwks_file is not None
        self.keys: tuple[_Key, ...] | None = _load_jwks_file(config.jwks_file) if config.jwks_file else None
        self.jwks_uri: str | None = config.jwks_url
        self.refresh_at = float("-inf")  # monotonic time the keys must next be refreshed
        self.kid_refetch_at = float("-inf")  # monotonic time of the last refetch for an unknown kid
        self.inflight: asyncio.Task[None] | None = None


class _FetchError(Exception):
    """An issuer answered, but not with a usable document."""


# --------------------------------------------------------------------------------------------------
# The verifier


class TokenVerifier:
    """Verifies WLCG JWT bearer tokens against the configured issuers.

    ``own_audiences`` are the audiences this federation answers to (its ``server.public_url`` and
    the endpoints behind it); ``settings.audiences`` adds to them, and ``accept_any_audience`` the
    WLCG "any" audience. URL audiences are compared without a trailing slash, everything else as an
    exact string. One instance serves a whole process; call :meth:`close` on shutdown.
    """

    def __init__(
        self, settings: TokenSettings, own_audiences: Sequence[str], *, cache_entries: int = 10000
    ) -> None:
        if cache_entries < 1:
            raise ValueError("cache_entries must be at least 1")
        self._settings = settings
        self._issuers: dict[str, _IssuerState] = {}
        for config in settings.issuers:
            name = config.issuer.rstrip("/")
            if name in self._issuers:
                raise ValueError(f"token issuer {config.issuer} is configured twice")
            self._issuers[name] = _IssuerState(config)
        audiences = [*own_audiences, *settings.audiences]
        if settings.accept_any_audience:
            audiences.extend(ANY_AUDIENCES)
        self._audiences = frozenset(_audience_key(a) for a in audiences)
        self._cache: OrderedDict[str, tuple[float, Identity]] = OrderedDict()
        self._cache_entries = cache_entries
        self._session: aiohttp.ClientSession | None = None

    # ---- the hot path

    def cached(self, token: str) -> Identity | None:
        """The identity of an already verified token that has not expired yet, else None."""
        entry = self._cache.get(token)
        if entry is None:
            return None
        exp, identity = entry
        if time.time() >= exp:
            del self._cache[token]
            return None
        self._cache.move_to_end(token)
        return identity

    async def verify(self, token: str) -> Identity:
        """The identity a token proves, or :class:`TokenRejected` saying why it proves nothing.

        The identity's ``issuer`` is the issuer as configured (a trailing-slash difference in the
        token's ``iss`` is tolerated), so policy rules naming an issuer match whatever the spelling.
        """
        token = token.strip()
        hit = self.cached(token)
        if hit is not None:
            return hit
        limit = self._settings.max_token_bytes
        if len(token) > limit or len(token.encode("utf-8", "replace")) > limit:
            raise TokenRejected(f"token too large (at most {limit} bytes)")
        header, unverified = _parse_unverified(token)

        alg = header.get("alg")
        if not isinstance(alg, str) or not alg:
            raise TokenRejected("malformed token: no 'alg' in the header")
        if alg.lower() == "none":
            raise TokenRejected("algorithm 'none' is not allowed")
        iss = unverified.get("iss")
        if not isinstance(iss, str):
            raise TokenRejected("token has no 'iss' claim")
        state = self._issuers.get(iss.rstrip("/"))
        if state is None:
            raise TokenRejected(f"issuer not trusted: {_shown(iss)}")
        if alg not in state.config.algorithms:
            raise TokenRejected(f"algorithm {_shown(alg)} is not allowed for issuer {state.config.issuer}")
        kid = header.get("kid")
        if kid is not None and not isinstance(kid, str):
            raise TokenRejected("malformed token: 'kid' is not a string")

        keys = await self._keys(state, kid)
        # a key published without a kid may still be the one a token names
        candidates = [k for k in keys if k.fits(alg) and (kid is None or k.kid in (kid, None))]
        if not candidates:
            if kid is not None and all(k.kid != kid for k in keys):
                raise TokenRejected(f"signature does not verify: issuer has no key {_shown(kid)}")
            raise TokenRejected(f"signature does not verify: issuer has no key for {alg}")
        claims = self._decode(token, candidates, alg)
        identity, exp = self._identity(state.config, claims)
        self._remember(token, exp, identity)
        return identity

    # ---- checks

    def _decode(self, token: str, keys: Sequence[_Key], alg: str) -> dict[str, Any]:
        """Verify the signature with each candidate key in turn, then exp/nbf/iat with leeway."""
        weak = False
        for key in keys:
            try:
                return jwt.decode(
                    token,
                    key.key,
                    algorithms=[alg],
                    leeway=self._settings.leeway,
                    options={
                        "require": ["exp"],
                        "verify_aud": False,  # checked below, against a set and with a clear reason
                        "verify_iss": False,  # already matched to a configured issuer
                        "enforce_minimum_key_length": True,
                    },
                )
            except jwt.InvalidSignatureError:
                continue
            except jwt.InvalidKeyError:
                weak = True  # e.g. a 1024-bit RSA key: treated as a key that cannot verify
                continue
            except jwt.PyJWTError as exc:
                raise TokenRejected(_claim_error(exc)) from None
        if weak:
            raise TokenRejected("signature does not verify: the issuer's key is too weak")
        raise TokenRejected("signature does not verify")

    def _identity(self, issuer: TokenIssuer, claims: dict[str, Any]) -> tuple[Identity, float]:
        """Check the remaining WLCG claims and build the identity; also returns ``exp``."""
        exp = claims["exp"]
        if isinstance(exp, bool) or not isinstance(exp, int | float):
            raise TokenRejected("malformed 'exp' claim")
        try:
            exp = float(exp)  # an int beyond a float's range is no time at all
        except OverflowError:
            raise TokenRejected("malformed 'exp' claim") from None
        aud = claims.get("aud")
        if aud is None:
            raise TokenRejected("token has no 'aud' claim")
        audiences = [aud] if isinstance(aud, str) else aud
        if not isinstance(audiences, list) or not all(isinstance(a, str) for a in audiences):
            raise TokenRejected("malformed 'aud' claim")
        if not any(_audience_key(a) in self._audiences for a in audiences):
            raise TokenRejected("audience not accepted")
        ver = claims.get("wlcg.ver")
        if ver is not None and ver != "1.0":
            raise TokenRejected("unsupported 'wlcg.ver' (only 1.0 is)")
        sub = claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise TokenRejected("token has no 'sub' claim")
        groups = claims.get("wlcg.groups", [])
        if isinstance(groups, str):
            groups = [groups]
        if not isinstance(groups, list) or not all(isinstance(g, str) for g in groups):
            raise TokenRejected("malformed 'wlcg.groups' claim")
        scope = claims.get("scope", "")
        if not isinstance(scope, str):
            raise TokenRejected("malformed 'scope' claim")
        identity = Identity(
            method=Method.TOKEN,
            issuer=issuer.issuer,
            subject=sub,
            groups=tuple(groups),
            capabilities=parse_scopes(scope, issuer.base_path),
        )
        return identity, exp

    def _remember(self, token: str, exp: float, identity: Identity) -> None:
        if exp <= time.time():
            return  # accepted only thanks to the leeway: not worth keeping
        self._cache[token] = (exp, identity)
        self._cache.move_to_end(token)
        while len(self._cache) > self._cache_entries:
            self._cache.popitem(last=False)

    # ---- keys

    async def _keys(self, state: _IssuerState, kid: str | None) -> tuple[_Key, ...]:
        """The issuer's keys: cached, refreshed when stale, refetched once a minute at most when a
        token names a kid we do not know (the issuer may have rotated its keys)."""
        if state.static:
            assert state.keys is not None
            return state.keys
        now = time.monotonic()
        if state.keys is None or now >= state.refresh_at:
            if state.keys is None and now < state.refresh_at:
                raise TokenRejected(f"cannot get the signing keys of issuer {state.config.issuer}")
            try:
                await self._refresh(state, rediscover=True)
            except TokenRejected:
                if state.keys is None:
                    raise
                # the issuer is unreachable: its last known keys are better than refusing everyone
        elif (
            kid is not None
            and all(k.kid != kid for k in state.keys)
            and now - state.kid_refetch_at >= KID_REFETCH_INTERVAL
        ):
            state.kid_refetch_at = now
            with contextlib.suppress(TokenRejected):
                await self._refresh(state, rediscover=False)
        assert state.keys is not None
        return state.keys

    async def _refresh(self, state: _IssuerState, *, rediscover: bool) -> None:
        """Fetch the issuer's keys, joining a fetch already under way instead of starting another."""
        if state.inflight is None:
            task = asyncio.create_task(self._fetch_keys(state, rediscover=rediscover))
            state.inflight = task
            task.add_done_callback(lambda done: _fetch_finished(state, done))
        # shield: a client that goes away must not cancel the fetch the other waiters share
        await asyncio.shield(state.inflight)

    async def _fetch_keys(self, state: _IssuerState, *, rediscover: bool) -> None:
        config = state.config
        try:
            uri = config.jwks_url or (None if rediscover else state.jwks_uri)
            if uri is None:
                discovery = config.issuer.rstrip("/") + "/.well-known/openid-configuration"
                document = await self._get_json(discovery)
                uri = document.get("jwks_uri") if isinstance(document, dict) else None
                if not isinstance(uri, str) or not uri:
                    raise _FetchError(f"{discovery} has no 'jwks_uri'")
                state.jwks_uri = uri
            keys = _parse_jwks(await self._get_json(uri))
        except Exception as exc:  # whatever the issuer sends, the client gets a reason, not a 500
            state.refresh_at = time.monotonic() + FETCH_RETRY_AFTER
            log.warning("cannot get the signing keys of token issuer %s: %s", config.issuer, exc)
            raise TokenRejected(f"cannot get the signing keys of issuer {config.issuer}") from None
        state.keys = keys
        state.refresh_at = time.monotonic() + config.key_cache
        log.info("token issuer %s: %d signing keys", config.issuer, len(keys))

    async def _get_json(self, url: str) -> object:
        if self._session is None:
            self._session = aiohttp.ClientSession(
                timeout=aiohttp.ClientTimeout(total=FETCH_TIMEOUT),
                headers={"Accept": "application/json"},
            )
        async with self._session.get(url) as response:
            if response.status != 200:
                raise _FetchError(f"HTTP {response.status} from {url}")
            body = bytearray()
            async for chunk in response.content.iter_chunked(65536):
                body += chunk
                if len(body) > MAX_DOCUMENT_BYTES:
                    raise _FetchError(f"{url} is larger than {MAX_DOCUMENT_BYTES} bytes")
        return json.loads(body)

    async def close(self) -> None:
        """Stop key fetches under way and close the HTTP session."""
        tasks = [s.inflight for s in self._issuers.values() if s.inflight is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, TokenRejected):
                await task
        if self._session is not None:
            await self._session.close()
            self._session = None


def _fetch_finished(state: _IssuerState, task: asyncio.Task[None]) -> None:
    """Clear the in-flight marker, and take the task's exception so that a fetch nobody waits for
    any more (all its clients gone) is not reported as "exception never retrieved"."""
    if state.inflight is task:
        state.inflight = None
    if not task.cancelled():
        task.exception()


def _parse_unverified(token: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """Header and claims, before any check: only to find the issuer and key that decide."""
    if token.count(".") != 2:
        raise TokenRejected("malformed token")
    try:
        header = jwt.get_unverified_header(token)
        claims = jwt.decode(token, options={"verify_signature": False})
    except Exception:
        # any failure to parse attacker-controlled bytes is the client's fault, never a server error
        raise TokenRejected("malformed token") from None
    if not isinstance(header, dict) or not isinstance(claims, dict):
        raise TokenRejected("malformed token")
    return header, claims


def _claim_error(exc: jwt.PyJWTError) -> str:
    """A client-facing reason for a PyJWT claim error (PyJWT's own messages are not for clients)."""
    if isinstance(exc, jwt.ExpiredSignatureError):
        return "token expired"
    if isinstance(exc, jwt.ImmatureSignatureError):
        return "token issued in the future" if "(iat)" in str(exc) else "token not yet valid"
    if isinstance(exc, jwt.MissingRequiredClaimError):
        return f"token has no '{exc.claim}' claim"
    if isinstance(exc, jwt.InvalidIssuedAtError):
        return "malformed 'iat' claim"
    if isinstance(exc, InvalidSubjectError):
        return "malformed 'sub' claim"
    if isinstance(exc, InvalidJTIError):
        return "malformed 'jti' claim"
    return "malformed token"


def _audience_key(audience: str) -> str:
    """URL audiences compare without a trailing slash (``https://host/`` is ``https://host``)."""
    return audience.rstrip("/") if "://" in audience else audience


def _shown(value: str, limit: int = 80) -> str:
    """A claim value quoted for a client-facing reason: printable ASCII only, and bounded, so an
    attacker-chosen value cannot inject into headers or logs."""
    clean = "".join(c if c.isascii() and c.isprintable() and c not in "'\"\\" else "?" for c in value[:limit])
    return f"'{clean}{'...' if len(value) > limit else ''}'"
