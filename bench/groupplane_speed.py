"""groupplane's speed per core, C kernels vs numpy: encode, and decode as a node does (CPU
time of this one-threaded process, the median of ``--reps``), on synthetic normal(0, 0.02)
tensors and optionally the real models (``--models``, needs the bench extra). Checks on the
way that both backends give identical pieces and decodes and that the last level is
bit-exact. ``--write`` puts the table into ``BENCHMARKS.md``.

    PYTHONPATH=. nice -n 10 python -m bench.groupplane_speed --dtypes bfloat16,float32
    PYTHONPATH=. nice -n 10 python -m bench.groupplane_speed --models effnet,lm --reps 1
    PYTHONPATH=. nice -n 10 python -m bench.groupplane_speed --profile   # cProfile, numpy

MB/s are of the tensor's source bytes (a bf16 weight is 2 bytes) per second of CPU time.
Decodes:

* per level: the whole tensor's bytes over that level's decode time from the level before;
* all levels one by one: the tensor's bytes over the sum of every level's time (the whole
  ladder decoded as it arrives, level by level);
* all levels in one pass: every level after level 0 decoded from level 0's array in one
  pass (a node that built level 0 and then received the rest at once);
* exact directly: the last level with no prior, scales, every plane step and the remainder
  in one pass (all pieces at hand: a node loading the exact level from disk; this is what
  the column "all levels from scratch" measured before).
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")  # one core: no helper threads in the CPU time

import argparse  # noqa: E402
import cProfile  # noqa: E402
import json  # noqa: E402
import pstats  # noqa: E402
import statistics  # noqa: E402
import time  # noqa: E402
from collections.abc import Callable, Mapping  # noqa: E402
from typing import Any  # noqa: E402

import numpy as np  # noqa: E402

from bench.report import machine, table, write_section  # noqa: E402
from peerprog.codec import groupplane as gp  # noqa: E402
from peerprog.codec.base import RawTensor  # noqa: E402


def bf16(x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    u = np.ascontiguousarray(x, np.float32).view(np.uint32)
    r = (u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    return r.astype(np.uint16)


def synthetic(dtype: str, rows: int, cols: int) -> RawTensor:
    w = (np.random.default_rng(0).standard_normal((rows, cols)) * 0.02).astype(np.float32)
    return RawTensor(dtype, bf16(w) if dtype == "bfloat16" else w.astype(dtype))


def median(f: Callable[[], Any], reps: int) -> tuple[float, Any]:
    """(the median CPU seconds of ``reps`` runs, the last result)."""
    times, out = [], None
    for _ in range(reps):
        t0 = time.process_time()
        out = f()
        times.append(time.process_time() - t0)
    return statistics.median(times), out


def run(
    tensors: Mapping[str, RawTensor], backend: str, reps: int
) -> tuple[dict[str, Any], dict[str, list[bytes]], list[np.ndarray[Any, Any]]]:
    """Encode every tensor, then decode level by level from the prior; times per level."""
    gp.set_backend(backend)
    stats = [gp.analyse(k, t) for k, t in tensors.items()]
    pl = gp.plan(None, stats)
    nlevels = int(pl.params["levels"])  # type: ignore[arg-type]

    def encode() -> dict[str, list[bytes]]:
        return {
            k: [bytes(p) for p in gp.encode_tensor(t, pl.tensors[k], pl.params, k)[1]]
            for k, t in tensors.items()
        }

    t_enc, pieces = median(encode, reps)
    level_t, level_bytes = [], []
    priors: dict[str, Any] = dict.fromkeys(tensors)
    first: dict[str, Any] = {}
    for n in range(nlevels):

        def level(n: int = n, priors: dict[str, Any] = priors) -> dict[str, Any]:
            return {
                k: gp.decode_tensor(
                    pl.params,
                    t.dtype,
                    t.array.shape,
                    pl.tensors[k],
                    pieces[k][: n + 1],
                    priors[k],
                    k,
                )
                for k, t in tensors.items()
            }

        dt, out = median(level, reps)
        priors = out
        first = first or out
        level_t.append(dt)
        level_bytes.append(sum(len(p[n]) for p in pieces.values()))
    for k, t in tensors.items():
        assert priors[k].tobytes() == t.array.tobytes(), f"{k}: last level not exact"

    def one_pass() -> dict[str, Any]:
        return {
            k: gp.decode_tensor(
                pl.params,
                t.dtype,
                t.array.shape,
                pl.tensors[k],
                pieces[k],
                first[k],
                k,
                prior_level=0,
            )
            for k, t in tensors.items()
        }

    t_one, full = median(one_pass, reps)
    for k, t in tensors.items():
        assert full[k].tobytes() == t.array.tobytes(), f"{k}: one pass not exact"

    def scratch() -> dict[str, Any]:
        return {
            k: gp.decode_tensor(
                pl.params, t.dtype, t.array.shape, pl.tensors[k], pieces[k], None, k
            )
            for k, t in tensors.items()
        }

    t_scratch, full = median(scratch, reps)
    for k, t in tensors.items():
        assert full[k].tobytes() == t.array.tobytes(), f"{k}: from scratch not exact"
    nbytes = sum(t.array.nbytes for t in tensors.values())
    planes = [pl.tensors[k].get("planes") for k in tensors]
    res = {
        "backend": backend,
        "bytes": nbytes,
        "planes": planes[0] if len(planes) == 1 else None,
        "encode_s": t_enc,
        "levels": [{"bytes": b, "s": s} for b, s in zip(level_bytes, level_t, strict=True)],
        "one_pass_s": t_one,
        "scratch_s": t_scratch,
    }
    return res, pieces, [priors[k] for k in tensors]


def rows_for(name: str, results: list[dict[str, Any]]) -> list[list[object]]:
    out: list[list[object]] = []
    for r in results:
        mb = r["bytes"] / 1e6
        levels = r["levels"]
        total = sum(lv["s"] for lv in levels)
        per = ", ".join(f"{mb / lv['s']:,.0f}" for lv in levels)
        out.append(
            [
                name,
                {"c": "C", "numpy": "numpy"}[r["backend"]],
                f"{mb / r['encode_s']:,.0f}",
                per,
                f"{mb / total:,.0f}",
                f"{mb / r['one_pass_s']:,.0f}",
                f"{mb / r['scratch_s']:,.0f}",
            ]
        )
    return out


HEADERS = [
    "tensor",
    "kernels",
    "encode MB/s",
    "decode MB/s per level (0, 1, …, last = remainder)",
    "all levels one by one",
    "all levels in one pass (from level 0)",
    "exact directly (from scratch)",
]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--dtypes", default="bfloat16,float32")
    ap.add_argument("--rows", type=int, default=8192)
    ap.add_argument("--cols", type=int, default=2048)
    ap.add_argument("--backends", default=",".join(gp.backends()))
    ap.add_argument("--reps", type=int, default=3)
    ap.add_argument("--models", default="", help="effnet,lm (bench extra and trained LM)")
    ap.add_argument("--profile", action="store_true", help="cProfile one numpy decode")
    ap.add_argument("--write", action="store_true", help="tables into bench/CODEC_NOTES.md")
    args = ap.parse_args()
    backends = args.backends.split(",")
    cases: list[tuple[str, dict[str, RawTensor]]] = []
    for d in filter(None, args.dtypes.split(",")):
        cases.append((f"{d} {args.rows}×{args.cols}", {"w": synthetic(d, args.rows, args.cols)}))
    if args.models:
        from bench import models

        for m in args.models.split(","):
            for d in ("float32", "bfloat16"):
                model = models.effnet(d) if m == "effnet" else models.lm_model(d)
                cases.append((f"{model.name} {d} (whole model)", model.tensors))
    rows: list[list[object]] = []
    report: list[dict[str, Any]] = []
    for name, tensors in cases:
        results, ref = [], None
        for b in backends:
            res, pieces, outs = run(tensors, b, args.reps)
            res["itemsize"] = next(iter(tensors.values())).array.itemsize
            if ref is None:
                ref = (pieces, outs)
            else:  # the backends agree byte for byte
                assert pieces == ref[0], f"{name}: {b} pieces differ"
                assert all(a.tobytes() == o.tobytes() for a, o in zip(outs, ref[1], strict=True))
            results.append(res)
            print(json.dumps({"tensor": name, **res}), flush=True)
        rows += rows_for(name, results)
        report.append({"tensor": name, "results": results})
    md = table(HEADERS, rows)
    print(md)
    if args.profile:
        gp.set_backend("numpy")
        t = synthetic("float32", 1024, 2048)
        pl = gp.plan(None, [gp.analyse("w", t)])
        tp, pieces = gp.encode_tensor(t, pl.tensors["w"], pl.params, "w")
        prof = cProfile.Profile()
        prior = None
        for n in range(len(pieces)):
            prof.enable()
            prior = gp.decode_tensor(pl.params, t.dtype, t.array.shape, tp, pieces[: n + 1], prior)
            prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(8)
    if args.write:
        opts = ["--dtypes " + (args.dtypes or "''"), f"--reps {args.reps}"]
        if args.models:
            opts.insert(1, f"--models {args.models}")
        cmd = "PYTHONPATH=. nice -n 5 python -m bench.groupplane_speed " + " ".join(opts)
        name = "groupplane-speed-models" if args.models and not args.dtypes else "groupplane-speed"
        text = f"Reproduce: `{cmd} --write` (machine: {machine()}; median of {args.reps})"
        write_section(name, f"{text}\n\n{md}")


if __name__ == "__main__":
    main()
