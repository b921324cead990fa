"""``geofed import-dynafed``: Dynafed (UGR) configurations converted into geofed settings.

The fixtures under tests/data/dynafed/ are the example configurations of
shared/reference/dynafed.md section 8 (example_a, example_b, example_c) and configurations written
for each plugin (plugins/), INCLUDE handling (includes/) and the authorization rules (authz.conf).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner

from geofed.cli import main
from geofed.config import Settings, load_settings, settings_from_mapping
from geofed.dynafed import DynafedInputError, ImportResult, import_dynafed
from geofed.dynafed.context import ugr_bool, ugr_long
from geofed.dynafed.endpoints import join_path, placeholder_env, size_in_bytes

DATA = Path(__file__).resolve().parents[1] / "data" / "dynafed"
SECRET = {"GEOFED_SECRET": "s" * 32}


def run(*paths: Path | str, **options: Any) -> ImportResult:
    return import_dynafed([Path(p) for p in paths], **options)


def write(tmp_path: Path, text: str, name: str = "ugr.conf") -> Path:
    path = tmp_path / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def endpoint(result: ImportResult, name: str) -> dict[str, Any]:
    for item in result.data["endpoints"]:
        if item["name"] == name:
            return dict(item)
    raise AssertionError(f"no endpoint {name}: {[e['name'] for e in result.data['endpoints']]}")


def unmapped(result: ImportResult) -> dict[str, str]:
    """``file:line`` -> "key: value -- reason" of every line reported as not mapped."""
    return {u.where: f"{u.text} -- {u.reason}" for u in result.report.unmapped}


def settings(result: ImportResult) -> Settings:
    """The output as geofed loads it: YAML text, ${VAR} substituted, validated."""
    data = yaml.safe_load(result.yaml_text())
    return settings_from_mapping(data, environ={**placeholder_env(data), **SECRET})


# -- the examples of the reference ------------------------------------------------------------------


def test_example_a_grid_webdav_federation() -> None:
    root = DATA / "example_a"
    conf = root / "etc/ugr/ugr.conf"
    endpoints_conf = root / "etc/ugr/conf.d/endpoints.conf"
    result = run(conf, root=root)
    data = result.data
    assert result.files == [str(conf), str(endpoints_conf)]
    assert data["signing"] == {"secret": "${GEOFED_SECRET}"}
    assert data["geoip"] == {"database": "/usr/share/GeoIP/GeoLite2-City.mmdb"}
    assert data["federation"] == {"locate_timeout": "180s", "fuzz_km": 10}
    assert data["cache"] == {
        "max_entries": 100000,
        "ttl": "600s",
        "negative_ttl": "10s",
        "max_listing_entries": 10000,
        "l2": {"kind": "memcached", "servers": ["127.0.0.1:11211"]},
    }
    # status_checker_frequency 60000 ms, max_latency 30000 ms (wildcards for every plugin)
    assert data["health"] == {"interval": "60s", "timeout": "30s", "failures_to_down": 1}
    # glb.n2n_pfx /myfed -> /: clients keep /myfed/..., and the rule path stays /myfed/
    assert data["auth"]["policy"] == [{"path": "/myfed", "allow": ["read", "list"], "to": ["anonymous"]}]
    assert endpoint(result, "dcache_desy") == {
        "name": "dcache_desy",
        "kind": "webdav",
        "url": "http://sligo.desy.de:2880/pnfs/desy.de/data",
        "prefixes": [{"federated": "/myfed", "endpoint": "/"}],
        "readable": True,
        "listable": True,
        "writable": False,
        "timeout": "30s",
        "max_concurrency": 30,
    }
    cern = endpoint(result, "dpm_cern")
    assert cern["url"] == "https://cvitbdpm1.cern.ch:443/dpm/cern.ch/home"
    assert cern["writable"] is True
    missing = unmapped(result)
    where = f"{endpoints_conf}:"
    assert "locplugin.dcache_desy.ssl_check: false" in missing[where + "3"]
    assert "cli_certificate" in missing[where + "4"] and "client certificate" in missing[where + "4"]
    assert "locplugin.dpm_cern.cli_private_key" in missing[where + "8"]
    assert missing[f"{conf}:4"].startswith("glb.debug: 1 -- ")
    assert missing[f"{conf}:6"].startswith("locplugin.*.conn_timeout: 30")
    assert missing[f"{conf}:18"].startswith("infohandler.itemmaxttl: 3600")
    assert missing[f"{conf}:24"].startswith("extcache.memcached.ttl: 43200")
    assert missing[f"{conf}:25"].startswith("extcache.memcached.useBinaryProtocol")
    assert len(missing) == 11
    assert settings(result).endpoints[1].writable


def test_example_a_needs_its_include_directory(tmp_path: Path) -> None:
    conf = DATA / "example_a/etc/ugr/ugr.conf"
    with pytest.raises(DynafedInputError, match=r"ugr.conf:11: INCLUDE /etc/ugr/conf.d/: .*--root"):
        run(conf)
    # ... or the files given one by one, with the missing INCLUDE reported instead
    result = run(conf, DATA / "example_a/etc/ugr/conf.d/endpoints.conf", ignore_missing_includes=True)
    assert [e["name"] for e in result.data["endpoints"]] == ["dcache_desy", "dpm_cern"]
    assert "INCLUDE /etc/ugr/conf.d/" in unmapped(result)[f"{conf}:11"]


def test_example_b_cloud_buckets_with_an_authorization_plugin() -> None:
    conf = DATA / "example_b/ugr.conf"
    result = run(conf)
    bucket = endpoint(result, "grpA-bucket1")
    assert bucket == {
        "name": "grpA-bucket1",
        "kind": "s3",
        "url": "https://s3.echo.stfc.ac.uk",
        "bucket": "bucket1",
        "addressing": "path",
        "region": "us-east-1",
        "credentials": {"access_key": "AKIA...", "secret_key": "..."},
        "url_lifetime": "86400s",
        "prefixes": [{"federated": "/grpA/bucket1", "endpoint": "/"}],
        "readable": True,
        "listable": True,
        "writable": True,
        "timeout": "15s",
        "max_concurrency": 15,
        "quota": 10 * 1000**4,
    }
    azure = endpoint(result, "az1")
    assert azure["url"] == "https://acct.blob.core.windows.net"
    assert (azure["account"], azure["container"]) == ("acct", "container")
    assert azure["credentials"] == {"account_key": "<base64 key>"}
    assert azure["url_lifetime"] == "86400s"
    # the dummy rule and the Python plugin cannot be converted: geofed then refuses everything
    assert result.data["auth"]["policy"] == []
    missing = unmapped(result)
    assert "dummy rule" in missing[f"{conf}:18"]
    assert "authorization plugin" in missing[f"{conf}:19"]
    assert "dynafed_storagestats" in missing[f"{conf}:21"]  # storagestats.api
    assert "dynafed_storagestats" in missing[f"{conf}:23"]  # storagestats.frequency
    assert any("auth.policy is empty" in note for note in result.report.notes)
    assert result.inline_secrets
    # secrets written inline are not shown in the report
    assert "AKIA" not in result.render_report()
    settings(result)


def test_example_b_as_printed_keeps_the_inline_comments_in_the_values() -> None:
    conf = DATA / "example_b/annotated.conf"
    result = run(conf)
    bucket = endpoint(result, "grpA-bucket1")
    assert bucket["region"] == "us-east-1        # optional → SigV4"  # what UGR would sign with
    assert bucket["url_lifetime"] == "86400s"  # atol stops at the first non-digit
    notes = "\n".join(result.report.notes)
    assert f"{conf}:8: locplugin.grpA-bucket1.s3.region: UGR has no inline comments" in notes
    assert f"{conf}:9: locplugin.grpA-bucket1.s3.signaturevalidity: '86400  # must" in notes


def test_example_c_rucio_and_space_tokens() -> None:
    conf = DATA / "example_c/ugr.conf"
    result = run(conf)
    names = [e["name"] for e in result.data["endpoints"]]
    assert names == ["KIT-atlasdatadisk", "KIT-atlasscratchdisk", "KIT-atlaslocalgroupdisk"]
    url = "https://f01-060-110-e.gridka.de:2880/pnfs/gridka.de/atlas"
    for name, path in zip(
        names,
        ["/disk-only/atlasdatadisk", "/disk-only/atlasscratchdisk", "/atlaslocalgroupdisk"],
        strict=True,
    ):
        item = endpoint(result, name)
        assert item["url"] == url
        assert item["prefixes"] == [{"federated": "/browseatlas", "endpoint": path}]
        assert item["max_concurrency"] == 1  # the plugin's 5 threads shared by 3 prefixes
        assert item["writable"] is False
    missing = unmapped(result)
    assert "ssl_check" in missing[f"{conf}:3"]
    assert "cli_type" in missing[f"{conf}:4"]
    assert "Rucio's hashed layout" in missing[f"{conf}:9"]
    assert len(missing) == 5
    settings(result)


def test_example_c_srm_replica_name_translation() -> None:
    conf = DATA / "example_c/srm.conf"
    result = run(conf)
    missing = unmapped(result)
    assert "replica names" in missing[f"{conf}:5"]  # HOST3's xlatepfx has only srm:// sources
    assert "not imported" in missing[f"{conf}:4"]
    host4 = endpoint(result, "HOST4")
    assert host4["prefixes"] == [{"federated": "/atlas", "endpoint": "/"}]
    assert any("srm://host4.site.org" in note for note in result.report.notes)
    assert [e["name"] for e in result.data["endpoints"]] == ["HOST4"]


# -- one configuration per plugin ---------------------------------------------------------------------


def test_http_plugin() -> None:
    conf = DATA / "plugins/http.conf"
    result = run(conf)
    web = endpoint(result, "web1")
    assert web["kind"] == "webdav"
    assert web["url"] == "https://web1.example.org/pub/data"
    assert web["prefixes"] == [{"federated": "/fed/web", "endpoint": "/"}]
    assert web["listable"] is False  # the http plugin never listed
    assert web["writable"] is True
    assert web["timeout"] == "40s"  # ops_timeout
    assert web["max_concurrency"] == 20
    # frequency 20 s; the probe gives up after 20 s, and fails above max_latency 2.5 s
    assert result.data["health"] == {"interval": "20s", "timeout": "2500ms", "failures_to_down": 1}
    missing = unmapped(result)
    for line, key in (
        (5, "conn_timeout"),
        (9, "auth_login"),
        (10, "auth_passwd"),
        (11, "custom_header[]"),
        (12, "metalink_support"),
        (13, "candochecksum"),
    ):
        assert f"locplugin.web1.{key}" in missing[f"{conf}:{line}"]
    assert "hunter2" not in result.render_report()
    settings(result)


def test_dav_plugin_with_global_prefix_translation() -> None:
    conf = DATA / "plugins/dav.conf"
    result = run(conf)
    dav1 = endpoint(result, "dav1")
    assert dav1["url"] == "https://dav1.example.org:2880/pnfs/example.org/data"  # davs:// is https
    # UGR saw /internal/atlas for requests to /fed/atlas and /federation/atlas
    assert dav1["prefixes"] == [
        {"federated": "/fed/atlas-old", "endpoint": "/atlasdisk"},
        {"federated": "/federation/atlas-old", "endpoint": "/atlasdisk"},
        {"federated": "/fed/atlas", "endpoint": "/atlasdisk"},
        {"federated": "/federation/atlas", "endpoint": "/atlasdisk"},
    ]
    # yes and TRUE are true; 1 is false in UGR
    assert (dav1["readable"], dav1["listable"], dav1["writable"]) == (True, False, True)
    assert any(f"{conf}:8: locplugin.dav1.listable: '1' is false" in n for n in result.report.notes)
    dav2 = endpoint(result, "dav2")
    assert dav2["url"] == "http://dav2.example.org/cms"  # dav:// is http
    assert dav2["max_concurrency"] == 2  # UGR makes negative thread counts 2
    assert dav2["readable"] is False
    missing = unmapped(result)
    assert "status_checking" in missing[f"{conf}:12"]
    assert "ca_path" in missing[f"{conf}:13"]
    settings(result)


def test_s3_plugin() -> None:
    conf = DATA / "plugins/s3.conf"
    result = run(conf)
    vhost = endpoint(result, "vhost")
    # UGR's default is virtual-host style: the bucket is the first label of the host
    assert (vhost["url"], vhost["bucket"], vhost["addressing"]) == (
        "https://s3.example.org:8443",
        "atlas-data",
        "virtual",
    )
    assert vhost["prefixes"] == [{"federated": "/", "endpoint": "/scratch"}]
    assert vhost["region"] == "us-east-1"  # no s3.region: SigV2 in UGR, SigV4 us-east-1 here
    assert vhost["credentials"] == {"access_key": "${VHOST_AK}", "secret_key": "${VHOST_SK}"}
    assert vhost["url_lifetime"] == "600s"
    assert any(
        "vhost: s3.signaturevalidity 600 s is below infohandler.itemmaxttl" in n for n in result.report.notes
    )
    path_style = endpoint(result, "pathstyle")
    assert (path_style["url"], path_style["bucket"], path_style["addressing"]) == (
        "http://rgw.example.org:7480",  # s3:// is http
        "cms-bucket",
        "path",
    )
    assert path_style["prefixes"] == [{"federated": "/cms", "endpoint": "/user/data"}]
    assert path_style["region"] == "eu-west-2"
    assert path_style["writable"] is False  # s3.writable is not what UGR reads
    missing = unmapped(result)
    assert "reads 'writable' without the 's3.' prefix" in missing[f"{conf}:14"]
    assert "reads 'ca_path' without the 's3.' prefix" in missing[f"{conf}:15"]
    assert any("region: us-east-1" in text and "vhost" in text for text in result.report.defaults)
    assert any("s3.alternate absent" in text and "vhost" in text for text in result.report.defaults)
    settings(result)


def test_azure_plugin() -> None:
    conf = DATA / "plugins/azure.conf"
    result = run(conf)
    prod = endpoint(result, "az-prod")
    assert (prod["url"], prod["account"], prod["container"]) == (
        "https://atlasstore.blob.core.windows.net",
        "atlasstore",
        "atlas",
    )
    assert prod["prefixes"] == [{"federated": "/atlas", "endpoint": "/data"}]
    assert prod["credentials"] == {"account_key": "${AZURE_ATLAS_KEY}"}
    assert prod["url_lifetime"] == "7200s"
    assert prod["writable"] is True
    azurite = endpoint(result, "azurite")
    assert (azurite["url"], azurite["account"], azurite["container"]) == (
        "http://127.0.0.1:10000/devstoreaccount1",
        "devstoreaccount1",
        "test-container",
    )
    # no azure.key: geofed needs one, so the output names an environment variable for it
    assert azurite["credentials"] == {"account_key": "${GEOFED_AZURITE_AZURE_KEY}"}
    assert "read only by the s3 plugin" in unmapped(result)[f"{conf}:8"]
    assert not result.inline_secrets
    settings(result)


def test_plugins_that_are_not_imported_are_reported_with_their_keys(tmp_path: Path) -> None:
    conf = write(
        tmp_path,
        "glb.locplugin[]: libugrlocplugin_dmliteclient.so dpmdb 10 /etc/ugr/ugrdmliteclientMY.conf\n"
        "locplugin.dpmdb.xlatepfx: /dpm/cern.ch /\n"
        "glb.locplugin[]: libugrlocplugin_dav.so checker 10 https://check.example.org/\n"
        "locplugin.checker.slave: true\n"
        "locplugin.checker.ops_timeout: 20\n"
        "glb.locplugin[]: libugrlocplugin_s3.so badbucket 10 s3s://localhost/\n"
        "locplugin.badbucket.s3.region: us-east-1\n"
        "glb.locplugin[]: libugrlocplugin_dav.so ok 10 https://ok.example.org/\n"
        "glb.locplugin[]: libugrlocplugin_dav.so ok 10 https://again.example.org/\n"
        "locplugin.nosuch.writable: true\n"
        "glb.locplugin[]: libugrlocplugin_dav.so\n",
    )
    result = run(conf)
    assert [e["name"] for e in result.data["endpoints"]] == ["ok"]
    missing = unmapped(result)
    assert "catalogues" in missing[f"{conf}:1"]
    assert "belongs to plugin dpmdb" in missing[f"{conf}:2"]
    assert "slave" in missing[f"{conf}:3"] and "replica-translator" in missing[f"{conf}:4"]
    assert "belongs to plugin checker" in missing[f"{conf}:5"]
    assert "virtual-host style" in missing[f"{conf}:6"]
    assert "belongs to plugin badbucket" in missing[f"{conf}:7"]  # used while trying, then given back
    assert "declared already" in missing[f"{conf}:9"]
    assert "no glb.locplugin[] line declares a plugin nosuch" in missing[f"{conf}:10"]
    assert "expected '<library> <ID> <threads> <URL>'" in missing[f"{conf}:11"]


def test_pfxmultiply_on_a_writable_plugin_adds_the_upload_endpoint(tmp_path: Path) -> None:
    conf = write(
        tmp_path,
        "glb.locplugin[]: libugrlocplugin_dav.so site 8 https://dav.example.org/atlas\n"
        "locplugin.site.pfxmultiply: /datadisk /scratchdisk\n"
        "locplugin.site.writable: true\n",
    )
    result = run(conf)
    assert [e["name"] for e in result.data["endpoints"]] == ["site-datadisk", "site-scratchdisk", "site"]
    uploads = endpoint(result, "site")
    assert (uploads["readable"], uploads["listable"], uploads["writable"]) == (False, False, True)
    assert uploads["prefixes"] == [{"federated": "/", "endpoint": "/"}]
    assert endpoint(result, "site-datadisk")["prefixes"] == [{"federated": "/", "endpoint": "/datadisk"}]
    assert endpoint(result, "site-datadisk")["max_concurrency"] == 4
    settings(result)


# -- INCLUDE --------------------------------------------------------------------------------------------


def test_include_directories_and_files_are_read_after_the_including_file() -> None:
    conf = DATA / "includes/ugr.conf"
    result = run(conf)
    assert result.files == [
        str(conf),
        str(DATA / "includes/conf.d/10-first.conf"),  # sorted; .hidden.conf and README are not read
        str(DATA / "includes/conf.d/20-second.conf"),
        str(DATA / "includes/more/extra.conf"),
    ]
    assert [e["name"] for e in result.data["endpoints"]] == ["first", "second"]
    # the included files come after the whole of ugr.conf, so their values win
    assert result.data["federation"]["locate_timeout"] == "50s"
    assert result.data["cache"]["max_listing_entries"] == 7000
    notes = "\n".join(result.report.notes)
    assert f"{conf}:3: glb.waittimeout: overridden by {DATA / 'includes/conf.d/10-first.conf'}:1" in notes
    assert "not read: .hidden.conf, README" in notes
    assert result.report.unmapped == []


def test_a_directory_can_be_given_on_the_command_line() -> None:
    result = run(DATA / "includes/conf.d")
    assert [e["name"] for e in result.data["endpoints"]] == ["first", "second"]


def test_include_cycles_and_missing_targets_are_refused(tmp_path: Path) -> None:
    write(tmp_path, "INCLUDE b.conf\nglb.waittimeout: 3\n", "a.conf")
    write(tmp_path, "include: sub/\n", "b.conf")
    write(tmp_path, "Include ../a.conf\n", "sub/c.conf")
    with pytest.raises(DynafedInputError, match=r"c.conf:1: INCLUDE cycle refused: .*a.conf -> .*b.conf"):
        run(tmp_path / "a.conf")
    write(tmp_path, "INCLUDE missing.d/\nglb.waittimeout: 3\n", "d.conf")
    with pytest.raises(DynafedInputError, match=r"d.conf:1: INCLUDE missing.d/: .* does not exist"):
        run(tmp_path / "d.conf")
    result = run(tmp_path / "d.conf", ignore_missing_includes=True)
    assert "does not exist" in unmapped(result)[f"{tmp_path / 'd.conf'}:1"]


def test_a_file_included_twice_is_read_once(tmp_path: Path) -> None:
    write(tmp_path, "INCLUDE common.conf\nINCLUDE other.conf\n", "main.conf")
    write(tmp_path, "INCLUDE common.conf\n", "other.conf")
    write(tmp_path, "glb.locplugin[]: libugrlocplugin_dav.so one 1 https://one.example.org/\n", "common.conf")
    result = run(tmp_path / "main.conf")
    assert [e["name"] for e in result.data["endpoints"]] == ["one"]
    assert any("was read already" in note for note in result.report.notes)


def test_absolute_includes_below_root(tmp_path: Path) -> None:
    write(tmp_path, "glb.waittimeout: 12\n", "copy/etc/ugr/conf.d/x.conf")
    conf = write(tmp_path, "INCLUDE: /etc/ugr/conf.d/\n", "copy/etc/ugr/ugr.conf")
    result = run(conf, root=tmp_path / "copy")
    assert result.data["federation"]["locate_timeout"] == "12s"


def test_unreadable_input(tmp_path: Path) -> None:
    with pytest.raises(DynafedInputError, match="No such file"):
        run(tmp_path / "absent.conf")
    (tmp_path / "bin.conf").write_bytes(b"glb.debug: 1\x00\n")
    with pytest.raises(DynafedInputError, match="not a text file"):
        run(tmp_path / "bin.conf")
    (tmp_path / "latin1.conf").write_bytes(b"glb.debug: 1\nglb.allowusers[]: /CN=Jos\xe9 / r\n")
    with pytest.raises(DynafedInputError, match=r"latin1.conf:2: not UTF-8"):
        run(tmp_path / "latin1.conf")
    with pytest.raises(DynafedInputError, match="no Dynafed configuration"):
        run(write(tmp_path, "signing:\n  secret: x\nendpoints: []\n", "geofed.yaml"))


# -- values ----------------------------------------------------------------------------------------------


def test_env_values_stay_references(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("S3_SECRET", "the-real-secret")
    conf = write(
        tmp_path,
        "glb.locplugin[]: libugrlocplugin_s3.so bkt 4 https://${S3_HOST}/bucket\n"
        "locplugin.bkt.s3.alternate: true\n"
        "locplugin.bkt.s3.pub_key: ${S3_ACCESS}\n"
        "locplugin.bkt.s3.priv_key: ${S3_SECRET}\n"
        "glb.waittimeout: ${WAIT}\n"
        "extcache.memcached.server[]: ${MC_HOST}:11311\n",
    )
    result = run(conf)
    bucket = endpoint(result, "bkt")
    assert bucket["url"] == "https://${S3_HOST}"
    assert bucket["credentials"] == {"access_key": "${S3_ACCESS}", "secret_key": "${S3_SECRET}"}
    assert "the-real-secret" not in result.yaml_text()
    assert result.data["cache"]["l2"]["servers"] == ["${MC_HOST}:11311"]
    # a number taken from the environment cannot be converted: reported, and the default applied
    assert result.data["federation"]["locate_timeout"] == "30s"
    assert "from the environment" in unmapped(result)[f"{conf}:5"]
    assert not result.inline_secrets
    assert any("MC_HOST, S3_ACCESS, S3_HOST, S3_SECRET" in note for note in result.report.notes)
    settings(result)


def test_ugr_value_parsing() -> None:
    assert ugr_bool("TRUE") and ugr_bool("yes") and not ugr_bool("1") and not ugr_bool("on")
    assert (ugr_long("30s"), ugr_long(" -5"), ugr_long("x"), ugr_long("")) == (30, -5, 0, 0)
    assert size_in_bytes("10TB") == 10 * 1000**4
    assert size_in_bytes("2tib") == 2 * 1024**4
    assert size_in_bytes("512b") == 512 and size_in_bytes("1000") == 1000 and size_in_bytes("lots") is None
    assert join_path("/a/", "b", "/") == "/a/b" and join_path("/", "/") == "/"


def test_keys_ugr_never_read_are_reported(tmp_path: Path) -> None:
    conf = write(
        tmp_path,
        "glb.waittimeout : 5\n"
        "  glb.debug: 3\n"
        "no colon on this line\n"
        "# a comment\n"
        "glb.unknown.key: 1\n"
        "something.else: 2\n"
        "glb.locplugin[]: libugrlocplugin_dav.so d 1 https://d.example.org/\n"
        "locplugin.d.s3.region: us-east-1\n"
        "locplugin.d.bogus: 1\n"
        "locplugin.*.bogus: 1\n"
        "locplugin.*.s3.region: eu\n",
    )
    result = run(conf)
    missing = unmapped(result)
    assert "spaces around it" in missing[f"{conf}:1"]
    assert "spaces around it" in missing[f"{conf}:2"]
    assert "not a 'key: value' line" in missing[f"{conf}:3"]
    assert f"{conf}:4" not in missing
    assert "UGR does not read this key" in missing[f"{conf}:5"]
    assert "not a UGR configuration key" in missing[f"{conf}:6"]
    assert "read only by the s3 plugin, not by the dav plugin" in missing[f"{conf}:8"]
    assert "UGR does not read this key" in missing[f"{conf}:9"]
    assert "UGR does not read this key" in missing[f"{conf}:10"]
    assert "no imported endpoint uses it" in missing[f"{conf}:11"]
    # the key with a space is not glb.waittimeout: the code default applies
    assert result.data["federation"]["locate_timeout"] == "30s"


def test_every_line_is_mapped_or_reported() -> None:
    """No line of any fixture is dropped silently: each is used by the mapping, or reported."""
    cases = [
        ([DATA / "example_a/etc/ugr/ugr.conf"], {"root": DATA / "example_a"}),
        ([DATA / "example_b/ugr.conf"], {}),
        ([DATA / "example_b/annotated.conf"], {}),
        ([DATA / "example_c/ugr.conf"], {}),
        ([DATA / "example_c/srm.conf"], {}),
        ([DATA / "authz.conf"], {}),
        ([DATA / "includes/ugr.conf"], {}),
        *[([path], {}) for path in sorted((DATA / "plugins").glob("*.conf"))],
    ]
    from geofed.dynafed.convert import Converter
    from geofed.dynafed.parser import read_config

    for paths, options in cases:
        config = read_config(paths, **options)
        converter = Converter(config, "nobody")
        result = converter.run()
        reported = converter.ctx.is_reported
        silent = [line.where for line in config.lines if not config.is_used(line) and not reported(line)]
        assert silent == [], paths
        listed = {u.where for u in result.report.unmapped}
        assert all(line.where in listed for line in config.lines if reported(line))


# -- caches, memcached, geo, defaults -------------------------------------------------------------------


def test_memcached(tmp_path: Path) -> None:
    conf = write(
        tmp_path,
        "extcache.memcached.server[]: mc1.example.org\n"
        "extcache.memcached.server[]: mc2.example.org:11311\n"
        "glb.use_memcache: true\n"
        "glb.memcached_servers: 10.0.0.1:11211\n",
    )
    result = run(conf)
    assert result.data["cache"]["l2"] == {
        "kind": "memcached",
        "servers": ["mc1.example.org:11211", "mc2.example.org:11311"],  # no port: libmemcached's 11211
    }
    missing = unmapped(result)
    assert "infohandler.useextcache and extcache.memcached.server[]" in missing[f"{conf}:3"]
    assert "infohandler.useextcache and extcache.memcached.server[]" in missing[f"{conf}:4"]
    off = write(
        tmp_path, "infohandler.useextcache: false\nextcache.memcached.server[]: mc1:11211\n", "off.conf"
    )
    result = run(off)
    assert "l2" not in result.data["cache"]
    assert "did not use memcached" in unmapped(result)[f"{off}:2"]
    settings(result)


def test_geo_plugins(tmp_path: Path) -> None:
    conf = write(
        tmp_path,
        "glb.filterplugin[]: libugrgeoplugin_mmdb.so geo /var/lib/GeoIP/GeoLite2-City.mmdb\n"
        "glb.filterplugin[]: libugrnoloopplugin.so noloop\n"
        "glb.filterplugin.geoip.fuzz: 20\n",
    )
    result = run(conf)
    assert result.data["geoip"] == {"database": "/var/lib/GeoIP/GeoLite2-City.mmdb"}
    assert result.data["federation"]["fuzz_km"] == 10  # the mmdb plugin's code default
    missing = unmapped(result)
    assert "noloop" in missing[f"{conf}:2"]
    assert "geoip geo plugin, which is not loaded" in missing[f"{conf}:3"]
    legacy = write(
        tmp_path,
        "glb.filterplugin[]: libugrgeoplugin_geoip.so geo /usr/share/GeoIP/GeoLiteCity.dat\n"
        "glb.filterplugin.geoip.fuzz: 25\n",
        "legacy.conf",
    )
    result = run(legacy)
    assert "geoip" not in result.data
    assert result.data["federation"]["fuzz_km"] == 25
    assert "GeoLite2-City.mmdb" in unmapped(result)[f"{legacy}:1"]


def test_dynafed_code_defaults_when_keys_are_absent(tmp_path: Path) -> None:
    conf = write(tmp_path, "glb.locplugin[]: libugrlocplugin_dav.so d 3 https://d.example.org/data\n")
    result = run(conf)
    data = result.data
    assert data["federation"] == {"locate_timeout": "30s"}  # not the documented 180
    assert data["cache"] == {
        "max_entries": 1_000_000,  # not the documented 1000
        "ttl": "3600s",  # not 600
        "negative_ttl": "10s",
        "max_listing_entries": 2000,  # not 10000
    }
    # status_checker_frequency 5000 ms, but UGR looks only every glb.tick (10 s); max_latency 10000 ms
    assert data["health"] == {"interval": "10s", "timeout": "5s", "failures_to_down": 1}
    d = endpoint(result, "d")
    assert (d["readable"], d["listable"], d["writable"], d["timeout"]) == (True, True, False, "15s")
    assert data["auth"]["policy"] == [{"path": "/", "allow": ["all"], "to": ["anyone"]}]
    assert "geoip" not in data and "l2" not in data["cache"]
    defaults = "\n".join(result.report.defaults)
    for key in (
        "glb.waittimeout absent: 30 s (documented: 180 s)",
        "infohandler.maxitems absent: 1000000",
        "infohandler.itemttl absent: 3600 s",
        "infohandler.itemmaxttl absent: 86400 s",
        "glb.maxlistitems absent: 2000",
        "glb.tick absent: 10 s",
        "locplugin.<ID>.ops_timeout absent: 15 s -> endpoints[].timeout: 15s (d)",
        "locplugin.<ID>.status_checker_frequency absent: 5000 ms (d)",
        "glb.allowusers[] and glb.allowgroups[] absent",
    ):
        assert key in defaults
    assert result.report.unmapped == []
    settings(result)


def test_itemmaxttl_caps_the_cache_ttl(tmp_path: Path) -> None:
    result = run(write(tmp_path, "infohandler.itemttl: 7200\ninfohandler.itemmaxttl: 1800\n"))
    assert result.data["cache"]["ttl"] == "1800s"


def test_differing_probe_settings_use_the_shortest(tmp_path: Path) -> None:
    conf = write(
        tmp_path,
        "locplugin.*.status_checker_frequency: 30000\n"
        "glb.locplugin[]: libugrlocplugin_dav.so a 1 https://a.example.org/\n"
        "glb.locplugin[]: libugrlocplugin_dav.so b 1 https://b.example.org/\n"
        "locplugin.b.status_checker_frequency: 15000\n"
        "locplugin.b.max_latency: 4000\n",
    )
    result = run(conf)
    assert result.data["health"] == {"interval": "15s", "timeout": "4s", "failures_to_down": 1}
    assert any("probe settings differ" in note for note in result.report.notes)


# -- authorization --------------------------------------------------------------------------------------


def test_allowusers_and_allowgroups() -> None:
    conf = DATA / "authz.conf"
    result = run(conf)
    # glb.allow_overwrite: false -> w grants write but not modify
    assert result.data["auth"]["policy"] == [
        {"path": "/fed/public", "allow": ["read", "list"], "to": ["anonymous"]},
        {
            "path": "/fed",
            "allow": ["read", "list", "write", "delete", "copy"],
            "to": [{"dn": "/DC=ch/DC=cern/OU=Users/CN=Jane Doe"}],
        },
        {"path": "/fed/robot", "allow": ["write", "delete"], "to": [{"dn": "/DC=org/DC=example/CN=robot"}]},
        {"path": "/fed/atlas", "allow": ["read", "list"], "to": [{"fqan": "/atlas/*"}]},
        {"path": "/fed/cms", "allow": ["read", "list", "write"], "to": [{"fqan": "/cms/Role=production"}]},
        {"path": "/fed/users", "allow": ["read"], "to": [{"fqan": "users"}]},
    ]
    missing = unmapped(result)
    assert "neither a DN nor the anonymous user" in missing[f"{conf}:7"]
    assert 'the group ""' in missing[f"{conf}:10"]
    assert "single spaces" in missing[f"{conf}:12"]
    assert "none of the modes" in missing[f"{conf}:13"]
    notes = "\n".join(result.report.notes)
    assert f"{conf}:6: UGR matched '/fed/robot' as a string prefix" in notes
    assert f"{conf}:3: UGR matched" not in notes  # /fed/public/ ends in /: whole segments already
    assert "group 'users' is not an FQAN" in notes
    assert "checked no rule for stat" in notes
    assert "auth.vomsdir" in notes
    settings(result)


def test_policy_semantics_of_imported_rules() -> None:
    """The converted rules decide as UGR's did, for the clients both can tell apart."""
    from geofed.auth.identity import Identity, Method, Privilege
    from geofed.auth.policy import Policy

    result = run(DATA / "authz.conf")
    policy = Policy.from_settings(settings(result).auth)
    anonymous = Identity(method=Method.ANONYMOUS)
    jane = Identity(method=Method.X509, dn="/DC=ch/DC=cern/OU=Users/CN=Jane Doe")
    atlas = Identity(method=Method.X509, dn="/CN=someone", fqans=("/atlas/higgs/Role=NULL/Capability=NULL",))
    assert policy.allows(anonymous, Privilege.READ, "/fed/public/file")
    assert not policy.allows(anonymous, Privilege.READ, "/fed/other")
    assert policy.allows(jane, Privilege.DELETE, "/fed/any/file")
    assert not policy.allows(jane, Privilege.MODIFY, "/fed/any/file")  # glb.allow_overwrite: false
    assert policy.allows(atlas, Privilege.LIST, "/fed/atlas/data")
    assert not policy.allows(atlas, Privilege.WRITE, "/fed/atlas/data")


