"""The deny-by-default authorization engine: may this identity do that on this path?

A request is allowed only when a policy rule or a verified token capability grants the privilege it
needs; there is no "deny" rule and nothing is allowed by omission. A rule on ``/a/b`` covers
``/a/b`` and everything below it by whole segments (never ``/a/bc``); ``/`` covers everything.

This runs on every request and on every entry of a filtered listing, so the rules are compiled once:
for each rule path, and each privilege, the subjects of every rule there are merged into sets
(:class:`_Subjects`), and a decision walks only the ancestors of the requested path (``/a/b/c``,
``/a/b``, ``/a``, ``/``) with one dict lookup each. The cost is independent of the number of rules.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from geofed.auth.identity import Identity, Method, Privilege
from geofed.auth.settings import AuthSettings, PolicyRule, SubjectMatch
from geofed.errors import ConfigError

# What a limited (RFC 3820 / legacy "limited") proxy never gets unless explicitly allowed: a limited
# proxy is handed to services for reading on the user's behalf, never for changing storage.
WRITE_PRIVILEGES: frozenset[Privilege] = frozenset(
    {Privilege.WRITE, Privilege.MODIFY, Privilege.DELETE, Privilege.COPY}
)
STAT_PRIVILEGES: tuple[Privilege, ...] = (Privilege.READ, Privilege.LIST, Privilege.WRITE, Privilege.MODIFY)
_STAT_READ_ONLY: tuple[Privilege, ...] = (Privilege.READ, Privilege.LIST)
# Internal keys of the compiled table, next to the privileges: the merged subjects that may stat.
_STAT = "@stat"
_STAT_RO = "@stat-read-only"

_NULL_SUFFIXES = ("/Capability=NULL", "/Role=NULL")


def covers(prefix: str, path: str) -> bool:
    """True when ``prefix`` is ``path`` or one of its ancestors, by whole segments."""
    prefix = prefix.rstrip("/") or "/"
    return prefix == "/" or path == prefix or path.startswith(prefix + "/")


def normalise_fqan(fqan: str) -> str:
    """``/atlas/Role=NULL/Capability=NULL`` → ``/atlas``: drop the trailing components that say
    "none", so a rule and a VOMS AC that spell the same FQAN differently still compare equal."""
    changed = True
    while changed:
        changed = False
        for suffix in _NULL_SUFFIXES:
            if fqan.endswith(suffix):
                fqan = fqan[: -len(suffix)]
                changed = True
    return fqan


def fqan_group(fqan: str) -> str:
    """The group part of an FQAN: ``/atlas/higgs/Role=production`` → ``/atlas/higgs``."""
    return fqan.split("/Role=", 1)[0].split("/Capability=", 1)[0]


def _normalise_issuer(issuer: str) -> str:
    return issuer[:-1] if issuer.endswith("/") else issuer


def _fqan_regex(pattern: str) -> str:
    """A regex for one FQAN pattern: ``*`` matches any run of characters, all else is literal."""
    return ".*".join(re.escape(part) for part in normalise_fqan(pattern).split("*"))


@functools.lru_cache(maxsize=4096)
def _fqan_facts(fqans: tuple[str, ...]) -> tuple[tuple[str, ...], frozenset[str]]:
    """The normalised FQANs and their groups; cached because the same few FQAN sets recur on every
    request of a connection, and an Identity (frozen, slotted) cannot carry them itself."""
    return tuple(normalise_fqan(f) for f in fqans), frozenset(fqan_group(f) for f in fqans)


def _normalise_rule_path(path: str) -> str:
    """The canonical form of a rule path (validated by PolicyRule as absolute, no trailing slash):
    empty and ``.`` segments dropped. ``..`` is refused: it would make the rule mean two places."""
    segments = [s for s in path.split("/") if s and s != "."]
    if ".." in segments:
        raise ValueError(f"'..' is not allowed in a rule path: {path!r}")
    return "/" + "/".join(segments)


def describe_subject(subject: str | SubjectMatch) -> str:
    """A one-word-ish name of a rule subject, for explanations and logs."""
    if isinstance(subject, str):
        return subject
    if subject.issuer is not None:
        return f"issuer:{subject.issuer}" + (f"#{subject.subject}" if subject.subject is not None else "")
    for key in ("dn", "vo", "fqan", "group"):
        value = getattr(subject, key)
        if value is not None:
            return f"{key}:{value}"
    return "?"  # pragma: no cover - SubjectMatch guarantees one field


class _Subjects:
    """A set of rule subjects merged for fast matching: set lookups, and one regex for all FQAN
    patterns. Used per rule (for :meth:`Policy.explain`) and per (rule path, privilege)."""

    __slots__ = (
        "anonymous",
        "anyone",
        "authenticated",
        "dns",
        "fqan_regex",
        "fqans",
        "groups",
        "issuer_subjects",
        "issuers",
        "vos",
    )

    def __init__(self, subjects: Iterable[str | SubjectMatch]) -> None:
        keywords: set[str] = set()
        dns: set[str] = set()
        vos: set[str] = set()
        fqans: set[str] = set()
        patterns: list[str] = []
        groups: set[str] = set()
        issuers: set[str] = set()
        issuer_subjects: set[tuple[str, str]] = set()
        for subject in subjects:
            if isinstance(subject, str):
                keywords.add(subject)
            elif subject.dn is not None:
                dns.add(subject.dn)
            elif subject.vo is not None:
                vos.add(subject.vo)
            elif subject.fqan is not None:
                if "*" in subject.fqan:
                    patterns.append(_fqan_regex(subject.fqan))
                else:
                    fqans.add(normalise_fqan(subject.fqan))
            elif subject.group is not None:
                groups.add(subject.group)
            elif subject.issuer is not None:
                issuer = _normalise_issuer(subject.issuer)
                if subject.subject is None:
                    issuers.add(issuer)
                else:
                    issuer_subjects.add((issuer, subject.subject))
        self.anyone = "anyone" in keywords
        self.authenticated = "authenticated" in keywords
        self.anonymous = "anonymous" in keywords
        self.dns = frozenset(dns)
        self.vos = frozenset(vos)
        self.fqans = frozenset(fqans)
        self.fqan_regex = re.compile("|".join(f"(?:{p})" for p in patterns)) if patterns else None
        self.groups = frozenset(groups)
        self.issuers = frozenset(issuers)
        self.issuer_subjects = frozenset(issuer_subjects)

    def matches(self, identity: Identity) -> bool:
        """Whether any subject is this identity. An anonymous identity matches only ``anyone`` and
        ``anonymous``, whatever else it carries: attributes without a credential prove nothing."""
        if self.anyone:
            return True
        if identity.method is Method.ANONYMOUS:
            return self.anonymous
        if self.authenticated:
            return True
        if identity.dn is not None and identity.dn in self.dns:
            return True
        if self.vos and not self.vos.isdisjoint(identity.vos):
            return True
        if identity.fqans and (self.fqans or self.fqan_regex is not None or self.groups):
            normalised, fqan_groups = _fqan_facts(identity.fqans)
            if self.fqans and not self.fqans.isdisjoint(normalised):
                return True
            regex = self.fqan_regex
            if regex is not None and any(regex.fullmatch(f) for f in normalised):
                return True
            if self.groups and not self.groups.isdisjoint(fqan_groups):
                return True
        if self.groups and not self.groups.isdisjoint(identity.groups):
            return True
        if identity.issuer is not None and (self.issuers or self.issuer_subjects):
            issuer = _normalise_issuer(identity.issuer)
            if issuer in self.issuers:
                return True
            if identity.subject is not None and (issuer, identity.subject) in self.issuer_subjects:
                return True
        return False


class Policy:
    """The compiled authorization policy.

    ``limited_proxies_may_write`` (default False): whether a client presenting a limited proxy may
    be granted write, modify, delete or copy. The limited-proxy check applies to any identity whose
    ``limited_proxy`` is set (only certificate chains ever set it), and to token capabilities too.
    """

    def __init__(self, rules: Sequence[PolicyRule], *, limited_proxies_may_write: bool = False) -> None:
        self._rules = tuple(rules)
        self._limited_proxies_may_write = limited_proxies_may_write
        by_path: dict[str, list[tuple[int, PolicyRule]]] = {}
        for index, rule in enumerate(self._rules):
            try:
                path = _normalise_rule_path(rule.path)
            except ValueError as exc:
                raise ConfigError(f"policy rule {index} (path {rule.path}): {exc}") from None
            by_path.setdefault(path, []).append((index, rule))
        # per rule path: privilege (or a stat key) -> the merged subjects of every rule there
        self._table: dict[str, dict[str, _Subjects]] = {}
        # per rule path, in file order: each rule with its own compiled subjects, for explain()
        self._explained: dict[str, list[tuple[int, PolicyRule, _Subjects]]] = {}
        for path, indexed in by_path.items():
            per_key: dict[str, list[str | SubjectMatch]] = {}
            for _, rule in indexed:
                privileges = rule.privileges
                keys: list[str] = list(privileges)
                if not privileges.isdisjoint(STAT_PRIVILEGES):
                    keys.append(_STAT)
                if not privileges.isdisjoint(_STAT_READ_ONLY):
                    keys.append(_STAT_RO)
                for key in keys:
                    per_key.setdefault(key, []).extend(rule.to)
            self._table[path] = {key: _Subjects(subjects) for key, subjects in per_key.items()}
            self._explained[path] = [(i, rule, _Subjects(rule.to)) for i, rule in indexed]
        # per collection: the subjects of the rules strictly below it, for traversal (see may_traverse)
        below: dict[str, list[str | SubjectMatch]] = {}
        for path, indexed in by_path.items():
            subjects = [subject for _, rule in indexed for subject in rule.to]
            ancestor = path
            while ancestor != "/":
                ancestor = ancestor[: ancestor.rfind("/")] or "/"
                below.setdefault(ancestor, []).extend(subjects)
        self._below = {path: _Subjects(subjects) for path, subjects in below.items()}

    @classmethod
    def from_settings(cls, auth: AuthSettings) -> Policy:
        """The policy of ``auth.policy`` followed by the rules of ``auth.policy_file``, if any."""
        rules = list(auth.policy)
        if auth.policy_file is not None:
            rules.extend(load_policy_file(auth.policy_file))
        return cls(rules, limited_proxies_may_write=auth.limited_proxies_may_write)

    @property
    def rules(self) -> tuple[PolicyRule, ...]:
        return self._rules

    @property
    def limited_proxies_may_write(self) -> bool:
        return self._limited_proxies_may_write

    def __len__(self) -> int:
        return len(self._rules)

    def _limited(self, identity: Identity) -> bool:
        return identity.limited_proxy and not self._limited_proxies_may_write

    def _walk(self, key: str, identity: Identity, path: str) -> bool:
        """Whether a rule at ``path`` or one of its ancestors grants ``key`` to ``identity``."""
        if not path.startswith("/"):
            return False
        if ".." in path and ".." in path.split("/"):
            # never reached with normalised request paths; refused so that no caller can climb
            # out of a granted subtree by handing in an unnormalised one
            return False
        if len(path) > 1 and path.endswith("/"):
            path = path.rstrip("/") or "/"
        table = self._table
        while True:
            entry = table.get(path)
            if entry is not None:
                subjects = entry.get(key)
                if subjects is not None and subjects.matches(identity):
                    return True
            if path == "/":
                return False
            path = path[: path.rfind("/")] or "/"

    def allows(self, identity: Identity, privilege: Privilege, path: str) -> bool:
        """True iff a policy rule covering ``path`` grants ``privilege`` to a subject matching
        ``identity`` (token capabilities are not consulted: see :meth:`authorize`)."""
        if privilege in WRITE_PRIVILEGES and self._limited(identity):
            return False
        return self._walk(privilege, identity, path)

    def _token_grants(self, identity: Identity, privileges: Iterable[Privilege], path: str) -> bool:
        if identity.method is not Method.TOKEN or not identity.capabilities:
            return False
        if not path.startswith("/") or (".." in path and ".." in path.split("/")):
            return False
        wanted = frozenset(privileges)
        return any(
            not wanted.isdisjoint(cap.privileges) and covers(cap.path, path) for cap in identity.capabilities
        )

    def authorize(self, identity: Identity, privilege: Privilege, path: str) -> bool:
        """The decision for a request: a policy rule, or (for a token) a capability of the token
        covering ``path`` with ``privilege``. A limited proxy never writes unless configured to.
        (On every request, the warm GET path included: one walk, no further calls when it grants.)"""
        if privilege in WRITE_PRIVILEGES and self._limited(identity):
            return False
        if self._walk(privilege, identity, path):
            return True
        return self._token_grants(identity, (privilege,), path)

    def may_stat(self, identity: Identity, path: str) -> bool:
        """Whether the client may learn that ``path`` exists and its properties: granted by any of
        read, list, write or modify (a writer must see what it wrote). One walk, not four."""
        limited = self._limited(identity)
        if self._walk(_STAT_RO if limited else _STAT, identity, path):
            return True
        return self._token_grants(identity, _STAT_READ_ONLY if limited else STAT_PRIVILEGES, path)

    def may_traverse(self, identity: Identity, path: str) -> bool:
        """Whether the client holds some privilege strictly below ``path``, so that it may see the
        collection ``path`` and, in its listing, the entries on the way to what it may use: a
        member of one VO browsing ``/`` sees its VO's area but not the other VOs' names."""
        if not path.startswith("/") or (".." in path and ".." in path.split("/")):
            return False
        path = path.rstrip("/") or "/"
        subjects = self._below.get(path)
        if subjects is not None and subjects.matches(identity):
            return True
        if identity.method is not Method.TOKEN:
            return False
        prefix = path if path == "/" else path + "/"
        return any(cap.path != path and cap.path.startswith(prefix) for cap in identity.capabilities)

    def may_list(self, identity: Identity, path: str) -> bool:
        """Whether the client may list the collection ``path``."""
        return self.authorize(identity, Privilege.LIST, path)

    def visible(self, identity: Identity, path: str) -> bool:
        """Whether an entry is shown in a listing the client may read: exactly when the client may
        stat it or traverse it, so a listing never reveals a name the client could not ask about
        directly, and never hides one it could."""
        return self.may_stat(identity, path) or self.may_traverse(identity, path)

    def explain(self, identity: Identity, privilege: Privilege, path: str) -> str:
        """Why :meth:`authorize` decides as it does, in one line for an operator."""
        who = identity.label()
        if privilege in WRITE_PRIVILEGES and self._limited(identity):
            return (
                f"denied: {who} uses a limited proxy, which is never granted {privilege} "
                "(auth.limited_proxies_may_write is false)"
            )
        if self._walk(privilege, identity, path):
            probe = path.rstrip("/") or "/"
            while True:
                for index, rule, subjects in self._explained.get(probe, ()):
                    if privilege in rule.privileges and subjects.matches(identity):
                        names = ", ".join(
                            describe_subject(s) for s in rule.to if _Subjects((s,)).matches(identity)
                        )
                        return (
                            f"allowed: policy rule {index} (path {rule.path}) grants {privilege} to {names}"
                        )
                if probe == "/":
                    break
                probe = probe[: probe.rfind("/")] or "/"
        if self._token_grants(identity, (privilege,), path):
            for cap in identity.capabilities:
                if privilege in cap.privileges and covers(cap.path, path):
                    return f"allowed: token capability {privilege} on {cap.path} of {who}"
        return f"denied: no rule grants {privilege} on {path} to {who}"


def _is_union_tag(part: Any) -> bool:
    """Pydantic puts the union member tried into an error's location; a reader wants the key only."""
    return isinstance(part, str) and ("[" in part or part == "SubjectMatch")


