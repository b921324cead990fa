"""Settings of the third-party-copy engine (the ``transfer:`` section of the configuration)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

from pydantic import Field, field_validator

from geofed.settingtypes import Duration, Frozen

KiB = 1024
MiB = 1024 * KiB
# as geofed.endpoints.base.CHECKSUM_ALGORITHMS (not imported: the settings are loaded before endpoints)
CHECKSUM_ALGORITHMS = ("adler32", "md5", "sha256", "crc32c")


class TransferSettings(Frozen):
    """How geofed runs WLCG HTTP-TPC copies (``COPY`` with ``Source``/``Destination``).

    Every copy streams through geofed in chunks of ``chunk_size`` bytes, with at most a few chunks
    per copy held at once, so memory depends on ``max_concurrent`` and ``chunk_size`` only, never
    on file sizes.
    """

    max_concurrent: int = Field(default=8, ge=1, le=1024)
    """Copies that move bytes at once; further ones wait their turn (their clients keep getting
    performance markers with 0 bytes meanwhile)."""
    bandwidth_limit: int | None = Field(default=None, ge=1024)
    """Bytes per second for all copies of this process together; None: no limit."""
    marker_interval: Duration = Field(default=5.0, gt=0)
    """Seconds between two performance markers in a copy's response."""
    connect_timeout: Duration = Field(default=30.0, gt=0)
    """Connecting to a remote source or destination (TCP and TLS)."""
    idle_timeout: Duration = Field(default=120.0, gt=0)
    """A copy during which no byte moved for this long fails (a stuck source or destination)."""
    max_duration: Duration | None = None
    """A copy still running after this long fails; None: no limit (``idle_timeout`` still holds)."""
    verify_checksums: bool = True
    """Compare the checksum of the bytes copied with the source's and the destination's, when they
    can say; a client turns it off for one copy with ``RequireChecksumVerification: false``."""
    checksums: tuple[str, ...] = CHECKSUM_ALGORITHMS
    """Algorithms computed on the bytes on the way (and stored with a copy made on an endpoint, so
    that its checksum is known without reading it again). ``adler32`` is always one of them: it is
    what HTTP-TPC peers offer in ``Digest``."""
    chunk_size: int = Field(default=4 * MiB, ge=64 * KiB, le=64 * MiB)
    """Bytes per chunk handed to the destination (an Azure block, a piece of an S3 part)."""
    max_redirects: int = Field(default=8, ge=0, le=32)
    """Redirects followed on the remote side (a federation sending geofed to a pre-signed URL)."""
    ca_file: Path | None = None
    ca_dir: Path | None = None
    """CAs trusted for remote HTTPS peers besides the system's; when neither is given, those of
    ``server.tls`` (``ca_file``/``ca_dir``) are used."""

    deny_networks: tuple[str, ...] = ("169.254.0.0/16", "fe80::/10")
    """Networks (CIDR) geofed never connects to for a copy, whatever URL a client gives: by default
    the link-local ranges, where cloud metadata services hand out the machine's credentials. Add
    the site's internal networks (``10.0.0.0/8``, ``127.0.0.0/8`` …) where geofed can reach
    services that clients must not."""

    @field_validator("deny_networks")
    @classmethod
    def _networks(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        out = []
        for item in value:
            try:
                out.append(str(ipaddress.ip_network(item, strict=False)))
            except ValueError as exc:
                raise ValueError(f"not a network in CIDR notation: {item!r}") from exc
        return tuple(out)

    @field_validator("checksums")
    @classmethod
    def _known_algorithms(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        unknown = [a for a in value if a not in CHECKSUM_ALGORITHMS]
        if unknown:
            raise ValueError(
                f"unknown checksum algorithm(s) {', '.join(unknown)}; use {', '.join(CHECKSUM_ALGORITHMS)}"
            )
        wanted = set(value) | {"adler32"}
        return tuple(a for a in CHECKSUM_ALGORITHMS if a in wanted)
