"""davix command-line tools through geofed against every endpoint kind.

davix follows the 302 of a GET and the 307 of a PUT (sending ``Expect: 100-continue``), and uses
PROPFIND for ``davix-ls``, MKCOL for ``davix-mkdir`` and DELETE for ``davix-rm``, all of which geofed
answers itself. ``davix-ls`` prints names as they appear in the hrefs (percent-encoded), exactly as
it does against Apache or nginx directly.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

DAVIX_TIMEOUT_S = 20
DAVIX_TOOLS = ("davix-get", "davix-put", "davix-ls", "davix-mkdir", "davix-rm")


def davix(tool: str, *args: str) -> subprocess.CompletedProcess[bytes]:
    """Run one davix CLI tool (a missing tool fails the test; it never skips)."""
    path = shutil.which(tool) or shutil.which(tool, path="/usr/bin:/bin")
    if path is None:
        pytest.fail(f"{tool} is not installed (Debian package davix): run scripts/install-test-deps.sh")
    # --timeout bounds each request inside davix; subprocess's timeout bounds the whole run.
    return subprocess.run(
        [path, "--timeout", str(DAVIX_TIMEOUT_S), *args],
        capture_output=True,
        timeout=DAVIX_TIMEOUT_S + 10,
        check=False,
    )


def ok(completed: subprocess.CompletedProcess[bytes]) -> bytes:
    assert completed.returncode == 0, (
        f"{completed.args} exited {completed.returncode}: {completed.stderr.decode(errors='replace')}"
    )
    return completed.stdout


def first_answer_to(trace: str, request_line_start: str) -> str:
    """The first status line davix received after sending the request starting ``request_line_start``."""
    lines = trace.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("> " + request_line_start):
            for later in lines[i + 1 :]:
                if later.startswith("< HTTP/"):
                    return later[2:].strip()
            break
    raise AssertionError(f"no answer to {request_line_start!r} in the trace:\n{trace[-3000:]}")


def test_davix_tools_are_installed() -> None:
    missing = [t for t in DAVIX_TOOLS if shutil.which(t) is None and not Path("/usr/bin", t).exists()]
    assert not missing, f"davix tools missing (Debian package davix): {missing}"


def test_davix_get_to_stdout_and_file(fed, tmp_path: Path) -> None:
    data = os.urandom(1_500_000)
    fed.seed("g/data.bin", data)
    assert ok(davix("davix-get", fed.url_for("g/data.bin"))) == data
    out = tmp_path / "out.bin"
    ok(davix("davix-get", fed.url_for("g/data.bin"), str(out)))
    assert out.read_bytes() == data
    assert " GET /fed/g/data.bin 302 redirect " in fed.access_log()


def test_davix_get_name_with_space(fed, tmp_path: Path) -> None:
    fed.seed("sp ace/f i le.txt", b"spaces\n")
    assert ok(davix("davix-get", fed.url_for("sp ace/f i le.txt"))) == b"spaces\n"


def test_davix_get_missing_fails_with_404(fed) -> None:
    completed = davix("davix-get", fed.url_for("g/absent.bin"))
    assert completed.returncode != 0
    assert b"404" in completed.stderr


def test_davix_put_new_file_in_new_folder(fed, tmp_path: Path) -> None:
    data = os.urandom(2_000_000)
    source = tmp_path / "src.bin"
    source.write_bytes(data)
    completed = davix("davix-put", "--trace", "header", str(source), fed.url_for("p/q/new.bin"))
    ok(completed)
    trace = completed.stderr.decode(errors="replace")
    # davix announced the body with Expect; geofed answered the 307 at once (no "100 Continue"
    # first), so the body went only to the endpoint.
    request = trace[trace.index("> PUT /fed/p/q/new.bin") :].split("\n< ", 1)[0]
    assert "> Expect: 100-continue" in request, request
    assert first_answer_to(trace, "PUT /fed/p/q/new.bin").split()[1] == "307"
    assert fed.stored("p/q/new.bin").read_bytes() == data
    log = fed.access_log()
    assert " PUT /fed/p/q/new.bin 307 redirect " in log
    # and back through geofed with davix
    assert ok(davix("davix-get", fed.url_for("p/q/new.bin"))) == data


def test_davix_put_overwrites(fed, tmp_path: Path) -> None:
    fed.seed("o.txt", b"the old contents\n")
    source = tmp_path / "src.txt"
    source.write_bytes(b"new\n")
    ok(davix("davix-put", str(source), fed.url_for("o.txt")))
    assert fed.stored("o.txt").read_bytes() == b"new\n"
    assert ok(davix("davix-get", fed.url_for("o.txt"))) == b"new\n"


def test_davix_ls(fed) -> None:
    fed.seed("l/a.txt", b"a")
    fed.seed("l/b c.txt", b"bc")
    fed.seed_dir("l/sub")
    names = ok(davix("davix-ls", fed.url_for("l"))).decode().split()
    # davix prints the last href segment undecoded (it does the same against Apache/nginx)
    assert sorted(names) == ["a.txt", "b%20c.txt", "sub"]


def test_davix_ls_long(fed) -> None:
    fed.seed("l/a.txt", b"a")
    fed.seed("l/bigger.bin", b"x" * 12345)
    fed.seed_dir("l/sub")
    lines = ok(davix("davix-ls", "-l", fed.url_for("l"))).decode().splitlines()
    rows = {line.split()[-1]: line.split() for line in lines if line.strip()}
    assert set(rows) == {"a.txt", "bigger.bin", "sub"}
    assert rows["bigger.bin"][2] == "12345"
    assert rows["a.txt"][2] == "1"
    assert rows["sub"][0].startswith("d")
    assert rows["a.txt"][0].startswith("-")
    # a file: davix PROPFINDs it (Depth 0) and prints its own URL
    single = ok(davix("davix-ls", "-l", fed.url_for("l/bigger.bin"))).decode().split()
    assert single[2] == "12345" and single[-1] == fed.url_for("l/bigger.bin")


def test_davix_ls_of_prefix_and_root(fed) -> None:
    fed.seed("top.txt", b"t")
    assert ok(davix("davix-ls", fed.url_for(""))).decode().split() == ["top.txt"]
    assert ok(davix("davix-ls", fed.base + "/")).decode().split() == ["fed"]


def test_davix_ls_missing_fails(fed) -> None:
    completed = davix("davix-ls", fed.url_for("nothing/here"))
    assert completed.returncode != 0
    assert b"404" in completed.stderr


def test_davix_mkdir(fed) -> None:
    ok(davix("davix-mkdir", fed.url_for("made")))
    assert fed.stored("made").is_dir()
    again = davix("davix-mkdir", fed.url_for("made"))
    assert again.returncode != 0 and b"405" in again.stderr
    assert ok(davix("davix-ls", fed.url_for("made"))).strip() == b""


def test_davix_rm_file_and_folder(fed) -> None:
    fed.seed("r/file.txt", b"delete me")
    fed.seed("r/folder/inner.txt", b"and me")
    ok(davix("davix-rm", fed.url_for("r/file.txt")))
    assert not fed.stored("r/file.txt").exists()
    ok(davix("davix-rm", fed.url_for("r/folder")))
    assert not fed.stored("r/folder").exists()
    assert ok(davix("davix-ls", fed.url_for("r"))).strip() == b""
    missing = davix("davix-rm", fed.url_for("r/file.txt"))
    assert missing.returncode != 0 and b"404" in missing.stderr


def test_davix_round_trip(fed, tmp_path: Path) -> None:
    """mkdir, put, ls, get, rm, ls: the whole life of a file, all through geofed."""
    ok(davix("davix-mkdir", fed.url_for("life")))
    source = tmp_path / "f.bin"
    source.write_bytes(b"round trip\n" * 1000)
    ok(davix("davix-put", str(source), fed.url_for("life/f.bin")))
    assert ok(davix("davix-ls", fed.url_for("life"))).decode().split() == ["f.bin"]
    assert ok(davix("davix-get", fed.url_for("life/f.bin"))) == source.read_bytes()
    ok(davix("davix-rm", fed.url_for("life/f.bin")))
    assert ok(davix("davix-ls", fed.url_for("life"))).strip() == b""
