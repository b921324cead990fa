"""The identity in a verified X509 client chain: the end-entity DN, proxy flags and VOMS ACs.

OpenSSL has already verified the chain (signatures, CA trust, RFC 3820 proxy rules) when this module
sees it; what is left is *reading* it the way the grid does. A client usually presents an RFC 3820
proxy whose subject is the user's DN plus ``/CN=<serial>``, so the identity is the DN of the first
certificate that is not a proxy (the end entity), never the leaf's. VOMS attribute certificates ride
in a proxy extension and are only *extracted* here: :mod:`geofed.auth.voms` verifies them.

DNs are written in the grid's slash form (OpenSSL's one-line form: RDNs in certificate order,
``/DC=org/DC=test/OU=Users/CN=Test User``) because that is what grid-mapfiles, LSC files, VO member
lists and every grid log use. A TLS-terminating proxy may pass the DN in RFC 2253 form instead
(reversed, comma-separated, escaped): :func:`dn_from_header` converts it.

Everything that parses outside input raises :class:`CertificateError` (a ``ValueError``) and nothing
else, so callers can turn any bad credential into "not authenticated" with one ``except``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.x509.oid import ObjectIdentifier

PROXY_CERT_INFO_OID = ObjectIdentifier("1.3.6.1.5.5.7.1.14")
"""RFC 3820 proxyCertInfo."""
DRAFT_PROXY_CERT_INFO_OID = ObjectIdentifier("1.3.6.1.4.1.3536.1.222")
"""proxyCertInfo of the pre-RFC (GSI-3 draft) proxies, still produced by old Globus clients."""
LIMITED_PROXY_POLICY = "1.3.6.1.4.1.3536.1.1.1.9"
"""The Globus "limited proxy" policy language: the holder may read but, by convention, not write."""
INHERIT_ALL_POLICY = "1.3.6.1.5.5.7.21.1"
"""id-ppl-inheritAll: the proxy has all the rights of its issuer (what grid-proxy-init makes)."""
VOMS_EXTENSION_OID = ObjectIdentifier("1.3.6.1.4.1.8005.100.100.5")
"""The proxy extension carrying VOMS ACs: SEQUENCE OF SEQUENCE OF AttributeCertificate."""

MAX_VOMS_ACS = 16
"""More ACs than this in one chain is not a real client: the rest are ignored (bounded work)."""

_LEGACY_PROXY_CNS = {"proxy": False, "limited proxy": True}  # CN value -> limited

# OpenSSL's short names, so DNs match what grid tools print (cryptography says "1.2.840..." for
# emailAddress and has no GN/SN); unknown attributes are written as dotted OIDs, as OpenSSL does.
_SHORT_NAMES: dict[str, str] = {
    "2.5.4.3": "CN",
    "2.5.4.4": "SN",
    "2.5.4.5": "serialNumber",
    "2.5.4.6": "C",
    "2.5.4.7": "L",
    "2.5.4.8": "ST",
    "2.5.4.9": "street",
    "2.5.4.10": "O",
    "2.5.4.11": "OU",
    "2.5.4.12": "title",
    "2.5.4.15": "businessCategory",
    "2.5.4.17": "postalCode",
    "2.5.4.42": "GN",
    "2.5.4.43": "initials",
    "2.5.4.44": "generationQualifier",
    "2.5.4.46": "dnQualifier",
    "2.5.4.65": "pseudonym",
    "0.9.2342.19200300.100.1.1": "UID",
    "0.9.2342.19200300.100.1.25": "DC",
    "1.2.840.113549.1.9.1": "emailAddress",
}
# names a TLS proxy (or a human) may use in an RFC 2253 DN, lower-cased, to the slash-form name
_HEADER_NAMES: dict[str, str] = {name.lower(): name for name in _SHORT_NAMES.values()} | {
    "e": "emailAddress",
    "email": "emailAddress",
    "userid": "UID",
    "s": "ST",
    "givenname": "GN",
    "surname": "SN",
    "domaincomponent": "DC",
    "commonname": "CN",
    "organizationname": "O",
    "organizationalunitname": "OU",
    "countryname": "C",
    "localityname": "L",
    "stateorprovincename": "ST",
}
_ATTRIBUTE_TYPE = re.compile(r"(?:[A-Za-z][A-Za-z0-9-]*|(?:oid\.)?[0-9]+(?:\.[0-9]+)+)", re.IGNORECASE)
_PROXY_TAIL = re.compile(r"(?<!\\)(?:/CN=(?:[0-9]+|proxy|limited proxy))+$")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_PLAIN_VALUE = re.compile(r"[ -*,-.0-~]*")  # printable ASCII but '/' and '+'


class CertificateError(ValueError):
    """A certificate, chain or DN that cannot be read: the client is not authenticated by it."""


@dataclass(frozen=True, slots=True)
class CertificateChainInfo:
    """What a verified client chain says about its holder.

    ``voms_acs`` are the DER AttributeCertificates from the proxies' VOMS extension, leaf-most
    first and *not yet verified*; ``notes`` say what was ignored (a malformed VOMS extension, say)
    so the access log can tell why a client got fewer rights than it expected.
    """

    dn: str
    end_entity: x509.Certificate
    is_proxy: bool
    limited: bool
    voms_acs: tuple[bytes, ...] = field(default=(), repr=False)
    notes: tuple[str, ...] = field(default=(), compare=False)


def short_attribute_name(dotted_oid: str) -> str:
    """The slash-form name of a DN attribute type (``CN``, ``DC``, ``emailAddress`` or the OID)."""
    return _SHORT_NAMES.get(dotted_oid, dotted_oid)


def slash_dn(name: x509.Name) -> str:
    """``name`` in the grid's slash form, RDNs in certificate order; multi-valued RDNs joined by ``+``.

    Values are escaped exactly as OpenSSL 3's ``X509_NAME_oneline`` does (``\\/`` and ``\\+``; control
    and non-ASCII bytes as ``\\xHH`` of their UTF-8), so the result compares equal to the DNs that grid
    tools, mod_ssl and nginx's ``$ssl_client_s_dn_legacy`` print, and a value can never pose as an
    extra RDN (``CN=a/CN=b`` as one value is ``/CN=a\\/CN=b``, not two CNs).
    """
    parts = []
    for rdn in name.rdns:
        parts.append(
            "+".join(f"{short_attribute_name(attr.oid.dotted_string)}={_value_text(attr)}" for attr in rdn)
        )
    return "".join(f"/{part}" for part in parts)


def _value_text(attr: x509.NameAttribute[str | bytes]) -> str:
    value = attr.value
    if isinstance(value, bytes):  # X500UniqueIdentifier and friends (BIT STRING): shown as hex
        return "#" + value.hex()
    return escape_slash_value(value)


def escape_slash_value(value: str) -> str:
    """A DN attribute value as OpenSSL 3's one-line form writes it (see :func:`slash_dn`)."""
    if _PLAIN_VALUE.fullmatch(value):
        return value
    out = []
    for char in value:
        if char in "/+":
            out.append("\\" + char)
        elif " " <= char <= "~":
            out.append(char)
        else:
            out.extend(f"\\x{byte:02X}" for byte in char.encode("utf-8", "surrogatepass"))
    return "".join(out)


