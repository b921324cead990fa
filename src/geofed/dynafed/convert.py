"""A Dynafed configuration as geofed settings: the global keys, and putting the parts together.

The mapping, with the reasons for each choice, is documented in docs/migrating-from-dynafed.md.
Where a key is absent, Dynafed's *code* default applies (it differs from its documentation for
``glb.waittimeout``, ``glb.maxlistitems``, the ``infohandler.*`` values and the timeouts); each default
applied is listed in the report.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import yaml

from geofed.config import Settings, settings_from_mapping
from geofed.dynafed.authz import PolicyImporter
from geofed.dynafed.context import Context, Report, duration, ugr_long
from geofed.dynafed.endpoints import (
    KEYS_BY_TYPE,
    EndpointImporter,
    Plugin,
    inline_secrets,
    join_path,
    placeholder_env,
    plugin_lines,
)
from geofed.dynafed.parser import DynafedConfig, DynafedInputError, Line

_UGR_PREFIXES = ("glb.", "locplugin.", "infohandler.", "extcache.")
_LOGGING = "UGR's logging; geofed logs to standard error and has no verbosity or component setting"
_TPC_HOOK = (
    "UGR ran this script for HTTP third-party copies; geofed runs no copy scripts and has no setting for them"
)
GLOBAL_REASONS = {
    "glb.debug": _LOGGING,
    "glb.debug.components": _LOGGING,
    "glb.log_stderr": _LOGGING,
    "glb.plugin_dir": "where UGR loads its plugins from; geofed has no plugins",
    "glb.waitlesslocations": (
        "geofed has no equivalent: a locate waits for every endpoint until federation.locate_timeout, except "
        "that a redirect stops waiting for endpoints farther than federation.fuzz_km beyond the best replica "
        "found"
    ),
    "glb.statsubdirs": "geofed has no equivalent (a listing carries each entry's size and type)",
    "glb.addchildtoparentonstat": "a detail of UGR's cache; geofed has no equivalent",
    "glb.addchildtoparentonput": "a detail of UGR's cache; geofed has no equivalent",
    "glb.filepushhook": _TPC_HOOK,
    "glb.filepullhook": _TPC_HOOK,
    "glb.filepullhook.usereplicaurl": _TPC_HOOK,
    "glb.filepush.header2params": _TPC_HOOK,
    "glb.filepull.header2params": _TPC_HOOK,
    "extcache.memcached.ttl": (
        "geofed keeps its shared-cache entries exactly as long as its own (cache.ttl, cache.negative_ttl)"
    ),
    "extcache.memcached.useBinaryProtocol": "geofed's memcached client chooses the protocol itself",
}
_STORAGESTATS = (
    "a dynafed_storagestats setting (UGR never reads it); geofed has no storage-statistics tool: space is "
    "endpoints[].quota and what the endpoint itself reports"
)


@dataclass
class ImportResult:
    """The geofed settings (as the mapping to write out) and the report about them."""

    data: dict[str, Any]
    report: Report
    files: list[str]
    inline_secrets: bool

    @property
    def summary(self) -> str:
        endpoints = len(self.data.get("endpoints", []))
        rules = len(self.data.get("auth", {}).get("policy", []))
        return (
            f"read {', '.join(self.files)}; converted {endpoints} endpoint{'s' * (endpoints != 1)} and "
            f"{rules} policy rule{'s' * (rules != 1)}; {len(self.report.unmapped)} "
            f"line{'s' * (len(self.report.unmapped) != 1)} not mapped"
        )

    def render_report(self) -> str:
        return self.report.render(self.summary)

    def yaml_text(self) -> str:
        header = [
            "# geofed configuration converted from a Dynafed configuration by `geofed import-dynafed`",
            f"# from: {', '.join(self.files)}",
            "# Check it against the import's report before use (docs/migrating-from-dynafed.md).",
        ]
        body = yaml.safe_dump(
            self.data, sort_keys=False, default_flow_style=False, allow_unicode=True, width=110
        )
        return "\n".join(header) + "\n" + body

    def validate(self) -> Settings:
        """The settings as geofed would load them, every ``${NAME}`` standing for a placeholder."""
        return settings_from_mapping(self.data, environ=placeholder_env(self.data))


class Converter:
    def __init__(self, config: DynafedConfig, anonymous_user: str) -> None:
        self.ctx = Context(config)
        self.cfg = config
        self.anonymous_user = anonymous_user

    def run(self) -> ImportResult:
        ctx, cfg = self.ctx, self.cfg
        if not any(line.key.startswith(_UGR_PREFIXES) for line in cfg.lines):
            raise DynafedInputError(
                f"no Dynafed configuration in {', '.join(cfg.files) or 'the input'}: no glb.*, locplugin.*, "
                "infohandler.* or extcache.* key"
            )
        for note in cfg.notes:
            ctx.note(note)
        for old, new in cfg.overridden():
            cfg.use(old)
            ctx.note(f"{old.where}: {old.key}: overridden by {new.where} (the later value wins, as in UGR)")
        data: dict[str, Any] = {"signing": {"secret": "${GEOFED_SECRET}"}}
        geoip, fuzz = self._geo()
        if geoip is not None:
            data["geoip"] = {"database": geoip}
        data["federation"] = self._federation(fuzz)
        cache, lifetimes = self._cache()
        data["cache"] = cache
        tick_line = cfg.scalar("glb.tick")
        tick = ctx.get_long(tick_line, 10)
        if tick_line is None:
            ctx.default(
                "glb.tick absent: 10 s (UGR looks at endpoint status this often; see health.interval)"
            )
        importer = EndpointImporter(ctx, self._federated_paths(), lifetimes, max(tick, 0))
        plugins = plugin_lines(ctx)
        for plugin in plugins:
            importer.build(plugin)
        data["health"] = importer.finish()
        data["auth"] = {"policy": PolicyImporter(ctx, self.anonymous_user).run()}
        data["endpoints"] = importer.endpoints
        self._leftovers(plugins, importer.imported)
        ctx.note(
            "signing.secret is geofed's own (Dynafed has none): set GEOFED_SECRET to a random string of at "
            "least 16 characters"
        )
        ctx.note(
            "server: where UGR listened, its TLS and client authentication were Apache's "
            "(zlcgdm-ugr-dav.conf), which the import does not read; set server.* (and auth.*) yourself"
        )
        names = sorted(placeholder_env(data))
        ctx.note("the output reads these environment variables: " + ", ".join(names))
        secrets = inline_secrets(importer.endpoints)
        if secrets:
            ctx.note(
                "the Dynafed files hold S3 or Azure keys inline, and so does the output: keep it unreadable "
                "to others (written with -o, it is mode 600), or replace the values with ${VARIABLES}"
            )
        return ImportResult(data, ctx.report, list(cfg.files), secrets)

    # -- global keys -------------------------------------------------------------------------------

    def _federation(self, fuzz: int | None) -> dict[str, Any]:
        ctx = self.ctx
        line = self.cfg.scalar("glb.waittimeout")
        seconds = ctx.get_long(line, 30)
        if line is None:
            ctx.default("glb.waittimeout absent: 30 s (documented: 180 s) -> federation.locate_timeout: 30s")
        federation: dict[str, Any] = {"locate_timeout": duration(max(seconds, 0))}
        if seconds > 10:
            ctx.note(
                f"federation.locate_timeout {duration(seconds)} (from glb.waittimeout): a client may wait "
                "this long for a slow endpoint; geofed's own default is 3s"
            )
        if fuzz is not None:
            federation["fuzz_km"] = max(fuzz, 0)
        return federation

    def _federated_paths(self) -> Callable[[str], list[str]]:
        """The federated paths under which UGR served one of its internal paths.

        UGR replaced the first matching prefix of ``glb.n2n_pfx`` in a request path with
        ``glb.n2n_newpfx``; geofed's federated paths are the paths clients request, so the mapping is
        run backwards, once per prefix.
        """
        ctx, cfg = self.ctx, self.cfg
        pfx_line, new_line = cfg.scalar("glb.n2n_pfx"), cfg.scalar("glb.n2n_newpfx")
        if pfx_line is None:
            if new_line is not None:
                ctx.unmapped(new_line, "UGR uses it only with glb.n2n_pfx")
            return lambda path: [path]
        for line in (pfx_line, new_line):
            if line is not None and line.has_env:
                ctx.unmapped(line, "its value comes from the environment, which the import does not read")
                return lambda path: [path]
        prefixes = list(dict.fromkeys(join_path(p) for p in pfx_line.value.split()))
        if not prefixes:
            ctx.unmapped(pfx_line, "names no prefix, so UGR translated nothing")
            if new_line is not None:
                ctx.unmapped(new_line, "UGR uses it only with glb.n2n_pfx")
            return lambda path: [path]
        cfg.use(pfx_line)
        cfg.use(new_line)
        new = join_path(new_line.value) if new_line is not None else "/"

        def federated(path: str) -> list[str]:
            out: list[str] = []
            for prefix in prefixes:
                if new == "/":
                    mapped = join_path(prefix, path)
                elif path == new or path.startswith(new + "/"):
                    mapped = join_path(prefix, path[len(new) :])
                else:
                    mapped = path
                if mapped not in out:
                    out.append(mapped)
            return out

        ctx.note(
            f"{pfx_line.where}: glb.n2n_pfx {pfx_line.value}: UGR cut this prefix off request paths (putting "
            f"{new} in its place); geofed's federated paths are the paths clients request, so what UGR saw "
            f"under {new} is published under {', '.join(federated(new))}; the policy paths stay as written"
        )
        return federated

    def _cache(self) -> tuple[dict[str, Any], list[tuple[int, str]]]:
        ctx, cfg = self.ctx, self.cfg

        def value(key: str, default: int, unit: str, documented: int, target: str) -> tuple[Line | None, int]:
            line = cfg.scalar(key)
            number = ctx.get_long(line, default)
            if line is None:
                ctx.default(f"{key} absent: {default}{unit} (documented: {documented}{unit}){target}")
            return line, number

        _, maxitems = value("infohandler.maxitems", 1_000_000, "", 1000, " -> cache.max_entries")
        _, itemttl = value("infohandler.itemttl", 3600, " s", 600, " -> cache.ttl")
        maxttl_line, itemmaxttl = value("infohandler.itemmaxttl", 86400, " s", 3600, "")
        _, negative = value("infohandler.itemttl_negative", 10, " s", 10, " -> cache.negative_ttl")
        _, maxlist = value("glb.maxlistitems", 2000, "", 10000, " -> cache.max_listing_entries")
        ttl = min(itemttl, itemmaxttl)
        if maxttl_line is not None:
            ctx.unmapped(
                maxttl_line,
                "geofed's cache.ttl is a fixed lifetime from when an entry was filled, not renewed by use, "
                "so there is no separate hard maximum; it only caps cache.ttl",
            )
        if itemmaxttl < itemttl:
            ctx.note(
                f"cache.ttl: infohandler.itemttl {itemttl} is above itemmaxttl {itemmaxttl}; {itemmaxttl} is "
                "used"
            )
        ctx.note(
            "cache.max_listing_entries (from glb.maxlistitems): UGR refused to list longer directories ('non "
            "listable'); geofed lists them and only does not cache them"
        )
        cache: dict[str, Any] = {
            "max_entries": max(maxitems, 1),
            "ttl": duration(max(ttl, 0)),
            "negative_ttl": duration(max(negative, 0)),
            "max_listing_entries": max(maxlist, 0),
        }
        use_line = cfg.scalar("infohandler.useextcache")
        use = ctx.get_bool(use_line, True)
        servers = cfg.array("extcache.memcached.server")
        # Read only for UGR's rule on signed-URL lifetimes; the line itself is reported as not mapped.
        ttl_line = cfg.scalar("extcache.memcached.ttl")
        memcached_ttl = 600 if ttl_line is None or ttl_line.has_env else ugr_long(ttl_line.value)
        if servers and not use:
            for line in servers:
                ctx.unmapped(line, "infohandler.useextcache is false, so UGR did not use memcached")
        elif servers:
            if use_line is None:
                ctx.default("infohandler.useextcache absent: true -> cache.l2 with the memcached servers")
            addresses = [address for line in servers if (address := self._memcached(line)) is not None]
            if addresses:
                cache["l2"] = {"kind": "memcached", "servers": addresses}
                ctx.note(
                    "cache.l2: geofed shares locate answers, listings and endpoint health through memcached, "
                    "under its own keys (namespace geofed:); it does not read UGR's entries"
                )
        lifetimes = [(itemmaxttl, "infohandler.itemmaxttl"), (memcached_ttl, "extcache.memcached.ttl")]
        return cache, lifetimes

    def _memcached(self, line: Line) -> str | None:
        """``host:port`` as UGR reads a server (strtok on ``:/?``; no port is libmemcached's 11211)."""
        self.cfg.use(line)
        tokens = [t for t in re.split(r"[:/?]", line.value) if t]
        if not tokens:
            self.ctx.unmapped(line, "names no server")
            return None
        if line.has_env and len(tokens) == 1:
            self.ctx.unmapped(
                line, "the server comes from the environment as a whole; geofed needs host:port"
            )
            return None
        port = tokens[1] if len(tokens) > 1 else "11211"
        if not port.isdigit() and not line.has_env:
            self.ctx.unmapped(line, f"{port!r} is not a port")
            return None
        return f"{tokens[0]}:{port}"

    def _geo(self) -> tuple[str | None, int | None]:
        ctx, cfg = self.ctx, self.cfg
        kind: str | None = None
        database: str | None = None
        for line in cfg.array("glb.filterplugin"):
            fields = line.value.split()
            library = fields[0] if fields else ""
            match = re.search(r"ugrgeoplugin_(mmdb|geoip)\.so$", library)
            if match is None:
                if "ugrnoloopplugin" in library:
                    reason = "the noloop filter had no effect in UGR 1.4.0 (it never erased what it removed)"
                else:
                    reason = "a filter plugin with no geofed equivalent"
                ctx.unmapped(line, reason)
                continue
            if kind is not None:
                ctx.unmapped(line, "a second geo plugin; geofed ranks replicas once, as the first one did")
                continue
            kind = match.group(1)
            path = next((p for p in reversed(fields[2:]) if not p.isdigit()), None)
            if kind == "geoip":
                ctx.unmapped(
                    line,
                    "the legacy GeoIP plugin reads a GeoIP 1 database (GeoLiteCity.dat), which geofed cannot "
                    "read; set geoip.database to a GeoLite2-City.mmdb file",
                )
            elif path is None:
                ctx.unmapped(line, "names no database file")
            else:
                cfg.use(line)
                database = path
        fuzz: int | None = None
        for name in ("mmdb", "geoip"):
            fuzz_line = cfg.scalar(f"glb.filterplugin.{name}.fuzz")
            if name == kind:
                fuzz = ctx.get_long(fuzz_line, 10)
                if fuzz_line is None:
                    ctx.default(f"glb.filterplugin.{name}.fuzz absent: 10 km -> federation.fuzz_km: 10")
            elif fuzz_line is not None:
                ctx.unmapped(fuzz_line, f"belongs to the {name} geo plugin, which is not loaded")
        if kind is None:
            ctx.note(
                "geo: no geo plugin, so UGR did not order replicas by distance; geofed without "
                "geoip.database (or client_networks) sends each client to a random healthy replica"
            )
        else:
            ctx.note(
                "geo: UGR has no setting for endpoint locations and placed each endpoint by a GeoIP lookup "
                "of its host name; geofed does the same for endpoints without endpoints[].location"
            )
        return database, fuzz

    # -- what is left ------------------------------------------------------------------------------

    def _leftovers(self, plugins: list[Plugin], imported: set[str]) -> None:
        """Report every line neither mapped nor reported yet, with the most specific reason known."""
        ctx, cfg = self.ctx, self.cfg
        by_id = {plugin.pid: plugin for plugin in plugins}
        for line in cfg.lines:
            if cfg.is_used(line) or ctx.is_reported(line):
                continue
            ctx.unmapped(line, self._reason(line, by_id, imported))
        for skipped in cfg.skipped:
            ctx.unmapped_text(skipped.where, skipped.order, skipped.text, skipped.reason)

    def _reason(self, line: Line, plugins: dict[str, Plugin], imported: set[str]) -> str:
        key = line.key
        if key != key.strip():
            return "the key has spaces around it, which UGR keeps as part of the key, so UGR never read it"
        name = line.name
        if name in GLOBAL_REASONS:
            return GLOBAL_REASONS[name]
        if name.startswith("locplugin.*.") and line.is_array:
            return "UGR applies locplugin.* only to single-valued keys, not to lists"
        if name.startswith("locplugin."):
            return self._plugin_reason(name[len("locplugin.") :], plugins, imported)
        if name.startswith(("glb.use_memcache", "glb.memcached")):
            return (
                "UGR does not read this key; its memcached settings are infohandler.useextcache and "
                "extcache.memcached.server[] (imported as cache.l2)"
            )
        if name.startswith(_UGR_PREFIXES):
            return "UGR does not read this key"
        return "not a UGR configuration key"

    @staticmethod
    def _plugin_reason(rest: str, plugins: dict[str, Plugin], imported: set[str]) -> str:
        known = set().union(*KEYS_BY_TYPE.values())
        if rest.startswith("*."):
            sub = rest[2:]
            return "no imported endpoint uses it" if sub in known else "UGR does not read this key"
        owner = max((pid for pid in plugins if rest.startswith(pid + ".")), key=len, default=None)
        if owner is None:
            pid = rest.split(".", 1)[0]
            return f"no glb.locplugin[] line declares a plugin {pid}"
        plugin, sub = plugins[owner], rest[len(owner) + 1 :]
        if owner not in imported:
            return f"belongs to plugin {owner} ({plugin.line.where}), which is not imported"
        if sub.startswith("storagestats."):
            return _STORAGESTATS
        family, _, bare = sub.partition(".")
        if family in ("s3", "azure") and bare in KEYS_BY_TYPE["dav"]:
            return f"UGR ignores it: it reads {bare!r} without the '{family}.' prefix"
        if sub in known:
            readers = sorted(t for t, keys in KEYS_BY_TYPE.items() if sub in keys)
            return f"read only by the {', '.join(readers)} plugin, not by the {plugin.type} plugin"
        return "UGR does not read this key"


def convert(config: DynafedConfig, *, anonymous_user: str = "nobody") -> ImportResult:
    """Convert a configuration read by :func:`geofed.dynafed.parser.read_config`."""
    return Converter(config, anonymous_user).run()
