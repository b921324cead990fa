from __future__ import annotations

from geofed.config import EndpointSettings, PrefixMapping
from geofed.federation.namespace import Namespace, Target


def endpoint(name: str, *mappings: tuple[str, str]) -> EndpointSettings:
    return EndpointSettings(
        name=name,
        kind="webdav",
        url=f"http://{name}.example/dav",
        prefixes=tuple(PrefixMapping(federated=f, endpoint=e) for f, e in mappings),
    )


def test_translate_with_longest_prefix_winning() -> None:
    ns = Namespace([endpoint("a", ("/atlas", "/data"), ("/atlas/scratch", "/tmp/scr"))])
    assert ns.translate("/atlas/f.root", "a") == "/data/f.root"
    assert ns.translate("/atlas/scratch/x", "a") == "/tmp/scr/x"
    assert ns.translate("/atlas", "a") == "/data"
    assert ns.translate("/atlasx/f", "a") is None
    assert ns.translate("/belle/f", "a") is None


def test_root_mapping_and_root_endpoint_prefix() -> None:
    ns = Namespace([endpoint("a", ("/", "/")), endpoint("b", ("/atlas", "/"))])
    assert ns.translate("/x/y", "a") == "/x/y"
    assert ns.translate("/atlas/y", "b") == "/y"
    assert ns.translate("/atlas", "b") == "/"


def test_targets_lists_every_serving_endpoint() -> None:
    ns = Namespace(
        [endpoint("a", ("/atlas", "/d")), endpoint("b", ("/atlas", "/e")), endpoint("c", ("/b", "/"))]
    )
    assert ns.targets("/atlas/f", ["a", "b", "c"]) == [Target("a", "/d/f"), Target("b", "/e/f")]
    assert ns.targets("/atlas/f", ["b"]) == [Target("b", "/e/f")]


def test_mount_points_include_every_ancestor() -> None:
    ns = Namespace([endpoint("a", ("/vo/atlas/disk", "/")), endpoint("b", ("/vo/belle", "/"))])
    assert ns.is_mount_point("/")
    assert ns.is_mount_point("/vo")
    assert ns.is_mount_point("/vo/atlas")
    assert ns.is_mount_point("/vo/atlas/disk")
    assert not ns.is_mount_point("/vo/atlas/disk/x")
    assert ns.mount_children("/") == {"vo"}
    assert ns.mount_children("/vo") == {"atlas", "belle"}
    assert ns.mount_children("/vo/atlas") == {"disk"}
    assert ns.mount_children("/vo/belle") == frozenset()


def test_reverse_translation() -> None:
    ns = Namespace([endpoint("a", ("/atlas", "/data"), ("/atlas/scratch", "/tmp"))])
    assert ns.federated_paths("a", "/data/x") == ["/atlas/x"]
    assert ns.federated_paths("a", "/tmp/y") == ["/atlas/scratch/y"]
    assert ns.federated_paths("a", "/elsewhere") == []