def strip_proxy_rdns(dn: str) -> str:
    """The DN without trailing proxy components (``/CN=<digits>``, ``/CN=proxy``, ``/CN=limited proxy``).

    Only for when the end-entity certificate itself is not at hand (a TLS proxy that forwards just the
    leaf's DN); with a chain, :func:`chain_info` finds the end entity exactly.
    """
    return _PROXY_TAIL.sub("", dn)


def chain_from_der(items: Iterable[bytes]) -> list[x509.Certificate]:
    """Certificates from DER blobs (as ``ssl`` gives them), in the same order."""
    out = []
    try:
        for item in items:
            out.append(x509.load_der_x509_certificate(bytes(item)))
    except (ValueError, TypeError) as exc:
        raise CertificateError(f"not a DER certificate: {exc}") from exc
    return out


def chain_info(chain: Sequence[x509.Certificate]) -> CertificateChainInfo:
    """Read a verified chain, leaf first (proxy…, end entity, CA…), as ``get_verified_chain()`` gives it.

    The end entity is the first certificate without proxyCertInfo (RFC or draft OID) that is not a
    legacy Globus ``CN=proxy`` / ``CN=limited proxy``; the chain is limited if any proxy in it is,
    because a proxy signed by a limited proxy inherits the limitation.
    """
    try:
        return _chain_info(chain)
    except CertificateError:
        raise
    except (ValueError, TypeError) as exc:  # cryptography refusing a name or extension it parses lazily
        raise CertificateError(f"unreadable certificate: {exc}") from exc


