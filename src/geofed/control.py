"""The client side of the admin API, for ``geofed endpoints``: where the running geofed is, how to
present oneself to it, and the table of endpoint states.

Plain ``urllib``: one request per command, no event loop needed. Over HTTPS the client may present
a certificate (an X509 proxy file holds the certificate, its chain and the key), a bearer token, and
trust a CA directory in the grid layout (``--capath``).
"""

from __future__ import annotations

import json
import os
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from geofed.config import ServerSettings, substitute_env
from geofed.errors import ConfigError

ADMIN_PATH = "/_geofed/admin"
DEFAULT_URL = "http://127.0.0.1:8080/"
TIMEOUT_S = 130.0
"""Long enough for a reload (endpoint probes, and under --workers the relay through the supervisor)."""


class ControlError(Exception):
    """The call failed; the message says why (the server's own words when it answered)."""


def server_settings(path: str | os.PathLike[str]) -> ServerSettings:
    """The ``server`` section of a configuration file, alone: finding the server needs neither the
    secrets nor the files the rest of the file names (ConfigError when it cannot be read)."""
    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read configuration file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    section = data.get("server", {}) if isinstance(data, dict) else {}
    try:
        return ServerSettings.model_validate(substitute_env(section or {}, os.environ, "server"))
    except ValidationError as exc:
        raise ConfigError(f"{path}: invalid server settings: {exc}") from None


def base_url(server: ServerSettings | None) -> str:
    """Where a geofed running with these ``server`` settings answers: ``public_url``, else its
    listening address (``0.0.0.0`` and ``::`` reached on loopback)."""
    if server is None:
        return DEFAULT_URL
    if server.public_url:
        return server.public_url
    scheme = "https" if server.tls is not None else "http"
    host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(server.host, server.host)
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{server.port}/"


@dataclass
class AdminClient:
    url: str
    cert: Path | None = None
    key: Path | None = None
    capath: Path | None = None
    cafile: Path | None = None
    token: str | None = None

    def _context(self) -> ssl.SSLContext | None:
        if not self.url.startswith("https:"):
            return None
        context = ssl.create_default_context()
        try:
            if self.capath is not None or self.cafile is not None:
                context.load_verify_locations(
                    cafile=str(self.cafile) if self.cafile else None,
                    capath=str(self.capath) if self.capath else None,
                )
            if self.cert is not None:
                context.load_cert_chain(str(self.cert), str(self.key) if self.key else None)
        except (OSError, ssl.SSLError) as exc:
            raise ControlError(f"cannot load the client credentials: {exc}") from None
        return context

    def call(self, method: str, path: str, body: dict[str, Any] | None = None) -> tuple[int, dict[str, Any]]:
        """``method`` on the admin ``path``: the status and the JSON answer, or ControlError."""
        url = self.url.rstrip("/") + ADMIN_PATH + path
        data = json.dumps(body).encode() if body is not None else None
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(url, data=data, method=method, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=TIMEOUT_S, context=self._context()) as response:
                return response.status, _json(response.read())
        except urllib.error.HTTPError as exc:
            answer = _json(exc.read())
            raise ControlError(f"{url}: {exc.code} {answer.get('error') or exc.reason}") from None
        except urllib.error.URLError as exc:
            raise ControlError(f"cannot reach {url}: {exc.reason}") from None
        except (OSError, ValueError) as exc:
            raise ControlError(f"cannot reach {url}: {exc}") from None


def _json(raw: bytes) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except ValueError:
        return {"error": raw.decode(errors="replace").strip()[:300]}
    return value if isinstance(value, dict) else {"value": value}


def human_size(value: int | None) -> str:
    if value is None:
        return "-"
    size = float(value)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB", "PiB"):
        if size < 1024 or unit == "PiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return "-"  # pragma: no cover - the loop always returns


COLUMNS = ("NAME", "KIND", "STATE", "LATENCY", "USED", "AVAILABLE", "REASON")


def table_rows(endpoints: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    rows: list[tuple[str, ...]] = []
    for row in endpoints:
        state = row["state"]
        if row.get("admin") == "draining" and state != "draining":
            state += " (draining)"
        latency = row.get("latency_ms")
        space = row.get("space") or {}
        rows.append(
            (
                str(row["name"]),
                str(row["kind"]),
                str(state),
                "-" if latency is None else f"{latency:.1f} ms",
                human_size(space.get("used_bytes")),
                human_size(space.get("available_bytes")),
                str(row.get("reason") or ""),
            )
        )
    return rows


def render_table(endpoints: list[dict[str, Any]]) -> str:
    """A plain-text table, columns padded to their widest cell (the reason last, unpadded)."""
    rows = [COLUMNS, *table_rows(endpoints)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS) - 1)]
    lines = []
    for row in rows:
        cells = [cell.ljust(width) for cell, width in zip(row, widths, strict=False)]
        lines.append("  ".join([*cells, row[-1]]).rstrip())
    return "\n".join(lines) + "\n"
