"""WLCG JWT bearer tokens: what a verified token grants, every way a bad one is refused, and how
issuer keys are fetched (once, coalesced, rate-limited refetch for unknown kids) from a real issuer
served over HTTP."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geofed.auth.identity import Capability, Method, Privilege
from geofed.auth.settings import TokenIssuer as IssuerConfig
from geofed.auth.settings import TokenSettings
from geofed.auth.tokens import (
    ANY_AUDIENCES,
    TokenRejected,
    TokenVerifier,
    capability_allows,
    parse_scopes,
)
from tests.infra.token_issuer import OMIT, TokenIssuer, serve_issuer

AUD = "https://geofed.test"
R, L, W, M, D = Privilege.READ, Privilege.LIST, Privilege.WRITE, Privilege.MODIFY, Privilege.DELETE

MakeVerifier = Callable[..., TokenVerifier]


@pytest.fixture(scope="module")
def module_issuer() -> TokenIssuer:
    """Key generation costs ~100 ms: one issuer for the tests that do not change it."""
    issuer = TokenIssuer(audience=AUD, groups=("/test", "/test/xfers"))
    issuer.add_key("rs384", alg="RS384")
    issuer.add_key("ps256", alg="PS256")
    return issuer


@pytest.fixture
def issuer(module_issuer: TokenIssuer) -> TokenIssuer:
    module_issuer.issuer = "https://issuer.test"
    return module_issuer


@pytest.fixture
async def make_verifier(tmp_path: Path) -> AsyncIterator[MakeVerifier]:
    """Build verifiers for an issuer (keys from a jwks_file unless ``jwks_file=False``); all are
    closed at the end of the test."""
    made: list[TokenVerifier] = []

    def make(
        issuer: TokenIssuer,
        *,
        jwks_file: bool = True,
        own: tuple[str, ...] = (AUD,),
        config: dict[str, Any] | None = None,
        cache_entries: int = 10000,
        **token_settings: Any,
    ) -> TokenVerifier:
        issuer_config: dict[str, Any] = {"issuer": issuer.issuer, "base_path": "/vo", **(config or {})}
        if jwks_file:
            path = tmp_path / f"jwks-{len(made)}.json"
            path.write_text(issuer.jwks_json())
            issuer_config["jwks_file"] = path
        token_config = TokenSettings(issuers=(IssuerConfig(**issuer_config),), **token_settings)
        verifier = TokenVerifier(token_config, own, cache_entries=cache_entries)
        made.append(verifier)
        return verifier

    yield make
    for verifier in made:
        await verifier.close()


async def rejected(verifier: TokenVerifier, token: str) -> str:
    """The reason a token is refused; also checks the reason never repeats the token."""
    with pytest.raises(TokenRejected) as info:
        await verifier.verify(token)
    reason = info.value.reason
    assert str(info.value) == reason
    for part in token.split("."):
        if len(part) >= 16:
            assert part not in reason
    return reason


# --------------------------------------------------------------------------------------------------
# Accepted tokens


@pytest.mark.parametrize("key", ["rsa", "rs384", "ps256", "ec"])
async def test_valid_token_gives_identity_with_rebased_capabilities(
    issuer: TokenIssuer, make_verifier: MakeVerifier, key: str
) -> None:
    verifier = make_verifier(issuer)
    scope = (
        "openid offline_access storage.read:/data storage.create:/data/new "
        "storage.modify:/tmp storage.stage:/tape storage.read:/tmp"
    )
    identity = await verifier.verify(issuer.mint(key=key, scope=scope, sub="alice"))
    assert identity.method is Method.TOKEN
    assert identity.issuer == "https://issuer.test"
    assert identity.subject == "alice"
    assert identity.groups == ("/test", "/test/xfers")
    assert identity.capabilities == (
        Capability(frozenset({R, L}), "/vo/data"),
        Capability(frozenset({W}), "/vo/data/new"),
        Capability(frozenset({R}), "/vo/tape"),
        Capability(frozenset({R, L, W, M, D}), "/vo/tmp"),
    )
    assert identity.label() == "token:https://issuer.test#alice"


async def test_groups_and_scope_are_optional(issuer: TokenIssuer, make_verifier: MakeVerifier) -> None:
    identity = await make_verifier(issuer).verify(issuer.mint(wlcg_groups=OMIT, scope=OMIT))
    assert identity.groups == ()
    assert identity.capabilities == ()


async def test_token_without_kid_tries_every_key(issuer: TokenIssuer, make_verifier: MakeVerifier) -> None:
    verifier = make_verifier(issuer)
    for key in ("rsa", "ec"):
        identity = await verifier.verify(issuer.mint(key=key, headers={"kid": OMIT}))
        assert identity.subject == "test-user"


@pytest.mark.parametrize(
    ("configured", "claimed"), [("https://x.test/", "https://x.test"), ("https://x.test", "https://x.test/")]
)
async def test_issuer_trailing_slash_is_tolerated(
    issuer: TokenIssuer, make_verifier: MakeVerifier, configured: str, claimed: str
) -> None:
    issuer.issuer = configured
    verifier = make_verifier(issuer)
    identity = await verifier.verify(issuer.mint(iss=claimed))
    assert identity.issuer == configured
    issuer.issuer = "https://x.test/other"
    assert "issuer not trusted" in await rejected(verifier, issuer.mint())


# --------------------------------------------------------------------------------------------------
# Refused tokens


def _now() -> int:
    return int(time.time())


REJECTIONS: list[tuple[str, Callable[[TokenIssuer], str], str]] = [
    ("foreign key", lambda i: i.mint_foreign(), "signature does not verify"),
    ("tampered", lambda i: _tamper(i.mint(), sub="admin"), "signature does not verify"),
    ("unknown kid", lambda i: i.mint(headers={"kid": "nope"}), "issuer has no key 'nope'"),
    (
        "kid of another key type",
        lambda i: i.mint(key="ec", headers={"kid": i.keys["rsa"].kid}),
        "signature does not verify",
    ),
    ("wrong audience", lambda i: i.mint(aud="https://elsewhere.test"), "audience not accepted"),
    (
        "audience list without ours",
        lambda i: i.mint(aud=["https://a.test", "https://b.test"]),
        "audience not accepted",
    ),
    ("empty audience list", lambda i: i.mint(aud=[]), "audience not accepted"),
    ("missing aud", lambda i: i.mint(aud=OMIT), "token has no 'aud' claim"),
    ("untrusted issuer", lambda i: i.mint(iss="https://evil.test"), "issuer not trusted"),
    ("missing iss", lambda i: i.mint(iss=OMIT), "token has no 'iss' claim"),
    ("expired", lambda i: i.mint(exp=_now() - 3600, nbf=_now() - 7200, iat=_now() - 7200), "token expired"),
    ("missing exp", lambda i: i.mint(exp=OMIT), "token has no 'exp' claim"),
    ("string exp", lambda i: i.mint(exp="tomorrow"), "malformed token"),
    ("exp beyond a float", lambda i: i.mint(exp=10**400), "malformed 'exp' claim"),
    ("nbf in the future", lambda i: i.mint(nbf=_now() + 3600), "token not yet valid"),
    ("iat in the future", lambda i: i.mint(iat=_now() + 3600), "token issued in the future"),
    ("alg none", lambda i: i.mint_alg_none(), "algorithm 'none' is not allowed"),
    (
        "HS256 keyed with the public key",
        lambda i: i.mint_hs256_with_public_key(),
        "algorithm 'HS256' is not allowed",
    ),
    ("wlcg.ver 2.0", lambda i: i.mint(wlcg_ver="2.0"), "wlcg.ver"),
    ("missing sub", lambda i: i.mint(sub=OMIT), "token has no 'sub' claim"),
    ("groups not a list", lambda i: i.mint(wlcg_groups={"a": 1}), "malformed 'wlcg.groups' claim"),
    ("scope not a string", lambda i: i.mint(scope=["storage.read:/"]), "malformed 'scope' claim"),
    ("oversized", lambda i: i.mint(scope="storage.read:/" + "x" * 20000), "token too large"),
    ("garbage", lambda i: "this is not a token", "malformed token"),
    ("three garbage parts", lambda i: "abc.def.ghi", "malformed token"),
    ("empty", lambda i: "", "malformed token"),
    ("payload not an object", lambda i: _with_payload(i.mint(), b"[1,2]"), "malformed token"),
]


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _with_payload(token: str, payload: bytes) -> str:
    header, _, signature = token.split(".")
    return f"{header}.{_b64(payload)}.{signature}"


def _tamper(token: str, **changes: Any) -> str:
    """The same signature over changed claims."""
    payload = token.split(".")[1]
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    return _with_payload(token, json.dumps({**claims, **changes}).encode())


@pytest.mark.parametrize(("mint", "expected"), [r[1:] for r in REJECTIONS], ids=[r[0] for r in REJECTIONS])
async def test_rejections(
    issuer: TokenIssuer, make_verifier: MakeVerifier, mint: Callable[[TokenIssuer], str], expected: str
) -> None:
    verifier = make_verifier(issuer)
    token = mint(issuer)
    assert expected in await rejected(verifier, token)
    assert verifier.cached(token) is None


async def test_untrusted_issuer_reason_is_sanitised(issuer: TokenIssuer, make_verifier: MakeVerifier) -> None:
    reason = await rejected(
        make_verifier(issuer), issuer.mint(iss="https://evil\r\nX-Injected: 1/" + "a" * 500)
    )
    assert "\r" not in reason and "\n" not in reason
    assert len(reason) < 200


async def test_algorithm_outside_the_issuers_list(issuer: TokenIssuer, make_verifier: MakeVerifier) -> None:
    verifier = make_verifier(issuer, config={"algorithms": ("ES256",)})
    assert "algorithm 'RS256' is not allowed" in await rejected(verifier, issuer.mint())
    assert (await verifier.verify(issuer.mint(key="ec"))).subject == "test-user"


async def test_leeway_accepts_slightly_expired_tokens(
    issuer: TokenIssuer, make_verifier: MakeVerifier
) -> None:
    expired = issuer.mint(exp=_now() - 10, iat=_now() - 100, nbf=_now() - 100)
    early = issuer.mint(nbf=_now() + 10, iat=_now() + 10)
    lenient, strict = make_verifier(issuer, leeway=60), make_verifier(issuer, leeway=0)
    for token in (expired, early):
        assert (await lenient.verify(token)).subject == "test-user"
    assert await rejected(strict, expired) == "token expired"
    assert await rejected(strict, early) == "token issued in the future"
    # accepted only thanks to the leeway: not worth a cache entry
    assert lenient.cached(expired) is None


# --------------------------------------------------------------------------------------------------
# Audiences


@pytest.mark.parametrize("audience", ANY_AUDIENCES)
async def test_any_audience(issuer: TokenIssuer, make_verifier: MakeVerifier, audience: str) -> None:
    token = issuer.mint(aud=audience)
    assert (await make_verifier(issuer, accept_any_audience=True).verify(token)).subject == "test-user"
    reason = await rejected(make_verifier(issuer, accept_any_audience=False), token)
    assert reason == "audience not accepted"


async def test_configured_and_own_audiences(issuer: TokenIssuer, make_verifier: MakeVerifier) -> None:
    verifier = make_verifier(issuer, own=("https://fed.test/",), audiences=("https://site.test:8443",))
    for audience in ("https://fed.test", "https://fed.test/", ["x", "https://site.test:8443"]):
        assert (await verifier.verify(issuer.mint(aud=audience))).subject == "test-user"
    assert await rejected(verifier, issuer.mint(aud=AUD)) == "audience not accepted"
    assert await rejected(verifier, issuer.mint(aud="https://site.test")) == "audience not accepted"


# --------------------------------------------------------------------------------------------------
# Key sources


def test_bad_jwks_file_fails_at_construction(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    for content in ("not json", '{"keys": []}', '{"keys": [{"kty": "oct", "k": "c2VjcmV0"}]}'):
        path.write_text(content)
        config = TokenSettings(issuers=(IssuerConfig(issuer="https://i.test", jwks_file=path),))
        with pytest.raises(ValueError, match="jwks_file"):
            TokenVerifier(config, [AUD])


async def test_discovery_fetches_keys_once(make_verifier: MakeVerifier) -> None:
    issuer = TokenIssuer(audience=AUD)
    async with serve_issuer(issuer) as server:
        verifier = make_verifier(issuer, jwks_file=False)
        for _ in range(5):
            assert (await verifier.verify(issuer.mint())).issuer == server.url
        await asyncio.gather(*(verifier.verify(issuer.mint(key="ec")) for _ in range(10)))
        assert (server.discovery_requests, server.jwks_requests) == (1, 1)


async def test_concurrent_first_fetch_is_coalesced(make_verifier: MakeVerifier) -> None:
    issuer = TokenIssuer(audience=AUD)
    async with serve_issuer(issuer) as server:
        server.delay = 0.2
        verifier = make_verifier(issuer, jwks_file=False)
        identities = await asyncio.gather(*(verifier.verify(issuer.mint()) for _ in range(10)))
        assert {i.subject for i in identities} == {"test-user"}
        assert (server.discovery_requests, server.jwks_requests) == (1, 1)


async def test_unknown_kid_refetch_is_rate_limited(make_verifier: MakeVerifier) -> None:
    issuer = TokenIssuer(audience=AUD)
    async with serve_issuer(issuer) as server:
        verifier = make_verifier(issuer, jwks_file=False)
        await verifier.verify(issuer.mint())
        assert server.jwks_requests == 1
        for kid in ("unknown-1", "unknown-2", "unknown-3"):
            assert "issuer has no key" in await rejected(verifier, issuer.mint(headers={"kid": kid}))
        assert server.jwks_requests == 2  # one refetch for the first unknown kid, none after
        assert server.discovery_requests == 1  # a kid refetch reuses the known jwks_uri


async def test_rotated_key_is_picked_up_by_refetch(make_verifier: MakeVerifier) -> None:
    issuer = TokenIssuer(audience=AUD)
    async with serve_issuer(issuer) as server:
        verifier = make_verifier(issuer, jwks_file=False)
        await verifier.verify(issuer.mint())
        issuer.add_key("rotated", "ec")
        assert (await verifier.verify(issuer.mint(key="rotated"))).subject == "test-user"
        assert server.jwks_requests == 2


async def test_issuer_down(make_verifier: MakeVerifier) -> None:
    issuer = TokenIssuer(audience=AUD)
    async with serve_issuer(issuer) as server:
        server.fail = True
        verifier = make_verifier(issuer, jwks_file=False)
        reason = await rejected(verifier, issuer.mint())
        assert reason == f"cannot get the signing keys of issuer {server.url}"
        # no second attempt right away: a failing issuer is not hammered by every request
        await rejected(verifier, issuer.mint())
        assert server.discovery_requests == 1


async def test_issuer_unreachable() -> None:
    config = TokenSettings(issuers=(IssuerConfig(issuer="http://127.0.0.1:9"),))
    verifier = TokenVerifier(config, [AUD])
    try:
        issuer = TokenIssuer("http://127.0.0.1:9", audience=AUD)
        assert "cannot get the signing keys" in await rejected(verifier, issuer.mint())
    finally:
        await verifier.close()


async def test_stale_keys_serve_while_issuer_is_down(make_verifier: MakeVerifier) -> None:
    issuer = TokenIssuer(audience=AUD)
    async with serve_issuer(issuer) as server:
        verifier = make_verifier(issuer, jwks_file=False, config={"key_cache": 0.1})
        await verifier.verify(issuer.mint())
        server.fail = True
        await asyncio.sleep(0.15)
        assert (await verifier.verify(issuer.mint())).subject == "test-user"
        assert server.discovery_requests == 2


async def test_jwks_url_skips_discovery(make_verifier: MakeVerifier) -> None:
    issuer = TokenIssuer(audience=AUD)
    async with serve_issuer(issuer) as server:
        verifier = make_verifier(issuer, jwks_file=False, config={"jwks_url": f"{server.url}/jwks"})
        await verifier.verify(issuer.mint())
        assert (server.discovery_requests, server.jwks_requests) == (0, 1)


# --------------------------------------------------------------------------------------------------
# The cache


async def test_cached_after_verify_until_exp(issuer: TokenIssuer, make_verifier: MakeVerifier) -> None:
    verifier = make_verifier(issuer, leeway=0)
    exp = _now() + 2
    token = issuer.mint(exp=exp)
    assert verifier.cached(token) is None
    identity = await verifier.verify(token)
    assert verifier.cached(token) is identity
    assert verifier.cached(issuer.mint()) is None
    await asyncio.sleep(max(0.0, exp - time.time()) + 0.05)
    assert verifier.cached(token) is None
    assert await rejected(verifier, token) == "token expired"


async def test_cache_is_a_bounded_lru(issuer: TokenIssuer, make_verifier: MakeVerifier) -> None:
    verifier = make_verifier(issuer, cache_entries=2)
    first, second, third = (issuer.mint() for _ in range(3))
    await verifier.verify(first)
    await verifier.verify(second)
    assert verifier.cached(first) is not None  # now the most recently used
    await verifier.verify(third)
    assert verifier.cached(second) is None
    assert verifier.cached(first) is not None
    assert verifier.cached(third) is not None


# --------------------------------------------------------------------------------------------------
# Scopes and capabilities


@pytest.mark.parametrize(
    ("scope", "base", "expected"),
    [
        ("storage.read", "/vo", [({R, L}, "/vo")]),
        ("storage.read:", "/vo", [({R, L}, "/vo")]),
        ("storage.read:/", "/", [({R, L}, "/")]),
        ("storage.create:/a/./b//c/", "/vo", [({W}, "/vo/a/b/c")]),
        ("read:/a write:/a", "/vo", [({R, L, W, M, D}, "/vo/a")]),
        ("storage.modify:/x", "/", [({W, M, D}, "/x")]),
        ("storage.read:/a/../../etc", "/vo", []),
        ("storage.read:/..", "/vo", []),
        ("storage.read:relative", "/vo", []),
        ("openid offline_access storage.poll:/ compute.read wlcg.groups", "/vo", []),
        ("storage.read:/a storage.read:/a/..b", "/vo", [({R, L}, "/vo/a"), ({R, L}, "/vo/a/..b")]),
    ],
)
def test_parse_scopes(scope: str, base: str, expected: list[tuple[set[Privilege], str]]) -> None:
    assert parse_scopes(scope, base) == tuple(Capability(frozenset(p), path) for p, path in expected)


def test_capability_allows_whole_segments() -> None:
    caps = (Capability(frozenset({R}), "/a/b"), Capability(frozenset({W}), "/w/"))
    assert capability_allows(caps, R, "/a/b")
    assert capability_allows(caps, R, "/a/b/")
    assert capability_allows(caps, R, "/a/b/c/d")
    assert not capability_allows(caps, R, "/a/bc")
    assert not capability_allows(caps, R, "/a")
    assert not capability_allows(caps, W, "/a/b/c")
    assert capability_allows(caps, W, "/w/x")
    assert not capability_allows(caps, W, "/wx")
    assert not capability_allows(caps, R, "/a/b/../../etc")
    assert not capability_allows(caps, R, "/a/b/..")
    assert not capability_allows((), R, "/a/b")
    root = (Capability(frozenset({R}), "/"),)
    assert capability_allows(root, R, "/")
    assert capability_allows(root, R, "/anything/at/all")
    assert not capability_allows(root, Privilege.DELETE, "/x")


# --------------------------------------------------------------------------------------------------
# Arbitrary input only ever gives TokenRejected

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


def _segment(value: Any) -> str:
    return _b64(json.dumps(value).encode())


def _claims_strategy(issuer: TokenIssuer) -> st.SearchStrategy[dict[str, Any]]:
    """Overrides for :meth:`TokenIssuer.mint`: each claim kept, left out, or replaced by odd JSON."""
    now = _now()
    huge = st.sampled_from([10**400, -(10**400), 2**63, 1e308])
    times = st.integers(now - 7200, now + 7200) | huge | st.integers() | st.floats() | _json_values
    values = {
        "iss": st.just(issuer.issuer + "/") | _json_values,
        "aud": st.sampled_from([AUD, "any", [AUD, 1], [], [[AUD]]]) | _json_values,
        "exp": times,
        "nbf": times,
        "iat": times,
        "sub": st.sampled_from(["", "x"]) | _json_values,
        "jti": _json_values,
        "scope": st.sampled_from(["storage.read:/", "read:/../x", "storage.modify:"]) | _json_values,
        "wlcg_ver": st.sampled_from(["1.0", 1.0, 1]) | _json_values,
        "wlcg_groups": st.sampled_from([["/a"], "/a", [None]]) | _json_values,
    }
    return st.fixed_dictionaries({}, optional={k: v | st.just(OMIT) for k, v in values.items()})


def _token_strategy(issuer: TokenIssuer) -> st.SearchStrategy[str]:
    """Plain garbage, base64-ish garbage, well-formed JWTs with odd headers and claims (mostly naming
    the trusted issuer, so the checks past the issuer lookup are reached), and damaged real tokens."""
    now = _now()
    times = st.integers(now - 7200, now + 7200) | _json_values
    headers = st.fixed_dictionaries(
        {"alg": st.sampled_from(["RS256", "ES256", "none", "NONE", "HS256", "PS512", ""]) | _json_values},
        optional={
            "kid": st.sampled_from([issuer.keys["rsa"].kid, issuer.keys["ec"].kid, "x"]) | _json_values,
            "crit": _json_values,
            "b64": st.booleans(),
            "typ": _json_values,
        },
    )
    claims = st.fixed_dictionaries(
        {"iss": st.just(issuer.issuer) | _json_values},
        optional={
            "aud": st.sampled_from([AUD, "any", [AUD, 1]]) | _json_values,
            "exp": times,
            "nbf": times,
            "iat": times,
            "sub": _json_values,
            "jti": _json_values,
            "scope": st.sampled_from(["storage.read:/", "read:/../x"]) | _json_values,
            "wlcg.ver": st.sampled_from(["1.0", 1.0]) | _json_values,
            "wlcg.groups": _json_values,
        },
    )
    structured = st.builds(
        lambda h, c, sig: f"{_segment(h)}.{_segment(c)}.{_b64(sig)}",
        headers,
        claims,
        st.binary(max_size=300),
    )
    odd_segments = st.builds(
        lambda h, c: f"{_segment(h)}.{_segment(c)}.c2ln", headers | _json_values, claims | _json_values
    )
    real = issuer.mint()
    damaged = st.builds(
        lambda at, text: real[:at] + text + real[at + 1 :],
        st.integers(0, len(real) - 1),
        st.text(max_size=3),
    )
    garbage = st.text(max_size=300) | st.from_regex(r"[A-Za-z0-9_\-=.]{0,300}", fullmatch=True)
    return st.one_of(structured, structured, structured, odd_segments, damaged, garbage)


def test_arbitrary_input_is_only_ever_rejected(issuer: TokenIssuer, tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(issuer.jwks_json())
    config = TokenSettings(
        issuers=(IssuerConfig(issuer=issuer.issuer, jwks_file=path),), max_token_bytes=2048
    )
    verifier = TokenVerifier(config, [AUD])
    real = issuer.mint()

    with asyncio.Runner() as runner:

        @settings(max_examples=200, deadline=None, database=None)
        @given(_token_strategy(issuer))
        def check(token: str) -> None:
            try:
                identity = runner.run(verifier.verify(token))
            except TokenRejected as exc:
                assert exc.reason
            else:  # only a change the signature does not cover (surrounding whitespace) may pass
                assert token.strip() == real, "an arbitrary token was accepted"
                assert identity.subject == "test-user"

        # properly signed tokens with arbitrary claims: the checks after the signature
        @settings(max_examples=200, deadline=None, database=None)
        @given(_claims_strategy(issuer), st.sampled_from(["rsa", "ec"]))
        def check_signed(claims: dict[str, Any], key: str) -> None:
            token = issuer.mint(key=key, **claims)
            try:
                identity = runner.run(verifier.verify(token))
            except TokenRejected as exc:
                assert exc.reason
            else:
                assert identity.issuer == issuer.issuer
                assert isinstance(identity.subject, str)

        try:
            check()
            check_signed()
        finally:
            runner.run(verifier.close())
