"""The exception tree of geofed.

Every error geofed raises on purpose derives from :class:`GeofedError`::

    GeofedError
    ├── ConfigError              invalid configuration; names the key
    ├── EndpointError            a storage endpoint failed; carries the endpoint name
    │   ├── EndpointUnavailable  timeout, refused connection, 5xx: the answer is unknown
    │   ├── PathNotFound         the endpoint says the path does not exist there
    │   └── EndpointRefused      the endpoint answered with a definite refusal (4xx other than 404)
    └── HTTPError                carries the HTTP status it is rendered with
        ├── BadRequest (400), Forbidden (403), NotFound (404), MethodNotAllowed (405),
        ├── Conflict (409), PayloadTooLarge (413), UnsupportedMediaType (415)
        └── ServiceUnavailable (503, with Retry-After), BadGateway (502)

Endpoint modules translate their library's errors into ``EndpointError`` at their boundary, so the
federation logic never sees an aiohttp or OS error. HTTP errors are rendered in one place
(``frontend.errors``), with the detail defaulting to the status phrase.
"""

from __future__ import annotations

from http import HTTPStatus


class GeofedError(Exception):
    """Base of every error geofed raises on purpose."""


class ConfigError(GeofedError):
    """The configuration is invalid; the message names the key and what is wrong with it."""


class EndpointError(GeofedError):
    """A storage endpoint could not do what was asked."""

    def __init__(self, endpoint: str, message: str) -> None:
        super().__init__(f"{endpoint}: {message}")
        self.endpoint = endpoint
        self.reason = message


class EndpointUnavailable(EndpointError):
    """The endpoint did not answer in time or answered with a server error: the answer is unknown."""


class PathNotFound(EndpointError):
    """The endpoint answered definitely that the path does not exist (or is not a collection)."""


class EndpointRefused(EndpointError):
    """The endpoint gave a definite refusal (permission, conflict, method not allowed)."""

    def __init__(self, endpoint: str, message: str, status: int) -> None:
        super().__init__(endpoint, message)
        self.status = status


class HTTPError(GeofedError):
    """An error with the HTTP status it is answered with; ``detail`` defaults to the status phrase."""

    status: int = 500

    def __init__(self, detail: str | None = None, *, headers: dict[str, str] | None = None) -> None:
        self.detail = detail or HTTPStatus(self.status).phrase
        self.headers = headers or {}
        super().__init__(self.detail)


class BadRequest(HTTPError):
    status = 400


class Unauthorized(HTTPError):
    """No credential was offered (or a bearer token was refused) where one is needed."""

    status = 401

    def __init__(self, detail: str | None = None, *, challenge: str = 'Bearer realm="geofed"') -> None:
        super().__init__(detail, headers={"WWW-Authenticate": challenge})


class Forbidden(HTTPError):
    status = 403


class NotFound(HTTPError):
    status = 404


class MethodNotAllowed(HTTPError):
    status = 405


class Conflict(HTTPError):
    status = 409


class PreconditionFailed(HTTPError):
    status = 412


class PayloadTooLarge(HTTPError):
    status = 413


class UnsupportedMediaType(HTTPError):
    status = 415


class ExpectationFailed(HTTPError):
    status = 417


class RangeNotSatisfiable(HTTPError):
    status = 416


class BadGateway(HTTPError):
    status = 502


class ServiceUnavailable(HTTPError):
    """The answer is unknown right now (endpoints timed out or are down); clients should retry."""

    status = 503

    def __init__(self, detail: str | None = None, *, retry_after: int = 5) -> None:
        super().__init__(detail, headers={"Retry-After": str(retry_after)})


class InsufficientStorage(HTTPError):
    status = 507
