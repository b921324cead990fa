"""Benchmark: geofed over HTTPS with X509 proxy clients, VOMS and a realistic policy.

Everything is made at run time: the test PKI (``tests.infra.pki.make_pki``), the grid layout of the
security tests (``tests.integration.grid_federation``: VOMS proxy, vomsdir, member list, token
issuer) and its policy, ``policy_rules()`` plus ``filler_rules(300)`` (305 rules). Two geofed
servers run that layout, differing only in ``server.tls.client_certificates``:

* **geofed x509**: ``optional``; the client presents the Test User's VOMS proxy (RFC 3820, testvo
  AC with two FQANs), which OpenSSL verifies against the CA directory and its CRL, and geofed turns
  into an identity (DN, VOMS AC verified) once per connection;
* **geofed anon**: ``none``; the client is anonymous, and reads ``/fed/public``, which the policy
  gives to anyone.

and two references, both with the TLS settings of geofed x509:

* **bare aiohttp TLS**: this file's ``serve-bare``: aiohttp on uvloop with the ``ssl.SSLContext``
  built by ``geofed.auth.tlsctx.server_context`` from the same ``TLSSettings`` (so it asks for,
  verifies and accepts the same proxy chain), a catch-all handler returning a fixed 302;
* **nginx**: ``ssl_verify_client optional_no_ca`` with the CA and CRL, on the same host
  certificate. OpenSSL 3 has no way to tell nginx to accept RFC 3820 proxies
  (``X509_V_FLAG_ALLOW_PROXY_CERTS`` cannot be set from its configuration and the old
  ``OPENSSL_ALLOW_PROXY_CERTS`` variable is gone), so nginx verifies the chain, records "proxy
  certificates not allowed" and answers 495; ``error_page 495`` turns that into the same 302.

Measurements:

1. **Keep-alive GET -> 302 over TLS.** wrk (one thread, 32 connections) cannot send a client
   certificate, so it runs with a tiny ``LD_PRELOAD`` library compiled here with ``cc``
   (:data:`bench.tls_clients.SHIM_SOURCE`): it wraps ``SSL_CTX_new`` and loads
   ``$BENCH_TLS_CLIENT_CERT`` (cert, key and chain) into every context wrk makes. The same wrk
   with the same library drives every target; for the anonymous one the variable is empty.
   geofed's access log must show the proxy's DN on the x509 server's requests. Server and wrk CPU
   use are recorded per run, to show that the server, not wrk, is the limit.
2. **TLS handshakes per second.** ``openssl s_time -new`` (full handshakes) and ``-reuse``
   (resumed sessions), with the proxy as client certificate and ``-www /fed/public/x`` (one
   HTTP/1.0 GET per connection). s_time is one sequential client, which leaves both sides idle
   half of the time, so :data:`STIME_CLIENTS` of them run in parallel and their connections are
   summed over the wall time. s_time's ``-cert`` sends only the proxy, not the user certificate
   that signed it, and the server then refuses the chain; OpenSSL completes a client's chain from
   the client's trust store, so ``-CAfile`` gets the CA plus the user certificate.

Servers are pinned to one CPU, clients to the other (``taskset``), each measurement in rounds whose
order rotates. Run: ``.venv/bin/python bench/run.py --only tls`` (or ``bench/tls.py``).

The clients (the wrk ``LD_PRELOAD`` shim, s_time) and the CPU metering are :mod:`bench.tls_clients`;
this module holds the servers, their set-up and checks, the rounds and the report.
"""

from __future__ import annotations

import contextlib
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if __name__ == "__main__":  # run as a script: make bench.* and tests.infra.* importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import yaml

from bench.procs import VENV_BIN, Pinning, launch, require, wrk_command
from bench.report import commands_and_problems, median, table, verdict
from bench.tls_clients import HandshakeRun, KeepAliveRun, Usage, build_shim, process_tree, run_stime, run_wrk
from tests.infra.servers import LOOPBACK, RunningServer

CONNECTIONS = 32
STIME_CLIENTS = 4
FILLER_RULES = 300
PUBLIC_PATH = "/fed/public/x"
VO_PATH = "/fed/testvo/x"
SAMPLE_BODY = b"geofed TLS benchmark sample\n" * 16
TARGET_X509_VS_ANON = 0.8
TARGET_HANDSHAKE_VS_BARE = 0.8
DEFAULT_ROUNDS = 2
"""Rounds when --rounds is not given: two keep it near two minutes (s_time runs 5-6 s each)."""

