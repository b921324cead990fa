"""The wheel a site installs: built from this tree, installed with pip into a fresh virtual
environment, it gives a working ``geofed`` command with its embedded demo configuration."""

from __future__ import annotations

import subprocess
import sys
import venv
from pathlib import Path

import pytest

from geofed import __version__

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]


def run(*argv: str | Path, cwd: Path | None = None, timeout: float = 300) -> str:
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, cwd=cwd, timeout=timeout)
    assert done.returncode == 0, f"{argv}: {done.stdout[-2000:]}{done.stderr[-2000:]}"
    return done.stdout


def test_the_wheel_installs_and_runs(tmp_path: Path) -> None:
    dist = tmp_path / "dist"
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-w", dist, ROOT)
    wheels = list(dist.glob("geofed-*.whl"))
    assert len(wheels) == 1, wheels
    target = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True).create(target)
    run(target / "bin" / "pip", "install", "--quiet", wheels[0])
    assert run(target / "bin" / "geofed", "--version").strip().endswith(__version__)
    # the demo sites ship inside the package, and the configuration commands work from the wheel
    demo = tmp_path / "demo.yaml"
    demo.write_text("signing: {secret: 0123456789abcdef}\nendpoints: []\n")
    assert "valid (0 endpoints" in run(target / "bin" / "geofed", "check-config", demo)
    listing = run(
        target / "bin" / "python", "-c", "import geofed, pathlib; print(pathlib.Path(geofed.__file__).parent)"
    )
    assert (Path(listing.strip()) / "py.typed").exists()
