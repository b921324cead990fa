"""``geofed import-dynafed``: a Dynafed (UGR) configuration converted into geofed's YAML settings.

:func:`import_dynafed` reads ``ugr.conf`` and the files it includes (:mod:`.parser`), maps the
global keys (:mod:`.convert`), the location plugins (:mod:`.endpoints`) and the authorization rules
(:mod:`.authz`), and validates the result as geofed settings. The report lists what could not be
mapped, with file:line, the Dynafed code defaults applied, and where geofed behaves differently.
See docs/migrating-from-dynafed.md.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from geofed.dynafed.convert import ImportResult, convert
from geofed.dynafed.parser import DynafedInputError, read_config

__all__ = ["DynafedInputError", "ImportResult", "import_dynafed"]


def import_dynafed(
    paths: Sequence[Path],
    *,
    root: Path | None = None,
    ignore_missing_includes: bool = False,
    anonymous_user: str = "nobody",
) -> ImportResult:
    """Read and convert a Dynafed configuration; the result is validated as geofed settings.

    Raises :class:`DynafedInputError` when the input cannot be read (or is no Dynafed
    configuration), and :class:`geofed.errors.ConfigError` if the converted settings were invalid.
    """
    config = read_config(paths, root=root, ignore_missing_includes=ignore_missing_includes)
    result = convert(config, anonymous_user=anonymous_user)
    result.validate()
    return result
