"""The body of an HTTP-TPC response: performance markers, then one final line.

The format is the one XRootD's ``XrdHttpTpc`` writes and davix (so gfal2 and FTS) parses, line by
line, case-insensitively by prefix::

    Perf Marker
    Timestamp: 1700000000
    Stripe Index: 0
    Stripe Bytes Transferred: 4194304
    Total Stripe Count: 1
    End

repeated while the copy runs, then ``success: Created`` or ``failure: <message>``. Lines end with
CRLF. davix reads lines into a 1024-byte buffer, so a failure message is kept to one short line.
"""

from __future__ import annotations

import re
import time
from collections.abc import Sequence

EOL = "\r\n"
SUCCESS = "success: Created"
MAX_LINE = 1000
"""The longest final line written (davix's line buffer is 1024 bytes)."""
_CONTROL = re.compile(r"[\x00-\x1f\x7f]+")


def perf_marker(
    transferred: int,
    timestamp: float | None = None,
    *,
    stripe_index: int = 0,
    stripe_count: int = 1,
    remote_connections: Sequence[str] = (),
) -> str:
    """One marker block: ``transferred`` bytes so far at ``timestamp`` (now by default).
    ``remote_connections`` are ``tcp:<ip>:<port>`` strings (the optional ``RemoteConnections``)."""
    if transferred < 0:
        raise ValueError("transferred bytes cannot be negative")
    stamp = int(time.time() if timestamp is None else timestamp)
    lines = [
        "Perf Marker",
        f"Timestamp: {stamp}",
        f"Stripe Index: {stripe_index}",
        f"Stripe Bytes Transferred: {transferred}",
        f"Total Stripe Count: {stripe_count}",
    ]
    if remote_connections:
        lines.append(f"RemoteConnections: {','.join(remote_connections)}")
    lines.append("End")
    return EOL.join(lines) + EOL


def success_line() -> str:
    return SUCCESS + EOL


def failure_line(message: str) -> str:
    """``failure: <message>`` on one line: control characters (a CR or LF would end the line early
    and leave the rest unparsed) become spaces, and the line is cut to :data:`MAX_LINE`."""
    text = _CONTROL.sub(" ", message).strip() or "the transfer failed"
    line = f"failure: {text}"
    if len(line.encode()) > MAX_LINE:
        line = line.encode()[: MAX_LINE - 3].decode(errors="ignore") + "..."
    return line + EOL
