"""Start real servers on 127.0.0.1 for tests: Apache mod_dav_fs, nginx + dav-ext, a delay proxy.

Why real servers: geofed federates WebDAV endpoints it does not control, and their differences
matter (Apache answers 409 to a PUT below a missing collection and sends ``getetag``; nginx creates
parents and sends no ETag). A mock would only repeat our own assumptions.

Ground rules (see docs reference ``test-infrastructure.md`` sections 2, 5 and 7):

* every server runs in the foreground as our direct child, bound to 127.0.0.1 on a free port, and
  is stopped by its PID -- never by name, so a system apache2/nginx on the machine is untouched;
* readiness is a bounded TCP poll (every 50 ms, at most 10 s); a failure raises with the server's
  logs in the message, because "did not start" without the log is undebuggable in CI;
* a missing Debian package raises :class:`RuntimeError` naming the package (tests never skip
  silently: ``scripts/install-test-deps.sh`` installs everything).

When running as root, Apache and nginx drop their workers to ``www-data``, so the served folder and
the lock/temp folders are chowned to ``www-data`` and every ancestor of the served folder must be
traversable by it (pytest's own ``tmp_path`` is mode 0700 and is therefore *not* suitable).
"""

from __future__ import annotations

import contextlib
import grp
import os
import pwd
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

LOOPBACK = "127.0.0.1"
READY_TIMEOUT_S = 10.0
READY_POLL_S = 0.05
STOP_TIMEOUT_S = 5.0
# How often to retry with a new port when the one from free_port() was taken in the meantime.
START_ATTEMPTS = 3
WORKER_USER = "www-data"

APACHE_MODULES = Path("/usr/lib/apache2/modules")
NGINX_DAV_EXT_MODULE = Path("/usr/lib/nginx/modules/ngx_http_dav_ext_module.so")
DELAY_PROXY_SCRIPT = Path(__file__).with_name("delayproxy.py")

_LOG_TAIL_CHARS = 4000


def free_port() -> int:
    """Return a TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, read, close).

    There is an unavoidable race until the server binds it; the start functions retry with a new
    port when the server reports "Address already in use".
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


@dataclass
class RunningServer:
    """A server process we started, with its address; ``stop()`` ends exactly that process."""

    name: str
    url: str
    port: int
    pid: int
    process: subprocess.Popen[bytes]
    root: Path | None = None
    """Folder the server serves (WebDAV servers only)."""
    log_paths: tuple[Path, ...] = ()
    """Log files worth reading when a test against this server fails."""
    _owned_files: list[IO[bytes]] = field(default_factory=list, repr=False)
    _captured_output: str = field(default="", repr=False)

    def stop(self) -> None:
        """SIGTERM our process by PID, wait up to 5 s, then SIGKILL it.

        Each server is started in its own session, so its process group contains only the
        processes it forked (Apache workers, nginx workers). After a SIGKILL of the parent those
        workers would be orphaned holding the port, so the fallback kills that group too -- still
        only processes we started.
        """
        try:
            if self.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.pid, signal.SIGTERM)
                try:
                    self.process.wait(timeout=STOP_TIMEOUT_S)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(self.pid, signal.SIGKILL)
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(self.pid, signal.SIGKILL)
                    self.process.wait(timeout=STOP_TIMEOUT_S)
        finally:
            # Keep the process output readable after stop(): the proxy's output file is a
            # self-deleting temporary file, and failures are usually reported after teardown.
            self._captured_output = _format_logs((), self._owned_files)
            for handle in self._owned_files:
                handle.close()
            self._owned_files.clear()

    def logs(self) -> str:
        """The tails of this server's logs and output, for assertion messages (also after stop)."""
        if self._owned_files:
            return _format_logs(self.log_paths, self._owned_files)
        return "\n".join(part for part in (_format_logs(self.log_paths), self._captured_output) if part)


class _PortInUseError(RuntimeError):
    """The server could not bind the port free_port() handed out (lost the race)."""


def _tail(text: str) -> str:
    return text if len(text) <= _LOG_TAIL_CHARS else "...\n" + text[-_LOG_TAIL_CHARS:]