# Keep-alive targets: name -> (server, path, with the client certificate)
TARGETS: dict[str, tuple[str, str, bool]] = {
    "geofed x509 /fed/public": ("geofed-x509", PUBLIC_PATH, True),
    "geofed x509 /fed/testvo": ("geofed-x509", VO_PATH, True),
    "geofed anon /fed/public": ("geofed-anon", PUBLIC_PATH, False),
    "bare aiohttp TLS": ("bare-tls", PUBLIC_PATH, True),
}
X509, X509_VO, ANON, BARE_KA = tuple(TARGETS)
HANDSHAKE_SERVERS = ("geofed-x509", "bare-tls", "nginx-tls")
HANDSHAKE_MODES = ("new", "reuse")
NOISY_CPUS = 0.1
"""More user CPU than this (in CPUs) used by other processes during a run marks it as noisy."""


@dataclass(frozen=True)
class TlsOptions:
    duration_s: int
    """Seconds per wrk run, and s_time's -time."""
    rounds: int
    warmup_s: int
    stime_clients: int = STIME_CLIENTS


@dataclass
class TlsResults:
    options: TlsOptions
    pinning: str
    location: str
    policy_rules: int
    commands: dict[str, str] = field(default_factory=dict)
    keepalive: dict[str, list[KeepAliveRun]] = field(default_factory=lambda: {t: [] for t in TARGETS})
    handshakes: dict[str, dict[str, list[HandshakeRun]]] = field(
        default_factory=lambda: {m: {s: [] for s in HANDSHAKE_SERVERS} for m in HANDSHAKE_MODES}
    )
    access_log: dict[str, int] = field(default_factory=dict)
    """geofed x509's redirect lines carrying the proxy's DN, per path."""
    client_counted: dict[str, int] = field(default_factory=dict)
    """Requests the clients counted against geofed x509, per path."""
    notes: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    # -- figures --------------------------------------------------------------------------------

    def rps(self, target: str) -> float:
        return median([r.wrk.rps for r in self.keepalive[target]])

    def ka_ratio(self, target: str, reference: str) -> float:
        return self.rps(target) / self.rps(reference)

    def ka_paired(self, target: str, reference: str) -> float:
        pairs = zip(self.keepalive[target], self.keepalive[reference], strict=True)
        return median([a.wrk.rps / b.wrk.rps for a, b in pairs])

    def ka_cost(self, target: str) -> float:
        """Median server CPU microseconds per request: robust to other load on the server's CPU."""
        return median([1e6 * r.usage.server / r.wrk.rps for r in self.keepalive[target]])

    def hs(self, mode: str, server: str) -> float:
        return median([r.per_s for r in self.handshakes[mode][server]])

    def hs_ratio(self, mode: str, server: str, reference: str) -> float:
        return self.hs(mode, server) / self.hs(mode, reference)

    def hs_paired(self, mode: str, server: str, reference: str) -> float:
        pairs = zip(self.handshakes[mode][server], self.handshakes[mode][reference], strict=True)
        return median([a.per_s / b.per_s for a, b in pairs])

    def hs_cost(self, mode: str, server: str) -> float:
        """Median server CPU microseconds per connection (handshake and one GET)."""
        return median([1e6 * r.usage.server / r.per_s for r in self.handshakes[mode][server]])

    # -- report ---------------------------------------------------------------------------------

    def render(self) -> str:
        opts = self.options
        rows = []
        for target, runs in self.keepalive.items():
            rows.append(
                [
                    target,
                    f"{self.rps(target):,.0f}",
                    " ".join(f"{r.wrk.rps / 1000:.1f}k{_noisy(r.usage)}" for r in runs),
                    f"{median([r.wrk.p50_ms for r in runs]):.2f} / "
                    f"{median([r.wrk.p99_ms for r in runs]):.2f}",
                    f"{self.ka_cost(target):.1f}",
                    _cpus([r.usage for r in runs]),
                ]
            )
        title = (
            f"1. Keep-alive GET -> 302 over TLS: wrk -t1 -c{CONNECTIONS} -d{opts.duration_s}s with a "
            f"client-certificate shim, {opts.rounds} rounds (order rotated), medians; policy of "
            f"{self.policy_rules} rules; pinning: {self.pinning}"
        )
        headers = ["target", "req/s", "rounds", "p50 / p99 ms", "server us/req", "CPUs: server|wrk|others"]
        lines = [table(headers, rows, title), ""]
        x509_anon = self.ka_ratio(X509, ANON)
        lines.append(
            f"  geofed x509 / geofed anon (same path, /fed/public) = {x509_anon:.2f} "
            f"(per-round {self.ka_paired(X509, ANON):.2f}; by server CPU per request "
            f"{self.ka_cost(ANON) / self.ka_cost(X509):.2f}; "
            f"{verdict(x509_anon, TARGET_X509_VS_ANON, higher_is_better=True)})"
        )
        for target, reference in ((X509_VO, ANON), (X509, BARE_KA), (ANON, BARE_KA)):
            lines.append(
                f"  {target} / {reference} = {self.ka_ratio(target, reference):.2f} "
                f"(per-round {self.ka_paired(target, reference):.2f}; by server CPU per request "
                f"{self.ka_cost(reference) / self.ka_cost(target):.2f})"
            )
        for path, lines_seen in self.access_log.items():
            lines.append(
                f"  geofed x509 access log: {lines_seen:,} redirect lines for {path} carry the proxy's DN; "
                f"the clients counted {self.client_counted.get(path, 0):,} requests"
            )
        lines.append("")
        rows = []
        for server in HANDSHAKE_SERVERS:
            row = [server]
            for mode in HANDSHAKE_MODES:
                runs = self.handshakes[mode][server]
                row += [
                    f"{self.hs(mode, server):,.0f}",
                    " ".join(f"{r.per_s:,.0f}{_noisy(r.usage)}" for r in runs),
                    _cpus([r.usage for r in runs]),
                    f"{self.hs_cost(mode, server):,.0f}",
                ]
            rows.append(row)
        headers = ["server"]
        for mode in HANDSHAKE_MODES:
            label = "full" if mode == "new" else "resumed"
            headers += [f"{label}/s", "rounds", "CPUs: server|s_time|others", "server us/conn"]
        title = (
            f"2. TLS handshakes with the proxy certificate, one HTTP/1.0 GET each: {opts.stime_clients} x "
            f"openssl s_time -new / -reuse -time {opts.duration_s}, {opts.rounds} rounds (order rotated), "
            "medians"
        )
        lines += [table(headers, rows, title), ""]
        for mode in HANDSHAKE_MODES:
            label = "full   " if mode == "new" else "resumed"
            vs_bare = self.hs_ratio(mode, "geofed-x509", "bare-tls")
            geofed_cost = self.hs_cost(mode, "geofed-x509")
            lines.append(
                f"  {label} geofed/bare aiohttp TLS = {vs_bare:.2f} "
                f"(per-round {self.hs_paired(mode, 'geofed-x509', 'bare-tls'):.2f}; by server CPU per "
                f"connection {self.hs_cost(mode, 'bare-tls') / geofed_cost:.2f}; "
                f"{verdict(vs_bare, TARGET_HANDSHAKE_VS_BARE, higher_is_better=True)})"
            )
            lines.append(
                f"  {label} geofed/nginx = {self.hs_ratio(mode, 'geofed-x509', 'nginx-tls'):.2f} "
                f"(per-round {self.hs_paired(mode, 'geofed-x509', 'nginx-tls'):.2f}; by server CPU per "
                f"connection {self.hs_cost(mode, 'nginx-tls') / geofed_cost:.2f})"
            )
        lines.append("")
        usages = [r.usage for runs in self.keepalive.values() for r in runs]
        usages += [
            r.usage for per_mode in self.handshakes.values() for runs in per_mode.values() for r in runs
        ]
        noisy = sum(1 for u in usages if u.others > NOISY_CPUS)
        lines.append(
            f"  other processes used a median of {median([u.others for u in usages]):.2f} CPUs "
            "during the runs "
            f"(max {max((u.others for u in usages), default=0.0):.2f}); "
            + (
                f"{noisy} of {len(usages)} runs had more than {NOISY_CPUS} (marked *): expect noisy figures"
                if noisy
                else "no run was disturbed"
            )
        )
        lines.append(f"  Location (all servers, {len(self.location)} chars): {self.location}")
        lines += [f"  {note}" for note in self.notes]
        lines += commands_and_problems(self.commands, self.problems)
        return "\n".join(lines)


