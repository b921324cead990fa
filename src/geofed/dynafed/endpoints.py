"""Dynafed location plugins (``glb.locplugin[]`` and ``locplugin.<ID>.*``) as geofed endpoints, and
their health-check keys as geofed's ``health`` section.

UGR's behaviour that decides the mapping (``LocationPlugin.cc``, ``UgrLocPlugin_http.cc``):

* the plugin line is ``<library> <ID> <threads> <URL>``; the URL's path is a prefix of every name
  asked for, ``xlatepfx: <from>… <to>`` replaces the longest matching ``from`` with ``to`` and
  limits the plugin to names under a ``from``;
* ``pfxmultiply: <p1> <p2>…`` asks the same endpoint about ``<pN>/<translated name>`` for every N,
  but places new files at the translated name without any of them;
* the http plugin stats and locates but never lists (listing is the dav plugin's);
* a plugin's health is probed when its status is older than ``status_checker_frequency`` ms, which
  UGR looks at every ``glb.tick`` seconds; the probe gives up after
  ``max(status_checker_frequency / 1000, 1)`` s and fails when slower than ``max_latency`` ms.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

from pydantic import ValidationError

from geofed.config import EndpointSettings, substitute_env
from geofed.dynafed.context import Context, duration, ugr_long
from geofed.dynafed.parser import ENV_REF, Line

KINDS = {"http": "webdav", "dav": "webdav", "davrucio": "webdav", "s3": "s3", "azure": "azure"}
_CATALOGUES = {
    "dmliteclient": "reads a DPM or LFC database through DMLite",
    "lfc": "reads an LFC catalogue",
}
_LIBRARY = re.compile(r"(?:^|/)(?:lib)?ugrlocplugin_(\w+?)\.so$")
_SCHEMES = {
    "webdav": {"http": "http", "https": "https", "dav": "http", "davs": "https"},
    "s3": {"s3": "http", "s3s": "https", "http": "http", "https": "https"},
    "azure": {"http": "http", "https": "https"},
}
_ENV_NAME = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)")

COMMON_KEYS = frozenset(
    {
        "xlatepfx",
        "pfxmultiply",
        "readable",
        "listable",
        "writable",
        "candochecksum",
        "status_checking",
        "status_checker_frequency",
        "max_latency",
        "slave",
        "replicaxlator",
    }
)
HTTP_KEYS = frozenset(
    {
        "ssl_check",
        "ca_path",
        "cli_type",
        "cli_certificate",
        "cli_private_key",
        "cli_password",
        "auth_login",
        "auth_passwd",
        "conn_timeout",
        "ops_timeout",
        "metalink_support",
        "custom_header",
    }
)
S3_KEYS = frozenset({"s3.pub_key", "s3.priv_key", "s3.region", "s3.alternate", "s3.signaturevalidity"})
AZURE_KEYS = frozenset({"azure.key", "azure.signaturevalidity"})
KEYS_BY_TYPE = {
    "http": COMMON_KEYS | HTTP_KEYS,
    "dav": COMMON_KEYS | HTTP_KEYS,
    "davrucio": COMMON_KEYS | HTTP_KEYS | {"xlatepfx_ruciohash"},
    "s3": COMMON_KEYS | HTTP_KEYS | S3_KEYS,
    "azure": COMMON_KEYS | HTTP_KEYS | AZURE_KEYS,
}

_NO_CLIENT_CERT = (
    "geofed presents no client certificate to endpoints: the endpoint must let geofed stat and list without "
    "one (clients are redirected to it and authenticate there themselves)"
)
_UNMAPPED_HTTP = {
    "ca_path": "geofed checks endpoint certificates against the system's trust store; it has no "
    "per-endpoint CA directory",
    "cli_type": _NO_CLIENT_CERT,
    "cli_certificate": _NO_CLIENT_CERT,
    "cli_private_key": _NO_CLIENT_CERT,
    "cli_password": _NO_CLIENT_CERT,
    "auth_login": "geofed sends no HTTP basic credentials to endpoints",
    "auth_passwd": "geofed sends no HTTP basic credentials to endpoints",
}

PLACEHOLDER = "placeholder-value-0123456789"
"""What every ``${NAME}`` stands for while the output is validated: a valid host name, bucket and
container name, and long enough for a secret."""


def placeholder_env(data: Any) -> dict[str, str]:
    """An environment giving every ``${NAME}`` used in ``data`` a placeholder value."""
    names: set[str] = set()

    def walk(value: Any) -> None:
        if isinstance(value, str):
            names.update(_ENV_NAME.findall(value))
        elif isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)

    walk(data)
    return {name: PLACEHOLDER for name in names}


_SIZE_UNITS = {
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
    "tib": 1024**4,
    "pib": 1024**5,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "tb": 1000**4,
    "pb": 1000**5,
}


def size_in_bytes(text: str) -> int | None:
    """``storagestats.quota`` as dynafed_storagestats reads it: ``10TB`` is 10^13 bytes, ``1TiB`` 2^40."""
    lower = text.strip().lower()
    for suffix, factor in _SIZE_UNITS.items():
        if lower.endswith(suffix) and lower[: -len(suffix)].strip().isdigit():
            return int(lower[: -len(suffix)]) * factor
    lower = lower.removesuffix("b")
    return int(lower) if lower.isdigit() else None


def join_path(*parts: str) -> str:
    """Absolute paths joined by segments: ``join_path("/a/", "b", "/")`` is ``/a/b``."""
    segments = [segment for part in parts for segment in part.split("/") if segment]
    return "/" + "/".join(segments)


def inline_secrets(endpoints: list[dict[str, Any]]) -> bool:
    """Whether any endpoint's credentials hold a secret itself rather than a ``${NAME}``."""
    return any(
        ENV_REF.fullmatch(value) is None
        for item in endpoints
        for value in (item.get("credentials") or {}).values()
    )


