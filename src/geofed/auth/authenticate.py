"""From a request to a verified :class:`Identity`: bearer token, TLS client chain, or trusted headers.

Cost is paid once per credential, not per request. A TLS identity is computed at the first request
of a connection (OpenSSL has verified the chain; geofed reads the DN and verifies the VOMS attribute
certificate) and remembered for the connection and, by the leaf certificate's bytes, for resumed
sessions: on resumption OpenSSL no longer has the chain, only the leaf, and the session itself is the
proof that the chain was verified. Tokens are remembered by their text until they expire.

A bearer token wins over a client certificate: it is the more specific credential, sent for this
request. A token that is offered and refused is a 401, never a silent fall-back to anonymous.
"""

from __future__ import annotations

import ipaddress
import re
import ssl
import weakref
from collections import OrderedDict
from urllib.parse import unquote

from aiohttp import web
from cryptography import x509

from geofed.auth.identity import ANONYMOUS, Identity, Method
from geofed.auth.members import VOMemberList
from geofed.auth.settings import AuthSettings, IdentityHeaders
from geofed.auth.tokens import TokenRejected, TokenVerifier
from geofed.auth.voms import VomsVerifier
from geofed.auth.x509 import CertificateError, chain_info, dn_from_header, strip_proxy_rdns
from geofed.config import Settings
from geofed.errors import Unauthorized

_BEARER = "bearer "
_ENCODING_DER = ssl._ssl.ENCODING_DER  # type: ignore[attr-defined]


_PEM_BLOCK = re.compile(r"-----BEGIN CERTIFICATE-----(.*?)-----END CERTIFICATE-----", re.S)


def pem_from_header(value: str) -> bytes:
    """PEM certificates as TLS front ends put them in a header: URL-escaped (nginx
    ``$ssl_client_escaped_cert``) or with the line breaks turned into blanks (Apache)."""
    text = unquote(value)
    blocks = [re.sub(r"\s+", "", body) for body in _PEM_BLOCK.findall(text)]
    if not blocks:
        raise ValueError("no PEM certificate in the header")
    out = []
    for body in blocks:
        lines = "\n".join(body[i : i + 64] for i in range(0, len(body), 64))
        out.append(f"-----BEGIN CERTIFICATE-----\n{lines}\n-----END CERTIFICATE-----\n")
    return "".join(out).encode()


class _LeafCache:
    """Identities of recent TLS clients by the DER of their leaf certificate (bounded LRU)."""

    def __init__(self, capacity: int) -> None:
        self._capacity = capacity
        self._items: OrderedDict[bytes, Identity] = OrderedDict()

    def get(self, leaf: bytes) -> Identity | None:
        identity = self._items.get(leaf)
        if identity is not None:
            self._items.move_to_end(leaf)
        return identity

    def put(self, leaf: bytes, identity: Identity) -> None:
        self._items[leaf] = identity
        self._items.move_to_end(leaf)
        while len(self._items) > self._capacity:
            self._items.popitem(last=False)


