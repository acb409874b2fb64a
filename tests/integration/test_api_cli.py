"""``peerprog fetch`` and ``peerprog status`` against a real daemon, as subprocesses."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from peerprog.formats import read_model, read_safetensors
from peerprog.reference import digits
from tests.integration.cluster import Cluster, Daemon

NAME = digits.MODEL_NAME


def _wired() -> bool:
    from peerprog.cli.main import build_parser

    sub = next(a for a in build_parser()._actions if a.dest == "command")
    return {"fetch", "status"} <= set(sub.choices or ())


pytestmark = pytest.mark.skipif(
    not _wired(), reason="fetch and status are not wired into peerprog/cli/network.py yet"
)


def peerprog(*args: str, stderr_tty: bool = False) -> subprocess.CompletedProcess[str]:
    """Run the CLI; with ``stderr_tty``, its stderr is a terminal (a pty)."""
    cmd = [sys.executable, "-m", "peerprog", *args]
    if not stderr_tty:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    parent, child = pty.openpty()
    chunks: list[bytes] = []

    def drain() -> None:
        while True:
            try:
                data = os.read(parent, 65536)
            except OSError:
                return
            if not data:
                return
            chunks.append(data)

    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=child, text=True, timeout=120)
    finally:
        os.close(child)
        reader.join(10)
        os.close(parent)
    err = b"".join(chunks).decode(errors="replace")
    return subprocess.CompletedProcess(proc.args, proc.returncode, proc.stdout, err)


def one_line_error(proc: subprocess.CompletedProcess[str], code: int = 1) -> str:
    assert proc.returncode == code, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith("peerprog: error: ")
    return last


@pytest.fixture(scope="module")
def published(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Daemon, int]]:
    with Cluster(tmp_path_factory.mktemp("cli")) as c:
        last = len(c.publish()["levels"]) - 1
        seed = c.start(c.seed())
        yield c.start(c.node("edge", bootstrap=[seed], download_bytes_per_s=250_000)), last


@pytest.fixture
def edge(published: tuple[Daemon, int]) -> Daemon:
    return published[0]


@pytest.fixture
def last(published: tuple[Daemon, int]) -> int:
    return published[1]


def test_fetch_shows_progress_and_writes_the_exact_model(
    edge: Daemon, last: int, tmp_path: Path
) -> None:
    out = tmp_path / "model.safetensors"
    proc = peerprog("fetch", NAME, "--socket", str(edge.socket), "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) >= 2 and all(line.startswith(NAME) for line in lines), lines
    n = last + 1  # levels: "3/5 levels" counts complete levels, as levels_total does
    assert any(f"/{n} levels" in ln and "peer" in ln and "/s" in ln and "ETA" in ln for ln in lines)
    assert "\r" not in proc.stderr and "\x1b" not in proc.stderr  # plain lines, not a bar
    assert f"{NAME} v1: {n}/{n} levels (exact): wrote {out}" in proc.stdout
    tensors, meta = read_safetensors(out)
    assert meta["peerprog.exact"] == "true" and meta["peerprog.level"] == str(last)
    for k, t in read_model(digits.model_path()).items():
        assert np.array_equal(tensors[k].array, t.array)


def test_fetch_json_and_min_level(edge: Daemon, tmp_path: Path) -> None:
    out = tmp_path / "l0.safetensors"
    proc = peerprog("fetch", NAME, "--socket", str(edge.socket), "--min-level", "0",
                    "--wait", "30", "--out", str(out), "--json")  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["name"] == NAME and doc["level"] >= 0 and doc["out"] == str(out)
    assert doc["bytes"] == out.stat().st_size
    assert read_safetensors(out)[1]["peerprog.level"] == str(doc["level"])


def test_fetch_on_a_terminal_draws_a_bar(edge: Daemon, last: int) -> None:
    proc = peerprog("fetch", NAME, "--socket", str(edge.socket), stderr_tty=True)
    assert proc.returncode == 0, proc.stderr
    assert f"{last + 1}/{last + 1} levels (exact)" in proc.stdout
    assert NAME in proc.stderr and "\r" in proc.stderr  # a line redrawn in place
    assert f"{NAME} v1: {last + 1}/{last + 1} levels" in proc.stderr  # the last state drawn


def test_status_table_and_json(edge: Daemon) -> None:
    proc = peerprog("status", "--socket", str(edge.socket), "--json")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads(proc.stdout)
    assert doc["node"] == "edge" and doc["models"][0]["name"] == NAME
    proc = peerprog("status", "--socket", str(edge.socket))
    assert proc.returncode == 0, proc.stderr
    assert "node edge" in proc.stdout and NAME in proc.stdout
    assert doc["models"][0]["model_id"][:12] in proc.stdout


def test_cli_errors(edge: Daemon, tmp_path: Path) -> None:
    line = one_line_error(peerprog("status", "--socket", str(tmp_path / "none.sock")))
    assert str(tmp_path / "none.sock") in line and "no peerprog daemon" in line
    line = one_line_error(peerprog("fetch", "absent-model", "--socket", str(edge.socket),
                                   "--wait", "0.3"))  # fmt: skip
    assert "absent-model" in line
    line = one_line_error(peerprog("fetch", NAME, "--socket", str(edge.socket),
                                   "--min-level", "9", "--wait", "1"))  # fmt: skip
    assert "min_level 9" in line
    one_line_error(peerprog("fetch", "bad name", "--socket", str(edge.socket)))
    usage = peerprog("fetch", NAME, "--min-level", "top")
    assert usage.returncode == 2 and "Traceback" not in usage.stderr