def env_name(plugin: str, what: str) -> str:
    return "GEOFED_" + re.sub(r"[^A-Za-z0-9]", "_", plugin).upper() + "_" + what


class Plugin:
    """One ``glb.locplugin[]`` line."""

    def __init__(self, line: Line, library: str, pid: str, threads: str, params: list[str]) -> None:
        match = _LIBRARY.search(library)
        self.line = line
        self.library = library
        self.type = match.group(1) if match else ""
        self.pid = pid
        self.threads = threads
        self.params = params

    @property
    def kind(self) -> str | None:
        return KINDS.get(self.type)


def plugin_lines(ctx: Context) -> list[Plugin]:
    """The location plugins in declaration order; malformed or repeated lines are reported."""
    plugins: list[Plugin] = []
    seen: dict[str, Plugin] = {}
    for line in ctx.cfg.array("glb.locplugin"):
        fields = line.value.split()
        if len(fields) < 3:
            ctx.unmapped(line, "expected '<library> <ID> <threads> <URL>'; UGR could not load this plugin")
            continue
        library, pid, threads, *params = fields
        if pid in seen:
            ctx.unmapped(line, f"plugin ID {pid} is declared already at {seen[pid].line.where}")
            continue
        plugin = Plugin(line, library, pid, threads, params)
        seen[pid] = plugin
        plugins.append(plugin)
    return plugins


