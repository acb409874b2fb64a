"""Measurements behind groupplane's choices, on the real models' weights (no inference):

* ``coder``: for each plane level of the default plan, the bytes of the symbol streams of the
  not-yet-significant weights as zstd codes them (base-packed symbols, the codec's choice),
  their order-0 entropy, and what an exact ANS coder (``constriction``, a categorical model
  per stream, its table counted at 16 bits per used symbol) takes; plus decode ns/symbol.
* ``scale``: power-of-two group scales (the codec) against real-valued ones (step =
  max|x| / 2**k, fp16 scale), as estimated bits/weight (order-0 entropy of each plane's
  significance, signs, raw refinement bits, the scales) and relative RMS error over all
  planed tensors, by planes k, for group sizes G.

    nice -n 10 python -m bench.codec_choices --models effnet,lm --write
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench import models
from bench.report import machine, table, write_section
from peerprog.codec import groupplane as gp
from peerprog.codec import zstd
from peerprog.codec.dtypes import dtype as dtype_of
from peerprog.codec.groupplane.format import geometry, padded, steps, to_f32
from peerprog.codec.groupplane.numpy_kernels import group_exponents, magnitudes, pack_codes
from peerprog.codec.groupplane.rans import symbols_per_byte

NOTES = Path(__file__).resolve().parent / "CODEC_NOTES.md"


def _entropy_bits(sym: np.ndarray[Any, Any]) -> tuple[float, np.ndarray[Any, Any]]:
    _, counts = np.unique(sym, return_counts=True)
    p = counts / counts.sum()
    return float(-(counts * np.log2(p)).sum()), p


def coder(model: models.Model) -> list[dict[str, Any]]:
    import constriction

    params = gp.default_params()
    pl = gp.plan(params, [gp.analyse(k, t, params) for k, t in model.tensors.items()])
    nlev = int(pl.params["levels"]) - 1  # type: ignore[arg-type]
    acc = [{"zstd": 0.0, "entropy": 0.0, "ans": 0.0, "symbols": 0} for _ in range(nlev)]
    t_z = t_a = 0.0
    for name, t in model.tensors.items():
        tp = pl.tensors[name]
        if "planes" not in tp:
            continue
        dt = dtype_of(t.dtype)
        geo = geometry(dt, int(pl.params["max_planes"]))  # type: ignore[arg-type]
        g = int(tp["group"])  # type: ignore[arg-type]
        flat = t.array.reshape(-1).view(dt.word)
        ng = -(-flat.size // g)
        v = to_f32(geo, padded(flat, ng * g)).reshape(ng, g)
        exps = group_exponents(geo, v)
        ks: list[int] = tp["planes"]  # type: ignore[assignment]
        top = ks[-1]
        q = magnitudes(v, exps, top).reshape(-1)
        neg = np.signbit(v).reshape(-1)
        prev = 0
        for n, k in enumerate(ks):
            for a, b in steps(prev, k):
                r = b - a
                bits = (q >> np.uint32(top - b)) & np.uint32((1 << r) - 1)
                insig = (q >> np.uint32(top - a)) == 0
                bb = bits[insig].astype(np.int16)
                sym = np.where(neg[insig], -bb, bb)
                frame = zstd.compress(pack_codes(sym, r), symbols=True)
                acc[n]["zstd"] += len(frame)
                if sym.size == 0:
                    continue
                h, p = _entropy_bits(sym)
                used = np.unique(sym)
                acc[n]["symbols"] += sym.size
                if used.size == 1:  # one symbol: nothing to code but the table
                    acc[n]["ans"] += 2
                    continue
                model_c = constriction.stream.model.Categorical(p, perfect=False)
                idx = np.searchsorted(used, sym).astype(np.int32)
                enc = constriction.stream.stack.AnsCoder()
                enc.encode_reverse(idx, model_c)
                comp = enc.get_compressed()
                t0 = time.perf_counter()
                zstd.decompress_exact(frame, -(-sym.size // symbols_per_byte(r)), "x")
                t_z += time.perf_counter() - t0
                t0 = time.perf_counter()
                constriction.stream.stack.AnsCoder(comp).decode(model_c, idx.size)
                t_a += time.perf_counter() - t0
                acc[n]["entropy"] += h / 8
                acc[n]["ans"] += comp.nbytes + 2 * used.size
            prev = k
    rows = []
    for n, a in enumerate(acc):
        if a["symbols"]:
            rows.append({"level": n, **a})
    total_syms = sum(a["symbols"] for a in acc)
    rows.append(
        {
            "level": "decode ns/symbol",
            "zstd": t_z / total_syms * 1e9,
            "ans": t_a / total_syms * 1e9,
        }
    )
    return rows


def _h2(p: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    p = np.clip(p, 1e-12, 1 - 1e-12)
    out: np.ndarray[Any, Any] = -(p * np.log2(p) + (1 - p) * np.log2(1 - p))
    return out


def scale(model: models.Model, groups: list[int], kmax: int = 8) -> list[dict[str, Any]]:
    """Estimated bits/weight and relative RMS error by planes, pow2 vs real-valued scales."""
    rows = []
    for G in groups:
        for fmt in ("pow2", "real"):
            bits = np.zeros(kmax + 1)
            sse = np.zeros(kmax + 1)
            ref = 0.0
            n_all = 0
            for t in model.tensors.values():
                dt = dtype_of(t.dtype)
                if gp.is_whole(dt, t.array.shape, gp.settings(None)):
                    continue
                g = gp.group_size(t.array.shape, G)
                x = models.to_float32(t).reshape(-1).astype(np.float64)
                ng = -(-x.size // g)
                xv = np.zeros(ng * g)
                xv[: x.size] = x
                xv = xv.reshape(ng, g)
                amax = np.abs(xv).max(1, keepdims=True)
                if fmt == "pow2":
                    top = np.ldexp(1.0, np.frexp(amax)[1])
                    scale_bits = _scale_entropy(np.frexp(amax)[1].ravel())
                else:
                    top = amax * (1 + 2**-20)
                    scale_bits = 16.0
                top = np.where(amax > 0, top, 1.0)
                a = np.abs(xv)
                w = 1.0 / max(float((x * x).sum()), 1e-30)  # relative: each tensor alike
                ref += 1.0
                n_all += x.size
                bits[0] += scale_bits * ng
                for k in range(1, kmax + 1):
                    qk = np.floor(a / top * 2**k)
                    was = np.floor(a / top * 2 ** (k - 1)) > 0
                    newly = (qk > 0) & ~was
                    n_ins = int((~was).sum())
                    p1 = newly.sum() / max(n_ins, 1)
                    bits[k] += was.sum() + n_ins * float(_h2(np.array(p1))) + newly.sum()
                    mid = np.where(qk > 0, (qk + 0.5) * top / 2**k, 0.0)
                    sse[k] += float(((mid - a) ** 2).sum()) * w
            cum = np.cumsum(bits) / n_all
            for k in range(1, kmax + 1):
                rows.append(
                    {
                        "group": G,
                        "scale": fmt,
                        "planes": k,
                        "bpw": float(cum[k]),
                        "rel_rmse": math.sqrt(sse[k] / ref),
                    }
                )
    return rows


def _scale_entropy(e: np.ndarray[Any, Any]) -> float:
    h, _ = _entropy_bits(e)
    return h / max(e.size, 1)


def markdown(doc: dict[str, Any]) -> str:
    cmd = "nice -n 10 python -m bench.codec_choices --write"
    parts = [f"Reproduce: `{cmd}` (machine: {doc['machine']})\n"]
    for m in doc["models"]:
        parts.append(f"**Coder, {m['model']} {m['dtype']}** (bytes of the symbol streams):\n")
        rows = []
        for r in m["coder"]:
            if r["level"] == "decode ns/symbol":
                rows.append(["decode ns/symbol", "", f"{r['zstd']:.1f}", "", f"{r['ans']:.1f}"])
            else:
                rows.append(
                    [
                        r["level"],
                        f"{r['symbols']:,}",
                        f"{r['zstd']:,.0f}",
                        f"{r['entropy']:,.0f}",
                        f"{r['ans']:,.0f}",
                    ]
                )
        parts.append(
            table(
                ["level", "symbols", "zstd (chosen)", "order-0 entropy", "constriction ANS"], rows
            )
            + "\n"
        )
        parts.append(f"**Scale format, {m['model']} {m['dtype']}** (estimated):\n")
        by = {}
        for r in m["scale"]:
            by.setdefault((r["group"], r["planes"]), {})[r["scale"]] = r
        rows = [
            [
                G,
                k,
                f"{v['pow2']['bpw']:.2f}",
                f"{v['pow2']['rel_rmse']:.4f}",
                f"{v['real']['bpw']:.2f}",
                f"{v['real']['rel_rmse']:.4f}",
            ]
            for (G, k), v in sorted(by.items())
        ]
        parts.append(
            table(["G", "planes", "pow2 bpw", "pow2 rel. RMSE", "real bpw", "real rel. RMSE"], rows)
            + "\n"
        )
    return "\n".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", default="effnet,lm")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--groups", default="32,64,128")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    doc: dict[str, Any] = {"machine": machine(), "models": []}
    for name in args.models.split(","):
        model = models.LOADERS[name](args.dtype)
        entry = {
            "model": model.name,
            "dtype": args.dtype,
            "coder": coder(model),
            "scale": scale(model, [int(g) for g in args.groups.split(",")]),
        }
        doc["models"].append(entry)
        print(json.dumps(entry), flush=True)
    if args.write:
        write_section("choices", markdown(doc), NOTES)


if __name__ == "__main__":
    main()