def _noisy(usage: Usage) -> str:
    return "*" if usage.others > NOISY_CPUS else ""


def _cpus(usages: Sequence[Usage]) -> str:
    """Median CPUs busy: the server | the clients | other processes."""
    parts = (median([u.server for u in usages]), median([u.client for u in usages]))
    return f"{parts[0]:.2f} | {parts[1]:.2f} | {median([u.others for u in usages]):.2f}"


# -- set-up ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Files:
    proxy: Path
    ca: Path
    client_trust: Path
    """The CA and the user certificate that signed the proxy, for s_time's -CAfile."""
    host_cert: Path
    host_key: Path
    crl: Path
    configs: dict[str, Path]
    policy_rules: int
    user_dn: str


def _prepare(work: Path) -> _Files:
    """The PKI, the grid layout, the stored files and geofed's two configurations."""
    from geofed.config import settings_from_mapping
    from tests.infra.pki import make_pki
    from tests.integration.grid_federation import make_layout

    pki = make_pki(work / "pki")
    (work / "grid").mkdir()
    grid = make_layout(pki, work / "grid")
    for path in (PUBLIC_PATH, VO_PATH):
        (grid.store / path.removeprefix("/fed/")).write_bytes(SAMPLE_BODY)
    configs = {}
    rules = 0
    for name, mode in (("geofed-x509", "optional"), ("geofed-anon", "none")):
        settings = grid.settings(filler=FILLER_RULES, client_certificates=mode)
        mapping: dict[str, Any] = settings.model_dump(mode="json", exclude_defaults=True)
        if settings_from_mapping(mapping, environ={}) != settings:  # the YAML must mean the same
            raise RuntimeError("the grid layout's settings do not survive a round trip through YAML")
        rules = len(settings.auth.policy)
        mapping["server"]["host"] = LOOPBACK
        # The answer must stay cached for the whole run, and no probe may run during it.
        mapping["cache"] = {**mapping.get("cache", {}), "ttl": "6h"}
        mapping["health"] = {"interval": "6h", "timeout": "5s"}
        path = work / f"{name}.yaml"
        path.write_text(yaml.safe_dump(mapping, sort_keys=False), encoding="utf-8")
        path.chmod(0o600)
        configs[name] = path
    trust = work / "client-trust.pem"
    trust.write_bytes(pki.ca.cert_path.read_bytes() + pki.user.cert_path.read_bytes())
    return _Files(
        proxy=grid.proxies.voms.path,
        ca=pki.ca.cert_path,
        client_trust=trust,
        host_cert=pki.host.cert_path,
        host_key=pki.host.key_path,
        crl=pki.crl_path,
        configs=configs,
        policy_rules=rules,
        user_dn=pki.user.dn,
    )