class EndpointImporter:
    """Builds the geofed endpoints of the location plugins, one plugin at a time."""

    def __init__(
        self,
        ctx: Context,
        federated: Callable[[str], list[str]],
        cache_lifetimes: list[tuple[int, str]],
        tick: int,
    ) -> None:
        self.ctx = ctx
        self.federated = federated
        self.cache_lifetimes = cache_lifetimes
        self.tick = tick
        self.endpoints: list[dict[str, Any]] = []
        self.imported: set[str] = set()
        self._names: set[str] = set()
        self._health: list[tuple[str, int, int]] = []
        self._defaults: dict[str, list[str]] = {}
        self._pending_defaults: list[str] = []
        self._pending_health: tuple[str, int, int] | None = None

    # -- helpers -------------------------------------------------------------------------------

    def key(self, plugin: Plugin, name: str) -> Line | None:
        return self.ctx.cfg.plugin_scalar(plugin.pid, name)

    def _default(self, text: str, plugin: Plugin) -> None:
        self._pending_defaults.append(text)

    def _name(self, wanted: str, plugin: Plugin) -> str:
        name = re.sub(r"[^A-Za-z0-9_.-]", "-", wanted).lstrip("_.-")[:63] or "endpoint"
        base, n = name, 2
        while name in self._names:
            name = f"{base[:60]}-{n}"
            n += 1
        if name != wanted:
            self.ctx.note(f"{plugin.line.where}: plugin {wanted} is imported as endpoint {name}")
        self._names.add(name)
        return name

    def _secret(self, plugin: Plugin, key: str, what: str) -> str:
        line = self.key(plugin, key)
        if line is None or not line.value:
            name = env_name(plugin.pid, what)
            self.ctx.note(
                f"{plugin.line.where}: {plugin.pid}: no locplugin.{plugin.pid}.{key}; geofed needs it to "
                f"sign URLs, so the output reads it from ${{{name}}}"
            )
            return "${" + name + "}"
        self.ctx.cfg.use(line)
        return line.value

    def _validity(self, plugin: Plugin, key: str) -> str:
        line = self.key(plugin, key)
        validity = self.ctx.get_long(line, 3600)
        if line is None:
            self._default(f"locplugin.<ID>.{key} absent: 3600 s -> endpoints[].url_lifetime: 1h", plugin)
        for lifetime, label in self.cache_lifetimes:
            if validity < lifetime - 60:
                self.ctx.note(
                    f"{plugin.line.where}: {plugin.pid}: {key} {validity} s is below {label} {lifetime} s - "
                    "60, so UGR refused to load this plugin (its cache kept signed URLs); geofed has no "
                    "such rule and imports it"
                )
        return duration(max(validity, 0))

    # -- one plugin ------------------------------------------------------------------------------

    def build(self, plugin: Plugin) -> None:
        """Import one plugin. When it yields no endpoint, its keys are left for the report, which
        lists them as belonging to a plugin that was not imported."""
        used = self.ctx.cfg.used_marks()
        self._pending_defaults = []
        self._pending_health = None
        if self._build(plugin):
            self.imported.add(plugin.pid)
            for text in self._pending_defaults:
                self._defaults.setdefault(text, []).append(plugin.pid)
            if self._pending_health is not None:
                self._health.append(self._pending_health)
        else:
            self.ctx.cfg.restore_used_marks(used)

    def _build(self, plugin: Plugin) -> bool:
        ctx = self.ctx
        ctx.cfg.use(plugin.line)
        kind = plugin.kind
        if kind is None:
            what = _CATALOGUES.get(plugin.type)
            if what is not None:
                reason = (
                    f"the {plugin.type} plugin {what}; geofed federates storage endpoints, not catalogues"
                )
            elif plugin.type:
                reason = f"the {plugin.type} plugin has no geofed equivalent"
            else:
                reason = f"{plugin.library} is not a UGR location plugin library"
            ctx.unmapped(
                plugin.line, reason + " (geofed imports the http, dav, davrucio, s3 and azure plugins)"
            )
            return False
        for flag, what in (
            ("slave", "is asked only by replica-translator plugins to check their replicas"),
            ("replicaxlator", "hands the replicas it finds to slave plugins instead of answering"),
        ):
            line = self.key(plugin, flag)
            if ctx.get_bool(line, False):
                assert line is not None
                ctx.unmapped(line, "geofed has no replica-translator and slave plugins")
                ctx.unmapped(plugin.line, f"not imported: a plugin with {flag} true {what}")
                return False
        if not plugin.params:
            ctx.unmapped(plugin.line, "no URL after the thread count; UGR could not load this plugin")
            return False
        if len(plugin.params) > 1:
            ctx.note(
                f"{plugin.line.where}: {plugin.pid}: the fields after the URL "
                f"({' '.join(plugin.params[1:])}) are not read by the {plugin.type} plugin"
            )
        target = self._target(plugin, kind, plugin.params[0])
        if target is None:
            return False
        translation = self._translation(plugin)
        if translation is None:
            ctx.unmapped(
                plugin.line,
                "not imported: UGR asked this plugin only about names under its xlatepfx sources, and none "
                "of them is a path of the federated namespace",
            )
            return False
        base, key_prefix = target
        sources, to = translation
        common = self._common(plugin)
        quota = self._quota(plugin)
        self._unmapped_keys(plugin)
        multiply = self._multiply(plugin)
        shares = len(multiply)
        concurrency = (
            common["max_concurrency"] if shares == 1 else max(1, common["max_concurrency"] // shares)
        )

        def endpoint(name: str, extra: str, readable: bool, listable: bool, writable: bool) -> dict[str, Any]:
            settings: dict[str, Any] = {
                "name": self._name(name, plugin),
                **base,
                "prefixes": self._prefixes(sources, key_prefix, extra, to),
                "readable": readable,
                "listable": listable,
                "writable": writable,
            }
            if "timeout" in common:
                settings["timeout"] = common["timeout"]
            settings["max_concurrency"] = concurrency
            if quota is not None:
                settings["quota"] = quota
            return settings

        readable, listable, writable = common["readable"], common["listable"], common["writable"]
        if shares == 1:
            return self._accept(plugin, endpoint(plugin.pid, "", readable, listable, writable))
        names = []
        for extra in multiply:
            split = endpoint(
                f"{plugin.pid}-{join_path(extra).rsplit('/', 1)[-1]}", extra, readable, listable, False
            )
            if self._accept(plugin, split):
                names.append(split["name"])
        if names:
            ctx.note(
                f"{plugin.line.where}: {plugin.pid}: pfxmultiply -> one endpoint per prefix "
                f"({', '.join(names)}), each with {concurrency} of the plugin's {common['max_concurrency']} "
                "threads"
            )
        if names and writable:
            uploads = endpoint(plugin.pid, "", False, False, True)
            if self._accept(plugin, uploads):
                ctx.note(
                    f"{plugin.line.where}: {plugin.pid}: UGR placed new files at the translated path without "
                    f"the pfxmultiply prefixes; imported as the write-only endpoint {uploads['name']}"
                )
        return bool(names)

    def _accept(self, plugin: Plugin, endpoint: dict[str, Any]) -> bool:
        """Validate one converted endpoint as geofed would; report and drop it when refused."""
        try:
            EndpointSettings.model_validate(substitute_env(endpoint, placeholder_env(endpoint)))
        except ValidationError as exc:
            problems = "; ".join(str(e["msg"]).removeprefix("Value error, ") for e in exc.errors())
            self._names.discard(endpoint["name"])
            self.ctx.unmapped(plugin.line, f"not imported: geofed refuses the converted endpoint: {problems}")
            return False
        self.endpoints.append(endpoint)
        return True

    def _target(self, plugin: Plugin, kind: str, url: str) -> tuple[dict[str, Any], str] | None:
        """The kind-specific part of the endpoint (url, bucket, account, credentials, ...) and the
        path inside the bucket or container that the plugin URL points at."""
        ctx = self.ctx
        parts = urlsplit(url)
        scheme = _SCHEMES[kind].get(parts.scheme.lower())
        if scheme is None or not parts.netloc:
            hint = (
                " (it comes from the environment, which the import does not read)"
                if ENV_REF.search(url)
                else ""
            )
            schemes = ", ".join(f"{s}://" for s in _SCHEMES[kind])
            ctx.unmapped(
                plugin.line, f"URL {url!r} is not one the {plugin.type} plugin takes ({schemes}){hint}"
            )
            return None
        if "@" in parts.netloc:
            ctx.unmapped(
                plugin.line, "the URL carries credentials; geofed takes secrets only under credentials"
            )
            return None
        if parts.query or parts.fragment:
            ctx.note(f"{plugin.line.where}: {plugin.pid}: the query part of {url} is not imported")
        segments = [s for s in parts.path.split("/") if s]
        if kind == "webdav":
            return {"kind": "webdav", "url": f"{scheme}://{parts.netloc}{join_path(parts.path)}"}, "/"
        if kind == "s3":
            return self._s3(plugin, scheme, parts.netloc, segments)
        return self._azure(plugin, scheme, parts.netloc, segments)

    def _s3(
        self, plugin: Plugin, scheme: str, netloc: str, segments: list[str]
    ) -> tuple[dict[str, Any], str] | None:
        ctx = self.ctx
        alternate_line = self.key(plugin, "s3.alternate")
        alternate = ctx.get_bool(alternate_line, False)
        if alternate_line is None:
            self._default(
                "locplugin.<ID>.s3.alternate absent: false, virtual-host style (bucket.host) -> addressing: "
                "virtual",
                plugin,
            )
        if alternate:
            if not segments:
                ctx.unmapped(plugin.line, "s3.alternate is true (path style) but the URL names no bucket")
                return None
            base: dict[str, Any] = {
                "kind": "s3",
                "url": f"{scheme}://{netloc}",
                "bucket": segments[0],
                "addressing": "path",
            }
            rest = segments[1:]
        else:
            bucket, dot, service = netloc.partition(".")
            if not dot:
                ctx.unmapped(
                    plugin.line,
                    "virtual-host style (s3.alternate false, UGR's default) needs the bucket as the first "
                    "label of the host name, and this URL has none",
                )
                return None
            base = {"kind": "s3", "url": f"{scheme}://{service}", "bucket": bucket, "addressing": "virtual"}
            rest = segments
        region = self.key(plugin, "s3.region")
        ctx.cfg.use(region)
        if region is None or not region.value:
            self._default(
                "locplugin.<ID>.s3.region absent: UGR signed with AWS signature version 2; geofed signs "
                "version 4 only -> region: us-east-1",
                plugin,
            )
            base["region"] = "us-east-1"
        else:
            base["region"] = region.value
        base["credentials"] = {
            "access_key": self._secret(plugin, "s3.pub_key", "S3_ACCESS_KEY"),
            "secret_key": self._secret(plugin, "s3.priv_key", "S3_SECRET_KEY"),
        }
        base["url_lifetime"] = self._validity(plugin, "s3.signaturevalidity")
        return base, join_path(*rest)

    def _azure(
        self, plugin: Plugin, scheme: str, netloc: str, segments: list[str]
    ) -> tuple[dict[str, Any], str] | None:
        host = re.sub(r":\d+$", "", netloc)
        try:
            ipaddress.ip_address(host.strip("[]"))
            is_address = True
        except ValueError:
            is_address = host == "localhost"
        if ".blob." in host and segments:
            base: dict[str, Any] = {
                "kind": "azure",
                "url": f"{scheme}://{netloc}",
                "account": host.split(".", 1)[0],
                "container": segments[0],
            }
            rest = segments[1:]
        elif is_address and len(segments) >= 2:  # the emulator: http://127.0.0.1:10000/<account>/<container>
            base = {
                "kind": "azure",
                "url": f"{scheme}://{netloc}/{segments[0]}",
                "account": segments[0],
                "container": segments[1],
            }
            rest = segments[2:]
        else:
            self.ctx.unmapped(
                plugin.line,
                "cannot tell the storage account and container from this URL (expected "
                "https://<account>.blob.core.windows.net/<container>)",
            )
            return None
        base["credentials"] = {"account_key": self._secret(plugin, "azure.key", "AZURE_KEY")}
        base["url_lifetime"] = self._validity(plugin, "azure.signaturevalidity")
        return base, join_path(*rest)

    def _translation(self, plugin: Plugin) -> tuple[list[str], str] | None:
        """``xlatepfx`` as (source paths, target); ``(["/"], "/")`` without one; None when no
        source is a path."""
        ctx = self.ctx
        line = self.key(plugin, "xlatepfx")
        if line is None:
            return ["/"], "/"
        ctx.cfg.use(line)
        tokens = line.value.split()
        if len(tokens) < 2:
            ctx.unmapped(line, "needs '<from> [<from>...] <to>'; UGR ignored it ('Bad xlatepfx')")
            return ["/"], "/"
        sources, to = tokens[:-1], tokens[-1]
        paths = [s for s in sources if s.startswith("/")]
        others = [s for s in sources if not s.startswith("/")]
        if not to.startswith("/"):
            ctx.unmapped(line, f"the target {to!r} is not a path")
            return None
        if not paths:
            ctx.unmapped(
                line,
                "its sources are replica names of a catalogue (such as srm:// TURLs), not paths; geofed has "
                "no replica-name translation",
            )
            return None
        if others:
            ctx.note(
                f"{line.where}: {plugin.pid}: xlatepfx sources that are not paths ({' '.join(others)}) "
                "translate catalogue replica names; geofed has no equivalent, only the path sources are "
                "imported"
            )
        return paths, to

    def _multiply(self, plugin: Plugin) -> list[str]:
        line = self.key(plugin, "pfxmultiply")
        if line is None:
            return [""]
        self.ctx.cfg.use(line)
        tokens = line.value.split()
        if len(tokens) < 2:
            self.ctx.unmapped(line, "needs two or more prefixes; UGR ignored it ('Bad pfxmultiply')")
            return [""]
        return tokens

    def _prefixes(self, sources: list[str], key_prefix: str, extra: str, to: str) -> list[dict[str, str]]:
        endpoint_path = join_path(key_prefix, extra, to)
        prefixes: list[dict[str, str]] = []
        for source in sorted(sources, key=len, reverse=True):
            for federated in self.federated(join_path(source)):
                mapping = {"federated": federated, "endpoint": endpoint_path}
                if mapping not in prefixes:
                    prefixes.append(mapping)
        return prefixes

    def _common(self, plugin: Plugin) -> dict[str, Any]:
        """Flags, time limit, concurrency, and the health inputs of one plugin."""
        ctx = self.ctx
        flags: dict[str, Any] = {}
        for flag, default in (("readable", True), ("listable", True), ("writable", False)):
            line = self.key(plugin, flag)
            flags[flag] = ctx.get_bool(line, default)
            if line is None:
                self._default(f"locplugin.<ID>.{flag} absent: {str(default).lower()}", plugin)
        if plugin.type == "http" and flags["listable"]:
            flags["listable"] = False
            ctx.note(
                f"{plugin.line.where}: {plugin.pid}: the http plugin never listed directories (listing is "
                "the dav plugin's), so listable: false"
            )
        ops = self.key(plugin, "ops_timeout")
        seconds = ctx.get_long(ops, 15)
        if ops is None:
            self._default("locplugin.<ID>.ops_timeout absent: 15 s -> endpoints[].timeout: 15s", plugin)
        if seconds > 0:
            flags["timeout"] = duration(seconds)
        else:
            ctx.note(
                f"{plugin.line.where}: {plugin.pid}: ops_timeout {seconds} left davix's own default; "
                "endpoints[].timeout keeps geofed's default"
            )
        threads = ugr_long(plugin.threads)
        if not re.fullmatch(r"[+-]?\d+", plugin.threads):
            ctx.note(
                f"{plugin.line.where}: {plugin.pid}: thread count {plugin.threads!r} is read as {threads}"
            )
        if threads < 0:
            threads = 2
        elif threads == 0:
            ctx.note(
                f"{plugin.line.where}: {plugin.pid}: 0 threads: UGR started no worker, so this plugin never "
                "answered; imported with max_concurrency 1"
            )
            threads = 1
        flags["max_concurrency"] = min(threads, 10000)
        checking = self.key(plugin, "status_checking")
        if not ctx.get_bool(checking, True):
            assert checking is not None
            ctx.unmapped(checking, "geofed probes every endpoint (health.*); it cannot leave one unprobed")
        frequency_line = self.key(plugin, "status_checker_frequency")
        frequency = ctx.get_long(frequency_line, 5000)
        if frequency_line is None:
            self._default("locplugin.<ID>.status_checker_frequency absent: 5000 ms", plugin)
        latency_line = self.key(plugin, "max_latency")
        latency = ctx.get_long(latency_line, 10000)
        if latency_line is None:
            self._default("locplugin.<ID>.max_latency absent: 10000 ms", plugin)
        self._pending_health = (plugin.pid, max(frequency, 0), max(latency, 0))
        return flags

    def _quota(self, plugin: Plugin) -> int | None:
        """dynafed_storagestats' ``storagestats.quota`` (not read by UGR): a size is the endpoint's quota."""
        line = self.key(plugin, "storagestats.quota")
        if line is None:
            return None
        self.ctx.cfg.use(line)
        if line.value.lower() == "api":
            return None  # ask the endpoint, which is what geofed does without a quota
        quota = size_in_bytes(line.value)
        if quota is None:
            self.ctx.unmapped(line, "not a size such as 10TB or 500GiB")
            return None
        self.ctx.note(
            f"{line.where}: storagestats.quota {line.value} (a dynafed_storagestats setting) -> quota: "
            f"{quota} bytes (KB, MB, GB, TB are powers of 1000; KiB ... TiB of 1024, as dynafed_storagestats "
            "reads them)"
        )
        return quota

    def _unmapped_keys(self, plugin: Plugin) -> None:
        """Keys of this plugin geofed has no setting for (some only with a non-default value)."""
        ctx = self.ctx
        for name, reason in _UNMAPPED_HTTP.items():
            line = self.key(plugin, name)
            if line is not None:
                ctx.unmapped(line, reason)
        ssl_check = self.key(plugin, "ssl_check")
        if not ctx.get_bool(ssl_check, True):
            assert ssl_check is not None
            ctx.unmapped(
                ssl_check, "geofed always checks endpoint certificates (against the system's trust store)"
            )
        metalink = self.key(plugin, "metalink_support")
        if ctx.get_bool(metalink, False):
            assert metalink is not None
            ctx.unmapped(metalink, "geofed does not read endpoint metalinks (federations of federations)")
        checksum = self.key(plugin, "candochecksum")
        if ctx.get_bool(checksum, False):
            assert checksum is not None
            ctx.unmapped(
                checksum,
                "geofed answers checksum requests itself (from what the endpoints store, or by computing "
                "them), so no endpoint is singled out for them",
            )
        conn = self.key(plugin, "conn_timeout")
        if conn is not None:
            ctx.unmapped(
                conn,
                "geofed has one time limit per request to an endpoint (endpoints[].timeout, from "
                "ops_timeout), which includes connecting",
            )
        for line in ctx.cfg.array(f"locplugin.{plugin.pid}.custom_header"):
            ctx.unmapped(line, "geofed sends no custom headers to endpoints")
        if plugin.type == "davrucio":
            line = self.key(plugin, "xlatepfx_ruciohash")
            if line is not None:
                ctx.unmapped(
                    line,
                    "Rucio's hashed layout (<scope>/XX/YY/<name>) is not a prefix mapping; the hashed alias "
                    "is not imported, the plain paths are",
                )

    # -- after every plugin ------------------------------------------------------------------------

    def finish(self) -> dict[str, Any]:
        """Report the defaults applied per endpoint, and return geofed's ``health`` section."""
        for text, plugins in self._defaults.items():
            self.ctx.default(f"{text} ({', '.join(dict.fromkeys(plugins))})")
        rows = self._health or [("", 5000, 10000)]
        # UGR looks at a plugin's status every glb.tick seconds and probes it when older than the frequency.
        intervals = [max(frequency / 1000, self.tick) for _, frequency, _ in rows]
        timeouts = [min(max(frequency // 1000, 1), latency / 1000) for _, frequency, latency in rows]
        interval, timeout = min(intervals), min(timeouts)
        if len(set(intervals)) > 1 or len(set(timeouts)) > 1:
            detail = ", ".join(
                f"{name} {duration(i)}/{duration(t)}"
                for (name, _, _), i, t in zip(rows, intervals, timeouts, strict=True)
            )
            self.ctx.note(
                f"health: the plugins' probe settings differ (interval/timeout: {detail}); geofed has one "
                f"health section, so the shortest are used: interval {duration(interval)}, timeout "
                f"{duration(timeout)}"
            )
        self.ctx.note(
            f"health: interval {duration(interval)} = max(status_checker_frequency, glb.tick); timeout "
            f"{duration(timeout)} = min(max(status_checker_frequency / 1000, 1) s, max_latency), as UGR's "
            "probe; one failed probe marks an endpoint down, as in UGR"
        )
        return {"interval": duration(interval), "timeout": duration(timeout), "failures_to_down": 1}
