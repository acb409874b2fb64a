"""The wheel a node installs: built without setuptools warnings about our metadata, small
(no demo, no rich, no matplotlib), with the web UI's files and the bundled model inside."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    out = tmp_path_factory.mktemp("wheel")
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
         "-w", str(out), str(ROOT)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    (path,) = out.glob("peerprog-*.whl")
    return path, proc.stdout + proc.stderr


def test_build_has_no_deprecation_warning_about_our_metadata(wheel: tuple[Path, str]) -> None:
    _, log = wheel
    for banner in ("project.license", "License classifiers", "SetuptoolsDeprecationWarning"):
        assert banner not in log, log


def test_wheel_holds_the_node_and_not_the_demo(wheel: tuple[Path, str]) -> None:
    path, _ = wheel
    with zipfile.ZipFile(path) as z:
        names = z.namelist()
        (meta,) = [n for n in names if n.endswith(".dist-info/METADATA")]
        metadata = z.read(meta).decode()
    assert not [n for n in names if n.startswith("peerprog_demo/") or "/demo/" in n]
    assert "peerprog/ui/static/index.html" in names
    assert any(n.startswith("peerprog/reference/data/") for n in names)
    requires = [line for line in metadata.splitlines() if line.startswith("Requires-Dist:")]
    core = [r for r in requires if "extra ==" not in r]
    assert not [r for r in core if any(x in r for x in ("rich", "matplotlib", "torch"))], core
    assert "License-Expression: Apache-2.0" in metadata