def _nginx_config(work: Path, port: int, files: _Files, location: str) -> Path:
    temp = work / "nginx-temp"
    temp.mkdir(exist_ok=True)
    escaped = location.replace("\\", "\\\\").replace('"', '\\"')
    answer = f'add_header X-Client-Verify $ssl_client_verify always; return 302 "{escaped}";'
    text = f"""# generated by bench/tls.py: TLS with a requested client certificate, a fixed 302
worker_processes 1;
pid {work}/nginx-tls.pid;
error_log {work}/nginx-tls-error.log warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {temp}/body;
  proxy_temp_path {temp}/proxy;
  fastcgi_temp_path {temp}/fastcgi;
  uwsgi_temp_path {temp}/uwsgi;
  scgi_temp_path {temp}/scgi;
  keepalive_requests 100000000;
  ssl_session_cache shared:TLS:10m;
  server {{
    listen {LOOPBACK}:{port} ssl;
    ssl_certificate {files.host_cert};
    ssl_certificate_key {files.host_key};
    ssl_protocols TLSv1.2 TLSv1.3;
    # Ask for a client certificate and verify its chain against the CA and CRL, as geofed does.
    # OpenSSL refuses an RFC 3820 proxy here ("proxy certificates not allowed"; nginx cannot set
    # X509_V_FLAG_ALLOW_PROXY_CERTS), which nginx answers with 495: turn that into the 302.
    ssl_verify_client optional_no_ca;
    ssl_client_certificate {files.ca};
    ssl_crl {files.crl};
    ssl_verify_depth 10;
    error_page 495 = @proxy_refused;
    location @proxy_refused {{ {answer} }}
    location / {{ {answer} }}
  }}
}}
"""
    path = work / "nginx-tls.conf"
    path.write_text(text, encoding="utf-8")
    return path


