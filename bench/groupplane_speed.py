"""groupplane's speed per level on one synthetic tensor (CPU time of one process), and the
functions that take the time (cProfile).

    nice -n 10 python -m bench.groupplane_speed --dtype float32 --rows 1024 --cols 2048
"""

from __future__ import annotations

import argparse
import cProfile
import json
import pstats
import time

import numpy as np

from bench.models import bf16_bits
from peerprog.codec import groupplane as gp
from peerprog.codec.base import RawTensor


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--rows", type=int, default=1024)
    ap.add_argument("--cols", type=int, default=2048)
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    w = (rng.standard_normal((args.rows, args.cols)) * 0.02).astype(np.float32)
    arr = bf16_bits(w) if args.dtype == "bfloat16" else w.astype(args.dtype)
    t = RawTensor(args.dtype, arr)
    pl = gp.plan(None, [gp.analyse("w", t)])
    t0 = time.process_time()
    tp, pieces = gp.encode_tensor(t, pl.tensors["w"], pl.params, "w")
    enc = time.process_time() - t0
    rows = []
    prof = cProfile.Profile()
    prior = None
    for n in range(len(pieces)):
        t0 = time.process_time()
        prof.enable()
        prior = gp.decode_tensor(pl.params, args.dtype, arr.shape, tp, pieces[: n + 1], prior)
        prof.disable()
        dt = time.process_time() - t0
        rows.append({"level": n, "bytes": len(pieces[n]), "ns_per_weight": dt / arr.size * 1e9})
    assert np.array_equal(prior, arr)
    print(json.dumps({"params": tp, "encode_MB_per_s": arr.nbytes / enc / 1e6, "levels": rows}))
    pstats.Stats(prof).sort_stats("tottime").print_stats(8)


if __name__ == "__main__":
    main()
