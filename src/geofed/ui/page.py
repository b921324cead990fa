"""What every web UI page shares: the HTML shell with its inline style sheet, the response headers,
the error page, and small formatters. Every value that reaches a page goes through :func:`esc` (text)
or :func:`attr` (attribute values): nothing is trusted, file names least of all.

Pages carry no script: the Content-Security-Policy forbids any, so a name that slipped past the
escaping still could not run.
"""

from __future__ import annotations

import html
import time
from urllib.parse import quote

from aiohttp import web

from geofed import __version__
from geofed.errors import HTTPError

UI_ROOT = "/_geofed/ui/"
BROWSE_ROOT = "/_geofed/ui/browse"
STATUS_JSON = "/_geofed/status"

HEADERS = {
    # no script, no external anything: styles are inline, the favicon is an empty data: URL
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src data:; base-uri 'none'; "
        "form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "Cache-Control": "no-store",
}

_STYLE = (
    ":root{--up:#1a7f37;--down:#cf222e;--unknown:#6e7781;--disabled:#9a6700;--ink:#1f2328;--dim:#59636e}"
    "body{font:15px/1.45 system-ui,sans-serif;margin:0;color:var(--ink);background:#fff}"
    "header{background:#0b3d62;color:#fff;padding:.55em 1.5em;display:flex;gap:1.5em;align-items:baseline}"
    "header a{color:#fff;text-decoration:none}header a:hover{text-decoration:underline}"
    "header .brand{font-weight:700;font-size:1.1em}main{padding:1em 1.5em;max-width:1400px}"
    ".scroll{overflow-x:auto}"
    "h1{font-size:1.4em;margin:.3em 0 .6em;word-break:break-all}h2{font-size:1.1em;margin:1.4em 0 .5em}"
    "table{border-collapse:collapse;width:100%}th,td{padding:.3em .6em;text-align:left;vertical-align:top}"
    "thead th{border-bottom:2px solid #d0d7de;font-weight:600;white-space:nowrap}"
    "tbody tr:nth-child(even){background:#f6f8fa}td.n{text-align:right;font-variant-numeric:tabular-nums;"
    "white-space:nowrap}td.err{color:var(--down);min-width:12em;max-width:24em;overflow-wrap:anywhere}"
    ".nowrap{white-space:nowrap}"
    ".dim{color:var(--dim)}.note{color:var(--dim);font-size:.92em}code{font-size:.92em}"
    ".warn{background:#fff8c5;border:1px solid #d4a72c;padding:.5em .8em}"
    ".state{display:inline-block;padding:0 .5em;border-radius:1em;color:#fff;font-size:.85em;font-weight:600}"
    ".state.up{background:var(--up)}.state.down{background:var(--down)}"
    ".state.unknown{background:var(--unknown)}.state.disabled{background:var(--disabled)}"
    "nav.crumbs{margin:.2em 0;word-break:break-all}nav.crumbs a{text-decoration:none}"
    ".actions a{display:inline-block;margin-right:1em;padding:.25em .8em;border:1px solid #0969da;"
    "border-radius:6px;text-decoration:none}"
    "dl.facts{display:grid;grid-template-columns:max-content 1fr;gap:.2em 1em}dl.facts dt{color:var(--dim)}"
    "dl.facts dd{margin:0;word-break:break-all}ul.sums{margin:0;padding:0;list-style:none}"
    "ul.sums code{word-break:break-all}"
    "svg.map{width:100%;max-width:1000px;height:auto;display:block;border:1px solid #d0d7de;"
    "border-radius:6px;margin-bottom:.4em}"
    "svg .sea{fill:#e3eef7}svg .grid{stroke:#c5d7e6;stroke-width:.25;fill:none}"
    "svg .land polygon{fill:#d8d2c0;stroke:#b8b09a;stroke-width:.25}"
    "svg .marker circle{stroke:#fff;stroke-width:.7}svg .marker text{font-size:5px;fill:#1f2328;"
    "paint-order:stroke;stroke:#fff;stroke-width:1.1px}svg .leader{stroke:#1f2328;stroke-width:.3}"
    "svg .up circle{fill:var(--up)}svg .down circle{fill:var(--down)}"
    "svg .unknown circle{fill:var(--unknown)}svg .disabled circle{fill:var(--disabled)}"
    "svg .viewer circle{fill:none;stroke:#0969da;stroke-width:.9}"
    "a{color:#0969da}footer{padding:1em 1.5em;color:var(--dim);font-size:.85em}"
)


