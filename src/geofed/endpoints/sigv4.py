"""A lean AWS Signature Version 4 for S3: presigned URLs for clients, signed headers for geofed.

Why not botocore: a redirect signs one URL per request, and botocore builds a whole ``AWSRequest``,
parses and re-serialises its query string and derives the signing key (four HMACs) every time.
Here the per-bucket parts of the URL are computed once, the signing key once per UTC day, and a
presigned URL costs two SHA-256 passes. The output is byte-identical to botocore's
``generate_presigned_url`` (``tests/unit/test_sigv4.py`` checks that for many keys, methods and
both addressing styles); ``bench/signing.py`` measures the difference.

The encoding rules are S3's, not generic SigV4's:

* the object key is percent-encoded once, keeping the RFC 3986 unreserved characters and ``/``
  (no double encoding, no dot-segment normalisation: ``a//b`` and ``a/./b`` are distinct keys);
* query names and values are percent-encoded keeping only the unreserved characters, and the
  canonical query string sorts the *encoded* pairs;
* the ``host`` that is signed is lowercase and carries the port only when it is not the scheme's
  default, whatever case and port the configured URL spells.

The secret key lives only in :class:`SigV4Signer`, whose repr omits it.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from urllib.parse import quote, urlsplit

ALGORITHM = "AWS4-HMAC-SHA256"
UNSIGNED_PAYLOAD = "UNSIGNED-PAYLOAD"
EMPTY_SHA256 = hashlib.sha256(b"").hexdigest()
#: S3 refuses presigned URLs valid for longer than seven days.
MAX_EXPIRES = 7 * 24 * 3600

_UNRESERVED = "-_.~"
_DEFAULT_PORTS = {"http": 80, "https": 443}

QueryPairs = Sequence[tuple[str, str]]


def encode_key(key: str) -> str:
    """The URI-encoded form of an object key, as S3 signs it: unreserved characters and ``/`` kept."""
    return quote(key, safe="/~")


def encode_query_part(value: str) -> str:
    """A query name or value encoded for SigV4: only the unreserved characters are kept."""
    return quote(value, safe=_UNRESERVED)


def canonical_host(url: str) -> str:
    """The ``host`` header SigV4 signs for ``url``: lowercase, default port dropped, no userinfo."""
    parts = urlsplit(url)
    host = parts.hostname or ""
    if ":" in host:  # an IPv6 literal keeps its brackets
        host = f"[{host}]"
    port = parts.port
    if port is not None and port != _DEFAULT_PORTS.get(parts.scheme):
        host = f"{host}:{port}"
    return host


class BucketAddress:
    """Where the objects of one bucket are, for one addressing style; computed once per endpoint.

    Path style puts the bucket in the path (``http://host:port/bucket/key``), virtual-hosted style
    in the host name (``https://bucket.host/key``). The configured URL's spelling is kept for the
    URL itself (botocore does the same); only the signed ``host`` is normalised.
    """

    __slots__ = ("bucket", "host", "origin", "path_prefix", "style")

    def __init__(self, service_url: str, bucket: str, style: str = "path") -> None:
        if style not in ("path", "virtual"):
            raise ValueError(f"unknown addressing style {style!r}")
        parts = urlsplit(service_url)
        netloc = parts.netloc.rpartition("@")[2]
        base = parts.path.rstrip("/")
        if style == "virtual":
            netloc = f"{bucket}.{netloc}"
            self.path_prefix = base + "/"
        else:
            self.path_prefix = f"{base}/{encode_key(bucket)}/"
        self.bucket = bucket
        self.style = style
        self.origin = f"{parts.scheme}://{netloc}"
        self.host = canonical_host(self.origin)

    def path(self, key: str) -> str:
        """The encoded request path of ``key``; ``""`` is the bucket itself."""
        if not key and self.style == "path":
            return self.path_prefix[:-1]
        return self.path_prefix + encode_key(key)

    def __repr__(self) -> str:
        return f"BucketAddress({self.origin!r}, {self.bucket!r}, style={self.style!r})"


def canonical_query(pairs: Iterable[tuple[str, str]]) -> str:
    """Encode and sort query pairs as SigV4's canonical query string (also a valid query string).

    The sort is on the encoded (name, value) pairs, not on the joined ``name=value`` strings, which
    differ when one name is a prefix of another (``a`` before ``a-b``, but ``a-b=`` before ``a=``).
    """
    encoded = sorted((encode_query_part(k), encode_query_part(v)) for k, v in pairs)
    return "&".join(f"{k}={v}" for k, v in encoded)


class SigV4Signer:
    """Signs requests for one (access key, secret key, region); the derived key is cached per day.

    The signing key depends only on the secret, the date, the region and the service, so it is
    derived once per UTC day instead of once per URL. The time comes from ``clock`` (seconds since
    the epoch) unless a call gives ``now``; both exist for tests and benchmarks.
    """

    __slots__ = ("_access_key", "_cache", "_date", "_secret", "clock", "region", "service")

    def __init__(
        self,
        access_key: str,
        secret_key: str,
        region: str,
        service: str = "s3",
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.clock = clock
        self._access_key = access_key
        self._secret = secret_key
        self.region = region
        self.service = service
        self._cache: tuple[str, bytes, str, str] = ("", b"", "", "")  # see _key_and_scope
        self._date: tuple[int, str] = (-1, "")  # (whole second, X-Amz-Date)

    def __repr__(self) -> str:
        return f"SigV4Signer(access_key={self._access_key!r}, region={self.region!r}, secret_key='***')"

    @property
    def access_key(self) -> str:
        return self._access_key

    # -- shared pieces --------------------------------------------------------------------------

    def _amz_date(self, now: float | None) -> str:
        """``YYYYMMDDTHHMMSSZ`` for ``now``, formatted at most once per second."""
        second = int(self.clock() if now is None else now)
        cached = self._date
        if cached[0] == second:
            return cached[1]
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(second))
        self._date = (second, stamp)
        return stamp

    def _key_and_scope(self, date: str) -> tuple[bytes, str, str]:
        """(signing key, credential scope, encoded X-Amz-Credential) for ``date``, cached for the day."""
        cached = self._cache
        if cached[0] == date:
            return cached[1], cached[2], cached[3]
        key = hmac.digest(b"AWS4" + self._secret.encode(), date.encode(), "sha256")
        for part in (self.region, self.service, "aws4_request"):
            key = hmac.digest(key, part.encode(), "sha256")
        scope = f"{date}/{self.region}/{self.service}/aws4_request"
        credential = encode_query_part(f"{self._access_key}/{scope}")
        self._cache = (date, key, scope, credential)
        return key, scope, credential

    def _signature(self, canonical_request: str, amz_date: str) -> tuple[str, str]:
        """(hex signature, credential scope) of a canonical request made at ``amz_date``."""
        key, scope, _ = self._key_and_scope(amz_date[:8])
        digest = hashlib.sha256(canonical_request.encode()).hexdigest()
        string_to_sign = f"{ALGORITHM}\n{amz_date}\n{scope}\n{digest}"
        return hmac.digest(key, string_to_sign.encode(), "sha256").hex(), scope

    # -- presigned URLs -------------------------------------------------------------------------

    def presign(
        self,
        method: str,
        address: BucketAddress,
        key: str,
        expires: int,
        query: QueryPairs = (),
        *,
        now: float | None = None,
    ) -> str:
        """A URL that lets anyone do ``method`` on ``key`` for ``expires`` seconds (host signed only).

        ``query`` are the operation's own parameters (``uploads``, ``uploadId``, ``partNumber``);
        they come first in the URL, in the order given, as botocore writes them.
        """
        if not 1 <= expires <= MAX_EXPIRES:
            raise ValueError(f"expires must be between 1 and {MAX_EXPIRES} seconds")
        amz_date = self._amz_date(now)
        credential = self._key_and_scope(amz_date[:8])[2]
        auth = (
            f"X-Amz-Algorithm={ALGORITHM}&X-Amz-Credential={credential}"
            f"&X-Amz-Date={amz_date}&X-Amz-Expires={expires}&X-Amz-SignedHeaders=host"
        )
        path = address.path(key)
        if query:
            ops = [(encode_query_part(k), encode_query_part(v)) for k, v in query]
            # Already encoded: only the credential needed it, and it is cached that way.
            ops_and_auth = [
                *ops,
                ("X-Amz-Algorithm", ALGORITHM),
                ("X-Amz-Credential", credential),
                ("X-Amz-Date", amz_date),
                ("X-Amz-Expires", str(expires)),
                ("X-Amz-SignedHeaders", "host"),
            ]
            canonical_qs = "&".join(f"{k}={v}" for k, v in sorted(ops_and_auth))
            url_query = "&".join(f"{k}={v}" for k, v in ops) + "&" + auth
        else:  # the auth parameters alone are already in canonical order
            canonical_qs = url_query = auth
        canonical_request = (
            f"{method}\n{path}\n{canonical_qs}\nhost:{address.host}\n\nhost\n{UNSIGNED_PAYLOAD}"
        )
        signature, _ = self._signature(canonical_request, amz_date)
        return f"{address.origin}{path}?{url_query}&X-Amz-Signature={signature}"

    # -- header-signed requests -----------------------------------------------------------------

    def sign_headers(
        self,
        method: str,
        address: BucketAddress,
        key: str,
        query: QueryPairs = (),
        *,
        payload_sha256: str = EMPTY_SHA256,
        headers: Mapping[str, str] | None = None,
        now: float | None = None,
    ) -> tuple[str, dict[str, str]]:
        """(URL, headers) of a request authenticated by an ``Authorization`` header.

        The URL's query is the canonical query string itself, so what is sent is what was signed.
        ``headers`` (for example ``Content-MD5``) are signed too and returned with ``Host``,
        ``x-amz-date``, ``x-amz-content-sha256`` and ``Authorization``; send exactly these.
        """
        amz_date = self._amz_date(now)
        signed: dict[str, str] = {
            name.lower(): " ".join(value.split()) for name, value in (headers or {}).items()
        }
        signed["host"] = address.host
        signed["x-amz-content-sha256"] = payload_sha256
        signed["x-amz-date"] = amz_date
        names = sorted(signed)
        signed_names = ";".join(names)
        canonical_headers = "".join(f"{name}:{signed[name]}\n" for name in names)
        path = address.path(key)
        canonical_qs = canonical_query(query)
        canonical_request = (
            f"{method}\n{path}\n{canonical_qs}\n{canonical_headers}\n{signed_names}\n{payload_sha256}"
        )
        signature, scope = self._signature(canonical_request, amz_date)
        out = dict(headers or {})
        out["Host"] = address.host
        out["x-amz-content-sha256"] = payload_sha256
        out["x-amz-date"] = amz_date
        out["Authorization"] = (
            f"{ALGORITHM} Credential={self._access_key}/{scope}, "
            f"SignedHeaders={signed_names}, Signature={signature}"
        )
        url = f"{address.origin}{path}?{canonical_qs}" if canonical_qs else f"{address.origin}{path}"
        return url, out