def _chain_info(chain: Sequence[x509.Certificate]) -> CertificateChainInfo:
    if not chain:
        raise CertificateError("empty certificate chain")
    limited = False
    notes: list[str] = []
    acs: list[bytes] = []
    for index, cert in enumerate(chain):
        if not isinstance(cert, x509.Certificate):
            raise CertificateError(f"chain item {index} is not a certificate")
        kind = _proxy_kind(cert)
        if kind is None:
            if len(acs) > MAX_VOMS_ACS:
                notes.append(f"{len(acs) - MAX_VOMS_ACS} VOMS ACs beyond the first {MAX_VOMS_ACS} ignored")
            return CertificateChainInfo(
                dn=slash_dn(cert.subject),
                end_entity=cert,
                is_proxy=index > 0,
                limited=limited,
                voms_acs=tuple(acs[:MAX_VOMS_ACS]),
                notes=tuple(notes),
            )
        limited = limited or kind
        try:
            acs.extend(_voms_acs(cert))
        except CertificateError as exc:
            notes.append(f"VOMS extension of proxy {index} ignored: {exc}")
    raise CertificateError("no end-entity certificate in the chain (only proxies)")


def _extensions(cert: x509.Certificate) -> x509.Extensions:
    try:
        return cert.extensions
    except (ValueError, TypeError) as exc:  # duplicate or malformed extensions
        raise CertificateError(f"unreadable certificate extensions: {exc}") from exc


def _proxy_kind(cert: x509.Certificate) -> bool | None:
    """``None`` for a certificate that is not a proxy, else whether the proxy is limited."""
    for ext in _extensions(cert):
        if ext.oid in (PROXY_CERT_INFO_OID, DRAFT_PROXY_CERT_INFO_OID):
            language = _policy_language(_raw_value(ext))
            if language == LIMITED_PROXY_POLICY:
                return True
            if language == INHERIT_ALL_POLICY:
                return False
            # id-ppl-independent or an application policy: the delegator meant the holder to have
            # fewer (or other) rights than its own; granting the end entity's would defeat that
            raise CertificateError(f"proxy policy {language} is not supported (only inheritAll and limited)")
    rdns = cert.subject.rdns
    if rdns:
        last = list(rdns[-1])
        if len(last) == 1 and last[0].oid == x509.NameOID.COMMON_NAME:
            value = last[0].value
            if isinstance(value, str) and value in _LEGACY_PROXY_CNS:
                return _LEGACY_PROXY_CNS[value]
    return None


def _raw_value(ext: x509.Extension[x509.ExtensionType]) -> bytes:
    value = ext.value
    if isinstance(value, x509.UnrecognizedExtension):
        return value.value
    raise CertificateError(f"extension {ext.oid.dotted_string} has an unexpected type")


def _voms_acs(cert: x509.Certificate) -> list[bytes]:
    """DER of each AC in the certificate's VOMS extension (SEQUENCE OF SEQUENCE OF AC)."""
    for ext in _extensions(cert):
        if ext.oid == VOMS_EXTENSION_OID:
            raw = _raw_value(ext)
            out = []
            for outer in _der_children(raw, 0x30):
                for ac in _der_children(outer, 0x30):
                    if ac[:1] != b"\x30":
                        raise CertificateError("an AC is not a SEQUENCE")
                    out.append(ac)
            return out
    return []


