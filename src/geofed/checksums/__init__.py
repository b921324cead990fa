"""Checksums of federated files: the algorithms, the HTTP header formats, and the service that
answers from caches, from the endpoints, or by reading a replica once.

* :mod:`~geofed.checksums.algorithms` -- adler32, md5, sha256, crc32c: hashing, canonical hex,
  wire forms;
* :mod:`~geofed.checksums.wantdigest` -- ``Want-Digest``/``Want-Repr-Digest`` in, ``Digest``/
  ``Repr-Digest`` out (the echo rule), declared checksums of a PUT;
* :mod:`~geofed.checksums.service` -- :class:`ChecksumService`;
* :mod:`~geofed.checksums.sharedvalue` -- file versions and the ``ck:`` values in the shared L2.
"""

from geofed.checksums.algorithms import (
    ALGORITHMS,
    MultiHasher,
    canonical_hex,
    canonical_name,
    compute,
    from_client,
    wire_value,
)
from geofed.checksums.service import ChecksumService, ChecksumTimeout, FileChanged, compare
from geofed.checksums.sharedvalue import FileVersion
from geofed.checksums.wantdigest import (
    DigestRequest,
    Wanted,
    format_digest,
    format_repr_digest,
    parse_digest_claims,
    parse_want_digest,
    parse_want_repr_digest,
)

__all__ = [
    "ALGORITHMS",
    "ChecksumService",
    "ChecksumTimeout",
    "DigestRequest",
    "FileChanged",
    "FileVersion",
    "MultiHasher",
    "Wanted",
    "canonical_hex",
    "canonical_name",
    "compare",
    "compute",
    "format_digest",
    "format_repr_digest",
    "from_client",
    "parse_digest_claims",
    "parse_want_digest",
    "parse_want_repr_digest",
    "wire_value",
]
