"""Helpers for third-party-copy tests: how davix reads a COPY response, and small HTTP peers that
misbehave on purpose (cut a body midway, refuse a PUT, require a token, redirect, lie about a
checksum) and record what geofed sent them. The peers run in a thread of the test process, on
127.0.0.1, and are stopped when their context ends."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

DAVIX_LINE_BUFFER = 1024


# -- davix's reading of the response ---------------------------------------------------------------


@dataclass
class Marker:
    latest: int = 0
    index: int = 0
    transferred: int = 0
    count: int = 0


@dataclass
class DavixMarkerReader:
    """What davix (``DavixCopyInternal::monitorPerformanceMarkers``) makes of a COPY body: lines
    read into a 1024-byte buffer, leading white space skipped, each line recognised by a
    case-insensitive prefix; a body without a final line is "terminated abruptly"."""

    markers: list[Marker] = field(default_factory=list)
    outcome: str | None = None
    """"success", "failure", "aborted", or None (terminated abruptly)."""
    message: str = ""
    unknown: list[str] = field(default_factory=list)

    def feed(self, body: bytes) -> DavixMarkerReader:
        holder = Marker()
        for raw in body.split(b"\n"):
            if len(raw) + 1 > DAVIX_LINE_BUFFER:
                raise AssertionError(f"line longer than davix's buffer: {len(raw)} bytes")
            p = raw.decode().lstrip()
            lower = p.lower()
            if lower.startswith("perf marker"):
                holder = Marker()
            elif lower.startswith("timestamp:"):
                holder.latest = int(p[10:].strip())
            elif lower.startswith("stripe index:"):
                holder.index = int(p[13:].strip())
            elif lower.startswith("stripe bytes transferred:"):
                holder.transferred = int(p[26:].strip())  # davix: atol(p + 26)
            elif lower.startswith("total stripe count:"):
                holder.count = int(p[20:].strip())
            elif lower.startswith("end"):
                self.markers.append(holder)
            elif lower.startswith("success"):
                self.outcome = "success"
                return self
            elif lower.startswith("aborted"):
                self.outcome, self.message = "aborted", "Transfer aborted in the remote end"
                return self
            elif lower.startswith(("failed", "failure")):
                self.outcome, self.message = "failure", "Transfer failed: " + p.rstrip("\r")
                return self
            elif p.strip():
                self.unknown.append(p)
        self.message = "Connection terminated abruptly; Status of TPC request unknown"
        return self


# -- misbehaving peers -----------------------------------------------------------------------------


@dataclass
class Peer:
    """What a :func:`peer` serves and how; its ``requests`` record (method, path, headers)."""

    url: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    """Path → content for GET/HEAD; PUTs that succeed land here too."""
    digest: dict[str, str] = field(default_factory=dict)
    """Path → the ``Digest`` value a HEAD with ``Want-Digest`` is answered with."""
    cut_after: int | None = None
    """GET: announce the whole length, send this many bytes, then drop the connection."""
    refuse_put: int | None = None
    """PUT: answer this status instead of ``100 Continue`` (nothing is stored)."""
    cut_put_after: int | None = None
    """PUT: read this many bytes of the body, then drop the connection (a partial file stays)."""
    required_token: str | None = None
    """GET/HEAD/PUT: 401 unless ``Authorization: Bearer <token>``."""
    redirect_to: str | None = None
    """GET/HEAD/PUT: answer 307 with ``Location: <redirect_to><path>``."""
    slow_bytes_per_s: int | None = None
    partial: dict[str, int] = field(default_factory=dict)
    """Path → bytes received of a PUT that was cut."""
    requests: list[tuple[str, str, dict[str, str]]] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def seen(self, method: str) -> list[tuple[str, dict[str, str]]]:
        with self.lock:
            return [(path, headers) for m, path, headers in self.requests if m == method]


def _handler(peer: Peer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            return None

        def _record(self) -> None:
            with peer.lock:
                peer.requests.append((self.command, self.path, dict(self.headers.items())))

        def _plain(self, status: int, text: str = "", headers: dict[str, str] | None = None) -> None:
            body = text.encode()
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Type", "text/plain")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _gate(self) -> bool:
            """False when the request was answered already (redirect, missing token)."""
            if peer.redirect_to is not None:
                self._plain(307, "elsewhere", {"Location": peer.redirect_to + self.path})
                return False
            token = peer.required_token
            if token is not None and self.headers.get("Authorization") != f"Bearer {token}":
                self._plain(401, "token required")
                return False
            return True

        def handle_expect_100(self) -> bool:
            self._record()
            if not self._gate():
                return False
            if peer.refuse_put is not None:
                self._plain(peer.refuse_put, "not allowed here")
                self.close_connection = True
                return False
            return super().handle_expect_100()

        def do_HEAD(self) -> None:
            self._record()
            if not self._gate():
                return
            data = peer.files.get(self.path)
            if data is None:
                self._plain(404, "no such file")
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            if "Want-Digest" in self.headers and self.path in peer.digest:
                self.send_header("Digest", peer.digest[self.path])
            self.end_headers()

        def do_GET(self) -> None:
            self._record()
            if not self._gate():
                return
            data = peer.files.get(self.path)
            if data is None:
                self._plain(404, "no such file")
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            limit = len(data) if peer.cut_after is None else peer.cut_after
            step = 65536
            for start in range(0, limit, step):
                self.wfile.write(data[start : min(start + step, limit)])
                if peer.slow_bytes_per_s:
                    time.sleep(step / peer.slow_bytes_per_s)
            if peer.cut_after is not None:
                self.wfile.flush()
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True

        def do_PUT(self) -> None:
            if "Expect" not in self.headers:
                self._record()
                if not self._gate():
                    return
                if peer.refuse_put is not None:
                    self._plain(peer.refuse_put, "not allowed here")
                    return
            length = int(self.headers.get("Content-Length", "0"))
            if peer.cut_put_after is not None:
                got = self.rfile.read(min(length, peer.cut_put_after))
                with peer.lock:
                    peer.partial[self.path] = len(got)
                self.connection.shutdown(socket.SHUT_RDWR)
                self.close_connection = True
                return
            data = self.rfile.read(length)
            with peer.lock:
                existed = self.path in peer.files
                peer.files[self.path] = data
            self._plain(204 if existed else 201)

        def do_DELETE(self) -> None:
            self._record()
            with peer.lock:
                existed = peer.files.pop(self.path, None) is not None
                peer.partial.pop(self.path, None)
            self._plain(204 if existed else 404)

    return Handler


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        return None  # a peer that geofed hangs up on is part of the tests, not an error


@contextlib.contextmanager
def peer(**options: Any) -> Iterator[Peer]:
    """A :class:`Peer` listening on 127.0.0.1 (``.url``) until the context ends."""
    state = Peer(**options)
    server = _Server(("127.0.0.1", 0), _handler(state))
    state.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def closed_port_url() -> str:
    """An http URL on 127.0.0.1 where nothing listens (connections are refused)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"
