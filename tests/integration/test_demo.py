"""``peerprog demo``, shortened (two edges, fast links), through a real subprocess whose
stdout is not a terminal: it must run to the end and write a sound report and a chart.
Plus two quick checks of what the demo relies on: the configs it writes are valid node
configs, and it finds its figures in the daemon's ``/metrics``."""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
from peerprog_demo.localapi import bytes_by_source, bytes_uploaded, parse_metrics
from peerprog_demo.swarm import config_text, plan

from peerprog.config import parse_config
from peerprog.manifest import generate_key_file
from peerprog.reference import digits

RATE = 400_000  # bytes/s: the 1 MB model then takes a few seconds


def test_short_demo_writes_a_sound_report(tmp_path: Path) -> None:
    out = tmp_path / "report"
    args = ["--edges", "2", "--rate", str(RATE), "--out", str(out), "--timeout", "120"]
    proc = subprocess.run(
        [sys.executable, "-m", "peerprog", "demo", *args],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=tmp_path,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr, proc.stderr
    assert "reached level 0" in proc.stdout  # plain log lines, not a live view
    assert str(out / "report.json") in proc.stdout
    assert "/ui/infer.html?model=digits-cnn#token=" in proc.stdout  # the first edge's page
    assert "Every edge had a usable model (level 0, " in proc.stdout

    doc = json.loads((out / "report.json").read_text())
    levels = doc["levels"]
    assert len(levels) == doc["model"]["levels_total"] >= 2
    assert doc["model"]["metric"] == "accuracy"

    # Accuracy never falls from one level to the next (give or take one test image, as an
    # approximation may classify one image better than the full model), and the last level
    # is the full model's.
    one_image = 1 / len(digits.load_test_split()[1])
    accuracies = [lv["accuracy"] for lv in levels]
    assert all(b >= a - one_image for a, b in itertools.pairwise(accuracies))
    assert accuracies[-1] == doc["full_model"]["accuracy"] > 0.9
    assert levels[-1]["rel_rms_error"] == 0.0

    # Every edge reached every level, level 0 well before the last one.
    for lv in levels:
        assert set(lv["reached_s"]) == {"edge-1", "edge-2"}
        assert all(t is not None and t > 0 for t in lv["reached_s"].values())
    assert levels[0]["last_reached_s"] < levels[-1]["last_reached_s"]
    assert all(e["complete_s"] is not None for e in doc["edges"])

    # The app on edge-1 saw the exact model, scored as the full model.
    obs = doc["app"]["observations"]
    assert obs and obs[-1]["level"] == len(levels) - 1
    assert obs[-1]["accuracy"] == doc["full_model"]["accuracy"]

    # The plain download was measured in this run, over the same cap.
    plain = doc["plain_download"]
    assert plain["bytes"] == digits.model_path().stat().st_size
    assert plain["seconds"] is not None and plain["seconds"] > plain["bytes"] / RATE * 0.7
    assert plain["accuracy"] == doc["full_model"]["accuracy"]

    assert doc["seed"]["upload_bytes"] > 0
    assert doc["seed"]["model_bytes"] == doc["model"]["total_bytes"]

    chart = Path(doc["files"]["chart"])
    assert chart.exists() and chart.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_demo_of_a_model_without_a_task_does_not_call_it_usable(tmp_path: Path) -> None:
    """With --model only the weights' error can be measured: the summary says so."""
    rng = np.random.default_rng(0)
    model = tmp_path / "mine.npz"
    np.savez(model, w=rng.standard_normal((256, 256)).astype(np.float32))
    out = tmp_path / "report"
    args = ["--edges", "1", "--rate", str(RATE * 5), "--out", str(out), "--model", str(model)]
    proc = subprocess.run(
        [sys.executable, "-m", "peerprog", "demo", *args],
        capture_output=True, text=True, timeout=240, cwd=tmp_path,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "usable" not in proc.stdout
    assert "Every edge had level 0 (weights' relative RMS error " in proc.stdout
    assert "/ui/#token=" in proc.stdout  # the dashboard: no page scores this model


def test_demo_configs_are_valid_node_configs(tmp_path: Path) -> None:
    public = generate_key_file(tmp_path / "key.pem")
    specs = plan(
        tmp_path, tmp_path, edges=2, rate=1234, public_key=public, seed_store=tmp_path / "seed"
    )
    seed, edge = (parse_config(tomllib.loads(config_text(s))) for s in specs[:2])
    assert seed.limits.upload_bytes_per_s == 1234 and seed.limits.download_bytes_per_s == 0
    assert edge.limits.download_bytes_per_s == 1234 and edge.limits.upload_bytes_per_s == 0
    assert edge.peers.bootstrap == [specs[0].url]
    assert edge.trust.publishers == seed.trust.publishers == [public]


def test_demo_reads_the_metrics_it_needs() -> None:
    text = "\n".join(
        [
            "# HELP peerprog_received_bytes_total Verified bytes received, by source kind.",
            'peerprog_received_bytes_total{name="m",version="1",model_id="ab",source="seed"} 300',
            'peerprog_received_bytes_total{name="m",version="1",model_id="ab",source="peer"} 700',
            'peerprog_received_bytes_total{name="other",version="1",model_id="cd",source="peer"} 5',
            'peerprog_model_uploaded_bytes_total{name="m",version="1",model_id="ab"} 1000',
            "peerprog_uploaded_bytes_total 1005",
        ]
    )
    samples = parse_metrics(text)
    assert bytes_by_source(samples, "m") == {"seed": 300, "peer": 700}
    assert bytes_uploaded(samples, "m") == 1000
    assert bytes_uploaded(samples, "nothing") is None
