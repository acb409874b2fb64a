"""The pure parts import no I/O framework and no torch (DESIGN.md "Parts")."""

from __future__ import annotations

import subprocess
import sys

import pytest

FORBIDDEN = ("asyncio", "aiohttp", "torch")


@pytest.mark.parametrize("module", ["peerprog.codec", "peerprog.manifest", "peerprog.swarm"])
def test_pure_part_imports_no_io(module: str) -> None:
    code = (
        f"import sys, {module}\n"
        f"bad = [m for m in {FORBIDDEN!r} if m in sys.modules]\n"
        "print(','.join(bad))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"{module} imports {out.stdout.strip()}"


def test_package_import_does_not_pull_torch_or_aiohttp() -> None:
    code = "import sys, peerprog; print(any(m in sys.modules for m in ('torch', 'aiohttp')))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
