"""The remote side of a third-party copy: GET a source URL (pull), PUT to a destination URL (push).

A deliberately small HTTP client on aiohttp, one session per copy:

* only what the client asked for is sent: ``TransferHeader<Name>: v`` of the COPY becomes
  ``<Name>: v`` here (the bearer token for the other side, usually); geofed's own credentials
  (endpoint keys, its host certificate) and the client's credentials for geofed are never sent;
* redirects are followed by hand (a federation sends geofed to a pre-signed store URL): the URL is
  used exactly as given (a signature covers its query), ``Authorization`` is dropped when the
  redirect leaves the origin (a pre-signed URL carries its own, and two would be refused), and a
  PUT is sent with ``Expect: 100-continue`` so that a redirect arrives before any of the body does;
* bytes are passed on as they are (no content decoding), in bounded pieces;
* TLS is verified against the system's CAs plus the configured ones (a grid CA directory);
* addresses in denied networks (``transfer.deny_networks``: by default the link-local ranges, where
  cloud metadata services hand out credentials) are never connected to, whether named by an IP
  literal, a host name resolving there, or a redirect;
* a non-2xx answer or a body shorter than announced is a :class:`RemoteError` whose message names
  the URL without its query (never a signature) and the status.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import re
import socket
import ssl
from collections.abc import AsyncIterable, AsyncIterator, Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from multidict import CIMultiDict
from yarl import URL

from geofed import __version__
from geofed.checksums import parse_digest_claims

log = logging.getLogger("geofed.transfer")

USER_AGENT = f"geofed/{__version__} (HTTP-TPC)"
TRANSFER_HEADER_PREFIX = "transferheader"
REDIRECTS = frozenset({301, 302, 303, 307, 308})
_NOT_FORWARDED = frozenset(
    {
        "host",
        "content-length",
        "transfer-encoding",
        "connection",
        "keep-alive",
        "expect",
        "te",
        "trailer",
        "upgrade",
        "proxy-authorization",
        "range",
        "content-encoding",
        "accept-encoding",
    }
)
"""Names a TransferHeader may not set: they frame or route the request geofed makes itself."""
_TOKEN = re.compile(r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$")
_SNIPPET = 200
_TAG = re.compile(r"<[^>]*>")
DELETE_TIMEOUT = 15.0


class RemoteError(Exception):
    """The remote side failed; ``status`` is its HTTP status when it answered."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


def redact(url: str | URL) -> str:
    """``url`` fit for a message or a log: scheme, host, port and path; no user information and no
    query (pre-signed URLs carry their signature there)."""
    parts = urlsplit(str(url))
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit((parts.scheme, netloc, parts.path, "", ""))


def forwarded_headers(headers: Mapping[str, str]) -> dict[str, str]:
    """``<Name>: v`` for every ``TransferHeader<Name>: v`` of the COPY request (case-insensitive
    prefix), except names that frame the request (``Content-Length``, ``Host`` …). A later
    header of the same name wins."""
    out: dict[str, str] = {}
    for name, value in headers.items():
        if not name.lower().startswith(TRANSFER_HEADER_PREFIX):
            continue
        forwarded = name[len(TRANSFER_HEADER_PREFIX) :]
        if not forwarded or not _TOKEN.match(forwarded) or forwarded.lower() in _NOT_FORWARDED:
            continue
        if "\r" in value or "\n" in value:
            continue
        out[forwarded] = value
    return out


def client_ssl_context(ca_file: Path | None = None, ca_dir: Path | None = None) -> ssl.SSLContext:
    """Verification of remote HTTPS peers: the system's trust store plus ``ca_file``/``ca_dir``
    (a hashed directory such as ``/etc/grid-security/certificates``). No client certificate."""
    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    if ca_file is not None or ca_dir is not None:
        context.load_verify_locations(
            cafile=str(ca_file) if ca_file is not None else None,
            capath=str(ca_dir) if ca_dir is not None else None,
        )
    context.verify_flags &= ~ssl.VERIFY_X509_STRICT  # grid host certificates predate some checks
    return context


Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def networks(cidrs: Iterable[str]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(c, strict=False) for c in cidrs)