def _policy_language(value: bytes) -> str | None:
    """The policy language OID of a proxyCertInfo value, in either the RFC 3820 or the draft layout.

    Both are SEQUENCEs whose only OID is the policy language (the policy itself is an OCTET STRING,
    not descended into), so the first OID found depth-first is the answer whatever the field order.
    """
    stack = [value]
    for _ in range(64):  # bounded: a real value has three levels
        if not stack:
            return None
        data = stack.pop(0)
        for tag, element in _der_elements(data):
            content = _der_content(element)
            if tag == 0x06:
                return _decode_oid(content)
            if tag & 0x20:
                stack.append(content)
    return None


def _der_elements(data: bytes) -> list[tuple[int, bytes]]:
    """Split concatenated DER TLVs into (tag byte, whole TLV). Definite lengths and low tags only."""
    out = []
    pos = 0
    while pos < len(data):
        tag = data[pos]
        if tag & 0x1F == 0x1F:
            raise CertificateError("high-tag-number form is not used in these structures")
        length, header = _der_length(data, pos + 1)
        end = pos + 1 + header + length
        if end > len(data):
            raise CertificateError("DER length runs past the end of the data")
        out.append((tag, data[pos:end]))
        pos = end
    return out


def _der_length(data: bytes, pos: int) -> tuple[int, int]:
    """(length, bytes used by the length field) of the DER length at ``pos``."""
    if pos >= len(data):
        raise CertificateError("truncated DER")
    first = data[pos]
    if first < 0x80:
        return first, 1
    count = first & 0x7F
    if count == 0 or count > 4 or pos + 1 + count > len(data):
        raise CertificateError("bad DER length")
    return int.from_bytes(data[pos + 1 : pos + 1 + count], "big"), 1 + count


def _der_content(element: bytes) -> bytes:
    _, header = _der_length(element, 1)
    return element[1 + header :]


def _der_children(data: bytes, tag: int) -> list[bytes]:
    """The TLVs inside ``data``, which must be exactly one TLV with ``tag``."""
    elements = _der_elements(data)
    if len(elements) != 1 or elements[0][0] != tag:
        raise CertificateError(f"expected one DER element with tag {tag:#04x}")
    return [element for _, element in _der_elements(_der_content(elements[0][1]))]