def test_anonymous_user_name_and_overwrite(tmp_path: Path) -> None:
    conf = write(tmp_path, "glb.allowusers[]: anon / rw\nglb.allowusers[]: nobody /x r\n")
    result = run(conf, anonymous_user="anon")
    assert result.data["auth"]["policy"] == [
        {"path": "/", "allow": ["read", "write", "modify"], "to": ["anonymous"]}
    ]
    assert "neither a DN nor the anonymous user 'anon'" in unmapped(result)[f"{conf}:2"]


def test_a_short_allowusers_rule_stops_ugr_reading_them(tmp_path: Path) -> None:
    conf = write(
        tmp_path,
        "glb.allowusers[]: a b\nglb.allowusers[]: /CN=x / r\nglb.allowgroups[]: /dteam / r\n",
    )
    result = run(conf)
    assert result.data["auth"]["policy"] == [{"path": "/", "allow": ["read"], "to": [{"fqan": "/dteam"}]}]
    missing = unmapped(result)
    assert "stopped reading allowusers rules here" in missing[f"{conf}:1"]
    assert f"at the malformed one at {conf}:1" in missing[f"{conf}:2"]


def test_no_rules_with_overwrite_off_allows_all_but_modify(tmp_path: Path) -> None:
    result = run(write(tmp_path, "glb.allow_overwrite: no\n"))
    assert result.data["auth"]["policy"] == [
        {"path": "/", "allow": ["read", "list", "write", "delete", "copy"], "to": ["anyone"]}
    ]