def esc(value: object) -> str:
    """Text content, escaped."""
    return html.escape(str(value), quote=False)


def attr(value: object) -> str:
    """An attribute value (always written between double quotes), escaped."""
    return html.escape(str(value), quote=True)


def browse_href(path: str, is_dir: bool) -> str:
    """The UI address of a federated path: collections end with a slash, files do not."""
    if path == "/":
        return BROWSE_ROOT + "/"
    return BROWSE_ROOT + quote(path) + ("/" if is_dir else "")


def federated_href(path: str) -> str:
    """The federation's own address of a path (a GET redirects to the closest replica)."""
    return quote(path)


def shell(title: str, body: str, *, current: str = "") -> str:
    """A whole page; ``body`` is already-escaped HTML."""
    links = (("endpoints", UI_ROOT, "Endpoints"), ("browse", BROWSE_ROOT + "/", "Browse"))
    nav = "".join(
        f'<a href="{href}"{" aria-current=page" if key == current else ""}>{label}</a>'
        for key, href, label in links
    )
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width,initial-scale=1">'
        f'<link rel="icon" href="data:,"><title>{esc(title)} · geofed</title><style>{_STYLE}</style></head>'
        f'<body><header><a class="brand" href="{UI_ROOT}">geofed</a>{nav}'
        f'<a href="{STATUS_JSON}">Status JSON</a></header><main>{body}</main>'
        f"<footer>geofed {esc(__version__)} · rendered {esc(utc(time.time()))}</footer></body></html>\n"
    )


def respond(title: str, body: str, *, current: str = "", status: int = 200) -> web.Response:
    return web.Response(
        status=status,
        text=shell(title, body, current=current),
        content_type="text/html",
        charset="utf-8",
        headers=HEADERS,
    )


def error_page(error: HTTPError) -> web.Response:
    """An HTTP error as a page, with the error's own headers (``WWW-Authenticate`` on a 401)."""
    body = f'<h1>{error.status}</h1><p>{esc(error.detail)}</p><p><a href="{UI_ROOT}">Endpoints</a></p>'
    response = respond(f"Error {error.status}", body, status=error.status)
    response.headers.update(error.headers)
    return response


# -- formatting -------------------------------------------------------------------------------------


def utc(timestamp: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(timestamp))


def ago(timestamp: float | None, now: float) -> str:
    """``12 s ago`` with the exact time as a tooltip; a dash when unknown."""
    if timestamp is None:
        return dash()
    seconds = max(0.0, now - timestamp)
    if seconds < 120:
        text = f"{seconds:.0f} s ago"
    elif seconds < 7200:
        text = f"{seconds / 60:.0f} min ago"
    elif seconds < 172800:
        text = f"{seconds / 3600:.0f} h ago"
    else:
        text = f"{seconds / 86400:.0f} days ago"
    return f'<span title="{attr(utc(timestamp))}">{text}</span>'


_UNITS = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def size(value: int | None) -> str:
    """A byte count in binary units, the exact count as a tooltip; a dash when unknown."""
    if value is None:
        return dash()
    amount = float(value)
    unit = 0
    while amount >= 1024 and unit < len(_UNITS) - 1:
        amount /= 1024
        unit += 1
    text = f"{value} B" if unit == 0 else f"{amount:.1f} {_UNITS[unit]}"
    return f'<span title="{value:,} bytes">{text}</span>'


def dash() -> str:
    return '<span class="dim">&ndash;</span>'