def _format_logs(paths: Sequence[Path], handles: Sequence[IO[bytes]] = ()) -> str:
    parts: list[str] = []
    for path in paths:
        try:
            content = path.read_text(errors="replace")
        except FileNotFoundError:
            content = "<not created>"
        except OSError as exc:
            content = f"<unreadable: {exc}>"
        parts.append(f"--- {path} ---\n{_tail(content) or '<empty>'}")
    for handle in handles:
        handle.flush()
        handle.seek(0)
        content = handle.read().decode(errors="replace")
        parts.append(f"--- {getattr(handle, 'name', 'output')} ---\n{_tail(content) or '<empty>'}")
    return "\n".join(parts)


def _require_executable(name: str, package: str) -> str:
    """Find an executable (also in /usr/sbin, often missing from a non-root PATH) or explain."""
    found = shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if found is None:
        raise RuntimeError(
            f"{name} is not installed: install the Debian package {package!r} "
            "(run scripts/install-test-deps.sh as root)"
        )
    return found


def _require_file(path: Path, package: str) -> None:
    if not path.exists():
        raise RuntimeError(
            f"{path} is missing: install the Debian package {package!r} "
            "(run scripts/install-test-deps.sh as root)"
        )


def _running_as_root() -> bool:
    return os.geteuid() == 0


def _worker_ids() -> tuple[int, int]:
    try:
        user = pwd.getpwnam(WORKER_USER)
    except KeyError:
        raise RuntimeError(
            f"user {WORKER_USER!r} does not exist (it comes with Debian's base-passwd)"
        ) from None
    return user.pw_uid, user.pw_gid


def _chown_tree(top: Path, uid: int, gid: int) -> None:
    """``chown -R uid:gid top`` without following symlinks."""
    os.chown(top, uid, gid, follow_symlinks=False)
    for dirpath, dirnames, filenames in os.walk(top):
        for name in (*dirnames, *filenames):
            os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)


def _check_traversable(path: Path, uid: int, gid: int) -> None:
    """Fail early if the worker user cannot reach ``path``.

    Otherwise the server starts fine and every request fails with 403/500, far from the cause.
    """
    groups = {gid, *(g.gr_gid for g in grp.getgrall() if WORKER_USER in g.gr_mem)}
    for candidate in (path, *path.parents):
        st = candidate.stat()
        if st.st_uid == uid:
            allowed = bool(st.st_mode & stat.S_IXUSR)
        elif st.st_gid in groups:
            allowed = bool(st.st_mode & stat.S_IXGRP)
        else:
            allowed = bool(st.st_mode & stat.S_IXOTH)
        if not allowed:
            raise RuntimeError(
                f"{WORKER_USER} cannot traverse {candidate} (mode {stat.filemode(st.st_mode)}), so the "
                f"server cannot use {path}; use a folder outside pytest's 0700 tmp dirs, "
                "e.g. tempfile.mkdtemp() chmod 0755"
            )


def _prepare_worker_dirs(root: Path, private_dirs: Sequence[Path]) -> bool:
    """Create the served and private folders; when root, hand them to www-data.

    Returns whether the server should switch its workers to www-data (only possible as root).
    """
    root.mkdir(parents=True, exist_ok=True)
    for directory in private_dirs:
        directory.mkdir(parents=True, exist_ok=True)
    if not _running_as_root():
        return False
    uid, gid = _worker_ids()
    for directory in (root, *private_dirs):
        _chown_tree(directory, uid, gid)
        _check_traversable(directory, uid, gid)
    return True


def _port_accepts(port: int) -> bool:
    try:
        with socket.create_connection((LOOPBACK, port), timeout=0.5):
            return True
    except OSError:
        return False


def _listener_is_ours(pid: int, port: int) -> bool:
    """Whether the socket listening on 127.0.0.1:``port`` is an open file of process ``pid``.

    A successful connect alone could reach a stranger that grabbed the port between free_port()
    and our server's bind; Linux's /proc tells whose socket it is. Without /proc (other OSes)
    this check is skipped and the connect has to do.
    """
    proc_tcp = Path("/proc/net/tcp")
    fd_dir = Path(f"/proc/{pid}/fd")
    if not proc_tcp.exists():
        return True
    wanted_address = f"0100007F:{port:04X}"  # 127.0.0.1 as the kernel prints it
    inodes: set[str] = set()
    for line in proc_tcp.read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1] == wanted_address and fields[3] == "0A":  # 0A = LISTEN
            inodes.add(fields[9])
    if not inodes:
        return False
    try:
        targets = {os.readlink(fd) for fd in fd_dir.iterdir()}
    except OSError:
        return False
    return any(f"socket:[{inode}]" in targets for inode in inodes)


