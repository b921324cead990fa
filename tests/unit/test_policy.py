"""The authorization engine: deny by default, whole-segment prefixes, every subject kind, token
capabilities, limited proxies, policy files, and a brute-force reference checked by Hypothesis."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from geofed.auth.identity import ANONYMOUS, Capability, Identity, Method, Privilege
from geofed.auth.policy import Policy, covers, fqan_group, load_policy_file, normalise_fqan
from geofed.auth.settings import AuthSettings, PolicyRule, SubjectMatch
from geofed.errors import ConfigError

R, L, W, M, D, C = Privilege  # read, list, write, modify, delete, copy


def rule(path: str, allow: list[str], *to: Any) -> PolicyRule:
    return PolicyRule.model_validate({"path": path, "allow": allow, "to": list(to)})


def x509(
    dn: str = "/DC=org/CN=u", vos: tuple[str, ...] = (), fqans: tuple[str, ...] = (), **kw: Any
) -> Identity:
    return Identity(Method.X509, dn=dn, vos=frozenset(vos), fqans=fqans, **kw)


def token(*caps: tuple[str, set[Privilege]], **kw: Any) -> Identity:
    kw.setdefault("issuer", "https://iss.example/")
    kw.setdefault("subject", "sub1")
    return Identity(
        Method.TOKEN, capabilities=tuple(Capability(frozenset(p), path) for path, p in caps), **kw
    )


# --- paths ---------------------------------------------------------------------------------


COVERAGE = [
    *[("/a/b", p, True) for p in ("/a/b", "/a/b/c", "/a/b/c/d", "/a/b/c/")],
    *[("/a/b", p, False) for p in ("/a/bc", "/a", "/", "/b/a/b")],
    *[("/", p, True) for p in ("/", "/anything/at/all")],
    ("/a/b/", "/a/b/c", True),
]


@pytest.mark.parametrize(("prefix", "path", "expected"), COVERAGE)
def test_rule_covers_path_and_below_by_whole_segments(prefix: str, path: str, expected: bool) -> None:
    assert covers(prefix, path) is expected
    assert Policy([rule(prefix, ["read"], "anyone")]).allows(ANONYMOUS, R, path) is expected


def test_root_rule_covers_everything() -> None:
    policy = Policy([rule("/", ["read"], "anyone")])
    assert all(policy.allows(ANONYMOUS, R, p) for p in ("/", "/a", "/a/b/c/d/e/f"))


def test_unnormalised_paths_never_climb_out() -> None:
    policy = Policy([rule("/a", ["read"], "anyone")])
    assert not policy.allows(ANONYMOUS, R, "/a/../b")
    assert not policy.allows(ANONYMOUS, R, "a/b")
    assert policy.allows(ANONYMOUS, R, "/a/..b")  # a name, not a parent reference


def test_rule_paths_are_normalised_and_dotdot_refused() -> None:
    assert Policy([rule("/a//b/./", ["read"], "anyone")]).allows(ANONYMOUS, R, "/a/b/c")
    with pytest.raises(ConfigError, match=r"'\.\.'"):
        Policy([rule("/a/../b", ["read"], "anyone")])


# --- deny by default -------------------------------------------------------------------------


def test_no_rules_allow_nothing() -> None:
    policy = Policy([])
    for identity in (ANONYMOUS, x509(vos=("atlas",)), token(("/", set(Privilege)))):
        for privilege in Privilege:
            assert not policy.allows(identity, privilege, "/a")
    assert not policy.may_stat(ANONYMOUS, "/") and not policy.may_list(ANONYMOUS, "/")


def test_rules_elsewhere_deny() -> None:
    policy = Policy([rule("/public", ["all"], "anyone")])
    assert not policy.allows(ANONYMOUS, R, "/private/x")
    assert not policy.allows(ANONYMOUS, R, "/")
    assert not policy.allows(ANONYMOUS, R, "/publicity")


def test_only_the_granted_privilege() -> None:
    policy = Policy([rule("/a", ["read", "list"], "anyone")])
    assert policy.allows(ANONYMOUS, R, "/a/x") and policy.allows(ANONYMOUS, L, "/a")
    for privilege in (W, M, D, C):
        assert not policy.allows(ANONYMOUS, privilege, "/a/x")


def test_all_grants_every_privilege() -> None:
    policy = Policy([rule("/a", ["all"], "authenticated")])
    assert all(policy.allows(x509(), p, "/a/b") for p in Privilege)


def test_rules_at_several_levels_combine() -> None:
    policy = Policy([rule("/", ["read"], "anyone"), rule("/a/b", ["write"], {"vo": "atlas"})])
    member = x509(vos=("atlas",))
    assert policy.allows(member, R, "/a/b/c") and policy.allows(member, W, "/a/b/c")
    assert not policy.allows(member, W, "/a/c")
    assert not policy.allows(x509(), W, "/a/b/c")


# --- subjects ------------------------------------------------------------------------------


def test_anyone_authenticated_anonymous() -> None:
    policy = Policy(
        [
            rule("/any", ["read"], "anyone"),
            rule("/auth", ["read"], "authenticated"),
            rule("/anon", ["read"], "anonymous"),
        ]
    )
    user, tok = x509(), token()
    assert all(policy.allows(i, R, "/any") for i in (ANONYMOUS, user, tok))
    assert not policy.allows(ANONYMOUS, R, "/auth")
    assert policy.allows(user, R, "/auth") and policy.allows(tok, R, "/auth")
    assert policy.allows(ANONYMOUS, R, "/anon")
    assert not policy.allows(user, R, "/anon") and not policy.allows(tok, R, "/anon")


def test_anonymous_identity_matches_no_attribute_subject() -> None:
    policy = Policy([rule("/", ["read"], {"dn": "/CN=x"}, {"vo": "atlas"})])
    assert not policy.allows(Identity(Method.ANONYMOUS, dn="/CN=x", vos=frozenset({"atlas"})), R, "/a")


def test_dn_is_exact() -> None:
    policy = Policy([rule("/", ["read"], {"dn": "/DC=org/CN=Some One"})])
    assert policy.allows(x509("/DC=org/CN=Some One"), R, "/f")
    assert not policy.allows(x509("/DC=org/CN=Some One/CN=123"), R, "/f")
    assert not policy.allows(x509("/DC=org/CN=Some"), R, "/f")
    assert not policy.allows(Identity(Method.X509), R, "/f")


def test_vo_membership() -> None:
    policy = Policy([rule("/atlas", ["read"], {"vo": "atlas"})])
    assert policy.allows(x509(vos=("cms", "atlas")), R, "/atlas/f")
    assert not policy.allows(x509(vos=("cms",)), R, "/atlas/f")
    assert policy.allows(Identity(Method.HEADERS, dn="/CN=h", vos=frozenset({"atlas"})), R, "/atlas")


@pytest.mark.parametrize(
    ("pattern", "fqan", "expected"),
    [
        ("/atlas", "/atlas/Role=NULL/Capability=NULL", True),
        ("/atlas", "/atlas", True),
        ("/atlas/Role=NULL", "/atlas/Role=NULL/Capability=NULL", True),
        ("/atlas/Role=NULL/Capability=NULL", "/atlas", True),
        ("/atlas", "/atlas/Role=production/Capability=NULL", False),
        ("/atlas", "/atlas/higgs/Role=NULL/Capability=NULL", False),
        ("/atlas/Role=production", "/atlas/Role=production/Capability=NULL", True),
        ("/atlas/Role=production", "/atlas/Role=pilot/Capability=NULL", False),
        ("/atlas/*", "/atlas/Role=production/Capability=NULL", True),
        ("/atlas/*", "/atlas/higgs/Role=NULL/Capability=NULL", True),
        ("/atlas/*", "/atlas/Role=NULL/Capability=NULL", False),  # that is "/atlas" itself
        ("/atlas*", "/atlas/Role=NULL/Capability=NULL", True),
        ("/atlas*", "/atlasx", True),
        ("/atlas/Role=prod*", "/atlas/Role=production", True),
        ("/atlas/Role=prod*", "/atlas/Role=pilot", False),
        ("*", "/cms/Role=lcgadmin", True),
        ("/atl.s", "/atlas", False),  # only '*' is special
    ],
)
def test_fqan_patterns(pattern: str, fqan: str, expected: bool) -> None:
    policy = Policy([rule("/", ["read"], {"fqan": pattern})])
    assert policy.allows(x509(fqans=(fqan,)), R, "/f") is expected


def test_fqan_matches_any_of_the_identitys_fqans() -> None:
    policy = Policy([rule("/", ["read"], {"fqan": "/atlas/Role=production"})])
    fqans = ("/atlas/Role=NULL/Capability=NULL", "/atlas/Role=production/Capability=NULL")
    assert policy.allows(x509(fqans=fqans), R, "/f")


def test_normalise_fqan_and_group() -> None:
    assert normalise_fqan("/atlas/Role=NULL/Capability=NULL") == "/atlas"
    assert normalise_fqan("/atlas/Capability=NULL/Role=NULL") == "/atlas"
    assert normalise_fqan("/atlas/Role=prod/Capability=NULL") == "/atlas/Role=prod"
    assert fqan_group("/atlas/higgs/Role=prod/Capability=NULL") == "/atlas/higgs"
    assert fqan_group("/atlas/Capability=NULL") == "/atlas"


def test_group_from_token_groups() -> None:
    policy = Policy([rule("/", ["read"], {"group": "/atlas/higgs"})])
    assert policy.allows(token(groups=("/cms", "/atlas/higgs")), R, "/f")
    assert not policy.allows(token(groups=("/atlas",)), R, "/f")
    assert not policy.allows(token(groups=("/atlas/higgs/sub",)), R, "/f")


def test_group_from_fqans() -> None:
    policy = Policy([rule("/", ["read"], {"group": "/atlas/higgs"})])
    assert policy.allows(x509(fqans=("/atlas/higgs/Role=production/Capability=NULL",)), R, "/f")
    assert policy.allows(x509(fqans=("/atlas/higgs/Role=NULL/Capability=NULL",)), R, "/f")
    assert not policy.allows(x509(fqans=("/atlas/Role=NULL/Capability=NULL",)), R, "/f")


def test_issuer_tolerates_one_trailing_slash() -> None:
    for written in ("https://iss.example", "https://iss.example/"):
        policy = Policy([rule("/", ["read"], {"issuer": written})])
        assert policy.allows(token(issuer="https://iss.example"), R, "/f")
        assert policy.allows(token(issuer="https://iss.example/"), R, "/f")
        assert not policy.allows(token(issuer="https://iss.example//"), R, "/f")
        assert not policy.allows(token(issuer="https://other.example/"), R, "/f")


def test_issuer_with_subject() -> None:
    policy = Policy([rule("/", ["read"], {"issuer": "https://iss.example", "subject": "alice"})])
    assert policy.allows(token(issuer="https://iss.example/", subject="alice"), R, "/f")
    assert not policy.allows(token(issuer="https://iss.example/", subject="bob"), R, "/f")
    assert not policy.allows(token(issuer="https://other.example", subject="alice"), R, "/f")


# --- token capabilities --------------------------------------------------------------------


def test_read_only_token_cannot_write() -> None:
    policy = Policy([])
    tok = token(("/atlas/data", {R, L}))
    assert policy.authorize(tok, R, "/atlas/data/f") and policy.authorize(tok, L, "/atlas/data")
    assert not policy.authorize(tok, W, "/atlas/data/f")
    assert not policy.authorize(tok, R, "/atlas/database")
    assert not policy.authorize(tok, R, "/atlas")
    assert not policy.allows(tok, R, "/atlas/data/f")  # allows() is the policy alone


def test_create_without_modify() -> None:
    tok = token(("/up", {W}))
    policy = Policy([])
    assert policy.authorize(tok, W, "/up/new") and not policy.authorize(tok, M, "/up/new")
    assert policy.may_stat(tok, "/up/new")  # a writer sees what it wrote
    assert not policy.may_list(tok, "/up")


def test_capabilities_count_only_for_tokens() -> None:
    forged = Identity(Method.X509, dn="/CN=x", capabilities=(Capability(frozenset({R}), "/"),))
    assert not Policy([]).authorize(forged, R, "/f")


def test_token_capability_or_policy() -> None:
    policy = Policy([rule("/pub", ["read"], "anyone")])
    tok = token(("/mine", {R}))
    assert policy.authorize(tok, R, "/pub/x") and policy.authorize(tok, R, "/mine/x")


# --- limited proxies -----------------------------------------------------------------------


def test_limited_proxy_never_writes_by_default() -> None:
    policy = Policy([rule("/", ["all"], {"vo": "atlas"})])
    limited = x509(vos=("atlas",), limited_proxy=True)
    assert policy.allows(limited, R, "/f") and policy.allows(limited, L, "/")
    for privilege in (W, M, D, C):
        assert not policy.allows(limited, privilege, "/f")
        assert not policy.authorize(limited, privilege, "/f")
    assert "limited proxy" in policy.explain(limited, W, "/f")


def test_limited_proxy_may_write_when_configured() -> None:
    policy = Policy([rule("/", ["all"], {"vo": "atlas"})], limited_proxies_may_write=True)
    limited = x509(vos=("atlas",), limited_proxy=True)
    assert all(policy.allows(limited, p, "/f") for p in Privilege)


def test_limited_proxy_stats_only_through_read_or_list() -> None:
    policy = Policy([rule("/w", ["write"], "authenticated"), rule("/r", ["read"], "authenticated")])
    limited = x509(limited_proxy=True)
    assert not policy.may_stat(limited, "/w/f") and policy.may_stat(x509(), "/w/f")
    assert policy.may_stat(limited, "/r/f")
    assert Policy(policy.rules, limited_proxies_may_write=True).may_stat(limited, "/w/f")


# --- stat, list, visible -------------------------------------------------------------------


@pytest.mark.parametrize("privilege", ["read", "list", "write", "modify"])
def test_stat_from_any_of_four(privilege: str) -> None:
    policy = Policy([rule("/a", [privilege], "anyone")])
    assert policy.may_stat(ANONYMOUS, "/a/f") and policy.visible(ANONYMOUS, "/a/f")
    assert not policy.may_stat(ANONYMOUS, "/b")


@pytest.mark.parametrize("privilege", ["delete", "copy"])
def test_no_stat_from_delete_or_copy(privilege: str) -> None:
    assert not Policy([rule("/a", [privilege], "anyone")]).may_stat(ANONYMOUS, "/a/f")


def test_list_needs_list() -> None:
    policy = Policy([rule("/a", ["read"], "anyone"), rule("/b", ["list"], "anyone")])
    assert not policy.may_list(ANONYMOUS, "/a") and policy.may_list(ANONYMOUS, "/b")


# --- explain -------------------------------------------------------------------------------


def test_explain_names_the_rule() -> None:
    policy = Policy([rule("/", ["list"], "anyone"), rule("/a", ["read"], {"vo": "cms"}, {"vo": "atlas"})])
    text = policy.explain(x509(vos=("atlas",)), R, "/a/f")
    assert text.startswith("allowed") and "rule 1" in text and "vo:atlas" in text and "vo:cms" not in text


def test_explain_denial_and_token() -> None:
    policy = Policy([rule("/a", ["read"], "authenticated")])
    text = policy.explain(ANONYMOUS, R, "/a/f")
    assert text.startswith("denied: no rule grants read on /a/f")
    assert "token capability read on /t" in policy.explain(token(("/t", {R})), R, "/t/x")


# --- policy files --------------------------------------------------------------------------


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(text, encoding="utf-8")
    return path


def test_load_list_and_mapping(tmp_path: Path) -> None:
    as_list = "- {path: /a, allow: [read], to: [anyone]}\n- {path: /b, allow: [all], to: [{vo: atlas}]}\n"
    rules = load_policy_file(write(tmp_path, as_list))
    assert [r.path for r in rules] == ["/a", "/b"]
    assert load_policy_file(
        write(tmp_path, "rules:\n" + "".join("  " + ln + "\n" for ln in as_list.splitlines()))
    )
    assert load_policy_file(write(tmp_path, "")) == ()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (
            "- {path: /a, allow: [read], to: [anyone]}\n- {path: /b, allow: [reed], to: [anyone]}",
            r"policy\.yaml: rules\[1\]\.allow\[0\]: expected one of .*'all', got 'reed'",
        ),
        ("- {path: /a, allow: [read], to: [anyon]}", r"rules\[0\]\.to\[0\]: expected one of 'anyone'"),
        (
            "- {path: /a, allow: [read], to: [{dn: x, vo: y}]}",
            r"rules\[0\]\.to\[0\]: a subject gives exactly one",
        ),
        ("- {path: /a, allow: [read], to: [{dnn: x}]}", r"rules\[0\]\.to\[0\]\.dnn: unknown key"),
        ("- {path: a, allow: [read], to: [anyone]}", r"rules\[0\]\.path: must be an absolute path"),
        ("- {path: /a/../b, allow: [read], to: [anyone]}", r"rules\[0\]\.path: '\.\.'"),
        ("- {path: /a, allow: [], to: [anyone]}", r"rules\[0\]\.allow: "),
        ("- {path: /a, allow: [read], to: [anyone], extra: 1}", r"rules\[0\]\.extra: unknown key"),
        ("- 5", r"rules\[0\]: a rule is a mapping"),
        ("rulez: []", r"policy\.yaml: rulez: unknown key"),
        ("just text", r"policy\.yaml: a policy file holds a list"),
        ("- [unclosed", r"policy\.yaml: not valid YAML"),
    ],
)
def test_policy_file_errors(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_policy_file(write(tmp_path, text))


def test_every_bad_rule_reported(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_policy_file(
            write(tmp_path, "- {path: a, allow: [read], to: [anyone]}\n- {path: b, allow: [read], to: [x]}")
        )
    assert "rules[0].path" in str(info.value) and "rules[1].path" in str(info.value)
    assert "rules[1].to[0]" in str(info.value)


def test_unreadable_policy_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"cannot read policy file .*missing\.yaml"):
        load_policy_file(tmp_path / "missing.yaml")


def test_from_settings_combines_inline_and_file(tmp_path: Path) -> None:
    path = write(tmp_path, "- {path: /file, allow: [read], to: [anyone]}")
    auth = AuthSettings.model_validate(
        {
            "policy": [{"path": "/inline", "allow": ["read"], "to": ["anyone"]}],
            "policy_file": str(path),
            "limited_proxies_may_write": True,
        }
    )
    policy = Policy.from_settings(auth)
    assert len(policy) == 2 and policy.limited_proxies_may_write
    assert policy.allows(ANONYMOUS, R, "/inline/x") and policy.allows(ANONYMOUS, R, "/file/x")


# --- property tests ------------------------------------------------------------------------

SEGMENTS = ("a", "b", "ab", "c")
FQANS = ("/vo1", "/vo1/Role=NULL/Capability=NULL", "/vo1/Role=prod", "/vo1/g/Role=p/Capability=NULL", "/v2")

paths = st.lists(st.sampled_from(SEGMENTS), max_size=6).map(lambda s: "/" + "/".join(s))
rule_paths = st.lists(st.sampled_from(SEGMENTS), max_size=3).map(lambda s: "/" + "/".join(s))
subjects = st.one_of(
    st.sampled_from(["anyone", "authenticated", "anonymous"]),
    st.builds(lambda v: SubjectMatch(dn=v), st.sampled_from(["/CN=1", "/CN=2"])),
    st.builds(lambda v: SubjectMatch(vo=v), st.sampled_from(["vo1", "vo2"])),
    st.builds(lambda v: SubjectMatch(fqan=v), st.sampled_from([*FQANS, "/vo1/*", "*", "/vo*/Role=p*"])),
    st.builds(lambda v: SubjectMatch(group=v), st.sampled_from(["/vo1", "/vo1/g", "/vo2"])),
    st.builds(
        lambda i, s: SubjectMatch(issuer=i, subject=s),
        st.sampled_from(["https://i", "https://i/", "https://j"]),
        st.none() | st.sampled_from(["s1", "s2"]),
    ),
)
privilege_names = st.sampled_from([*(p.value for p in Privilege), "all"])
rules = st.builds(
    lambda path, allow, to: PolicyRule(path=path, allow=allow, to=to),
    rule_paths,
    st.lists(privilege_names, min_size=1, max_size=3),
    st.lists(subjects, min_size=1, max_size=3),
)
privilege_sets = st.frozensets(st.sampled_from(list(Privilege)), max_size=3)
certificate_identities = st.builds(
    Identity,
    method=st.sampled_from([Method.X509, Method.HEADERS]),
    dn=st.sampled_from(["/CN=1", "/CN=2", "/CN=3"]),
    vos=st.frozensets(st.sampled_from(["vo1", "vo2", "vo3"]), max_size=2),
    fqans=st.lists(st.sampled_from(FQANS), max_size=2).map(tuple),
    limited_proxy=st.booleans(),
)
token_identities = st.builds(
    Identity,
    method=st.just(Method.TOKEN),
    issuer=st.sampled_from(["https://i", "https://i/", "https://j"]),
    subject=st.sampled_from(["s1", "s2"]),
    groups=st.lists(st.sampled_from(["/vo1", "/vo1/g", "/vo2"]), max_size=2).map(tuple),
    capabilities=st.lists(st.builds(Capability, privilege_sets, rule_paths), max_size=2).map(tuple),
)
identities = st.just(ANONYMOUS) | certificate_identities | token_identities
WRITING = {W, M, D, C}


def reference_glob(pattern: str, text: str) -> bool:
    """'*' matches any run of characters; everything else literally. Plain recursion."""
    if not pattern:
        return not text
    if pattern[0] == "*":
        return any(reference_glob(pattern[1:], text[i:]) for i in range(len(text) + 1))
    return bool(text) and text[0] == pattern[0] and reference_glob(pattern[1:], text[1:])


def reference_strip(fqan: str) -> str:
    while fqan.endswith(("/Role=NULL", "/Capability=NULL")):
        fqan = fqan.rsplit("/", 1)[0]
    return fqan


def reference_under(prefix: str, path: str) -> bool:
    want = [s for s in prefix.split("/") if s]
    have = [s for s in path.split("/") if s]
    return have[: len(want)] == want


def reference_subject(subject: str | SubjectMatch, identity: Identity) -> bool:
    if subject == "anyone":
        return True
    if identity.method is Method.ANONYMOUS:
        return subject == "anonymous"
    if isinstance(subject, str):
        return subject == "authenticated"
    if subject.dn is not None:
        return identity.dn == subject.dn
    if subject.vo is not None:
        return subject.vo in identity.vos
    if subject.fqan is not None:
        return any(reference_glob(reference_strip(subject.fqan), reference_strip(f)) for f in identity.fqans)
    if subject.group is not None:
        fqan_groups = [f.split("/Role=")[0].split("/Capability=")[0] for f in identity.fqans]
        return subject.group in identity.groups or subject.group in fqan_groups
    if identity.issuer is None or identity.issuer.removesuffix("/") != (subject.issuer or "").removesuffix(
        "/"
    ):
        return False
    return subject.subject is None or subject.subject == identity.subject


def reference_authorize(rules: list[PolicyRule], identity: Identity, privilege: Privilege, path: str) -> bool:
    if identity.limited_proxy and privilege in WRITING:
        return False
    for r in rules:
        if not reference_under(r.path, path) or privilege not in r.privileges:
            continue
        if any(reference_subject(s, identity) for s in r.to):
            return True
    if identity.method is Method.TOKEN:
        return any(privilege in c.privileges and reference_under(c.path, path) for c in identity.capabilities)
    return False


FUZZ = settings(max_examples=300, deadline=None)


@FUZZ
@given(st.lists(rules, max_size=12), identities, st.sampled_from(list(Privilege)), paths)
def test_authorize_equals_brute_force(
    rule_list: list[PolicyRule], identity: Identity, privilege: Privilege, path: str
) -> None:
    policy = Policy(rule_list)
    expected = reference_authorize(rule_list, identity, privilege, path)
    assert policy.authorize(identity, privilege, path) is expected
    assert policy.explain(identity, privilege, path).startswith("allowed") is expected


@FUZZ
@given(st.lists(rules, max_size=12), identities, paths)
def test_may_stat_equals_any_of_four(rule_list: list[PolicyRule], identity: Identity, path: str) -> None:
    policy = Policy(rule_list)
    expected = any(reference_authorize(rule_list, identity, p, path) for p in (R, L, W, M))
    assert policy.may_stat(identity, path) is expected
    traverse = reference_traverse(rule_list, identity, path)
    assert policy.may_traverse(identity, path) is traverse
    assert policy.visible(identity, path) is (expected or traverse)


def reference_traverse(rules: list[PolicyRule], identity: Identity, path: str) -> bool:
    """Some rule strictly below ``path`` (or a token capability there) names this identity."""
    if ".." in path.split("/"):
        return False
    path = path.rstrip("/") or "/"

    def strictly_below(other: str) -> bool:
        other = other.rstrip("/") or "/"
        return other != path and reference_under(path, other)

    for r in rules:
        if strictly_below(r.path) and any(reference_subject(s, identity) for s in r.to):
            return True
    if identity.method is Method.TOKEN:
        return any(strictly_below(c.path) for c in identity.capabilities)
    return False


def test_traversal_shows_the_way_to_a_granted_area() -> None:
    policy = Policy(
        [rule("/fed/atlas/data", ["read"], {"vo": "atlas"}), rule("/fed/cms", ["read"], {"vo": "cms"})]
    )
    atlas = x509(vos=("atlas",))
    assert policy.may_traverse(atlas, "/") and policy.may_traverse(atlas, "/fed")
    assert policy.may_traverse(atlas, "/fed/atlas")
    assert not policy.may_traverse(atlas, "/fed/atlas/data")  # a grant there, not below
    assert policy.visible(atlas, "/fed/atlas") and not policy.visible(atlas, "/fed/cms")
    assert not policy.may_traverse(x509(vos=("lhcb",)), "/fed")


@FUZZ
@given(st.lists(rules, max_size=12), identities, st.sampled_from(list(Privilege)), st.text(max_size=40))
def test_authorize_never_crashes(
    rule_list: list[PolicyRule], identity: Identity, privilege: Privilege, path: str
) -> None:
    policy = Policy(rule_list)
    assert isinstance(policy.authorize(identity, privilege, path), bool)
    assert isinstance(policy.may_stat(identity, path), bool)
    assert isinstance(policy.explain(identity, privilege, path), str)
