"""Collection listings for people (HTML) and programs (JSON), rendered one entry at a time."""

from __future__ import annotations

import email.utils
import html
import json
from urllib.parse import quote

from geofed.endpoints.base import Entry

_STYLE = (
    "body{font-family:system-ui,sans-serif;margin:2em;color:#222}"
    "table{border-collapse:collapse}td,th{padding:.2em 1em;text-align:left}"
    "tr:nth-child(even){background:#f4f4f4}td.n{text-align:right;font-variant-numeric:tabular-nums}"
)


def collection_base(raw_path: str) -> str:
    """The collection's URL path with one trailing slash, as the client spelled it.

    Links are absolute paths built on it, so they resolve whether or not the page was requested
    with a trailing slash.
    """
    return raw_path.split("?", 1)[0].rstrip("/") + "/"


def html_head(path: str, base: str) -> str:
    title = html.escape(path)
    up_href = html.escape(base.rstrip("/").rsplit("/", 1)[0] + "/", quote=True)
    up = "" if path == "/" else f'<tr><td><a href="{up_href}">../</a></td><td></td><td></td></tr>'
    return (
        f"<!doctype html><html><head><meta charset='utf-8'><title>Index of {title}</title>"
        f"<style>{_STYLE}</style></head><body><h1>Index of {title}</h1>"
        "<table><thead><tr><th>Name</th><th>Size</th><th>Last modified</th></tr></thead><tbody>"
        f"{up}"
    )


def html_row(entry: Entry, base: str) -> str:
    name = entry.name + ("/" if entry.stat.is_dir else "")
    href = html.escape(base + quote(name), quote=True)
    size = "" if entry.stat.is_dir or entry.stat.size is None else f"{entry.stat.size:,}"
    mtime = "" if entry.stat.mtime is None else email.utils.formatdate(entry.stat.mtime, usegmt=True)
    return (
        f'<tr><td><a href="{href}">{html.escape(name)}</a></td><td class="n">{size}</td><td>{mtime}</td></tr>'
    )


def html_tail(errors: dict[str, str]) -> str:
    note = ""
    if errors:
        items = "".join(f"<li>{html.escape(k)}: {html.escape(v)}</li>" for k, v in sorted(errors.items()))
        note = f"<p>This listing may be incomplete; these endpoints failed:</p><ul>{items}</ul>"
    return f"</tbody></table>{note}</body></html>\n"


def json_entry(entry: Entry, first: bool) -> str:
    item = {
        "name": entry.name,
        "type": "collection" if entry.stat.is_dir else "file",
        "size": entry.stat.size,
        "mtime": entry.stat.mtime,
    }
    return ("" if first else ",\n") + json.dumps(item)


def json_head(path: str) -> str:
    return '{"path": ' + json.dumps(path) + ', "entries": [\n'


def json_tail(errors: dict[str, str]) -> str:
    return '\n], "errors": ' + json.dumps(errors, sort_keys=True) + "}\n"