# -- clients --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Answer:
    status: int
    location: str
    headers: str


def _curl(url: str, files: _Files, *, cert: bool) -> _Answer:
    argv = [require("curl"), "-sS", "-o", "/dev/null", "-D", "-", "--max-time", "10"]
    argv += ["--cacert", str(files.ca)]
    if cert:
        argv += ["--cert", str(files.proxy), "--key", str(files.proxy)]
    proc = subprocess.run([*argv, url], capture_output=True, text=True, timeout=20, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"curl {url} failed: {proc.stderr.strip()}")
    lines = proc.stdout.splitlines()
    location = ""
    for line in lines[1:]:
        key, _, value = line.partition(":")
        if key.strip().lower() == "location":
            location = value.strip()
    return _Answer(int(lines[0].split()[1]), location, proc.stdout)


def _negotiated(port: int, files: _Files) -> str:
    """Protocol, cipher suite and key exchange of one handshake with the proxy (openssl s_client)."""
    argv = [require("openssl"), "s_client", "-brief", "-connect", f"{LOOPBACK}:{port}"]
    argv += ["-cert", str(files.proxy), "-key", str(files.proxy), "-CAfile", str(files.client_trust)]
    proc = subprocess.run(argv, input="", capture_output=True, text=True, timeout=20, check=False)
    keep = ("Protocol version", "Ciphersuite", "Peer signature type", "Server Temp Key")
    found = [line.strip() for line in proc.stderr.splitlines() if line.startswith(keep)]
    return "; ".join(found) or f"(s_client said: {proc.stderr.strip()[-200:]})"


# -- the benchmark ----------------------------------------------------------------------------------


@dataclass
class _Servers:
    servers: dict[str, RunningServer]
    pids: dict[str, list[int]]
    location: str


@contextlib.contextmanager
def _start(work: Path, pin: Pinning, files: _Files, commands: dict[str, str]) -> Iterator[_Servers]:
    with contextlib.ExitStack() as stack:
        servers: dict[str, RunningServer] = {}
        for name in ("geofed-x509", "geofed-anon"):

            def geofed_argv(port: int, name: str = name) -> list[str]:
                argv = [str(VENV_BIN / "geofed"), "serve", "--config", str(files.configs[name])]
                argv += ["--port", str(port)]
                commands[name] = shlex.join(argv)
                return pin.server(argv)

            servers[name] = launch(name, geofed_argv, work / f"{name}.out")
            stack.callback(servers[name].stop)
        answer = _curl(_url(servers["geofed-x509"], PUBLIC_PATH), files, cert=True)
        if answer.status != 302 or "/_geofed/data/store/public/x?" not in answer.location:
            raise RuntimeError(
                f"geofed x509 did not redirect {PUBLIC_PATH}:\n{answer.headers}\n"
                + servers["geofed-x509"].logs()
            )
        location = answer.location

        def bare_argv(port: int) -> list[str]:
            argv = [sys.executable, str(Path(__file__).resolve()), "serve-bare"]
            argv += ["--config", str(files.configs["geofed-x509"]), "--port", str(port)]
            argv += ["--location", location]
            commands["bare-tls"] = shlex.join(argv)
            return pin.server(argv)

        servers["bare-tls"] = launch("bare-tls", bare_argv, work / "bare-tls.out")
        stack.callback(servers["bare-tls"].stop)

        def nginx_argv(port: int) -> list[str]:
            conf = _nginx_config(work, port, files, location)
            argv = [require("nginx"), "-p", str(work), "-e", str(work / "nginx-tls-error.log")]
            argv += ["-c", str(conf), "-g", "daemon off;"]
            commands["nginx-tls"] = shlex.join(argv)
            return pin.server(argv)

        servers["nginx-tls"] = launch("nginx-tls", nginx_argv, work / "nginx-tls.out")
        stack.callback(servers["nginx-tls"].stop)
        pids = {name: process_tree(server.pid) for name, server in servers.items()}
        yield _Servers(servers, pids, location)


def _url(server: RunningServer, path: str) -> str:
    return f"https://{LOOPBACK}:{server.port}{path}"


