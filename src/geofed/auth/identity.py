"""Who a request comes from, and what it may do: the vocabulary shared by every auth module.

An :class:`Identity` is built once per TLS connection (certificates) or once per distinct token, and
then only read; the policy decides from it alone. It says nothing about *how* it was verified: the
modules that build one (``x509``, ``voms``, ``tokens``, ``headers``) only build it from credentials
they verified, so holding an Identity means its fields are true.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum


class Privilege(StrEnum):
    """What an operation needs on a path. ``stat`` is granted by any of read, list, write, modify."""

    READ = "read"
    LIST = "list"
    WRITE = "write"  # create new files and collections
    MODIFY = "modify"  # overwrite an existing file
    DELETE = "delete"
    COPY = "copy"  # third-party copy, on top of read (push) or write (pull)


ALL_PRIVILEGES: frozenset[Privilege] = frozenset(Privilege)


class Method(StrEnum):
    """How the client proved who it is."""

    ANONYMOUS = "anonymous"
    X509 = "x509"  # a verified TLS client chain (certificate or RFC 3820 proxy)
    TOKEN = "token"  # a verified WLCG JWT bearer token
    HEADERS = "headers"  # identity headers from a trusted TLS-terminating proxy


@dataclass(frozen=True, slots=True)
class Capability:
    """A token's storage scope: privileges over a federated path and everything below it
    (whole segments: ``/a/b`` covers ``/a/b/c`` but not ``/a/bc``)."""

    privileges: frozenset[Privilege]
    path: str


@dataclass(frozen=True, slots=True)
class Identity:
    """A verified client identity.

    ``dn`` is the end-entity DN in slash form (``/DC=org/DC=test/CN=Test User``), never a proxy's;
    ``vos`` the VOs the client belongs to (from a verified VOMS AC, or a member list); ``fqans`` the
    verified VOMS FQANs (``/atlas/Role=production/Capability=NULL``); for tokens ``issuer``,
    ``subject``, ``groups`` (``wlcg.groups``) and ``capabilities`` (``storage.*`` scopes rebased onto
    the federated namespace).
    """

    method: Method
    dn: str | None = None
    vos: frozenset[str] = frozenset()
    fqans: tuple[str, ...] = ()
    limited_proxy: bool = False
    issuer: str | None = None
    subject: str | None = None
    groups: tuple[str, ...] = ()
    capabilities: tuple[Capability, ...] = ()
    # why a credential gave less than it claimed (an untrusted VOMS AC, say): for the access log
    notes: tuple[str, ...] = field(default=(), compare=False)

    @property
    def authenticated(self) -> bool:
        return self.method is not Method.ANONYMOUS

    def label(self) -> str:
        """A short, credential-free name for the access log."""
        if self.method is Method.TOKEN:
            return f"token:{self.issuer}#{self.subject}"
        if self.dn is not None:
            return self.dn
        return "-"


ANONYMOUS = Identity(Method.ANONYMOUS)
