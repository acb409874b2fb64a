"""The systemd unit as shipped: it passes ``systemd-analyze verify``, rates at most 3.0 on
``systemd-analyze security``, and its user comes from the shipped sysusers file. Skipped,
saying why, where systemd's tools are missing."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

DAEMON = Path(__file__).resolve().parents[2] / "daemon"
UNIT = DAEMON / "peerprog.service"
INSTALLED = "/opt/peerprog/bin/peerprog"

analyze = shutil.which("systemd-analyze")
pytestmark = pytest.mark.skipif(analyze is None, reason="systemd-analyze is not installed")


def installed_unit(tmp_path: Path) -> Path:
    """The unit with ExecStart at this test's ``peerprog`` instead of /opt/peerprog's (the
    one thing verify checks on the host that the install steps put there)."""
    text = UNIT.read_text()
    assert f"ExecStart={INSTALLED} " in text
    here = Path(sys.executable).parent / "peerprog"
    assert here.exists(), here
    path = tmp_path / "peerprog.service"
    path.write_text(text.replace(INSTALLED, str(here)))
    return path


def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    assert analyze is not None
    proc = subprocess.run(
        [analyze, "verify", str(installed_unit(tmp_path))],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "peerprog.service" not in proc.stderr, proc.stderr  # no warning about it either


def test_unit_rates_at_most_3_on_systemd_analyze_security(tmp_path: Path) -> None:
    assert analyze is not None
    proc = subprocess.run(
        [analyze, "security", "--offline=true", "--no-pager", str(installed_unit(tmp_path))],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", proc.stdout + proc.stderr)
    if found is None:
        pytest.skip(f"this systemd-analyze cannot rate a unit file offline: {proc.stderr[:200]}")
    assert float(found.group(1)) <= 3.0, proc.stdout


def test_unit_declares_user_group_and_open_files_limit() -> None:
    text = UNIT.read_text()
    for line in ("User=peerprog", "Group=peerprog", "LimitNOFILE="):
        assert re.search(rf"^{line}", text, re.M), line
    sysusers = shutil.which("systemd-sysusers")
    if sysusers is None:
        pytest.skip("systemd-sysusers is not installed")
    proc = subprocess.run(
        [sysusers, "--dry-run", str(DAEMON / "peerprog.sysusers")],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert proc.returncode == 0 and "Failed" not in proc.stderr, proc.stderr
