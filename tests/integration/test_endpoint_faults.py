"""An endpoint that answers 500 or resets every connection: geofed reports it (status page, 503
naming it where its answer matters) and keeps serving from the other endpoints."""

from __future__ import annotations

import base64
import json
import logging
import secrets
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import pytest

from geofed.config import settings_from_mapping
from tests.infra.faulty import server_answering_500, server_resetting_connections
from tests.infra.geofed_server import GeofedServer
from tests.infra.policies import OPEN_POLICY
from tests.integration.federation_sites import curl

pytestmark = pytest.mark.integration

FAULTS: dict[str, Callable[[], AbstractContextManager[str]]] = {
    "http-500": server_answering_500,
    "connection-reset": server_resetting_connections,
}


def faulty_endpoint(kind: str, url: str) -> dict[str, Any]:
    base: dict[str, Any] = {
        "name": "broken",
        "kind": kind,
        "url": url,
        "prefixes": [{"federated": "/fed", "endpoint": "/"}],
        "timeout": "2s",
    }
    if kind == "s3":
        base |= {
            "bucket": "missing-bucket",
            "credentials": {"access_key": "AKIDEXAMPLE", "secret_key": "s3cr3t-never-shown"},
        }
    if kind == "azure":
        key = base64.b64encode(b"azure-key-never-shown-" * 2).decode()
        base |= {"account": "acct", "container": "cont", "credentials": {"account_key": key}}
    return base


@pytest.fixture(params=["webdav", "s3", "azure"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(params=sorted(FAULTS))
def federation(request: pytest.FixtureRequest, kind: str, tmp_path: Path) -> Iterator[GeofedServer]:
    (tmp_path / "good").mkdir()
    (tmp_path / "good" / "ok.txt").write_text("still served\n")
    with FAULTS[request.param]() as url:
        settings = settings_from_mapping(
            {
                "signing": {"secret": secrets.token_urlsafe(24)},
                "auth": OPEN_POLICY,
                "federation": {"locate_timeout": "2s"},
                "health": {"interval": "60s", "timeout": "2s"},
                "endpoints": [
                    {
                        "name": "good",
                        "kind": "local",
                        "url": (tmp_path / "good").as_uri(),
                        "prefixes": [{"federated": "/fed", "endpoint": "/"}],
                    },
                    faulty_endpoint(kind, url),
                ],
            },
            environ={},
        )
        with GeofedServer(settings) as server:
            yield server


def test_other_endpoints_keep_serving(federation: GeofedServer) -> None:
    body = curl("-L", f"{federation.url}/fed/ok.txt").stdout
    assert body == "still served\n"
    listing = json.loads(curl("-H", "Accept: application/json", f"{federation.url}/fed/").stdout)
    assert [e["name"] for e in listing["entries"]] == ["ok.txt"]


def test_broken_endpoint_is_reported_not_hidden(federation: GeofedServer) -> None:
    status = json.loads(curl(f"{federation.url}/_geofed/status").stdout)
    broken = next(e for e in status["endpoints"] if e["name"] == "broken")
    assert broken["state"] == "down"
    assert broken["last_error"]
    out = curl("-w", "\n%{http_code}", f"{federation.url}/fed/only-maybe-there.txt").stdout
    body, _, code = out.rpartition("\n")
    assert code == "503"
    assert "broken" in body


def test_no_secret_in_any_answer_or_log(federation: GeofedServer, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    texts = [
        curl(f"{federation.url}/_geofed/status").stdout,
        curl("-D", "-", f"{federation.url}/fed/only-maybe-there.txt").stdout,
        curl("-D", "-", "-X", "PUT", "--data-binary", "x", f"{federation.url}/fed/new.txt").stdout,
        federation.flush_access_log(),
    ]
    messages = [record.getMessage() for record in caplog.get_records("setup") + caplog.get_records("call")]
    assert any(message.startswith("endpoint broken is down") for message in messages)  # the logs were seen
    for text in texts + messages:
        assert "s3cr3t-never-shown" not in text
        assert base64.b64encode(b"azure-key-never-shown-" * 2).decode() not in text
