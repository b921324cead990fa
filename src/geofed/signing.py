"""HMAC-signed, expiring URLs for geofed's own data route (local endpoints).

A signature binds the method, the endpoint, the exact path and the expiry time, so a URL signed
for GET cannot be used to PUT, for another file, or after it expired. HEAD is accepted with a GET
signature (it reveals nothing a GET would not). Comparison is constant-time.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import time
from urllib.parse import quote

DATA_ROUTE = "/_geofed/data"


class URLSigner:
    def __init__(self, secret: str) -> None:
        self._key = secret.encode()

    def _signature(self, method: str, endpoint: str, path: str, expires: int) -> str:
        message = f"{method}\n{endpoint}\n{path}\n{expires}".encode()
        digest = hmac.new(self._key, message, hashlib.sha256).digest()
        return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()

    def sign(self, method: str, endpoint: str, path: str, lifetime: float, now: float | None = None) -> str:
        """The path and query of a signed data-route URL (relative to geofed's own base URL)."""
        expires = int((time.time() if now is None else now) + lifetime)
        signature = self._signature(method, endpoint, path, expires)
        return f"{DATA_ROUTE}/{endpoint}{quote(path)}?e={expires}&s={signature}"

    def verify(
        self, method: str, endpoint: str, path: str, expires: str, signature: str, now: float | None = None
    ) -> str | None:
        """None when the URL is valid for ``method`` now; otherwise the reason it is not."""
        if not expires or not signature:
            return "this URL carries no signature: ask the federation for a signed one"
        try:
            expiry = int(expires)
        except ValueError:
            return "malformed expiry in the signed URL"
        if expiry < (time.time() if now is None else now):
            return "the signed URL has expired"
        methods = ("GET", "HEAD") if method == "HEAD" else (method,)
        for signed_method in methods:
            expected = self._signature(signed_method, endpoint, path, expiry)
            if hmac.compare_digest(expected, signature):
                return None
        return "the signature does not match this method and path"
