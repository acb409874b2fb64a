"""Train the benchmarks' small transformer LM (:mod:`bench.lm`) on Python's own sources.

Needs the ``bench`` extra (torch, safetensors). CPU only, a fixed seed, deterministic torch
algorithms and a fixed thread count, so running it again rebuilds (nearly) the same
weights; the benchmarks only compare codecs against whatever full model is cached, so
bit-identical rebuilds are not required.

Writes into the cache folder (``$PEERPROG_BENCH_CACHE``, default
``~/.cache/peerprog-bench/``):

* ``byte_gpt.safetensors`` — the float32 state dict, metadata ``seed``, ``steps``,
  ``split_sha256``, final train and held-out loss;
* ``byte_gpt_split.json`` — the held-out split (file names, sizes, SHA-256).

Usage (about 20 minutes on one core): ``nice -n 10 python scripts/train_lm.py [--steps N]``
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import save_file

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from bench import lm


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=700)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--out", type=Path, default=lm.CACHE)
    args = ap.parse_args()

    torch.manual_seed(lm.SEED)
    torch.set_num_threads(args.threads)
    torch.use_deterministic_algorithms(True)
    rng = np.random.default_rng(lm.SEED)
    data = lm.corpus()
    print(
        f"train {len(data.train):,} bytes, held out {len(data.held_out):,} bytes",
        file=sys.stderr,
    )
    model = lm.ByteGPT()
    nparams = sum(p.numel() for p in model.parameters())
    print(f"{nparams:,} parameters", file=sys.stderr)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
    )
    warm = max(1, args.steps // 20)

    def lr_at(step: int) -> float:
        if step < warm:
            return args.lr * (step + 1) / warm
        frac = (step - warm) / max(1, args.steps - warm)
        return args.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * frac)))

    held = lm.eval_windows(data.held_out, 128)
    train = torch.from_numpy(data.train.astype(np.int64))
    t0 = time.time()
    loss_ema = float("nan")
    for step in range(args.steps):
        starts = rng.integers(0, len(train) - lm.CONTEXT - 1, args.batch)
        batch = torch.stack([train[s : s + lm.CONTEXT + 1] for s in starts])
        for g in opt.param_groups:
            g["lr"] = lr_at(step)
        logits = model(batch[:, :-1])
        loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, lm.VOCAB), batch[:, 1:].reshape(-1)
        )
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        loss_ema = loss.item() if step == 0 else 0.98 * loss_ema + 0.02 * loss.item()
        if step % 100 == 0 or step == args.steps - 1:
            print(
                f"step {step} loss {loss_ema:.3f} ({time.time() - t0:.0f} s)",
                file=sys.stderr,
                flush=True,
            )
    model.eval()
    with torch.no_grad():
        logits = model(held[:, :-1])
        held_loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, lm.VOCAB), held[:, 1:].reshape(-1)
        ).item()
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / lm.SPLIT).write_text(json.dumps(data.split, indent=1, sort_keys=True))
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    meta = {
        "seed": str(lm.SEED),
        "steps": str(args.steps),
        "split_sha256": lm.split_digest(data.split),
        "train_loss": f"{loss_ema:.4f}",
        "held_out_loss": f"{held_loss:.4f}",
    }
    save_file(state, str(args.out / lm.WEIGHTS), metadata=meta)
    print(json.dumps({"params": nparams, **meta, "seconds": round(time.time() - t0)}))


if __name__ == "__main__":
    main()