# -- output and the command -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("paths", "options"),
    [
        (["example_a/etc/ugr/ugr.conf"], {"root": DATA / "example_a"}),
        (["example_b/ugr.conf"], {}),
        (["example_b/annotated.conf"], {}),
        (["example_c/ugr.conf"], {}),
        (["example_c/srm.conf"], {}),
        (["plugins/http.conf"], {}),
        (["plugins/dav.conf"], {}),
        (["plugins/s3.conf"], {}),
        (["plugins/azure.conf"], {}),
        (["includes/ugr.conf"], {}),
        (["authz.conf"], {}),
    ],
)
def test_output_validates_as_geofed_settings(paths: list[str], options: dict[str, Any]) -> None:
    result = run(*(DATA / p for p in paths), **options)
    loaded = settings(result)
    assert len(loaded.endpoints) == len(result.data["endpoints"])
    assert result.yaml_text().startswith("# geofed configuration converted from a Dynafed configuration")


def test_cli_round_trip(tmp_path: Path) -> None:
    out = tmp_path / "out.yaml"
    runner = CliRunner()
    conf = DATA / "example_a/etc/ugr/ugr.conf"
    result = runner.invoke(
        main, ["import-dynafed", "--root", str(DATA / "example_a"), str(conf), "-o", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert result.stdout == ""
    assert "Not mapped (11):" in result.stderr
    assert f"{conf}:4: glb.debug: 1 -- " in result.stderr
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
    checked = runner.invoke(main, ["check-config", str(out)], env=SECRET)
    assert checked.exit_code == 0, checked.output
    assert f"{out}: valid (2 endpoints, 1 policy rules)" in checked.stdout
    assert load_settings(out, environ=SECRET).federation.locate_timeout == 180


def test_cli_writes_to_stdout_and_protects_inline_secrets(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["import-dynafed", str(DATA / "example_b/ugr.conf")])
    assert result.exit_code == 0
    assert yaml.safe_load(result.stdout)["endpoints"][0]["name"] == "grpA-bucket1"
    assert "geofed import-dynafed: read" in result.stderr
    out = tmp_path / "secret.yaml"
    out.write_text("old")
    os.chmod(out, 0o644)
    result = runner.invoke(main, ["import-dynafed", str(DATA / "example_b/ugr.conf"), "-o", str(out)])
    assert result.exit_code == 0
    assert stat.S_IMODE(out.stat().st_mode) == 0o600
    checked = runner.invoke(main, ["check-config", str(out)], env=SECRET)
    assert checked.exit_code == 0, checked.output


def test_cli_exit_status_2_on_unreadable_input(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(main, ["import-dynafed", str(tmp_path / "missing.conf")])
    assert result.exit_code == 2
    assert "cannot read" in result.stderr
    result = runner.invoke(main, ["import-dynafed", str(DATA / "example_a/etc/ugr/ugr.conf")])
    assert result.exit_code == 2
    assert "--root" in result.stderr
    result = runner.invoke(main, ["import-dynafed"])
    assert result.exit_code == 2