def denied(address: str, deny: tuple[Network, ...]) -> bool:
    """True when the IP ``address`` (an IPv4-mapped IPv6 address counts as IPv4) is in ``deny``."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return any(ip.version == net.version and ip in net for net in deny)


class _GuardedResolver(AbstractResolver):
    """The default resolver, minus the addresses in denied networks."""

    def __init__(self, deny: tuple[Network, ...]) -> None:
        self._inner = DefaultResolver()
        self._deny = deny

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        found = await self._inner.resolve(host, port, family)
        allowed = [r for r in found if not denied(r["host"], self._deny)]
        if not allowed:
            raise OSError(f"{host} resolves only to addresses geofed may not connect to")
        return allowed

    async def close(self) -> None:
        await self._inner.close()


@dataclass(frozen=True, slots=True)
class RemoteInfo:
    """What a HEAD said about a remote file."""

    status: int
    size: int | None
    checksums: dict[str, str]
    """Canonical checksums from a ``Digest`` answer (empty when it had none)."""


@dataclass(slots=True)
class RemoteBody:
    """An open GET: the size announced (None for a chunked answer) and the bytes."""

    size: int | None
    chunks: AsyncIterator[bytes]
    url: str
    """Where the bytes came from in the end (after redirects), redacted."""


class RemoteSession:
    """One copy's HTTP client; use as ``async with RemoteSession(...) as http``."""

    def __init__(
        self,
        ssl_context: ssl.SSLContext,
        *,
        connect_timeout: float,
        idle_timeout: float,
        max_redirects: int = 8,
        deny: tuple[Network, ...] = (),
    ) -> None:
        self._ssl = ssl_context
        self._deny = deny
        self._connect_timeout = connect_timeout
        self._idle_timeout = idle_timeout
        self.max_redirects = max_redirects
        self._session: aiohttp.ClientSession | None = None

    async def __aenter__(self) -> RemoteSession:
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(
                ssl=self._ssl, limit=4, enable_cleanup_closed=True, resolver=_GuardedResolver(self._deny)
            ),
            timeout=aiohttp.ClientTimeout(
                total=None,
                connect=self._connect_timeout,
                sock_connect=self._connect_timeout,
                sock_read=self._idle_timeout,
            ),
            headers={"User-Agent": USER_AGENT},
            auto_decompress=False,
            cookie_jar=aiohttp.DummyCookieJar(),
            trust_env=False,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    # -- requests -----------------------------------------------------------------------------

    async def head(self, url: str, headers: Mapping[str, str], want_digest: str = "adler32") -> RemoteInfo:
        """HEAD with ``Want-Digest``; the status, size and checksums offered. RemoteError only when
        no answer came at all."""
        resp = await self._open("HEAD", url, {**headers, "Want-Digest": want_digest})
        try:
            checksums: dict[str, str] = {}
            if 200 <= resp.status < 300:
                try:
                    checksums = parse_digest_claims(resp.headers.get("Digest"))
                except ValueError:
                    log.debug("ignoring a malformed Digest from %s", redact(resp.url))
            return RemoteInfo(resp.status, _length(resp.headers.get("Content-Length")), checksums)
        finally:
            resp.release()

    async def get(self, url: str, headers: Mapping[str, str]) -> RemoteBody:
        """Start a GET; RemoteError unless it answers 200 (a 206 or anything else is refused)."""
        resp = await self._open("GET", url, {**headers, "Accept-Encoding": "identity"})
        if resp.status != 200:
            error = await _status_error("GET", resp)
            resp.close()
            raise error
        if resp.headers.get("Content-Encoding", "identity").lower() not in ("identity", ""):
            resp.close()
            raise RemoteError(f"GET {redact(resp.url)}: the answer is content-encoded; cannot copy it as is")
        size = _length(resp.headers.get("Content-Length"))
        return RemoteBody(size, _read(resp, size), redact(resp.url))

    async def put(
        self,
        url: str,
        headers: Mapping[str, str],
        body: Callable[[], AsyncIterable[bytes]],
        size: int | None,
        started: Callable[[], bool],
    ) -> int:
        """PUT the bytes of ``body()`` (called once per hop; ``started()`` says whether the bytes
        began to flow, after which a redirect cannot be followed); the final status (2xx), else
        RemoteError."""
        extra = {"Content-Type": "application/octet-stream"}
        if size is not None:
            extra["Content-Length"] = str(size)
        resp = await self._open("PUT", url, {**headers, **extra}, body=body, started=started)
        try:
            if not 200 <= resp.status < 300:
                raise await _status_error("PUT", resp)
            with contextlib.suppress(aiohttp.ClientError, TimeoutError):
                await resp.read()
            return resp.status
        finally:
            resp.close()

    async def delete(self, url: str, headers: Mapping[str, str]) -> int | None:
        """Best-effort DELETE (a failed copy's leftovers); the status, or None when it failed."""
        try:
            async with asyncio.timeout(DELETE_TIMEOUT):
                resp = await self._open("DELETE", url, headers)
                resp.release()
                return resp.status
        except (RemoteError, TimeoutError) as exc:
            log.warning("could not delete %s after a failed copy: %s", redact(url), exc)
            return None

    # -- plumbing -----------------------------------------------------------------------------

    async def _open(
        self,
        method: str,
        url: str,
        headers: Mapping[str, str],
        *,
        body: Callable[[], AsyncIterable[bytes]] | None = None,
        started: Callable[[], bool] | None = None,
    ) -> aiohttp.ClientResponse:
        """Send ``method``, following redirects; the final response (not a redirect)."""
        assert self._session is not None, "use RemoteSession as an async context manager"
        target = _parse(url)
        sent = CIMultiDict(headers)
        for _hop in range(self.max_redirects + 1):
            if target.host is not None and denied(target.host, self._deny):
                raise RemoteError(f"{method} {redact(target)}: geofed may not connect to that address")
            try:
                resp = await self._session.request(
                    method,
                    target,
                    headers=sent,
                    data=body() if body is not None else None,
                    allow_redirects=False,
                    expect100=body is not None,
                )
            except aiohttp.ClientError as exc:
                raise RemoteError(f"{method} {redact(target)}: {_describe(exc)}") from exc
            except TimeoutError as exc:
                raise RemoteError(f"{method} {redact(target)}: no answer in time") from exc
            location = resp.headers.get("Location")
            if resp.status not in REDIRECTS or not location:
                return resp
            resp.close()
            if started is not None and started():
                raise RemoteError(f"{method} {redact(target)}: redirected after the body was sent")
            try:
                following = target.join(URL(location, encoded=True))
            except ValueError as exc:
                raise RemoteError(f"{method} {redact(target)}: bad redirect location") from exc
            if following.scheme not in ("http", "https") or not following.host:
                raise RemoteError(f"{method} {redact(target)}: redirect to a non-HTTP location")
            if following.origin() != target.origin():
                sent.popall("Authorization", None)
            if resp.status == 303 and method not in ("GET", "HEAD"):
                raise RemoteError(f"{method} {redact(target)}: answered 303, which changes the method")
            target = following
        raise RemoteError(f"{method} {redact(url)}: more than {self.max_redirects} redirects")


