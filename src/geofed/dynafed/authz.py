"""Dynafed's rule-based authorization (``glb.allowusers[]``, ``glb.allowgroups[]``) as geofed policy rules.

How UGR's default authorization plugin decides (``UgrAuthorization.cc``), and how each point maps:

* ``glb.allowusers[]: <user|"DN with spaces"> <path> <modes>``: the user is compared with the client
  name the front end set: the DN for a certificate, the ``NSAnon`` user (``nobody``) for an anonymous
  client. A DN becomes ``{dn: ...}``, the anonymous user ``anonymous``; any other name (a grid-mapfile
  account) has no geofed subject and is reported.
* ``glb.allowgroups[]: <group> <path> <modes>``: compared with each of the client's FQANs, exactly, or
  as a string prefix when the group (longer than two characters) ends in ``*``. Both become
  ``{fqan: ...}`` (geofed's ``*`` matches any run of characters, so a trailing one is a prefix).
* Fields are separated by single spaces; the modes are the rest of the line, and a mode is granted
  when its letter appears anywhere in it: ``r`` read, ``l`` list, ``w`` write (and modify, i.e.
  overwrite, unless ``glb.allow_overwrite`` is false), ``d`` delete, ``c`` copy.
* The path is compared as a string prefix of the request path; geofed's rule covers the path and
  what is below it by whole segments.
* Any rule at all makes the plugin deny what no rule allows; with none, it allows everything, and
  the import writes that as one rule granting everything to anyone. Authorization plugins (Python)
  are OR'ed with the rules; they cannot be imported.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError

from geofed.auth.settings import PolicyRule
from geofed.dynafed.context import Context
from geofed.dynafed.parser import Line

_MODES = (
    ("r", ("read",)),
    ("l", ("list",)),
    ("w", ("write", "modify")),
    ("d", ("delete",)),
    ("c", ("copy",)),
)


def _split(value: str, quoted: bool) -> tuple[str, str, str] | str:
    """``(subject, path, modes)`` as UGR splits a rule, or what is wrong with it."""
    first = value.find(" ")
    if first < 0:
        return "no space-separated fields"
    if quoted and value.startswith('"'):
        close = value.find('"', 1)
        if close < 0:
            return "mismatched quotes"
        subject = value[1:close]
        first = close + 1
        if value[first : first + 1] != " ":
            return "no space after the closing quote"
    else:
        subject = value[:first]
    second = value.find(" ", first + 1)
    if second < 0:
        return "no modes"
    path, modes = value[first + 1 : second], value[second + 1 :]
    if not subject or not path or not modes:
        return "an empty field (UGR separates the fields by single spaces)"
    return subject, path, modes


class PolicyImporter:
    def __init__(self, ctx: Context, anonymous_user: str) -> None:
        self.ctx = ctx
        self.anonymous_user = anonymous_user
        self.rules: list[dict[str, Any]] = []
        self._write: tuple[str, ...] = ("write", "modify")
        self._identities = False
        self._anonymous = False
        self._copy = False

    def run(self) -> list[dict[str, Any]]:
        ctx, cfg = self.ctx, self.ctx.cfg
        users, groups = cfg.array("glb.allowusers"), cfg.array("glb.allowgroups")
        plugins = cfg.array("glb.authorizationplugin")
        overwrite_line = cfg.scalar("glb.allow_overwrite")
        overwrite = ctx.get_bool(overwrite_line, True)
        if overwrite_line is None:
            ctx.default("glb.allow_overwrite absent: true -> the w mode grants write and modify (overwrite)")
        elif not overwrite:
            self._write = ("write",)
            ctx.note(
                f"{overwrite_line.where}: glb.allow_overwrite false: the w mode grants write but not modify, "
                "so no one may overwrite a file"
            )
        for line in plugins:
            ctx.unmapped(
                line,
                "an authorization plugin runs site code whose answer UGR OR'ed with the rules; geofed has no "
                "plugin hook: write its decisions as auth.policy rules (or trust tokens with auth.tokens)",
            )
        if not users and not groups:
            allow = ["all"] if overwrite else ["read", "list", "write", "delete", "copy"]
            self.rules.append({"path": "/", "allow": allow, "to": ["anyone"]})
            ctx.default(
                "glb.allowusers[] and glb.allowgroups[] absent: UGR allowed every request to everyone -> "
                f"auth.policy: {', '.join(allow)} on / to anyone (narrow it)"
            )
            if plugins:
                ctx.note(
                    "auth: with no allowusers or allowgroups rule, UGR's default plugin allowed every "
                    "request whatever the authorization plugins said; the imported policy does the same"
                )
            return self.rules
        stopped: str | None = None
        for line in users:
            if stopped is not None:
                ctx.unmapped(line, f"UGR stopped reading allowusers rules at the malformed one at {stopped}")
            elif len(line.value) < 4:
                ctx.unmapped(line, "too short to be a rule; UGR stopped reading allowusers rules here")
                stopped = line.where
            else:
                self._rule(line, quoted=True)
        for line in groups:
            self._rule(line, quoted=False)
        self._notes(plugins)
        return self.rules

    def _rule(self, line: Line, quoted: bool) -> None:
        ctx = self.ctx
        ctx.cfg.use(line)
        parts = _split(line.value, quoted)
        if isinstance(parts, str):
            ctx.unmapped(line, f"UGR cannot parse this rule ({parts}), so it granted nothing")
            return
        subject_text, path, modes = parts
        subject = self._user(line, subject_text) if quoted else self._group(line, subject_text)
        if subject is None:
            return
        allow: list[str] = []
        for letter, privileges in _MODES:
            if letter in modes:
                allow.extend(p for p in privileges if letter != "w" or p in self._write)
        if not allow:
            ctx.unmapped(
                line, f"{modes!r} holds none of the modes r, l, w, d, c, so the rule granted nothing"
            )
            return
        extra = sorted(set(modes) - set("rlwdc "))
        if extra:
            ctx.note(
                f"{line.where}: UGR looks for each mode letter anywhere in {modes!r}; read as "
                f"{''.join(m for m, _ in _MODES if m in modes)} (the other characters mean nothing)"
            )
        if not path.startswith("/"):
            ctx.unmapped(
                line, f"{path!r} is not a path; UGR compared it with request paths, so it matched nothing"
            )
            return
        if ".." in path.split("/"):
            ctx.unmapped(line, f"{path!r} contains '..'; geofed refuses such rule paths")
            return
        if not path.endswith("/"):
            ctx.note(
                f"{line.where}: UGR matched {path!r} as a string prefix (also {path}2, {path}-old, ...); "
                f"geofed's rule covers {path} and what is below it only"
            )
        self._copy = self._copy or "copy" in allow
        rule = {"path": path.rstrip("/") or "/", "allow": allow, "to": [subject]}
        try:
            PolicyRule.model_validate(rule)
        except ValidationError as exc:
            problems = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
            ctx.unmapped(line, f"geofed refuses the converted rule: {problems}")
            return
        self.rules.append(rule)

    def _user(self, line: Line, user: str) -> str | dict[str, str] | None:
        if user == self.anonymous_user:
            self._anonymous = True
            return "anonymous"
        if user.startswith("/"):
            self._identities = True
            return {"dn": user}
        dummy = ""
        if self.ctx.cfg.array("glb.authorizationplugin"):
            dummy = (
                "; this looks like the dummy rule that lets an authorization plugin deny, which geofed does "
                "not need (it denies by default)"
            )
        self.ctx.unmapped(
            line,
            f"{user!r} is neither a DN nor the anonymous user {self.anonymous_user!r}: UGR compared it with "
            "the client name set by the front end (such as a grid-mapfile account); geofed knows clients by "
            f"DN, VO, FQAN or token{dummy}",
        )
        return None

    def _group(self, line: Line, group: str) -> dict[str, str] | None:
        wildcard = len(group) > 2 and group.endswith("*")
        if group == '""':
            self.ctx.unmapped(
                line,
                'the group "" is documented as "clients without FQANs", but UGR 1.4.0 compares it with each '
                "FQAN, so it matched no one; geofed has no subject for it (anonymous or authenticated may be "
                "what was meant)",
            )
            return None
        if "*" in (group[:-1] if wildcard else group):
            self.ctx.unmapped(
                line,
                f"UGR compares the '*' in {group!r} literally; in a geofed fqan pattern it is a wildcard",
            )
            return None
        if not group.startswith("/"):
            self.ctx.note(
                f"{line.where}: group {group!r} is not an FQAN (those start with /); it matches only a "
                "client FQAN spelled exactly so, in UGR and in geofed"
            )
        self._identities = True
        return {"fqan": group}

    def _notes(self, plugins: list[Line]) -> None:
        ctx = self.ctx
        if not self.rules:
            ctx.note(
                "auth.policy is empty: geofed will refuse every request"
                + (" (in UGR the authorization plugins could still allow)" if plugins else "")
            )
            return
        ctx.note(
            "auth: UGR 1.4.0 checked no rule for stat (HEAD, PROPFIND Depth 0), MKCOL or collection DELETE; "
            "in geofed stat needs read, list, write or modify, MKCOL needs write and DELETE needs delete"
        )
        if self._anonymous:
            ctx.note(
                f"auth: the user {self.anonymous_user!r} is the NSAnon user Dynafed's Apache gave anonymous "
                "clients; it becomes 'anonymous' (give --anonymous-user if your front end used another name)"
            )
        if self._identities:
            ctx.note(
                "auth: rules name DNs or FQANs: geofed must see client certificates (server.tls with ca_dir, "
                "or auth.identity_headers behind a TLS proxy) and needs auth.vomsdir to believe FQANs; "
                "Dynafed's Apache configuration did this and is not read by the import"
            )
        if self._copy:
            ctx.note("auth: the c mode becomes the copy privilege (HTTP third-party copy)")
