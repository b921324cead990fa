from __future__ import annotations

from pathlib import Path

import pytest
from click.testing import CliRunner

from geofed.cli import main
from geofed.config import load_settings, settings_from_mapping
from geofed.errors import ConfigError
from geofed.settingtypes import parse_duration

MINIMAL = """
signing: {secret: "${GEOFED_SECRET}"}
federation: {locate_timeout: 1500ms}
endpoints:
  - name: cern
    kind: webdav
    url: https://eos.example.ch/atlas
    prefixes: [{federated: /atlas, endpoint: /}, {federated: /atlas-scratch, endpoint: /scratch}]
    writable: true
    location: {lat: 46.2, lon: 6.1}
    timeout: 5s
    max_concurrency: 8
  - name: disk
    kind: local
    url: file:///srv/data
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "geofed.yaml"
    path.write_text(text)
    return path


def test_valid_file_with_env_substitution(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, MINIMAL), environ={"GEOFED_SECRET": "s" * 32})
    assert settings.signing.secret == "s" * 32
    assert settings.federation.locate_timeout == 1.5
    cern = settings.endpoint("cern")
    assert [p.federated for p in cern.prefixes] == ["/atlas", "/atlas-scratch"]
    assert cern.timeout == 5.0 and cern.max_concurrency == 8 and cern.writable
    assert settings.endpoint("disk").prefixes[0].federated == "/"


def test_settings_are_immutable(tmp_path: Path) -> None:
    settings = load_settings(write(tmp_path, MINIMAL), environ={"GEOFED_SECRET": "s" * 32})
    with pytest.raises(Exception, match="frozen"):
        settings.federation.fuzz_km = 3  # type: ignore[misc]


def test_missing_env_variable_is_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"signing\.secret: environment variable GEOFED_SECRET is not set"):
        load_settings(write(tmp_path, MINIMAL), environ={})


def test_env_default_is_used(tmp_path: Path) -> None:
    text = MINIMAL.replace("${GEOFED_SECRET}", "${GEOFED_SECRET:-0123456789abcdef}")
    assert load_settings(write(tmp_path, text), environ={}).signing.secret == "0123456789abcdef"


@pytest.mark.parametrize(
    ("change", "message"),
    [
        (("kind: webdav", "kind: ftp"), r"endpoints\[0\]\.kind: Input should be 'local', 'webdav', 's3' or"),
        (
            ("federated: /atlas,", "federated: atlas,"),
            r"endpoints\[0\]\.prefixes\[0\]\.federated: must be an absolute",
        ),
        (
            ("lat: 46.2", "lat: 146.2"),
            r"endpoints\[0\]\.location\.lat: Input should be less than or equal to 90",
        ),
        (("timeout: 5s", "timeout: soon"), r"endpoints\[0\]\.timeout: expected a duration"),
        (("max_concurrency: 8", "max_concurrency: 0"), r"endpoints\[0\]\.max_concurrency"),
        (("url: file:///srv/data", "url: /srv/data"), r"endpoints\[1\]: .*file:///"),
        (("name: disk", "name: cern"), r"endpoint names must be unique; repeated: cern"),
        (("writable: true", "writeable: true"), r"endpoints\[0\]\.writeable: unknown key"),
    ],
)
def test_invalid_files_name_the_key(tmp_path: Path, change: tuple[str, str], message: str) -> None:
    text = MINIMAL.replace(*change)
    assert text != MINIMAL
    with pytest.raises(ConfigError, match=message):
        load_settings(write(tmp_path, text), environ={"GEOFED_SECRET": "s" * 32})


def test_not_yaml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_settings(write(tmp_path, "endpoints: [unclosed"))
    with pytest.raises(ConfigError, match="cannot read configuration file"):
        load_settings(tmp_path / "absent.yaml")
    with pytest.raises(ConfigError, match="mapping at the top level"):
        settings_from_mapping(["a"])


def test_client_network_must_name_known_endpoint() -> None:
    with pytest.raises(ConfigError, match="unknown endpoint 'nowhere'"):
        settings_from_mapping(
            {
                "signing": {"secret": "x" * 16},
                "client_networks": [{"cidr": "10.0.0.0/8", "endpoint": "nowhere"}],
                "endpoints": [{"name": "a", "kind": "local", "url": "file:///tmp"}],
            }
        )


def test_client_network_cidr_is_checked() -> None:
    with pytest.raises(ConfigError, match=r"client_networks\[0\]\.cidr: .*not a network"):
        settings_from_mapping(
            {
                "signing": {"secret": "x" * 16},
                "client_networks": [{"cidr": "10.0.0.300/8", "location": {"lat": 1, "lon": 2}}],
                "endpoints": [{"name": "a", "kind": "local", "url": "file:///tmp"}],
            }
        )


@pytest.mark.parametrize(
    ("text", "seconds"), [("3s", 3.0), ("250ms", 0.25), ("5m", 300.0), ("1h", 3600.0), (7, 7.0)]
)
def test_durations(text: str | int, seconds: float) -> None:
    assert parse_duration(text) == seconds


@pytest.mark.parametrize("bad", ["-1s", "3 parsecs", True, None])
def test_bad_durations(bad: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(bad)


def test_check_config_command(tmp_path: Path) -> None:
    runner = CliRunner()
    good = runner.invoke(
        main, ["check-config", str(write(tmp_path, MINIMAL))], env={"GEOFED_SECRET": "s" * 20}
    )
    assert good.exit_code == 0, good.output
    assert "valid (2 endpoints, 0 policy rules)" in good.output
    assert "every request will be refused" in good.output
    bad_path = tmp_path / "bad.yaml"
    bad_path.write_text(MINIMAL.replace("kind: local", "kind: tape"))
    bad = runner.invoke(main, ["check-config", str(bad_path)], env={"GEOFED_SECRET": "s" * 20})
    assert bad.exit_code == 2
    assert "endpoints[1].kind" in bad.output


def test_check_config_reads_the_policy_file(tmp_path: Path) -> None:
    runner = CliRunner()
    policy = tmp_path / "policy.yaml"
    policy.write_text("- {path: /atlas, allow: [read, list], to: [{vo: atlas}]}\n")
    text = MINIMAL + f"auth: {{policy_file: {policy}}}\n"
    good = runner.invoke(main, ["check-config", str(write(tmp_path, text))], env={"GEOFED_SECRET": "s" * 20})
    assert good.exit_code == 0, good.output
    assert "1 policy rules" in good.output and "refused" not in good.output
    policy.write_text("- {path: /atlas, allow: [fly], to: [anyone]}\n")
    bad = runner.invoke(main, ["check-config", str(write(tmp_path, text))], env={"GEOFED_SECRET": "s" * 20})
    assert bad.exit_code == 2
    assert "policy.yaml" in bad.output and "allow" in bad.output
