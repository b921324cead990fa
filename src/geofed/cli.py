"""The ``geofed`` command: serve, check-config, locate, import-dynafed, endpoints, replicate."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import socket
import ssl
import sys
from pathlib import Path
from typing import Any

import click
from aiohttp import web

from geofed import __version__
from geofed.config import Settings, load_settings
from geofed.control import AdminClient, ControlError, base_url, render_table, server_settings
from geofed.errors import ConfigError, HTTPError
from geofed.federation.locator import Want
from geofed.federation.paths import normalise
from geofed.geo import ClientPlacement
from geofed.replication import DEFAULT_PARALLEL, MAX_PARALLEL
from geofed.runtime import Federation


def _load(config: str) -> Settings:
    """Settings, with the files they name (policy file, member lists, TLS files) checked too."""
    try:
        settings = load_settings(config)
        _check_security_files(settings)
    except ConfigError as exc:
        click.echo(f"geofed: {exc}", err=True)
        sys.exit(2)
    return settings


def _check_security_files(settings: Settings) -> int:
    """Read what ``auth`` and ``server.tls`` point at, so a broken file stops geofed at start; return
    the number of policy rules. A reload checks the same (:func:`geofed.live.check_files`)."""
    from geofed.live import check_files

    return check_files(settings)[0]


@click.group()
@click.version_option(__version__, prog_name="geofed")
def main() -> None:
    """geofed: one WebDAV namespace over many storage endpoints, each client sent to its closest replica."""


@main.command()
@click.option("--config", "config", type=click.Path(dir_okay=False), help="YAML configuration file.")
@click.option("--host", help="Address to listen on (overrides the configuration).")
@click.option("--port", type=int, help="Port to listen on (overrides the configuration).")
@click.option("--demo-dir", default="var/demo", show_default=True, help="Where the demo sites live.")
@click.option(
    "--workers",
    type=click.IntRange(min=1),
    default=1,
    show_default=True,
    help="Processes serving the port. Above 1, a supervisor binds the port, forks the workers and "
    "replaces any that dies.",
)
def serve(config: str | None, host: str | None, port: int | None, demo_dir: str, workers: int) -> None:
    """Run the federation (the embedded demo of three local sites when no --config is given).

    SIGHUP reloads the configuration file (see docs/operations.md, "Change it")."""
    from geofed.app import build_app
    from geofed.demo import demo_settings

    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if config is None:
        settings = demo_settings(Path(demo_dir), host or "127.0.0.1", port or 8080)
        click.echo(f"geofed: no --config given; serving the demo sites in {Path(demo_dir).resolve()}")
    else:
        settings = _load(config)
    server = settings.server
    host, port = host or server.host, port if port is not None else server.port
    if workers > 1:
        if settings.cache.l2 is None:
            click.echo(
                "geofed: warning: --workers without cache.l2: each worker caches alone, so a write "
                "through one may not be seen through the others until cache.negative_ttl passes",
                err=True,
            )
        _serve_workers(settings, host, port, workers, config)
        return
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    # Until the application has started and installed its reload handler, a SIGHUP (systemctl
    # reload right after start) must not end the process, as its default action would: it is
    # ignored then; the configuration being loaded is the one just read.
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    # Bind before anything starts: a port in use is reported at once, with nothing to unwind.
    try:
        sock = socket.create_server((host, port), backlog=1024)
    except OSError as exc:
        click.echo(f"geofed: cannot listen on {host}:{port}: {exc.strerror}", err=True)
        sys.exit(1)
    port = sock.getsockname()[1]
    scheme = "https" if server.tls is not None else "http"
    url = server.public_url or f"{scheme}://{'127.0.0.1' if host in ('0.0.0.0', '::') else host}:{port}/"
    tls = _tls_context(settings)
    click.echo(f"geofed {__version__}: open {url}  (status: {url.rstrip('/')}/_geofed/status)")
    app = build_app(settings, config_path=config, tls_context=tls, handle_signals=True)
    web.run_app(app, sock=sock, access_log=None, print=None, ssl_context=tls)


def _tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The HTTPS context, or None for plain HTTP; a bad certificate or CA directory exits 2."""
    if settings.server.tls is None:
        return None
    from geofed.auth.tlsctx import server_context

    try:
        return server_context(settings.server.tls)
    except ConfigError as exc:
        click.echo(f"geofed: {exc}", err=True)
        sys.exit(2)


