"""groupplane's whole stream against ZipNN on the real models: bits per weight of every
level together under stream format 1 and format 2, ZipNN (one tensor at a time, round trips
verified, as ``bench.codec_real`` measures it), and where format 2's bytes go (scales,
symbols, refinement bits, the remainder's byte planes, low bytes and low bits, tensors that
travel whole, framing). Every stream is decoded back and checked bit-exact.

Needs the ``bench`` extra and the LM trained by ``scripts/train_lm.py``. Prints JSON; with
``--write`` the table goes into BENCHMARKS.md.

    nice -n 10 python -m bench.codec_lossless --write
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from typing import Any

from bench import models
from bench.codec_real import run_zipnn
from bench.report import machine, table, write_section
from peerprog.codec import groupplane as gp
from peerprog.codec.dtypes import dtype
from peerprog.codec.groupplane import format as fmt
from peerprog.codec.groupplane import rans

PARTS = ("scales", "symbols", "refine", "rest", "low_bytes", "low", "whole", "framing")


def breakdown(model: models.Model, layout: int) -> dict[str, Any]:
    """Encode ``model`` as publish does in format ``layout``; bytes per part, and whether
    every tensor decodes back bit-exact."""
    planner = gp.GroupplanePlanner(gp.GroupplaneCodec().check_params({"format": layout}), None)
    for name, t in model.tensors.items():
        planner.add(name, t)
    params, plans = planner.finish()
    if layout == 1:  # a format-1 manifest has no 'format' param
        params = {k: v for k, v in params.items() if k != "format"}
    parts: Counter[str] = Counter()
    frames: Counter[str] = Counter()
    exact = True
    for name, t in model.tensors.items():
        tp, pieces = gp.encode_tensor(t, plans[name], params, name)
        pieces = [bytes(p) for p in pieces]
        back = gp.decode_tensor(params, t.dtype, t.array.shape, tp, pieces, None, name)
        exact = exact and back.tobytes() == t.array.tobytes()
        total = sum(len(p) for p in pieces)
        if tp.get("whole"):
            parts["whole"] += total
            continue
        planes, itemsize = tp["planes"], dtype(t.dtype).itemsize
        counted = 0
        for m in range(len(planes) + 1):
            read = fmt.read_level(planes, pieces[m], m, name, layout, itemsize)
            if m == 0:
                scales = len(fmt.scales_frame(pieces[0], name))
                parts["scales"] += scales
                counted += scales
            if isinstance(read, fmt.RemainderFrames):
                rest = sum(len(f) for f in read.rest)
                low_bytes = 0 if read.low_bytes is None else len(read.low_bytes)
                parts["rest"] += rest
                parts["low_bytes"] += low_bytes
                parts["low"] += len(read.low)
                counted += rest + low_bytes + len(read.low)
                continue
            for step in read:
                parts["symbols"] += len(step.symbols)
                parts["refine"] += len(step.refine)
                counted += len(step.symbols) + len(step.refine)
                kind = {rans.RANS: "rans", rans.ZSTD: "zstd"}.get(step.symbols[0], "?")
                frames[kind] += len(step.symbols)
        parts["framing"] += total - counted
    nbytes = sum(parts.values())
    return {
        "bits_per_weight": nbytes * 8 / model.numel,
        "fraction": nbytes / model.nbytes,
        "parts_bpw": {k: parts[k] * 8 / model.numel for k in PARTS},
        "symbol_bytes_by_frame": dict(frames),
        "bit_exact": exact,
    }


def run(name: str, dt: str) -> dict[str, Any]:
    model = models.effnet(dt) if name == "effnet" else models.lm_model(dt)
    zipnn = run_zipnn(model)
    return {
        "model": model.name,
        "dtype": dt,
        "weights": model.numel,
        "format1": breakdown(model, 1),
        "format2": breakdown(model, 2),
        "zipnn_bpw": zipnn["bpw"],
        "zipnn_fraction": zipnn["fraction"],
    }


def markdown(doc: dict[str, Any], command: str) -> str:
    rows = []
    for r in doc["results"]:
        f1, f2 = r["format1"], r["format2"]
        p = f2["parts_bpw"]
        met = "met" if f2["bits_per_weight"] <= r["zipnn_bpw"] else "**missed**"
        rows.append(
            [
                f"{r['model']} {r['dtype']}",
                f"{f1['bits_per_weight']:.2f} ({f1['fraction']:.1%})",
                f"{f2['bits_per_weight']:.2f} ({f2['fraction']:.1%})",
                f"{r['zipnn_bpw']:.2f} ({r['zipnn_fraction']:.1%})",
                met,
                " / ".join(f"{p[k]:.2f}" for k in PARTS),
                "yes" if f1["bit_exact"] and f2["bit_exact"] else "**no**",
            ]
        )
    head = [
        "model",
        "format 1, b/w",
        "format 2, b/w",
        "ZipNN, b/w",
        "≤ ZipNN",
        "format 2: " + " / ".join(PARTS),
        "bit-exact",
    ]
    return f"Reproduce: `{command}` (machine: {doc['machine']})\n\n" + table(head, rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", default="effnet,lm")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    results = [run(name, dt) for name in args.models.split(",") for dt in args.dtypes.split(",")]
    doc = {"machine": machine(), "results": results}
    print(json.dumps(doc, indent=1))
    if args.write:
        write_section(
            "lossless", markdown(doc, "nice -n 10 python -m bench.codec_lossless --write")
        )


if __name__ == "__main__":
    main()
