"""gfal2 (Python bindings, http plugin on davix) through geofed against every endpoint kind.

gfal2 stats with PROPFIND Depth 0, lists with Depth 1, reads with HEAD + GET (following the 302),
writes with PROPFIND/HEAD on the destination, then PUT with ``Expect: 100-continue`` (following the
307), and uses MKCOL / DELETE for mkdir / unlink / rmdir -- all of which geofed answers itself.

The macaroon request (``POST`` with ``Content-Type: application/macaroon-request``, clients.md §7.1)
is only sent by gfal2 for https:// and davs:// URLs (``allowsBearerTokenRetrieve`` in
``gfal_http_plugin.cpp``), so over plain http it never reaches geofed even when
``RETRIEVE_BEARER_TOKEN`` is on; a test below checks exactly that, and ``test_clients_curl`` checks
what geofed answers to such a POST.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

try:
    import gfal2
except ImportError as exc:  # pragma: no cover - the environment is broken, not the test
    gfal2 = None
    _IMPORT_ERROR: ImportError | None = exc
else:
    _IMPORT_ERROR = None

pytestmark = pytest.mark.integration

GFAL_TIMEOUT_S = 20


@pytest.fixture
def ctx() -> Iterator[Any]:
    """A fresh gfal2 context with bounded timeouts; a missing gfal2 fails the test, never skips."""
    if gfal2 is None:
        pytest.fail(
            f"cannot import gfal2 ({_IMPORT_ERROR}): install python3-gfal2 and gfal2-plugin-http, "
            "then run `bash scripts/venv.sh test` to link the module into the venv",
            pytrace=False,
        )
    context = gfal2.creat_context()
    context.set_opt_integer("HTTP PLUGIN", "OPERATION_TIMEOUT", GFAL_TIMEOUT_S)
    context.set_opt_integer("CORE", "NAMESPACE_TIMEOUT", GFAL_TIMEOUT_S)
    # No context.free(): a file handle still referenced (e.g. by a failure's traceback) would abort
    # the interpreter when collected after it; the context is freed when garbage-collected.
    yield context


def params(ctx: Any, *, overwrite: bool = True) -> Any:
    p = ctx.transfer_parameters()
    p.overwrite = overwrite
    p.timeout = GFAL_TIMEOUT_S
    return p


def gerror_code(call: Any, *args: Any) -> int:
    """The errno of the GError raised by ``call(*args)`` (fails if nothing is raised)."""
    with pytest.raises(gfal2.GError) as info:
        call(*args)
    return int(info.value.code)


def test_gfal2_has_the_http_plugin(ctx: Any) -> None:
    names = ctx.get_plugin_names()
    assert any("http" in name for name in names), names


def test_stat_file_and_collection(fed, ctx: Any) -> None:
    path = fed.seed("s/file.bin", os.urandom(54321))
    st = ctx.stat(fed.url_for("s/file.bin"))
    assert stat.S_ISREG(st.st_mode)
    assert st.st_size == 54321
    assert abs(st.st_mtime - int(path.stat().st_mtime)) <= 1
    st_dir = ctx.stat(fed.url_for("s"))
    assert stat.S_ISDIR(st_dir.st_mode)
    assert stat.S_ISDIR(ctx.stat(fed.url_for("")).st_mode)  # the federated prefix itself


def test_stat_missing_is_enoent(fed, ctx: Any) -> None:
    assert gerror_code(ctx.stat, fed.url_for("s/none.bin")) == errno.ENOENT


def test_stat_name_with_space(fed, ctx: Any) -> None:
    fed.seed("with space/a b.txt", b"12345")
    st = ctx.stat(fed.url_for("with space/a b.txt"))
    assert st.st_size == 5 and stat.S_ISREG(st.st_mode)


def test_listdir(fed, ctx: Any) -> None:
    fed.seed("l/a.txt", b"a")
    fed.seed("l/b c.txt", b"bc")
    fed.seed_dir("l/sub")
    # gfal2 returns the last href segment undecoded, as it does against Apache/nginx directly
    assert sorted(ctx.listdir(fed.url_for("l"))) == ["a.txt", "b%20c.txt", "sub"]
    assert ctx.listdir(fed.url_for("")) == ["l"]
    assert gerror_code(ctx.listdir, fed.url_for("nothere")) == errno.ENOENT


def test_listdir_same_as_the_endpoint_directly(fed, ctx: Any) -> None:
    fed.seed("same/one.txt", b"1")
    fed.seed("same/t w o.txt", b"22")
    fed.seed_dir("same/dir")
    expected = ["dir", "one.txt", "t%20w%20o.txt"]
    assert sorted(ctx.listdir(fed.url_for("same"))) == expected
    if fed.backend != "local":  # a WebDAV endpoint: gfal2 must see the same names there directly
        endpoint_url = fed.server.settings.endpoints[0].url.rstrip("/")
        assert sorted(ctx.listdir(f"{endpoint_url}/{fed.storage.name}/same")) == expected


def test_read_with_open(fed, ctx: Any) -> None:
    data = os.urandom(300_000)
    fed.seed("r/data.bin", data)
    handle = ctx.open(fed.url_for("r/data.bin"), "r")
    got = b""
    while chunk := handle.read_bytes(65536):
        got += chunk
    assert got == data
    assert handle.pread_bytes(1000, 100) == data[1000:1100]
    handle.lseek(250_000, os.SEEK_SET)
    assert handle.read_bytes(10) == data[250_000:250_010]


def test_read_with_filecopy_to_file(fed, ctx: Any, tmp_path: Path) -> None:
    data = os.urandom(2_000_000)
    fed.seed("r/copy.bin", data)
    target = tmp_path / "down.bin"
    ctx.filecopy(params(ctx), fed.url_for("r/copy.bin"), target.as_uri())
    assert target.read_bytes() == data
    assert " GET /fed/r/copy.bin 302 redirect " in fed.access_log()


def test_write_with_filecopy_from_file(fed, ctx: Any, tmp_path: Path) -> None:
    data = os.urandom(3_000_000)
    source = tmp_path / "up.bin"
    source.write_bytes(data)
    ctx.filecopy(params(ctx), source.as_uri(), fed.url_for("w/deeper/up.bin"))
    assert fed.stored("w/deeper/up.bin").read_bytes() == data
    assert ctx.stat(fed.url_for("w/deeper/up.bin")).st_size == len(data)
    assert " PUT /fed/w/deeper/up.bin 307 redirect " in fed.access_log()


def test_write_overwrite_and_refuse_without_it(fed, ctx: Any, tmp_path: Path) -> None:
    fed.seed("w/exists.txt", b"old contents that are longer\n")
    source = tmp_path / "new.txt"
    source.write_bytes(b"new\n")
    code = gerror_code(
        ctx.filecopy, params(ctx, overwrite=False), source.as_uri(), fed.url_for("w/exists.txt")
    )
    assert code == errno.EEXIST
    assert fed.stored("w/exists.txt").read_bytes() == b"old contents that are longer\n"
    ctx.filecopy(params(ctx, overwrite=True), source.as_uri(), fed.url_for("w/exists.txt"))
    assert fed.stored("w/exists.txt").read_bytes() == b"new\n"
    assert ctx.stat(fed.url_for("w/exists.txt")).st_size == 4


def test_write_with_open(fed, ctx: Any) -> None:
    handle = ctx.open(fed.url_for("w/opened.txt"), "w")
    assert handle.write(b"written through gfal2 open()\n") == 29
    del handle  # closing the handle finishes the PUT
    assert fed.stored("w/opened.txt").read_bytes() == b"written through gfal2 open()\n"


def test_mkdir(fed, ctx: Any) -> None:
    ctx.mkdir(fed.url_for("made"), 0o755)
    assert fed.stored("made").is_dir()
    assert stat.S_ISDIR(ctx.stat(fed.url_for("made")).st_mode)
    assert gerror_code(ctx.mkdir, fed.url_for("made"), 0o755) == errno.EEXIST


def test_mkdir_rec(fed, ctx: Any) -> None:
    ctx.mkdir_rec(fed.url_for("a/b/c"), 0o755)
    assert fed.stored("a/b/c").is_dir()
    assert ctx.listdir(fed.url_for("a/b")) == ["c"]


def test_unlink(fed, ctx: Any) -> None:
    fed.seed("u/file.txt", b"bye")
    ctx.unlink(fed.url_for("u/file.txt"))
    assert not fed.stored("u/file.txt").exists()
    assert gerror_code(ctx.stat, fed.url_for("u/file.txt")) == errno.ENOENT
    assert gerror_code(ctx.unlink, fed.url_for("u/file.txt")) == errno.ENOENT


def test_rmdir(fed, ctx: Any) -> None:
    fed.seed_dir("empty")
    ctx.rmdir(fed.url_for("empty"))
    assert not fed.stored("empty").exists()
    assert gerror_code(ctx.stat, fed.url_for("empty")) == errno.ENOENT


def test_round_trip(fed, ctx: Any, tmp_path: Path) -> None:
    """mkdir, write, stat, list, read, unlink, rmdir: a file's whole life through geofed."""
    ctx.mkdir(fed.url_for("life"), 0o755)
    source = tmp_path / "f.bin"
    source.write_bytes(b"round trip\n" * 5000)
    ctx.filecopy(params(ctx), source.as_uri(), fed.url_for("life/f.bin"))
    assert ctx.stat(fed.url_for("life/f.bin")).st_size == 55000
    assert ctx.listdir(fed.url_for("life")) == ["f.bin"]
    back = tmp_path / "back.bin"
    ctx.filecopy(params(ctx), fed.url_for("life/f.bin"), back.as_uri())
    assert back.read_bytes() == source.read_bytes()
    ctx.unlink(fed.url_for("life/f.bin"))
    assert ctx.listdir(fed.url_for("life")) == []
    ctx.rmdir(fed.url_for("life"))
    assert not fed.stored("life").exists()


@pytest.mark.parametrize("retrieve_token", [True, False])
def test_no_macaroon_request_over_http(fed, ctx: Any, tmp_path: Path, retrieve_token: bool) -> None:
    """Over http:// gfal2 never POSTs a macaroon request, whatever RETRIEVE_BEARER_TOKEN says."""
    ctx.set_opt_boolean("HTTP PLUGIN", "RETRIEVE_BEARER_TOKEN", retrieve_token)
    fed.seed("t/file.txt", b"token?")
    ctx.stat(fed.url_for("t/file.txt"))
    ctx.listdir(fed.url_for("t"))
    ctx.filecopy(params(ctx), fed.url_for("t/file.txt"), (tmp_path / "x").as_uri())
    source = tmp_path / "y"
    source.write_bytes(b"y")
    ctx.filecopy(params(ctx), source.as_uri(), fed.url_for("t/y"))
    ctx.mkdir(fed.url_for("t/d"), 0o755)
    ctx.unlink(fed.url_for("t/y"))
    methods = {line.split()[3] for line in fed.access_log().splitlines() if line.strip()}
    assert "POST" not in methods
    assert methods <= {"PROPFIND", "HEAD", "GET", "PUT", "MKCOL", "DELETE", "OPTIONS"}