def _serve_workers(settings: Settings, host: str, port: int, workers: int, config: str | None) -> None:
    """``serve --workers N`` (N > 1): bind here, then hand over to the supervisor (geofed.workers)."""
    from geofed.workers import Supervisor, bind_listeners

    try:
        listeners = bind_listeners(host, port, workers)
    except OSError as exc:
        click.echo(f"geofed: cannot listen on {host}:{port}: {exc}", err=True)
        sys.exit(1)
    port = listeners.port  # the real one when the configuration says 0
    _tls_context(settings)  # a bad certificate is reported once, here, not by every worker
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else f"[{host}]" if ":" in host else host
    scheme = "https" if settings.server.tls is not None else "http"
    url = settings.server.public_url or f"{scheme}://{shown}:{port}/"
    click.echo(
        f"geofed {__version__}: open {url}  (status: {url.rstrip('/')}/_geofed/status; {workers} workers)"
    )
    sys.exit(Supervisor(settings, listeners, workers, config_path=config).run())


@main.command("check-config")
@click.argument("config", type=click.Path(dir_okay=False))
def check_config(config: str) -> None:
    """Validate a configuration file; exit non-zero with the reason when it is invalid."""
    settings = _load(config)
    rules = _check_security_files(settings)
    click.echo(f"{config}: valid ({len(settings.endpoints)} endpoints, {rules} policy rules)")
    if rules == 0 and not settings.auth.tokens.issuers:
        click.echo(
            f"{config}: warning: no policy rule and no token issuer: every request will be refused",
            err=True,
        )


@main.command("import-dynafed")
@click.argument("configs", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Write the geofed YAML here instead of to standard output.",
)
@click.option(
    "--root",
    type=click.Path(file_okay=False, path_type=Path),
    help="Read absolute INCLUDE paths below this directory (a copy of the Dynafed host's files).",
)
@click.option(
    "--ignore-missing-includes",
    is_flag=True,
    help="Report an INCLUDE whose target does not exist instead of stopping.",
)
@click.option(
    "--anonymous-user",
    default="nobody",
    show_default=True,
    help="The user name Dynafed's front end gave anonymous clients (Apache NSAnon).",
)
def import_dynafed_command(
    configs: tuple[Path, ...],
    output: Path | None,
    root: Path | None,
    ignore_missing_includes: bool,
    anonymous_user: str,
) -> None:
    """Convert a Dynafed configuration (ugr.conf, the files it includes, and any further CONFIGS) into
    geofed YAML; what could not be mapped is listed on standard error."""
    from geofed.dynafed import DynafedInputError, import_dynafed

    try:
        result = import_dynafed(
            configs, root=root, ignore_missing_includes=ignore_missing_includes, anonymous_user=anonymous_user
        )
    except DynafedInputError as exc:
        click.echo(f"geofed: {exc}", err=True)
        sys.exit(2)
    except ConfigError as exc:
        click.echo(f"geofed: the converted configuration is not valid: {exc}", err=True)
        sys.exit(2)
    text = result.yaml_text()
    if output is None:
        click.echo(text, nl=False)
    else:
        try:
            # Keys copied inline from the Dynafed files make the output a secret: never world-readable.
            mode = 0o600 if result.inline_secrets else 0o644
            with os.fdopen(os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode), "w") as handle:
                handle.write(text)
            if result.inline_secrets:
                output.chmod(0o600)
        except OSError as exc:
            click.echo(f"geofed: cannot write {output}: {exc.strerror or exc}", err=True)
            sys.exit(1)
    click.echo(result.render_report(), err=True, nl=False)