class Authenticator:
    """Turns requests into identities; see the module docstring for what is cached and why."""

    def __init__(self, settings: Settings) -> None:
        auth: AuthSettings = settings.auth
        ca_dir = auth.voms_ca_dir or (settings.server.tls.ca_dir if settings.server.tls else None)
        entries = auth.credential_cache_entries
        self._voms = VomsVerifier(auth.vomsdir, ca_dir, cache_entries=entries) if auth.vomsdir else None
        self._members = VOMemberList.from_settings(auth.vo_members)
        audiences = [settings.server.public_url.rstrip("/")] if settings.server.public_url else []
        self.tokens = (
            TokenVerifier(auth.tokens, audiences, cache_entries=entries) if auth.tokens.issuers else None
        )
        self._headers: IdentityHeaders | None = auth.identity_headers
        self._header_networks = tuple(
            ipaddress.ip_network(n) for n in (auth.identity_headers.trusted if auth.identity_headers else ())
        )
        self._by_connection: weakref.WeakKeyDictionary[ssl.SSLObject, Identity] = weakref.WeakKeyDictionary()
        self._by_leaf = _LeafCache(entries)
        self._by_header = _LeafCache(entries)
        self._tls = settings.server.tls is not None

    async def close(self) -> None:
        if self.tokens is not None:
            await self.tokens.close()

    # -- the fast path ---------------------------------------------------------------------------

    def known(self, request: web.Request) -> Identity | None:
        """The identity when it costs no verification (a connection or token seen before), else
        None: the caller then takes the general path with :meth:`identify`."""
        authorization = request.headers.get("Authorization")
        if authorization is not None:
            if self.tokens is None or authorization[:7].lower() != _BEARER:
                return None
            return self.tokens.cached(authorization[7:].strip())
        transport = request.transport if self._tls else None  # plain HTTP: no TLS object to ask for
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        if ssl_object is not None:
            known = self._by_connection.get(ssl_object)
            if known is not None:
                return known
            if ssl_object.getpeercert(binary_form=True):
                # the first request of a connection: reading the chain is synchronous (cached by
                # the leaf for resumed sessions), so the fast path serves this request too
                return self._connection_identity(ssl_object)
        if self._headers is not None and self._from_trusted_proxy(request.remote):
            return self._header_identity(request, self._headers)
        return ANONYMOUS

    # -- the general path ------------------------------------------------------------------------

    async def identify(self, request: web.Request) -> Identity:
        """The request's identity; raises Unauthorized (401) for a bearer token that is refused."""
        authorization = request.headers.get("Authorization")
        if authorization is not None and authorization[:7].lower() == _BEARER:
            return await self._token_identity(authorization[7:].strip())
        transport = request.transport
        ssl_object = transport.get_extra_info("ssl_object") if transport is not None else None
        if ssl_object is not None:
            identity = self._connection_identity(ssl_object)
            if identity is not None:
                return identity
        if self._headers is not None and self._from_trusted_proxy(request.remote):
            return self._header_identity(request, self._headers)
        return ANONYMOUS

    async def _token_identity(self, token: str) -> Identity:
        if self.tokens is None:
            raise Unauthorized(
                "bearer tokens are not accepted here (no token issuer is configured)",
                challenge='Bearer realm="geofed", error="invalid_token"',
            )
        cached = self.tokens.cached(token)
        if cached is not None:
            return cached
        try:
            return await self.tokens.verify(token)
        except TokenRejected as exc:
            reason = str(exc).replace('"', "'")
            raise Unauthorized(
                f"bearer token refused: {exc}",
                challenge=f'Bearer realm="geofed", error="invalid_token", error_description="{reason}"',
            ) from None

    def _connection_identity(self, ssl_object: ssl.SSLObject) -> Identity | None:
        known = self._by_connection.get(ssl_object)
        if known is not None:
            return known
        leaf = ssl_object.getpeercert(binary_form=True)
        if not leaf:
            return None
        identity = self._by_leaf.get(leaf)
        if identity is None:
            chain = ssl_object._sslobj.get_verified_chain()  # type: ignore[attr-defined]
            if chain:
                ders = [c.public_bytes(_ENCODING_DER) for c in chain]
                identity = self.identity_from_chain([x509.load_der_x509_certificate(d) for d in ders])
            else:
                # A resumed session whose full handshake is no longer remembered: the session proves
                # OpenSSL verified the chain, but only the leaf is left, so no VOMS holder check.
                identity = self._leaf_only_identity(x509.load_der_x509_certificate(leaf))
            self._by_leaf.put(leaf, identity)
        self._by_connection[ssl_object] = identity
        return identity

    def identity_from_chain(self, chain: list[x509.Certificate], method: Method = Method.X509) -> Identity:
        """Identity of a verified chain (leaf first): the end-entity DN, VOMS, member lists."""
        info = chain_info(chain)
        vos: set[str] = set()
        fqans: list[str] = []
        notes: list[str] = []
        if info.voms_acs and self._voms is None:
            notes.append("VOMS attributes ignored: no vomsdir is configured")
        elif self._voms is not None:
            for ac in info.voms_acs:
                result = self._voms.verify(ac, info.end_entity)
                if result.vo is not None and result.error is None:
                    vos.add(result.vo)
                    fqans.extend(result.fqans)
                else:
                    notes.append(result.error or "VOMS attribute certificate refused")
        vos |= self._members.vos_of(info.dn)
        return Identity(
            method,
            dn=info.dn,
            vos=frozenset(vos),
            fqans=tuple(fqans),
            limited_proxy=info.limited,
            notes=tuple(notes),
        )

    def _leaf_only_identity(self, leaf: x509.Certificate) -> Identity:
        try:
            info = chain_info([leaf])
        except CertificateError:
            return ANONYMOUS
        dn = strip_proxy_rdns(info.dn)
        return Identity(
            Method.X509,
            dn=dn,
            vos=self._members.vos_of(dn),
            limited_proxy=info.limited,
            notes=("resumed TLS session: VOMS attributes not re-verified",),
        )

    def _from_trusted_proxy(self, remote: str | None) -> bool:
        if remote is None:
            return False
        try:
            address = ipaddress.ip_address(remote)
        except ValueError:
            return False
        return any(address in network for network in self._header_networks)

    def _header_identity(self, request: web.Request, headers: IdentityHeaders) -> Identity:
        if headers.verify is not None and request.headers.get(headers.verify, "").upper() != "SUCCESS":
            return ANONYMOUS
        if headers.cert is not None and (pem := request.headers.get(headers.cert)):
            key = pem.encode()
            identity = self._by_header.get(key)
            if identity is None:
                try:
                    chain = x509.load_pem_x509_certificates(pem_from_header(pem))
                    identity = self.identity_from_chain(chain, Method.HEADERS)
                except (ValueError, CertificateError):
                    identity = ANONYMOUS
                self._by_header.put(key, identity)
            return identity
        if headers.dn is not None and (value := request.headers.get(headers.dn)):
            try:
                dn = strip_proxy_rdns(dn_from_header(value))
            except CertificateError:
                return ANONYMOUS
            return Identity(Method.HEADERS, dn=dn, vos=self._members.vos_of(dn))
        return ANONYMOUS
