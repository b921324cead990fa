"""The HTTP-TPC response body: the exact marker format, read back as davix reads it.

:class:`~tests.infra.tpc.DavixMarkerReader` follows davix's ``monitorPerformanceMarkers``
(``src/modules/copy/copy.cpp``): lines are read into a 1024-byte buffer, leading white space is
skipped, each line is recognised by a case-insensitive prefix (``Perf Marker`` opens a block,
``End`` closes it, ``success``/``failure``/``failed``/``aborted`` end the copy), and a stream that
ends without a final line is "Connection terminated abruptly".
"""

from __future__ import annotations

import pytest

from geofed.transfer.markers import MAX_LINE, failure_line, perf_marker, success_line
from tests.infra.tpc import DAVIX_LINE_BUFFER, DavixMarkerReader


def test_marker_is_the_xrootd_block_with_crlf() -> None:
    text = perf_marker(4194304, timestamp=1700000000.9)
    assert text == (
        "Perf Marker\r\n"
        "Timestamp: 1700000000\r\n"
        "Stripe Index: 0\r\n"
        "Stripe Bytes Transferred: 4194304\r\n"
        "Total Stripe Count: 1\r\n"
        "End\r\n"
    )


def test_marker_with_remote_connections() -> None:
    text = perf_marker(7, timestamp=1, remote_connections=["tcp:127.0.0.1:443", "tcp:[::1]:8443"])
    lines = text.split("\r\n")
    assert lines[5] == "RemoteConnections: tcp:127.0.0.1:443,tcp:[::1]:8443"
    assert lines[6] == "End" and lines[7] == ""


def test_marker_timestamp_defaults_to_now() -> None:
    import time

    before = int(time.time())
    stamp = int(perf_marker(0).split("\r\n")[1].removeprefix("Timestamp: "))
    assert before <= stamp <= int(time.time())


def test_negative_bytes_are_refused() -> None:
    with pytest.raises(ValueError):
        perf_marker(-1)


def test_final_lines() -> None:
    assert success_line() == "success: Created\r\n"
    message = "source GET http://x/y: 404 Not Found"
    assert failure_line(message) == f"failure: {message}\r\n"


def test_failure_message_stays_on_one_line() -> None:
    line = failure_line("first\r\nsecond\tthird\x00")
    assert line == "failure: first second third\r\n"
    assert line.count("\n") == 1


def test_failure_without_a_message() -> None:
    assert failure_line("  \n ") == "failure: the transfer failed\r\n"


def test_long_failure_fits_davix_buffer_even_with_multibyte_text() -> None:
    line = failure_line("é" * 5000)
    raw = line.encode()
    assert len(raw) <= MAX_LINE + 2 < DAVIX_LINE_BUFFER
    assert raw.endswith(b"...\r\n")
    raw.decode()  # cut on a character boundary


def test_davix_reads_markers_then_success() -> None:
    body = (perf_marker(0, timestamp=10) + perf_marker(1000, timestamp=15) + success_line()).encode()
    reader = DavixMarkerReader().feed(body)
    assert reader.outcome == "success"
    assert [(m.latest, m.index, m.transferred, m.count) for m in reader.markers] == [
        (10, 0, 0, 1),
        (15, 0, 1000, 1),
    ]
    assert reader.unknown == []


def test_davix_reads_a_failure() -> None:
    body = (perf_marker(5, timestamp=1) + failure_line("destination PUT http://h/p: 403 Forbidden")).encode()
    reader = DavixMarkerReader().feed(body)
    assert reader.outcome == "failure"
    assert reader.message == "Transfer failed: failure: destination PUT http://h/p: 403 Forbidden"
    assert reader.markers[0].transferred == 5


def test_a_body_without_a_final_line_is_unknown() -> None:
    reader = DavixMarkerReader().feed(perf_marker(5, timestamp=1).encode())
    assert reader.outcome is None
    assert "terminated abruptly" in reader.message


def test_nothing_after_the_final_line_is_read() -> None:
    reader = DavixMarkerReader().feed((success_line() + failure_line("late")).encode())
    assert reader.outcome == "success"