def _wait_ready(
    name: str,
    process: subprocess.Popen[bytes],
    port: int,
    log_paths: Sequence[Path],
    handles: Sequence[IO[bytes]],
) -> None:
    """Poll the TCP port every 50 ms for at most 10 s; raise with the logs on failure.

    The port must answer *and* belong to our still-running process: otherwise someone else owns
    it, our server will fail to bind and exit, and the caller retries on another port.
    """
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        returncode = process.poll()
        if returncode is not None:
            logs = _format_logs(log_paths, handles)
            message = f"{name} exited with status {returncode} before listening on {LOOPBACK}:{port}\n{logs}"
            if "address already in use" in logs.lower():
                raise _PortInUseError(message)
            raise RuntimeError(message)
        if _port_accepts(port) and process.poll() is None and _listener_is_ours(process.pid, port):
            return
        if time.monotonic() >= deadline:
            break
        time.sleep(READY_POLL_S)
    logs = _format_logs(log_paths, handles)
    _kill_unready(process)
    raise RuntimeError(f"{name} did not listen on {LOOPBACK}:{port} within {READY_TIMEOUT_S:.0f} s\n{logs}")


def _kill_unready(process: subprocess.Popen[bytes]) -> None:
    """Stop a process we started that never became ready (by its PID)."""
    if process.poll() is None:
        os.kill(process.pid, signal.SIGTERM)
        try:
            process.wait(timeout=STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.kill(process.pid, signal.SIGKILL)
            process.wait(timeout=STOP_TIMEOUT_S)


def _launch(
    name: str,
    build: Callable[[int], tuple[list[str], tuple[Path, ...]]],
    output: Callable[[], IO[bytes]],
    root: Path | None,
) -> RunningServer:
    """Start ``build(port)``'s command on a free port, retrying if the port was taken meanwhile.

    ``build`` writes any config for that port and returns the argv and the log files to show on
    failure; ``output`` opens the file receiving the process's stdout and stderr.
    """
    last_error: _PortInUseError | None = None
    for _ in range(START_ATTEMPTS):
        port = free_port()
        argv, log_paths = build(port)
        out = output()
        process = subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            _wait_ready(name, process, port, log_paths, [out])
        except _PortInUseError as exc:
            out.close()
            last_error = exc
            continue
        except BaseException:
            _kill_unready(process)
            out.close()
            raise
        return RunningServer(
            name=name,
            url=f"http://{LOOPBACK}:{port}",
            port=port,
            pid=process.pid,
            process=process,
            root=root,
            log_paths=log_paths,
            _owned_files=[out],
        )
    assert last_error is not None
    raise RuntimeError(f"{name}: no free port after {START_ATTEMPTS} attempts") from last_error


def _apache_config(root: Path, workdir: Path, port: int, as_root: bool) -> str:
    run_dir = workdir / "run"
    lock_dir = workdir / "lock"
    user_lines = f"User {WORKER_USER}\nGroup {WORKER_USER}\n" if as_root else ""
    modules = "\n".join(
        f"LoadModule {mod}_module {APACHE_MODULES / f'mod_{mod}.so'}"
        for mod in ("mpm_event", "authz_core", "dav", "dav_fs")
    )
    return f"""# generated by tests/infra/servers.py: mod_dav_fs on loopback, RFC-strict defaults
ServerRoot "{workdir}"
ServerName {LOOPBACK}:{port}
Listen {LOOPBACK}:{port}
PidFile "{run_dir}/httpd.pid"
DefaultRuntimeDir "{run_dir}"
Mutex file:{run_dir} default
ErrorLog "{workdir}/error.log"
LogLevel warn
LogFormat "%h %t \\"%r\\" %>s %b %D" geofed
CustomLog "{workdir}/access.log" geofed
{user_lines}{modules}
StartServers 1
Timeout 30
KeepAlive On
TraceEnable Off
DAVLockDB "{lock_dir}/DAVLock"
DocumentRoot "{root}"
<Directory "{root}">
  Dav On
  Require all granted
</Directory>
"""


def start_apache_dav(root: Path, workdir: Path) -> RunningServer:
    """Run our own Apache (mod_dav_fs) serving ``root`` at ``/`` on 127.0.0.1 and a free port.

    Apache is the RFC-strict endpoint: PUT below a missing collection is 409, PROPFIND without a
    Depth header is 403 (``DavDepthInfinity`` off), PROPFIND returns ``getetag``.
    """
    apache = _require_executable("apache2", "apache2")
    for mod in ("mpm_event", "authz_core", "dav", "dav_fs"):
        _require_file(APACHE_MODULES / f"mod_{mod}.so", "apache2")
    root = root.resolve()
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    as_root = _prepare_worker_dirs(root, [workdir / "run", workdir / "lock"])
    conf = workdir / "httpd.conf"
    error_log = workdir / "error.log"

    def build(port: int) -> tuple[list[str], tuple[Path, ...]]:
        conf.write_text(_apache_config(root, workdir, port, as_root))
        error_log.unlink(missing_ok=True)
        return [apache, "-f", str(conf), "-DFOREGROUND"], (error_log,)

    def output() -> IO[bytes]:
        return (workdir / "apache.out").open("w+b")

    return _launch("apache", build, output, root)


def _nginx_config(root: Path, workdir: Path, port: int, as_root: bool) -> str:
    temp = workdir / "temp"
    user_line = f"user {WORKER_USER} {WORKER_USER};\n" if as_root else ""
    return f"""# generated by tests/infra/servers.py: nginx dav + dav-ext on loopback
load_module {NGINX_DAV_EXT_MODULE};
{user_line}worker_processes 1;
pid {workdir}/nginx.pid;
error_log {workdir}/error.log warn;
events {{ worker_connections 256; }}
http {{
  access_log {workdir}/access.log;
  client_body_temp_path {temp}/body;
  proxy_temp_path {temp}/proxy;
  fastcgi_temp_path {temp}/fastcgi;
  uwsgi_temp_path {temp}/uwsgi;
  scgi_temp_path {temp}/scgi;
  client_max_body_size 0;
  server {{
    listen {LOOPBACK}:{port};
    server_name {LOOPBACK};
    root {root};
    location / {{
      dav_methods PUT DELETE MKCOL COPY MOVE;
      dav_ext_methods PROPFIND OPTIONS;
      dav_access user:rw group:rw all:r;
      create_full_put_path on;
    }}
  }}
}}
"""


def start_nginx_dav(root: Path, workdir: Path) -> RunningServer:
    """Run our own nginx (dav + dav-ext) serving ``root`` at ``/`` on 127.0.0.1 and a free port.

    nginx is the lenient second endpoint: ``create_full_put_path on`` creates missing parents on
    PUT, PROPFIND carries no ``getetag``, collections need a trailing slash for MKCOL/DELETE.
    """
    nginx = _require_executable("nginx", "nginx")
    _require_file(NGINX_DAV_EXT_MODULE, "libnginx-mod-http-dav-ext")
    root = root.resolve()
    workdir = workdir.resolve()
    workdir.mkdir(parents=True, exist_ok=True)
    temp = workdir / "temp"
    as_root = _prepare_worker_dirs(
        root, [temp, *(temp / sub for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"))]
    )
    conf = workdir / "nginx.conf"
    error_log = workdir / "error.log"

    def build(port: int) -> tuple[list[str], tuple[Path, ...]]:
        conf.write_text(_nginx_config(root, workdir, port, as_root))
        error_log.unlink(missing_ok=True)
        argv = [nginx, "-p", str(workdir), "-e", str(error_log), "-c", str(conf), "-g", "daemon off;"]
        return argv, (error_log,)

    def output() -> IO[bytes]:
        return (workdir / "nginx.out").open("w+b")

    return _launch("nginx", build, output, root)


def start_delay_proxy(target_host: str, target_port: int, one_way_ms: float) -> RunningServer:
    """Run ``delayproxy.py`` on 127.0.0.1 and a free port, forwarding to the target with latency.

    Use it to put a "remote site" in front of a local server (netem is not available). The
    proxy's ``accept()`` is immediate -- only the upstream connect is delayed -- so the TCP
    readiness poll does not wait for the delay.
    """
    _require_file(DELAY_PROXY_SCRIPT, "geofed test sources")

    def build(port: int) -> tuple[list[str], tuple[Path, ...]]:
        argv = [
            sys.executable,
            str(DELAY_PROXY_SCRIPT),
            "--listen-port",
            str(port),
            "--target-host",
            target_host,
            "--target-port",
            str(target_port),
            "--one-way-ms",
            str(one_way_ms),
        ]
        return argv, ()

    def output() -> IO[bytes]:
        return tempfile.NamedTemporaryFile(prefix="geofed-delayproxy-", suffix=".out")

    return _launch(f"delayproxy({target_host}:{target_port}+{one_way_ms:g}ms)", build, output, None)