def _decode_oid(content: bytes) -> str:
    if not content or content[-1] & 0x80:
        raise CertificateError("bad OID encoding")
    arcs: list[int] = []
    value = 0
    for byte in content:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    first = min(arcs[0] // 40, 2)
    return ".".join(str(arc) for arc in [first, arcs[0] - 40 * first, *arcs[1:]])


def dn_from_header(value: str) -> str:
    """A DN from a TLS proxy header in slash form.

    Accepts RFC 2253 / 4514 (``CN=Test User,OU=Users,DC=test,DC=org``: most significant RDN *last*,
    ``\\,``-style and ``\\C3\\A9``-style escapes, quoted values, ``#<hex>`` BER values, ``+`` for
    multi-valued RDNs), as nginx's ``$ssl_client_s_dn`` and Apache's ``SSL_CLIENT_S_DN`` send it, or
    a DN already in slash form (nginx's ``$ssl_client_s_dn_legacy``), which is returned as given.
    Raw control characters in the header are refused (it was mangled on the way); escaped ones are
    kept, written as :func:`slash_dn` writes them, so both paths give the same DN for one certificate.
    """
    if not isinstance(value, str):
        raise CertificateError("a DN must be a string")
    text = value.strip()
    if not text:
        raise CertificateError("empty DN")
    if _CONTROL.search(value):
        raise CertificateError("control character in DN")
    if text.startswith("/"):
        if "=" not in text or text.startswith("//"):
            raise CertificateError(f"not a slash-form DN: {value!r}")
        return text
    entries = [entry for rdn in _parse_rfc2253(value) for entry in rdn]
    # RFC 2253 lists the most significant RDN last; OpenSSL's RFC 2253 output reverses the flat
    # list of entries, so reverse flat too (this also restores the order inside a multi-valued RDN)
    entries.reverse()
    return "".join(f"{'+' if multi else '/'}{name}={escape_slash_value(v)}" for multi, name, v in entries)


def _parse_rfc2253(text: str) -> list[list[tuple[bool, str, str]]]:
    """RDNs of an RFC 2253 string, each a list of (continues the previous RDN, name, value).

    In the reversed list that :func:`dn_from_header` builds, the ``+`` goes between entries of the
    same RDN, so the flag marks every entry but the last of its RDN in *string* order.
    """
    rdns: list[list[tuple[bool, str, str]]] = []
    current: list[tuple[bool, str, str]] = []
    pos = 0
    length = len(text)
    while True:
        eq = text.find("=", pos)
        if eq < 0:
            raise CertificateError(f"no '=' in DN component at offset {pos}")
        name = _attribute_name(text[pos:eq].strip())
        value, pos = _parse_value(text, eq + 1)
        while pos < length and text[pos] == " ":
            pos += 1
        if pos >= length:
            current.append((False, name, value))
            rdns.append(current)
            return rdns
        separator = text[pos]
        pos += 1
        if separator == "+":
            current.append((True, name, value))
        elif separator in ",;":
            current.append((False, name, value))
            rdns.append(current)
            current = []
        else:
            raise CertificateError(f"unexpected {separator!r} in DN at offset {pos - 1}")
        if pos >= length:
            raise CertificateError("DN ends with a separator")


def _attribute_name(name: str) -> str:
    if not _ATTRIBUTE_TYPE.fullmatch(name):
        raise CertificateError(f"bad attribute type {name!r} in DN")
    if name[:4].lower() == "oid.":
        name = name[4:]
    if name[0].isdigit():
        return short_attribute_name(name)
    return _HEADER_NAMES.get(name.lower(), name)


def _parse_value(text: str, pos: int) -> tuple[str, int]:
    """One attribute value starting at ``pos``; returns (value, offset of the separator or the end)."""
    length = len(text)
    while pos < length and text[pos] == " ":
        pos += 1
    if pos < length and text[pos] == "#":
        end = pos + 1
        while end < length and text[end] not in ",+;":
            end += 1
        return _ber_value(text[pos + 1 : end].strip()), end
    out = bytearray()
    keep = 0  # length of ``out`` up to the last character that is not an unescaped trailing space
    quoted = pos < length and text[pos] == '"'
    if quoted:
        pos += 1
    while pos < length:
        char = text[pos]
        if char == "\\":
            if pos + 1 >= length:
                raise CertificateError("DN ends with a lone backslash")
            pair = text[pos + 1 : pos + 3]
            if len(pair) == 2 and all(c in "0123456789abcdefABCDEF" for c in pair):
                out.append(int(pair, 16))
                pos += 3
            else:
                out += text[pos + 1].encode("utf-8", "surrogatepass")
                pos += 2
            keep = len(out)
            continue
        if quoted and char == '"':
            pos += 1
            break
        if not quoted and char in ",+;":
            break
        out += char.encode("utf-8", "surrogatepass")
        if char != " " or quoted:
            keep = len(out)
        pos += 1
    else:
        if quoted:
            raise CertificateError("unterminated quoted value in DN")
    try:
        return bytes(out[:keep]).decode("utf-8"), pos
    except UnicodeDecodeError as exc:
        raise CertificateError("DN value is not UTF-8") from exc


def _ber_value(hex_text: str) -> str:
    """A ``#<hex>`` value: the DER of a string type (OpenSSL writes unknown attributes this way)."""
    try:
        der = bytes.fromhex(hex_text)
    except ValueError as exc:
        raise CertificateError("bad #hex value in DN") from exc
    elements = _der_elements(der)
    # UTF8String, PrintableString, T61String, IA5String, UniversalString-less BMPString
    if len(elements) != 1 or elements[0][0] not in (0x0C, 0x13, 0x14, 0x16, 0x1E):
        raise CertificateError("#hex value in DN is not a single string")
    tag, element = elements[0]
    content = _der_content(element)
    encoding = {0x0C: "utf-8", 0x1E: "utf-16-be"}.get(tag, "latin-1")
    try:
        return content.decode(encoding)
    except UnicodeDecodeError as exc:
        raise CertificateError("undecodable #hex value in DN") from exc
