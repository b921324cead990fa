"""The access gate every federated operation passes: identify the client, then ask the policy.

Deny by default. The answer to a refusal is 401 when the client offered no credential (it may retry
with one) and 403 otherwise; the message names the identity and the privilege, never a credential.
The check runs before anything is looked up, so a refused client learns nothing about whether a path
exists.
"""

from __future__ import annotations

from aiohttp import web

from geofed.auth.authenticate import Authenticator
from geofed.auth.identity import Identity, Privilege
from geofed.auth.policy import STAT_PRIVILEGES, Policy
from geofed.config import Settings
from geofed.errors import Forbidden, HTTPError, Unauthorized

__all__ = ["STAT_PRIVILEGES", "AccessGate", "refusal"]
_VERBS = {
    Privilege.READ: "read",
    Privilege.LIST: "list",
    Privilege.WRITE: "write",
    Privilege.MODIFY: "overwrite",
    Privilege.DELETE: "delete",
    Privilege.COPY: "copy",
}


class AccessGate:
    def __init__(self, settings: Settings) -> None:
        self.authenticator = Authenticator(settings)
        self.policy = Policy.from_settings(settings.auth)
        self._authorize = self.policy.authorize
        self._may_traverse = self.policy.may_traverse
        self.visible = self.policy.visible

    async def close(self) -> None:
        await self.authenticator.close()

    def known(self, request: web.Request) -> Identity | None:
        return self.authenticator.known(request)

    async def identify(self, request: web.Request) -> Identity:
        return await self.authenticator.identify(request)

    def allows(self, identity: Identity, privilege: Privilege, path: str) -> bool:
        return self._authorize(identity, privilege, path)

    def require(self, identity: Identity, privilege: Privilege, path: str) -> None:
        if not self._authorize(identity, privilege, path):
            raise refusal(identity, _VERBS[privilege], path)

    def may_list(self, identity: Identity, path: str) -> bool:
        """Listing a collection: the list privilege, or privileges somewhere below it (the listing
        then shows only the way there, see :meth:`Policy.may_traverse`)."""
        return self._authorize(identity, Privilege.LIST, path) or self._may_traverse(identity, path)

    def require_list(self, identity: Identity, path: str) -> None:
        if not self.may_list(identity, path):
            raise refusal(identity, "list", path)

    def require_stat(self, identity: Identity, path: str) -> None:
        """HEAD and PROPFIND: any privilege on the path, or below it (a collection on the way)."""
        if not self.visible(identity, path):
            raise refusal(identity, "stat", path)

    def require_read_or_list(self, identity: Identity, path: str) -> None:
        """GET before the path is known to be a file or a collection."""
        if not (self._authorize(identity, Privilege.READ, path) or self.may_list(identity, path)):
            raise refusal(identity, "read", path)

    def require_any(
        self, identity: Identity, privileges: tuple[Privilege, ...], path: str, verb: str
    ) -> None:
        authorize = self._authorize
        if not any(authorize(identity, p, path) for p in privileges):
            raise refusal(identity, verb, path)


def refusal(identity: Identity, verb: str, path: str) -> HTTPError:
    """401 for a client without credentials, else 403 naming who was refused what."""
    if not identity.authenticated:
        return Unauthorized(f"authentication required to {verb} {path}")
    who = identity.label()
    if identity.vos:
        who += f" (VO {', '.join(sorted(identity.vos))})"
    why = f"; {'; '.join(identity.notes)}" if identity.notes else ""
    return Forbidden(f"{who} may not {verb} {path}{why}")
