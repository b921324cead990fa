"""The user documentation keeps up with the code.

* Every settings key (every field of ``Settings`` and of every model nested in it, at any depth) is
  documented in ``docs/configuration.md`` under its full key path, written as a code span exactly
  as the reference tables write it: ``server.port``, ``endpoints[].prefixes[].federated``,
  ``client_networks[].location.lat``. A bare field name would prove nothing (``name``, ``url`` and
  ``timeout`` appear in any text), so the whole path is required.
* Every ``geofed`` command is shown in ``docs/quickstart.md`` as ``geofed <command>``.
"""

from __future__ import annotations

import types
import typing
from pathlib import Path

from pydantic import BaseModel

from geofed.cli import main
from geofed.config import Settings

DOCS = Path(__file__).resolve().parents[2] / "docs"


def _models_in(annotation: object) -> list[tuple[type[BaseModel], bool]]:
    """The pydantic models inside a field's type, each with whether it sits in a sequence.

    Handles ``Model``, ``Model | None``, ``tuple[Model, ...]``, ``list[Model]`` and
    ``Annotated[...]`` at any nesting.
    """
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [(annotation, False)]
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        return _models_in(args[0])
    found: list[tuple[type[BaseModel], bool]] = []
    is_sequence = origin in (tuple, list, set, frozenset)
    for arg in args:
        if arg is Ellipsis:
            continue
        for model, in_sequence in _models_in(arg):
            found.append((model, in_sequence or is_sequence))
    if origin not in (None, typing.Union, types.UnionType) and not is_sequence:
        # e.g. dict[str, Model]: not used by the settings today; fail loudly rather than guess.
        assert not found, f"unexpected container {annotation!r} in the settings models"
    return found


def settings_keys(model: type[BaseModel] = Settings, prefix: str = "") -> list[str]:
    """Every key path of the settings, depth first: ``server``, ``server.host``, ..."""
    keys: list[str] = []
    for name, field in model.model_fields.items():
        path = f"{prefix}.{name}" if prefix else name
        keys.append(path)
        for nested, in_sequence in _models_in(field.annotation):
            keys.extend(settings_keys(nested, path + ("[]" if in_sequence else "")))
    return keys


def test_the_key_walk_reaches_every_level() -> None:
    keys = settings_keys()
    # a top-level key, a nested model, a model in a list, a model in a model in a list, an optional model
    for expected in (
        "signing.secret",
        "server.trusted_proxies",
        "endpoints[].name",
        "endpoints[].prefixes[].federated",
        "endpoints[].location.lat",
        "client_networks[].location.lon",
    ):
        assert expected in keys
    assert len(keys) == len(set(keys))


def test_every_settings_key_is_in_the_configuration_reference() -> None:
    text = (DOCS / "configuration.md").read_text(encoding="utf-8")
    missing = [key for key in settings_keys() if f"`{key}`" not in text]
    assert not missing, f"docs/configuration.md does not document these settings: {missing}"


def test_every_cli_command_is_in_the_quickstart() -> None:
    text = (DOCS / "quickstart.md").read_text(encoding="utf-8")
    commands = sorted(main.commands)
    assert commands, "geofed.cli.main has no commands"
    missing = [name for name in commands if f"geofed {name}" not in text]
    assert not missing, f"docs/quickstart.md does not mention these geofed commands: {missing}"