def _validation_lines(exc: ValidationError, index: int, rule: Any) -> list[str]:
    """Readable ``rules[i].key[j]: message`` lines from a rule's validation errors.

    A subject is a keyword *or* a mapping, a privilege a name *or* ``all``: pydantic reports every
    union member it tried, and we keep only the ones that fit what was written.
    """
    found: dict[str, list[str]] = {}
    expected: dict[str, list[str]] = {}
    locations: list[tuple[Any, ...]] = [tuple(e["loc"]) for e in exc.errors()]
    for error in exc.errors():
        loc = tuple(error["loc"])
        if error["type"] == "too_short" and any(
            len(o) > len(loc) and o[: len(loc)] == loc for o in locations
        ):
            continue  # an item failed, so the tuple came out short: the item's error says it all
        value = error.get("input")
        tagged = any(_is_union_tag(p) for p in loc)
        if tagged and error["type"] == "model_type" and not isinstance(value, dict):
            continue  # a keyword written, not a mapping: the keyword error is the one to show
        if tagged and error["type"] == "literal_error" and isinstance(value, dict):
            continue  # a mapping written: its own errors are the ones to show
        where = f"rules[{index}]"
        for part in loc:
            if _is_union_tag(part):
                continue
            where += f"[{part}]" if isinstance(part, int) else f".{part}"
        if error["type"] in ("enum", "literal_error") and isinstance(value, str):
            expected.setdefault(where, []).append(str(error.get("ctx", {}).get("expected", "")))
            found.setdefault(where, [])
            continue
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key (misspelt?)"
        found.setdefault(where, []).append(message)
    lines: list[str] = []
    for where, messages in found.items():
        if where in expected:
            choices = ", ".join(dict.fromkeys(re.findall(r"'[^']*'", " ".join(expected[where]))))
            messages = [f"expected one of {choices}, got {_value_at(rule, where)!r}", *messages]
        lines.extend(f"{where}: {m}" for m in dict.fromkeys(messages))
    return lines