def _check(running: _Servers, files: _Files) -> list[str]:
    """Every server answers as it should; returns notes (what nginx made of the proxy)."""
    expect: list[tuple[str, str, bool, int]] = [
        ("geofed-x509", PUBLIC_PATH, True, 302),
        ("geofed-x509", VO_PATH, True, 302),
        ("geofed-x509", VO_PATH, False, 401),  # deny by default: no certificate, no VO area
        ("geofed-anon", PUBLIC_PATH, False, 302),
        ("geofed-anon", VO_PATH, False, 401),
        ("bare-tls", PUBLIC_PATH, True, 302),
        ("nginx-tls", PUBLIC_PATH, True, 302),
    ]
    notes = []
    for name, path, cert, status in expect:
        server = running.servers[name]
        answer = _curl(_url(server, path), files, cert=cert)
        who = "with the proxy" if cert else "without a certificate"
        if answer.status != status:
            raise RuntimeError(
                f"{name} answered {answer.status} to {path} {who}, not {status}:\n{answer.headers}"
            )
        if status != 302:
            continue
        if name.startswith("geofed"):  # signed for this server, to the stored file
            wanted = f"https://{LOOPBACK}:{server.port}/_geofed/data/store{path.removeprefix('/fed')}?"
            right = answer.location.startswith(wanted)
        else:
            right = answer.location == running.location
        if not right:
            raise RuntimeError(f"{name} redirected {path} ({who}) to {answer.location!r}")
        if name == "nginx-tls":
            verify = re.search(r"^X-Client-Verify: (.*)$", answer.headers, re.M | re.I)
            notes.append(
                "nginx's verdict on the proxy chain ($ssl_client_verify): "
                + (verify.group(1).strip() if verify else "?")
                + "; answered 302 through error_page 495"
            )
    return notes


def run_tls(work: Path, options: TlsOptions, log: Callable[[str], None]) -> TlsResults:
    pin = Pinning.detect()
    files = _prepare(work)
    shim = build_shim(work)
    commands: dict[str, str] = {}
    with _start(work, pin, files, commands) as running:
        results = TlsResults(options, pin.describe(), running.location, files.policy_rules, commands)
        results.notes += _check(running, files)
        results.notes.append(
            "negotiated with geofed x509: " + _negotiated(running.servers["geofed-x509"].port, files)
        )
        _keepalive(results, running, files, shim, log)
        _handshakes(results, running, files, log)
        try:
            _check(running, files)  # still right after the load
        except RuntimeError as exc:
            results.problems.append(f"after the load: {exc}")
    # geofed has stopped (its access log is flushed on shutdown): count the authenticated redirects.
    with (work / "geofed-x509.out").open(encoding="utf-8", errors="replace") as out:
        text = out.read()
    for path in (PUBLIC_PATH, VO_PATH):
        results.access_log[path] = text.count(f" {files.user_dn} GET {path} 302 redirect store ")
    results.notes += [
        "client certificate: the Test User's VOMS proxy (testvo AC, two FQANs), RFC 3820, RSA 2048; "
        "server: RSA 2048 host certificate; CA directory with a CRL (crl: auto -> checked for the chain)",
        "s_time's -CAfile holds the CA and the user certificate: s_time sends only its -cert, and OpenSSL "
        "completes a client's chain from the client's trust store",
        "nginx over keep-alive is not shown: after a 495 (every request with a proxy) it closes the "
        "connection, so wrk measures its own full handshakes",
    ]
    return results