def _parse(url: str) -> URL:
    try:
        parsed = URL(url, encoded=True)
    except ValueError as exc:
        raise RemoteError(f"not a URL: {redact(url)}") from exc
    if parsed.scheme not in ("http", "https") or not parsed.host:
        raise RemoteError(f"not an http(s) URL: {redact(url)}")
    return parsed


def _length(value: str | None) -> int | None:
    if value is None or not value.strip().isdigit():
        return None
    return int(value.strip())


async def _status_error(method: str, resp: aiohttp.ClientResponse) -> RemoteError:
    """The error for a non-2xx answer: the status, the reason and the start of the body."""
    snippet = ""
    if "html" not in resp.headers.get("Content-Type", "").lower():  # an error page says no more
        with contextlib.suppress(aiohttp.ClientError, TimeoutError):
            async with asyncio.timeout(5):
                raw = await resp.content.read(_SNIPPET)
            snippet = " ".join(_TAG.sub(" ", raw.decode("utf-8", errors="replace")).split())
    reason = f"{resp.status} {resp.reason or ''}".strip()
    detail = f" ({snippet})" if snippet else ""
    return RemoteError(f"{method} {redact(resp.url)}: {reason}{detail}", resp.status)


async def _read(resp: aiohttp.ClientResponse, size: int | None) -> AsyncIterator[bytes]:
    """The body, piece by piece as it arrives; RemoteError when it ends early."""
    received = 0
    try:
        async for piece in resp.content.iter_any():
            received += len(piece)
            yield piece
        if size is not None and received != size:
            raise RemoteError(f"GET {redact(resp.url)}: got {received} of {size} bytes")
    except aiohttp.ClientError as exc:
        expected = f" of {size}" if size is not None else ""
        raise RemoteError(
            f"GET {redact(resp.url)}: connection lost after {received}{expected} bytes ({_describe(exc)})"
        ) from exc
    except TimeoutError as exc:
        raise RemoteError(f"GET {redact(resp.url)}: stalled after {received} bytes") from exc
    finally:
        resp.close()


def _describe(exc: BaseException) -> str:
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return f"TLS certificate not trusted ({exc.certificate_error})"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return f"cannot connect to {exc.host}:{exc.port} ({exc.os_error.strerror or exc.os_error})"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "the server closed the connection"
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
