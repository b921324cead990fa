"""The server TLS context: grid CA directory, CRLs, RFC 3820 proxies, session resumption.

OpenSSL does the chain verification (it is fast, constant-time and well reviewed); geofed only sets
it up the way grid middleware expects: proxies allowed (``VERIFY_ALLOW_PROXY_CERTS``; without it a
proxy chain fails with "proxy certificates not allowed"), CAs and CRLs looked up by hash in the
``/etc/grid-security/certificates`` layout, and session tickets so that a returning client skips the
RSA work of a full handshake.
"""

from __future__ import annotations

import re
import ssl
from pathlib import Path

from geofed.auth.settings import TLSSettings
from geofed.errors import ConfigError

_CRL_NAME = re.compile(r"^[0-9a-f]{8}\.r\d+$")
_VERIFY_MODES = {
    "none": ssl.CERT_NONE,
    "optional": ssl.CERT_OPTIONAL,
    "required": ssl.CERT_REQUIRED,
}


def crl_files(ca_dir: Path | None) -> list[Path]:
    """The CRLs of a hashed CA directory (``<hash>.r0``, ``<hash>.r1`` …)."""
    if ca_dir is None or not ca_dir.is_dir():
        return []
    return sorted(p for p in ca_dir.iterdir() if _CRL_NAME.match(p.name))


def server_context(tls: TLSSettings) -> ssl.SSLContext:
    """Build the listening socket's context from settings; ConfigError names the bad file."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(str(tls.cert), str(tls.key))
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(
            f"server.tls: cannot load certificate {tls.cert} with key {tls.key}: {exc}"
        ) from None
    context.verify_mode = _VERIFY_MODES[tls.client_certificates]
    if tls.client_certificates != "none":
        _load_trust(context, tls)
    if not tls.session_tickets:
        context.options |= ssl.OP_NO_TICKET
        context.num_tickets = 0
    return context


def _load_trust(context: ssl.SSLContext, tls: TLSSettings) -> None:
    if tls.ca_dir is not None and not tls.ca_dir.is_dir():
        raise ConfigError(f"server.tls.ca_dir: {tls.ca_dir} is not a directory")
    try:
        context.load_verify_locations(
            cafile=str(tls.ca_file) if tls.ca_file is not None else None,
            capath=str(tls.ca_dir) if tls.ca_dir is not None else None,
        )
    except (OSError, ssl.SSLError) as exc:
        raise ConfigError(f"server.tls: cannot load the trusted CAs: {exc}") from None
    flags = context.verify_flags | ssl.VERIFY_ALLOW_PROXY_CERTS
    flags &= ~ssl.VERIFY_X509_STRICT  # grid CAs and proxies predate some of its checks
    crls = crl_files(tls.ca_dir)
    if tls.crl == "require" and not crls:
        raise ConfigError(f"server.tls.crl is 'require' but {tls.ca_dir} holds no CRL (<hash>.r0)")
    if tls.crl != "off" and crls:
        flags |= ssl.VERIFY_CRL_CHECK_CHAIN
    context.verify_flags = flags