def _keepalive(
    results: TlsResults, running: _Servers, files: _Files, shim: Path, log: Callable[[str], None]
) -> None:
    opts = results.options
    base_env = dict(os.environ, LD_PRELOAD=str(shim))
    pin = Pinning.detect()

    def run(target: str, duration_s: int) -> KeepAliveRun:
        server, path, cert = TARGETS[target]
        env = dict(base_env, BENCH_TLS_CLIENT_CERT=str(files.proxy) if cert else "")
        url = _url(running.servers[server], path)
        argv = pin.client(wrk_command(url, connections=CONNECTIONS, duration_s=duration_s, close=False))
        result = run_wrk(argv, env, duration_s, running.pids[server])
        if server == "geofed-x509":
            results.client_counted[path] = results.client_counted.get(path, 0) + result.wrk.requests
        return result

    results.commands["wrk"] = (
        "LD_PRELOAD=<work>/wrk-client-cert.so BENCH_TLS_CLIENT_CERT=<proxy or empty> "
        + shlex.join(wrk_command("URL", connections=CONNECTIONS, duration_s=opts.duration_s, close=False))
    )
    names = list(TARGETS)
    for target in names:  # unrecorded warm-up
        run(target, opts.warmup_s)
    for round_no in range(opts.rounds):
        shift = round_no % len(names)
        for target in names[shift:] + names[:shift]:
            result = run(target, opts.duration_s)
            results.keepalive[target].append(result)
            log(
                f"  tls keep-alive round {round_no + 1}/{opts.rounds} {target:<24} "
                f"{result.wrk.rps:>9,.0f} req/s"
            )
            if not result.wrk.clean:
                results.problems.append(
                    f"keep-alive {target} round {round_no + 1}: {result.wrk.socket_errors} socket errors, "
                    f"{result.wrk.non_3xx} non-2xx/3xx answers"
                )


def _stime_argv(port: int, mode: str, seconds: int, files: _Files) -> list[str]:
    argv = [require("openssl"), "s_time", "-connect", f"{LOOPBACK}:{port}", f"-{mode}", "-time", str(seconds)]
    argv += ["-cert", str(files.proxy), "-key", str(files.proxy), "-CAfile", str(files.client_trust)]
    return [*argv, "-www", PUBLIC_PATH]


def _handshakes(results: TlsResults, running: _Servers, files: _Files, log: Callable[[str], None]) -> None:
    opts = results.options
    pin = Pinning.detect()
    results.commands["s_time"] = (
        f"{opts.stime_clients} x "
        + shlex.join(_stime_argv(0, "new", opts.duration_s, files)).replace(
            f"{LOOPBACK}:0", f"{LOOPBACK}:PORT"
        )
        + "   (resumed: -reuse)"
    )
    names = list(HANDSHAKE_SERVERS)
    for round_no in range(opts.rounds):
        shift = round_no % len(names)
        for mode in HANDSHAKE_MODES:
            for server in names[shift:] + names[:shift]:
                port = running.servers[server].port
                argv = pin.client(_stime_argv(port, mode, opts.duration_s, files))
                result = run_stime([argv] * opts.stime_clients, opts.duration_s, running.pids[server])
                results.handshakes[mode][server].append(result)
                log(
                    f"  tls handshakes {mode:<5} round {round_no + 1}/{opts.rounds} {server:<12} "
                    f"{result.per_s:>7,.0f}/s"
                )
                if server == "geofed-x509":
                    results.client_counted[PUBLIC_PATH] = (
                        results.client_counted.get(PUBLIC_PATH, 0) + result.connections
                    )
                if min(result.bytes_per_connection) == 0:
                    results.problems.append(
                        f"{server} {mode} round {round_no + 1}: connections without an answer"
                    )
                if mode == "reuse" and result.resumed < result.connections - opts.stime_clients:
                    results.problems.append(
                        f"{server} reuse round {round_no + 1}: only {result.resumed} of "
                        f"{result.connections} connections resumed a session"
                    )


# -- the bare reference server ----------------------------------------------------------------------


def serve_bare(argv: Sequence[str]) -> None:
    """``bench/tls.py serve-bare --config geofed.yaml --port N --location URL``: aiohttp on uvloop
    with geofed's server TLS context (same TLSSettings), one handler returning a fixed 302."""
    import argparse

    import uvloop
    from aiohttp import web

    from geofed.auth.tlsctx import server_context
    from geofed.config import load_settings

    parser = argparse.ArgumentParser(prog="bench/tls.py serve-bare")
    parser.add_argument("--config", required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--location", required=True)
    args = parser.parse_args(argv)
    tls = load_settings(args.config).server.tls
    if tls is None:
        raise SystemExit(f"{args.config} has no server.tls")
    headers = {"Location": args.location}

    async def redirect(request: web.Request) -> web.Response:
        return web.Response(status=302, headers=headers)

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", redirect)
    uvloop.install()
    web.run_app(
        app, host=LOOPBACK, port=args.port, access_log=None, print=None, ssl_context=server_context(tls)
    )


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve-bare"]:
        serve_bare(sys.argv[2:])
    else:
        from bench.main import main

        sys.exit(main(["--only", "tls", *sys.argv[1:]]))
