"""``peerprog calibrate`` on transformers repositories (a causal LM and a sentence-transformers
encoder without a head), then ``publish --sensitivity`` with the file it wrote: the names
match the published tensors, the plan follows the file, the last level is still exact;
and a bad text, folder or sensitivity file exits 1 naming the problem."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from peerprog.formats.safetensors import read_sensitivity
from peerprog.store import Store
from tests.integration.cluster import run_cli
from tests.repos import SENTENCES, gpt2_repo, sentence_transformer_repo


def failing(*args: str) -> str:
    """Run a peerprog command that must fail with exit 1; its stderr."""
    proc = subprocess.run(
        [sys.executable, "-m", "peerprog", *args], capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 1, proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stderr


@pytest.mark.parametrize(
    ("build", "method"), [(gpt2_repo, "grad2"), (sentence_transformer_repo, "fisher")]
)
def test_calibrate_then_publish(tmp_path: Path, build, method: str) -> None:  # type: ignore[no-untyped-def]
    repo = build(tmp_path / "repo")
    text = tmp_path / "text.txt"
    text.write_text(" ".join(SENTENCES * 30))
    sens = tmp_path / "sens.safetensors"
    doc = json.loads(
        run_cli(
            "calibrate",
            str(repo),
            "--text",
            str(text),
            "--out",
            str(sens),
            "--method",
            method,
            "--json",
        )
    )
    assert doc["tensors"] > 0 and doc["unmatched"] == [] and doc["tokens"] > 100
    weights = read_sensitivity(sens)
    assert all(k.endswith(".safetensors/" + k.split(".safetensors/")[1]) for k in weights)
    run_cli("keygen", str(tmp_path / "key"))
    store = tmp_path / "store"
    common = ["--key", str(tmp_path / "key"), "--store", str(store), "--json"]
    out = json.loads(
        run_cli("publish", str(repo), "--name", "calibrated", "--sensitivity", str(sens), *common)
    )
    plain = json.loads(run_cli("publish", str(repo), "--name", "plain", *common))
    manifest = Store(store).load_manifest(out["model_id"], None).manifest
    names = {t.name for t in manifest.tensors}
    assert set(weights) <= names  # every key is a published tensor name
    assert out["levels"] != plain["levels"]  # the file changed the plan
    dest = tmp_path / "exact"
    run_cli(
        "reconstruct", out["model_id"], "--store", str(store), "--level", "max", "--out", str(dest)
    )
    for f in repo.rglob("*"):
        if f.is_file():
            assert (dest / f.relative_to(repo)).read_bytes() == f.read_bytes(), f


def test_bad_input_is_named(tmp_path: Path) -> None:
    repo = gpt2_repo(tmp_path / "repo")
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    err = failing("calibrate", str(repo), "--text", str(empty), "--out", str(tmp_path / "s"))
    assert "no tokens" in err
    err = failing("calibrate", str(tmp_path), "--text", str(empty), "--out", str(tmp_path / "s"))
    assert "no config.json" in err
    err = failing("calibrate", str(repo), "--text", str(tmp_path / "absent"), "--out", "s")
    assert "absent" in err
    run_cli("keygen", str(tmp_path / "key"))
    common = ["--name", "m", "--key", str(tmp_path / "key"), "--store", str(tmp_path / "store")]
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file")
    err = failing("publish", str(repo), "--sensitivity", str(junk), *common)
    assert "junk.safetensors" in err and "not a sensitivity file" in err
    wrong = tmp_path / "wrong.safetensors"
    from peerprog.calibrate import write

    write(wrong, {"model.safetensors/no.such.weight": np.ones((1, 1))})
    err = failing("publish", str(repo), "--sensitivity", str(wrong), *common)
    assert "no.such.weight" in err and "does not have" in err
