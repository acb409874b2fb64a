"""The benchmark's small language model: a byte-level GPT on Python's standard-library
sources, its corpus, and its held-out split.

Shared by ``scripts/train_lm.py`` (which trains it) and :mod:`bench.models` (which scores
codecs on it). Needs torch (the ``bench`` extra); :mod:`peerprog` never imports this.

* Corpus: the top-level ``*.py`` files of the running interpreter's standard library
  (``sysconfig.get_paths()["stdlib"]``), sorted by name. A file is held out when its name's
  SHA-256 ends in a byte below :data:`HELD_OUT_BYTE` (about 1 file in 8); the others train.
  The split (file names, sizes, SHA-256 of each file) is written beside the weights, and the
  loader checks it, so a different Python whose sources differ is noticed, not ignored.
* Model: :class:`ByteGPT`, pre-norm transformer, 256 byte tokens, learned positions,
  ``D_MODEL`` 256, ``N_LAYERS`` 4, ``N_HEADS`` 4, context ``CONTEXT`` 128: 3.3M parameters.
"""

from __future__ import annotations

import hashlib
import json
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

VOCAB = 256
D_MODEL = 256
N_LAYERS = 4
N_HEADS = 4
CONTEXT = 128
HELD_OUT_BYTE = 32  # of 256: about 1/8 of the files
SEED = 20261201

CACHE = Path(os.environ.get("PEERPROG_BENCH_CACHE", Path.home() / ".cache" / "peerprog-bench"))
WEIGHTS = "byte_gpt.safetensors"
SPLIT = "byte_gpt_split.json"


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(D_MODEL)
        self.q = nn.Linear(D_MODEL, D_MODEL)
        self.k = nn.Linear(D_MODEL, D_MODEL)
        self.v = nn.Linear(D_MODEL, D_MODEL)
        self.o = nn.Linear(D_MODEL, D_MODEL)
        self.ln2 = nn.LayerNorm(D_MODEL)
        self.up = nn.Linear(D_MODEL, 4 * D_MODEL)
        self.down = nn.Linear(4 * D_MODEL, D_MODEL)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        h = self.ln1(x)

        def heads(y: torch.Tensor) -> torch.Tensor:
            return y.view(b, t, N_HEADS, d // N_HEADS).transpose(1, 2)

        a = F.scaled_dot_product_attention(
            heads(self.q(h)), heads(self.k(h)), heads(self.v(h)), is_causal=True
        )
        x = x + self.o(a.transpose(1, 2).reshape(b, t, d))
        return x + self.down(F.gelu(self.up(self.ln2(x))))


class ByteGPT(nn.Module):
    """Logits over the next byte for each position of a (batch, time) uint8 tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.tok = nn.Embedding(VOCAB, D_MODEL)
        self.pos = nn.Embedding(CONTEXT, D_MODEL)
        self.blocks = nn.ModuleList(Block() for _ in range(N_LAYERS))
        self.ln_f = nn.LayerNorm(D_MODEL)
        self.head = nn.Linear(D_MODEL, VOCAB, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        t = idx.shape[1]
        x = self.tok(idx) + self.pos(torch.arange(t, device=idx.device))
        for blk in self.blocks:
            x = blk(x)
        out: torch.Tensor = self.head(self.ln_f(x))
        return out


@dataclass(frozen=True)
class Corpus:
    train: np.ndarray[Any, np.dtype[np.uint8]]
    held_out: np.ndarray[Any, np.dtype[np.uint8]]
    split: dict[str, Any]


def _held_out(name: str) -> bool:
    return hashlib.sha256(name.encode()).digest()[-1] < HELD_OUT_BYTE


def corpus(stdlib: Path | None = None) -> Corpus:
    """The standard-library corpus and its split (see the module docstring)."""
    root = Path(stdlib or sysconfig.get_paths()["stdlib"])
    files = sorted(p for p in root.glob("*.py") if p.is_file())
    if not files:
        raise SystemExit(f"no Python sources in {root}")
    train, held, entries = [], [], []
    for p in files:
        data = p.read_bytes()
        held_out = _held_out(p.name)
        (held if held_out else train).append(data)
        entries.append(
            {
                "file": p.name,
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "held_out": held_out,
            }
        )
    split = {
        "rule": f"held out when sha256(file name)[-1] < {HELD_OUT_BYTE}",
        "stdlib": str(root),
        "files": entries,
    }
    return Corpus(
        np.frombuffer(b"\n".join(train), np.uint8).copy(),
        np.frombuffer(b"\n".join(held), np.uint8).copy(),
        split,
    )


def eval_windows(held_out: np.ndarray[Any, np.dtype[np.uint8]], n: int = 256) -> torch.Tensor:
    """``n`` fixed windows of ``CONTEXT + 1`` bytes, evenly spaced over the held-out text."""
    starts = np.linspace(0, len(held_out) - CONTEXT - 2, n).astype(np.int64)
    rows = np.stack([held_out[s : s + CONTEXT + 1] for s in starts])
    return torch.from_numpy(rows.astype(np.int64))


def split_digest(split: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(split["files"], sort_keys=True).encode()).hexdigest()
