"""Reloading the configuration of a running ``geofed serve``: SIGHUP and the admin call.

Each test starts the real command (``.venv/bin/geofed serve --config <yaml> --port <free port>``)
in its own session, with local endpoints in the test's folder, edits the YAML file and asks for a
reload; it then checks, over TCP, what the server does. A bad file must be refused with the old
settings still serving; a load of loopback requests running across several reloads must see no
failure; an upload still streaming when a reload happens must complete, and the replaced
configuration must stay open until it has. Every process is stopped by PID (SIGTERM, then its
session as a last resort), never by name.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import secrets
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import yaml
from click.testing import CliRunner
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from geofed.cli import main
from tests.infra.pki import HOST_DN, Credential, Pki, _crl, _write, issue, make_pki, server_extensions
from tests.infra.policies import OPEN_POLICY
from tests.infra.servers import LOOPBACK, free_port

pytestmark = pytest.mark.integration

READY_TIMEOUT_S = 20.0
RELOAD_TIMEOUT_S = 20.0
STOP_BOUND_S = 20.0
SAMPLE = "/data/sample.txt"
ADMIN = "/_geofed/admin"
_IN_SERVICE = re.compile(r"configuration (\d+) in service in process (\d+)")


def _geofed_argv() -> list[str]:
    script = Path(sys.executable).with_name("geofed")
    if script.exists():
        return [str(script)]
    return [sys.executable, "-c", "from geofed.cli import main; main()"]


# -- the configuration under test -----------------------------------------------------------------


@dataclass
class Config:
    """The YAML file geofed was started with, and the sites it names."""

    path: Path
    base: Path
    secret: str = field(default_factory=lambda: secrets.token_urlsafe(24))
    endpoints: dict[str, dict[str, Any]] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def site(self, name: str, lat: float, lon: float, **options: Any) -> Path:
        root = self.base / "sites" / name
        (root / "data").mkdir(parents=True, exist_ok=True)
        (root / SAMPLE.lstrip("/")).write_text(f"sample at {name}\n")
        self.endpoints[name] = {
            "name": name,
            "kind": "local",
            "url": root.resolve().as_uri(),
            "writable": True,
            "location": {"lat": lat, "lon": lon},
            **options,
        }
        return root

    def mapping(self) -> dict[str, Any]:
        return {
            "server": {"host": LOOPBACK, "port": 0},  # the port comes from --port
            "signing": {"secret": self.secret, "url_lifetime": "10m"},
            "auth": OPEN_POLICY,
            "health": {"interval": "60s", "timeout": "3s"},
            "federation": {"fuzz_km": 0},
            "client_networks": [{"cidr": "127.0.0.0/8", "location": {"lat": 46.2, "lon": 6.1}}],
            "endpoints": list(self.endpoints.values()),
            **self.extra,
        }

    def write(self) -> None:
        text = yaml.safe_dump(self.mapping(), sort_keys=False)
        temporary = self.path.with_suffix(".tmp")
        temporary.write_text(text)
        temporary.replace(self.path)  # as an editor or a configuration manager does: never half a file


def _config(tmp: Path) -> Config:
    config = Config(tmp / "geofed.yaml", tmp)
    config.site("geneva", 46.23, 6.05)
    config.site("vancouver", 49.25, -123.23)
    config.write()
    return config


# -- the server under test ------------------------------------------------------------------------


@dataclass
class Served:
    process: subprocess.Popen[bytes]
    port: int
    output: Path
    config: Config
    scheme: str = "http"

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def url(self) -> str:
        return f"{self.scheme}://{LOOPBACK}:{self.port}"

    def log(self) -> str:
        return self.output.read_text(errors="replace")

    def in_service(self) -> list[tuple[int, int]]:
        """(configuration number, process) of every reload that took effect, in order."""
        return [(int(m.group(1)), int(m.group(2))) for m in _IN_SERVICE.finditer(self.log())]

    def wait_log(self, text: str, count: int = 1, timeout: float = RELOAD_TIMEOUT_S) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log().count(text) >= count:
                return
            assert self.process.poll() is None, f"geofed exited ({self.process.returncode}):\n{self.log()}"
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not logged {count} times within {timeout:.0f} s:\n{self.log()}")

    def sighup(self) -> None:
        os.kill(self.pid, signal.SIGHUP)

    def reload(self, number: int) -> None:
        """SIGHUP, then wait until configuration ``number`` serves."""
        self.sighup()
        self.wait_log(f"configuration {number} in service")

    def stop(self) -> None:
        if self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signal.SIGTERM)
            try:
                self.process.wait(STOP_BOUND_S)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(self.pid, signal.SIGKILL)  # its own session: only what it started
                self.process.wait(5)


@contextlib.contextmanager
def serve(config: Config, *args: str, tls: bool = False) -> Iterator[Served]:
    last = ""
    for _attempt in range(3):
        port = free_port()
        output = config.base / f"geofed-{port}.out"
        with output.open("wb") as out:
            process = subprocess.Popen(
                [*_geofed_argv(), "serve", "--config", str(config.path), "--port", str(port), *args],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        served = Served(process, port, output, config, "https" if tls else "http")
        try:
            _wait_ready(served, workers=int(args[args.index("--workers") + 1]) if "--workers" in args else 1)
        except AssertionError:
            served.stop()
            last = served.log()
            if "address already in use" in last.lower():
                continue
            raise
        try:
            yield served
        finally:
            served.stop()
        return
    raise AssertionError(f"no free port after 3 attempts:\n{last}")


def _answers(served: Served) -> bool:
    """Whether geofed answers HTTP: the port accepts (it is bound first) before the app runs."""
    command = ["curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "2"]
    done = subprocess.run(
        [*command, f"{served.scheme}://{LOOPBACK}:{served.port}/_geofed/status"],
        capture_output=True,
        text=True,
        timeout=10,
        check=False,
    )
    return done.stdout not in ("", "000")


def _wait_ready(served: Served, workers: int) -> None:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while time.monotonic() < deadline:
        assert served.process.poll() is None, f"geofed exited:\n{served.log()}"
        if workers > 1:
            if served.log().count(" serving http") >= workers:
                return
        elif _answers(served):  # an answer: the app has started, its SIGHUP handler is installed
            return
        time.sleep(0.05)
    raise AssertionError(f"geofed did not serve within {READY_TIMEOUT_S:.0f} s:\n{served.log()}")


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def request(
    served: Served,
    method: str,
    path: str,
    body: bytes | None = None,
    *,
    context: ssl.SSLContext | None = None,
    headers: dict[str, str] | None = None,
) -> Answer:
    """One request on a fresh connection, redirects not followed."""
    connection: http.client.HTTPConnection
    if served.scheme == "https":
        connection = http.client.HTTPSConnection("localhost", served.port, timeout=30, context=context)
    else:
        connection = http.client.HTTPConnection(LOOPBACK, served.port, timeout=30)
    try:
        connection.request(method, path, body=body, headers={"Connection": "close", **(headers or {})})
        response = connection.getresponse()
        return Answer(response.status, {k.lower(): v for k, v in response.getheaders()}, response.read())
    finally:
        connection.close()


def redirected_to(answer: Answer) -> str:
    """The endpoint of a data-route redirect (``/_geofed/data/<endpoint>/...``)."""
    assert answer.status in (302, 307), (answer.status, answer.body)
    return urlsplit(answer.headers["location"]).path.split("/")[3]


# -- tests ----------------------------------------------------------------------------------------


def test_sighup_applies_a_changed_prefix_and_a_new_endpoint(tmp_path: Path) -> None:
    config = _config(tmp_path)
    with serve(config) as served:
        assert redirected_to(request(served, "GET", SAMPLE)) == "geneva"
        assert request(served, "GET", "/archive/data/sample.txt").status == 404

        # Geneva's files move under /archive; a new endpoint in Tokyo holds /data/tokyo.txt.
        config.endpoints["geneva"]["prefixes"] = [{"federated": "/archive", "endpoint": "/"}]
        tokyo = config.site("tokyo", 35.7, 139.7)
        (tokyo / "data" / "tokyo.txt").write_text("from tokyo\n")
        config.write()
        served.reload(2)

        assert redirected_to(request(served, "GET", "/archive/data/sample.txt")) == "geneva"
        assert redirected_to(request(served, "GET", SAMPLE)) == "vancouver"  # geneva no longer serves it
        assert redirected_to(request(served, "GET", "/data/tokyo.txt")) == "tokyo"
        listing = request(served, "GET", "/", headers={"Accept": "application/json"}).json()
        assert sorted(e["name"] for e in listing["entries"]) == ["archive", "data"]
        status = request(served, "GET", "/_geofed/status").json()
        assert [e["name"] for e in status["endpoints"]] == ["geneva", "vancouver", "tokyo"]
        # geofed's own pages follow too: the web UI's dashboard and the metrics
        assert b'id="ep-tokyo"' in request(served, "GET", "/_geofed/ui/").body
        assert b'geofed_endpoint_up{endpoint="tokyo"} 1.0' in request(served, "GET", "/_geofed/metrics").body
        log = served.log()
        assert "endpoint added: tokyo" in log and "endpoint changed: geneva" in log
        served.wait_log("configuration 1 closed (replaced by 2)")  # no request was left on it


def test_a_bad_file_is_refused_and_the_running_configuration_stays(tmp_path: Path) -> None:
    config = _config(tmp_path)
    good = config.path.read_text()
    config.extra = {"auth": {**OPEN_POLICY, "policy_file": str(tmp_path / "nowhere.yaml")}}
    config.write()
    missing_policy_file = config.path.read_text()
    config.extra = {}
    config.path.write_text(good)
    with serve(config) as served:
        bad_files = {
            "broken YAML": "endpoints: [\n",
            "an invalid setting": good.replace("writable: true", "writable: maybe", 1),
            "a missing policy file": missing_policy_file,
        }
        for number, (what, text) in enumerate(bad_files.items(), start=1):
            config.path.write_text(text)
            served.sighup()
            served.wait_log("refused, the running configuration stays", count=number)
            assert redirected_to(request(served, "GET", SAMPLE)) == "geneva", what
        log = served.log()
        assert "not valid YAML" in log
        assert "writable" in log
        assert "nowhere.yaml" in log
        assert served.in_service() == []

        # The admin call answers 400 with the reason, and still nothing changes.
        answer = request(served, "POST", f"{ADMIN}/reload")
        assert answer.status == 400, answer.body
        assert answer.json()["reloaded"] is False and "nowhere.yaml" in answer.json()["error"]
        assert answer.json()["generation"] == 1

        # A good file again: taken.
        config.path.write_text(good.replace("url_lifetime: 10m", "url_lifetime: 5m"))
        answer = request(served, "POST", f"{ADMIN}/reload")
        assert answer.status == 200, answer.body
        document = answer.json()
        assert document["reloaded"] is True and document["generation"] == 2
        assert document["changes"] == ["settings changed: signing"]
        assert document["trigger"] == "admin call by anonymous"


def test_the_admin_call_reloads_and_endpoint_marks_survive(tmp_path: Path) -> None:
    config = _config(tmp_path)
    with serve(config) as served:
        runner = CliRunner()
        done = runner.invoke(
            main, ["endpoints", "disable", "geneva", "--config", str(config.path), "--url", served.url]
        )
        assert done.exit_code == 0, done.output
        assert runner.invoke(main, ["endpoints", "drain", "vancouver", "--url", served.url]).exit_code == 0

        config.site("tokyo", 35.7, 139.7)
        config.extra = {"server": {"host": LOOPBACK, "port": 1234}}  # a restart is needed for that
        config.write()
        answer = request(served, "POST", f"{ADMIN}/reload")
        assert answer.status == 200, answer.body
        assert answer.json()["changes"] == ["endpoint added: tokyo", "settings changed: server"]
        assert answer.json()["restart_needed"] == ["server.port (0 -> 1234)"]
        assert "needs a restart to change: server.port (0 -> 1234)" in served.log()

        rows = {r["name"]: r for r in request(served, "GET", f"{ADMIN}/endpoints").json()["endpoints"]}
        assert {n: r["state"] for n, r in rows.items()} == {
            "geneva": "disabled",
            "vancouver": "draining",
            "tokyo": "up",
        }
        assert redirected_to(request(served, "GET", SAMPLE)) == "vancouver"  # geneva still disabled
        assert redirected_to(request(served, "PUT", "/data/new.txt", b"x")) == "tokyo"  # vancouver drains

        # An endpoint a reload removes loses its mark; put back later, it is back to normal.
        del config.endpoints["geneva"]
        config.write()
        served.reload(3)
        config.site("geneva", 46.23, 6.05)
        config.write()
        served.reload(4)
        assert redirected_to(request(served, "GET", SAMPLE)) == "geneva"
        assert "forgetting the marks of endpoints no longer configured: geneva" in served.log()


def test_no_request_fails_across_reloads(tmp_path: Path) -> None:
    """About 2,000+ loopback requests from 8 threads (GET redirected, the data route followed,
    HEAD, PROPFIND) on keep-alive connections while the configuration is reloaded 6 times."""
    config = _config(tmp_path)
    with serve(config) as served:
        stop = threading.Event()
        outcomes: Counter[str] = Counter()
        lock = threading.Lock()

        def client() -> None:
            connection = http.client.HTTPConnection(LOOPBACK, served.port, timeout=30)
            try:
                while not stop.is_set():
                    results = []
                    connection.request("GET", SAMPLE)
                    response = connection.getresponse()
                    response.read()
                    location = response.getheader("Location") or ""
                    results.append(f"GET {response.status}")
                    if response.status == 302:
                        connection.request("GET", location.removeprefix(served.url))
                        data = connection.getresponse()
                        body = data.read()
                        results.append(
                            f"data {data.status}" + ("" if body.startswith(b"sample at") else " bad")
                        )
                    connection.request("HEAD", SAMPLE)
                    head = connection.getresponse()
                    head.read()
                    results.append(f"HEAD {head.status}")
                    connection.request("PROPFIND", "/data/", headers={"Depth": "1"})
                    propfind = connection.getresponse()
                    propfind.read()
                    results.append(f"PROPFIND {propfind.status}")
                    with lock:
                        outcomes.update(results)
            except Exception as exc:  # a dropped connection or a timeout is a failure too
                with lock:
                    outcomes[f"error {type(exc).__name__}: {exc}"] += 1
            finally:
                connection.close()

        with ThreadPoolExecutor(8) as pool:
            clients = [pool.submit(client) for _ in range(8)]
            time.sleep(0.3)
            for number in range(2, 8):
                if number % 2 == 0:  # the file changes every time: an endpoint comes and goes
                    config.site("tokyo", 35.7, 139.7)
                else:
                    config.endpoints.pop("tokyo")
                config.write()
                served.reload(number)
                time.sleep(0.3)
            deadline = time.monotonic() + 30
            while sum(outcomes.values()) < 2000 and time.monotonic() < deadline:
                time.sleep(0.1)
            stop.set()
            for future in clients:
                future.result()
        expected = {"GET 302", "data 200", "HEAD 200", "PROPFIND 207"}
        assert set(outcomes) == expected, outcomes
        assert sum(outcomes.values()) >= 2000, outcomes
        assert [number for number, _pid in served.in_service()] == list(range(2, 8))


def test_a_request_running_at_a_reload_finishes_on_the_old_configuration(tmp_path: Path) -> None:
    """An upload streamed slowly to the data route across a reload completes; the replaced
    configuration is closed only after it has."""
    config = _config(tmp_path)
    size, pieces = 64 * 1024, 16
    with serve(config) as served:
        redirect = request(
            served, "PUT", "/data/slow.bin", headers={"Content-Length": str(size), "Expect": "100-continue"}
        )
        assert redirect.status == 307, redirect.body
        target = redirect.headers["location"].removeprefix(served.url)
        connection = http.client.HTTPConnection(LOOPBACK, served.port, timeout=30)
        try:
            connection.putrequest("PUT", target)
            connection.putheader("Content-Length", str(size))
            connection.endheaders()
            piece = b"u" * (size // pieces)
            for index in range(pieces):
                if index == pieces - 1:
                    time.sleep(0.5)  # the old configuration would be closed by now if nothing held it
                    assert "configuration 1 closed" not in served.log()
                connection.send(piece)
                if index == 2:
                    config.site("tokyo", 35.7, 139.7)
                    config.write()
                    served.reload(2)
                    assert redirected_to(request(served, "GET", SAMPLE)) == "geneva"  # others go on
                time.sleep(0.1)
            response = connection.getresponse()
            assert response.status == 201, response.read()
        finally:
            connection.close()
        assert (config.base / "sites" / "geneva" / "data" / "slow.bin").read_bytes() == b"u" * size
        served.wait_log("configuration 1 closed (replaced by 2)")


def test_with_workers_a_reload_reaches_every_worker(tmp_path: Path) -> None:
    config = _config(tmp_path)
    with serve(config, "--workers", "2") as served:
        workers = sorted(int(pid) for pid in re.findall(r"worker (\d+) serving", served.log()))
        assert len(workers) == 2

        config.site("tokyo", 35.7, 139.7)
        config.write()
        served.sighup()  # to the supervisor, which relays it
        served.wait_log("configuration 2 in service", count=2)
        assert sorted(pid for number, pid in served.in_service() if number == 2) == workers
        assert "SIGHUP: reloading 2 workers" in served.log()

        # The admin call reaches one worker, which has the supervisor relay it to both.
        config.endpoints.pop("tokyo")
        config.write()
        answer = request(served, "POST", f"{ADMIN}/reload")
        assert answer.status == 200, answer.body
        assert answer.json()["trigger"] == "admin call by anonymous, relayed to every worker"
        served.wait_log("configuration 3 in service", count=2)
        assert sorted(pid for number, pid in served.in_service() if number == 3) == workers

        # A mark made through one worker holds in both (each new connection may reach either).
        done = CliRunner().invoke(main, ["endpoints", "disable", "geneva", "--url", served.url])
        assert done.exit_code == 0, done.output
        deadline = time.monotonic() + 5  # the other worker hears of it through the supervisor (SIGUSR1)
        while {redirected_to(request(served, "GET", SAMPLE)) for _ in range(24)} != {"vancouver"}:
            assert time.monotonic() < deadline, served.log()
            time.sleep(0.05)
        # ... and a reload keeps it.
        served.sighup()
        served.wait_log("configuration 4 in service", count=2)
        assert {redirected_to(request(served, "GET", SAMPLE)) for _ in range(24)} == {"vancouver"}
        rows = request(served, "GET", f"{ADMIN}/endpoints").json()["endpoints"]
        assert {r["name"]: r["state"] for r in rows} == {"geneva": "disabled", "vancouver": "up"}

        # A bad file: every worker refuses it and serves on.
        config.path.write_text("endpoints: [\n")
        served.sighup()
        served.wait_log("refused, the running configuration stays", count=2)  # each worker
        served.wait_log("is refused, workers keep their configuration")  # the supervisor
        assert {redirected_to(request(served, "GET", SAMPLE)) for _ in range(8)} == {"vancouver"}
        os.kill(served.pid, signal.SIGTERM)
        assert served.process.wait(STOP_BOUND_S) == 0, served.log()


# -- TLS --------------------------------------------------------------------------------------------


def _client(pki: Pki, credential: Credential | None) -> ssl.SSLContext:
    context = ssl.create_default_context(cafile=str(pki.ca.cert_path))
    if credential is not None:
        context.load_cert_chain(credential.cert_path, credential.key_path)
    return context


def _served_certificate(served: Served, pki: Pki) -> x509.Certificate:
    with (
        socket.create_connection((LOOPBACK, served.port), timeout=10) as raw,
        _client(pki, None).wrap_socket(raw, server_hostname="localhost") as tls,
    ):
        der = tls.getpeercert(binary_form=True)
    assert der is not None
    return x509.load_der_x509_certificate(der)


def _status_with(served: Served, pki: Pki, credential: Credential) -> str:
    try:
        return str(request(served, "GET", "/_geofed/status", context=_client(pki, credential)).status)
    except (OSError, http.client.HTTPException) as exc:
        return type(exc).__name__


def test_a_reload_picks_up_a_renewed_certificate_and_a_new_crl(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    config = _config(tmp_path)
    config.extra = {
        "server": {
            "host": LOOPBACK,
            "port": 0,
            "tls": {
                "cert": str(pki.host.cert_path),
                "key": str(pki.host.key_path),
                "ca_dir": str(pki.ca_dir),
            },
        }
    }
    config.write()
    with serve(config, tls=True) as served:
        assert _served_certificate(served, pki).serial_number == pki.host.cert.serial_number
        assert _status_with(served, pki, pki.other_user) == "200"
        assert _status_with(served, pki, pki.revoked) != "200"  # in the CRL from the start

        # The host certificate is renewed in place, and the CA publishes a CRL revoking other_user.
        renewed = issue(
            HOST_DN, pki.ca, server_extensions("localhost", ip="127.0.0.1"), pki.directory, "host"
        )
        crl = _crl(pki.ca, [pki.revoked.cert, pki.other_user.cert])
        _write(pki.crl_path, crl.public_bytes(serialization.Encoding.PEM))
        assert _served_certificate(served, pki).serial_number == pki.host.cert.serial_number  # not yet

        served.reload(2)
        assert _served_certificate(served, pki).serial_number == renewed.cert.serial_number
        assert _status_with(served, pki, pki.other_user) != "200"
        assert _status_with(served, pki, pki.user) == "200"

        # A certificate that does not match its key is refused; the renewed one stays in service.
        other = issue(HOST_DN, pki.ca, server_extensions("localhost"), tmp_path, "mismatch")
        (pki.directory / "host.key").write_bytes(other.key_path.read_bytes())
        served.sighup()
        served.wait_log("refused, the running configuration stays")
        assert _served_certificate(served, pki).serial_number == renewed.cert.serial_number


def test_a_sighup_during_start_up_does_not_end_geofed(tmp_path: Path) -> None:
    """`systemctl reload` right after start: once the port is bound (before the app runs), a
    SIGHUP is ignored instead of killing the process with the signal's default action."""
    config = _config(tmp_path)
    port = free_port()
    output = tmp_path / "early.out"
    with output.open("wb") as out:
        process = subprocess.Popen(
            [*_geofed_argv(), "serve", "--config", str(config.path), "--port", str(port)],
            stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    served = Served(process, port, output, config, "http")
    try:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:  # bound: the SIGHUP disposition is set by now
            assert process.poll() is None, served.log()
            with contextlib.suppress(OSError), socket.create_connection((LOOPBACK, port), timeout=0.5):
                break
            time.sleep(0.01)
        served.sighup()
        _wait_ready(served, workers=1)
        assert process.poll() is None
    finally:
        served.stop()