@main.command()
@click.argument("path")
@click.option("--config", "config", required=True, type=click.Path(dir_okay=False))
@click.option("--client-ip", default=None, help="Rank replicas for a client at this address.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
def locate(path: str, config: str, client_ip: str | None, as_json: bool) -> None:
    """Show where PATH is and how a client would be ranked over its replicas, with reasons."""
    settings = _load(config)
    try:
        document = asyncio.run(_locate(settings, normalise(path), client_ip))
    except HTTPError as exc:
        click.echo(f"geofed: {exc.detail}", err=True)
        sys.exit(2)
    if as_json:
        click.echo(json.dumps(document, indent=2))
        return
    client = document["client"]
    click.echo(f"path:   {document['path']}")
    click.echo(f"client: {client['address'] or '-'} placed by {client['source']}")
    for i, row in enumerate(document["ranked"], start=1):
        distance = "" if row["distance_km"] is None else f"{row['distance_km']:>8.0f} km"
        click.echo(f"  {i}. {row['endpoint']:<16}{distance:>12}  {row['reason']}")
    for row in document["rejected"]:
        click.echo(f"  x  {row['endpoint']:<16}{'':>12}  {row['reason']}")
    for row in document["unknown"]:
        click.echo(f"  ?  {row['endpoint']:<16}{'':>12}  {row['reason']}")
    if not document["ranked"]:
        sys.exit(1)


async def _locate(settings: Settings, path: str, client_ip: str | None) -> dict[str, Any]:
    federation = Federation(settings)
    try:
        await asyncio.gather(*(federation.health.check(name) for name in federation.endpoints))
        placement: ClientPlacement = federation.clients.place(client_ip)
        result = await federation.locator.locate(path, Want.ALL, placement)
        ranking = federation.rank(placement, result)
        return {
            "path": path,
            "client": {
                "address": client_ip,
                "source": placement.source,
                "location": None
                if placement.location is None
                else {"lat": placement.location.lat, "lon": placement.location.lon},
            },
            "ranked": [
                {"endpoint": r.endpoint, "path": r.path, "distance_km": r.distance_km, "reason": r.reason}
                for r in ranking.accepted
            ],
            "rejected": [
                {"endpoint": r.endpoint, "path": r.path, "reason": r.reason} for r in ranking.rejected
            ],
            "unknown": [{"endpoint": name, "reason": why} for name, why in result.unknown],
            "collection": result.is_dir,
            "locate_ms": round(result.elapsed * 1000, 1),
        }
    finally:
        await federation.stop()


# -- geofed endpoints: the admin API of a running geofed ------------------------------------------


def _connection_options(command: Any) -> Any:
    """Where the running geofed is and how to present oneself; on the group and on each subcommand
    (``geofed endpoints --url U disable X`` and ``geofed endpoints disable X --url U`` both work)."""
    options = [
        click.option(
            "--url",
            envvar="GEOFED_URL",
            help="Base URL of the running geofed [default: from --config, else http://127.0.0.1:8080/].",
        ),
        click.option(
            "--config",
            "config",
            type=click.Path(dir_okay=False),
            help="Its configuration file: the URL is server.public_url, else server.host and port.",
        ),
        click.option(
            "--cert",
            type=click.Path(dir_okay=False, path_type=Path),
            envvar="X509_USER_PROXY",
            help="Client certificate or X509 proxy to present over HTTPS [env: X509_USER_PROXY].",
        ),
        click.option(
            "--key",
            type=click.Path(dir_okay=False, path_type=Path),
            help="Its private key, when not in the --cert file.",
        ),
        click.option(
            "--capath",
            type=click.Path(file_okay=False, path_type=Path),
            envvar="X509_CERT_DIR",
            help="Trusted CA directory (hashed, grid layout) [env: X509_CERT_DIR].",
        ),
        click.option("--cafile", type=click.Path(dir_okay=False, path_type=Path), help="Trusted CA file."),
        click.option("--token", envvar="BEARER_TOKEN", help="Bearer token to present [env: BEARER_TOKEN]."),
    ]
    for option in reversed(options):
        command = option(command)
    return command


def _admin_client(connection: dict[str, Any]) -> AdminClient:
    url = connection.get("url")
    if url is None:
        config = connection.get("config")
        server = None
        if config is not None:
            try:
                server = server_settings(config)
            except ConfigError as exc:
                click.echo(f"geofed: {exc}", err=True)
                sys.exit(2)
        url = base_url(server)
    return AdminClient(
        url,
        cert=connection.get("cert"),
        key=connection.get("key"),
        capath=connection.get("capath"),
        cafile=connection.get("cafile"),
        token=connection.get("token"),
    )


def _admin_call(connection: dict[str, Any], method: str, path: str, body: Any = None) -> dict[str, Any]:
    try:
        _status, answer = _admin_client(connection).call(method, path, body)
    except ControlError as exc:
        click.echo(f"geofed: {exc}", err=True)
        sys.exit(1)
    return answer


def _given(values: dict[str, Any]) -> dict[str, Any]:
    return {key: value for key, value in values.items() if value is not None}


@main.group(invoke_without_command=True)
@_connection_options
@click.option("--json", "as_json", is_flag=True, help="Print the JSON answer instead of a table.")
@click.pass_context
def endpoints(ctx: click.Context, /, as_json: bool, **connection: Any) -> None:
    """Show the state of each endpoint of a running geofed (name, kind, state, latency, space,
    reason), or disable, drain or enable one. Needs an identity the policy grants every privilege
    on /."""
    ctx.obj = _given(connection)
    if ctx.invoked_subcommand is not None:
        return
    document = _admin_call(ctx.obj, "GET", "/endpoints")
    if as_json:
        click.echo(json.dumps(document, indent=2))
    else:
        click.echo(render_table(document["endpoints"]), nl=False)


def _mark_command(action: str, summary: str) -> None:
    @endpoints.command(action, help=summary)
    @click.argument("name")
    @click.option("--reason", help="Why (shown with the endpoint's state).")
    @_connection_options
    @click.pass_context
    def command(ctx: click.Context, /, name: str, reason: str | None, **connection: Any) -> None:
        from urllib.parse import quote

        merged = {**(ctx.obj or {}), **_given(connection)}
        body = {"reason": reason} if reason else None
        answer = _admin_call(merged, "POST", f"/endpoints/{quote(name, safe='')}/{action}", body)
        row = answer["endpoint"]
        why = f" ({row['reason']})" if row.get("reason") else ""
        click.echo(f"{row['name']}: {answer['previous']} -> {row['state']}{why}")


_mark_command("disable", "Take endpoint NAME out: no reads, no writes, not listed (like a down endpoint).")
_mark_command("drain", "Place no new data on endpoint NAME; it is still read and listed.")
_mark_command("enable", "Undo disable or drain: endpoint NAME is used again (health probes still apply).")


# -- geofed replicate: bulk replication in a running geofed ---------------------------------------


@main.command()
@click.argument("paths", nargs=-1)
@click.option("--to", "to", required=True, help="The endpoint that is to hold a replica of each file.")
@click.option(
    "--from-file",
    "from_file",
    type=click.File("r", encoding="utf-8"),
    help="Read more paths from FILE, one a line ('-': standard input; blank lines and # comments skipped).",
)
@click.option(
    "-r",
    "--recursive",
    is_flag=True,
    help="Replicate the files at every level below a collection (else only those directly in it).",
)
@click.option(
    "--parallel",
    type=click.IntRange(1, MAX_PARALLEL),
    default=DEFAULT_PARALLEL,
    show_default=True,
    help="Files handled at once (geofed's transfer.max_concurrent still limits the copies).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the final report as JSON.")
@click.option("--no-progress", is_flag=True, help="Do not draw the progress bar.")
@_connection_options
def replicate(
    paths: tuple[str, ...],
    to: str,
    from_file: Any,
    recursive: bool,
    parallel: int,
    as_json: bool,
    no_progress: bool,
    **connection: Any,
) -> None:
    """Make a replica of each federated file in PATH... (files, or collections) on endpoint --to,
    through a running geofed: files already there with the same adler32 are skipped, different ones
    re-copied. Shows a progress bar, then the report of what was done, skipped and failed (exit 1
    when anything failed). Needs an identity the policy grants every privilege on /."""
    from geofed.replication_client import ReplicationFailed, render_json, render_report, run_job, succeeded
    from geofed.replication_client import read_paths as read

    wanted = read(paths, from_file)
    if not wanted:
        raise click.UsageError("give at least one PATH (or --from-file)")
    body = {"paths": wanted, "to": to, "recursive": recursive, "parallel": parallel}
    try:
        status = run_job(_admin_client(_given(connection)), body, progress=not no_progress)
    except ReplicationFailed as exc:
        click.echo(f"geofed: {exc}", err=True)
        sys.exit(1)
    click.echo(render_json(status) if as_json else render_report(status), nl=False)
    sys.exit(0 if succeeded(status) else 1)