def _value_at(rule: Any, where: str) -> Any:
    """The value written at ``rules[i].key[j]`` (for "got ..." in messages)."""
    value = rule
    for token in re.findall(r"\.(\w+)|\[(\d+)\]", where.split("]", 1)[1]):
        key, idx = token
        try:
            value = value[key] if key else value[int(idx)]
        except (KeyError, IndexError, TypeError):
            return None
    return value


def load_policy_file(path: Path) -> tuple[PolicyRule, ...]:
    """The rules of a YAML policy file: a list of rules, or a mapping whose only key is ``rules``.

    Every problem is a ConfigError naming the file, the rule and the key
    (``policy.yaml: rules[3].allow[0]: expected ...``), all of them at once.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        reason = exc.strerror if isinstance(exc, OSError) else "not UTF-8 text"
        raise ConfigError(f"cannot read policy file {path}: {reason}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        return ()  # an empty file grants nothing, which is what it says
    if isinstance(data, dict):
        unknown = sorted(str(k) for k in data if k != "rules")
        if unknown:
            raise ConfigError(f"{path}: {unknown[0]}: unknown key (a policy file holds only 'rules')")
        data = data.get("rules") or []
    if not isinstance(data, list):
        raise ConfigError(f"{path}: a policy file holds a list of rules, or a mapping with key 'rules'")
    rules: list[PolicyRule] = []
    problems: list[str] = []
    for index, raw in enumerate(data):
        if not isinstance(raw, dict):
            problems.append(f"rules[{index}]: a rule is a mapping with keys path, allow, to")
            continue
        try:
            rule = PolicyRule.model_validate(raw)
            _normalise_rule_path(rule.path)
        except ValidationError as exc:
            problems.extend(_validation_lines(exc, index, raw))
            continue
        except ValueError as exc:
            problems.append(f"rules[{index}].path: {exc}")
            continue
        rules.append(rule)
    if problems:
        raise ConfigError("\n".join(f"{path}: {p}" for p in problems))
    return tuple(rules)
