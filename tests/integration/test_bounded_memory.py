"""Publish and reconstruct stream a model tensor by tensor: both run with their data
segment capped below the model's size (RLIMIT_DATA: the heap and private memory, not the
file pages they map) and still produce the model bit for bit."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

from bench.size import COLS, ROWS, make_model, tensor_digest

TENSORS = 16  # 16 × 32 MiB = 512 MiB of bf16 weights
# publish peaks near 330 MiB of data segment here (55 of them numpy and the interpreter),
# how near depends on how the encoding threads overlap: the cap leaves room for the worst
# overlap and stays below the model
CAP = 448 << 20


def capped(*args: str) -> subprocess.CompletedProcess[str]:
    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_DATA, (CAP, CAP))

    env = {**os.environ, "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}
    return subprocess.run(
        [sys.executable, "-m", "peerprog", *args],
        preexec_fn=limit,
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


def test_publish_and_reconstruct_a_model_larger_than_their_memory_cap(tmp_path: Path) -> None:
    model = tmp_path / "big.safetensors"
    size = make_model(model, TENSORS)
    assert size > CAP and ROWS * COLS * 2 * 2 < CAP
    key = tmp_path / "k.pem"
    subprocess.run([sys.executable, "-m", "peerprog", "keygen", str(key)], check=True)
    store = tmp_path / "store"
    proc = capped("publish", str(model), "--name", "big", "--key", str(key), "--store", str(store))
    assert proc.returncode == 0, proc.stderr
    out = tmp_path / "out.safetensors"
    proc = capped("reconstruct", "--store", str(store), "big", "--level", "max", "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert tensor_digest(out) == tensor_digest(model)
    # and the cap is real: reading the whole model into memory fails under it
    whole = f"open({str(model)!r}, 'rb').read()"
    proc = subprocess.run(
        [sys.executable, "-c", whole],
        preexec_fn=lambda: resource.setrlimit(resource.RLIMIT_DATA, (CAP, CAP)),
        capture_output=True,
    )
    assert proc.returncode != 0 and b"MemoryError" in proc.stderr
