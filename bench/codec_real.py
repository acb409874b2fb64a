"""Codec benchmark on real models (EfficientNet-Lite1 and the byte-level LM, fp32 and bf16):
bits/weight, fraction of source bytes and quality at every level of each codec, with the
yardsticks measured in the same run: round-to-nearest 4-bit with a scale per 128 weights
(lossy), ZipNN (lossless; round trip verified), ``bitplane`` and ``paper``.

Needs the ``bench`` extra and the LM trained by ``scripts/train_lm.py``. Prints JSON, writes
it to ``--json``, and with ``--write`` the tables into BENCHMARKS.md (sweeps: into
``bench/CODEC_NOTES.md``) and the chart ``bench/codec_quality.png``.

    nice -n 10 python -m bench.codec_real --write
    nice -n 10 python -m bench.codec_real --models lm --sweep group=32,64,128
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from bench import models
from bench.report import machine, table, write_section
from peerprog.codec import get_codec
from peerprog.codec import groupplane as gp
from peerprog.codec.base import RawTensor
from peerprog.codec.dtypes import dtype as dtype_of
from peerprog.codec.sensitivity import Sensitivity

NOTES = Path(__file__).resolve().parent / "CODEC_NOTES.md"
CHART = Path(__file__).resolve().parent / "codec_quality.png"


def _bpw(nbytes: float, numel: int) -> float:
    return nbytes * 8 / numel


def _exact(a: Mapping[str, RawTensor], b: Mapping[str, RawTensor]) -> bool:
    return all(np.array_equal(a[k].array.view(np.uint8), b[k].array.view(np.uint8)) for k in a)


def run_groupplane(
    model: models.Model,
    params: Mapping[str, Any] | None = None,
    max_bpw: float = 1e9,
    sensitivity: Sensitivity | None = None,
) -> dict[str, Any]:
    """Plan as publish does (weighing errors by ``sensitivity`` if given), encode tensor by
    tensor, then decode level by level from the prior and score each level (levels past
    ``max_bpw`` cumulative are decoded but not scored)."""
    src = model.tensors
    t0 = time.process_time()
    planner = gp.GroupplanePlanner(gp.GroupplaneCodec().check_params(params), sensitivity)
    for k, t in src.items():
        planner.add(k, t)
    merged, plans = planner.finish()
    t_plan = time.process_time() - t0
    t0 = time.process_time()
    encoded = {}
    for k, t in src.items():
        tp, pieces = gp.encode_tensor(t, plans[k], merged, k)
        encoded[k] = (tp, [bytes(p) for p in pieces])
    t_enc = time.process_time() - t0
    nlevels = int(merged["levels"])  # type: ignore[arg-type]
    priors: dict[str, Any] = {k: None for k in src}
    rows, cum, t_dec = [], 0, 0.0
    for n in range(nlevels):
        size = sum(len(encoded[k][1][n]) for k in src)
        cum += size
        t0 = time.process_time()
        for k, t in src.items():
            tp, pieces = encoded[k]
            priors[k] = gp.decode_tensor(
                merged, t.dtype, t.array.shape, tp, pieces[: n + 1], priors[k], k
            )
        t_dec += time.process_time() - t0
        approx = {k: RawTensor(t.dtype, priors[k]) for k, t in src.items()}
        bpw = _bpw(cum, model.numel)
        row: dict[str, Any] = {
            "level": n,
            "bytes": size,
            "bpw": bpw,
            "fraction": cum / model.nbytes,
            "bit_exact": _exact(src, approx),
        }
        if size == 0:
            raise AssertionError(f"empty level {n}")
        if bpw <= max_bpw or n == nlevels - 1:
            row.update(model.score(approx))
        rows.append(row)
    return {
        "codec": "groupplane",
        "params": {k: v for k, v in merged.items()},
        "levels": rows,
        "plan_s": t_plan,
        "encode_MB_per_s": model.nbytes / t_enc / 1e6,
        "decode_MB_per_s": model.nbytes / t_dec / 1e6,
    }


def run_registered(model: models.Model, name: str, stop_when_exact: bool = True) -> dict[str, Any]:
    """A codec of the registry (whole-state-dict interface), scored at each level."""
    codec = get_codec(name)
    t0 = time.process_time()
    enc = codec.encode(model.tensors)
    t_enc = time.process_time() - t0
    dec = codec.decoder(enc.params, enc.tensors)
    rows, cum, done = [], 0, False
    t_dec = 0.0
    for n, data in enumerate(enc.levels):
        t0 = time.process_time()
        dec.add_level(n, data)
        approx = dec.tensors()
        t_dec += time.process_time() - t0
        cum += len(data)
        row: dict[str, Any] = {
            "level": n,
            "bytes": len(data),
            "bpw": _bpw(cum, model.numel),
            "fraction": cum / model.nbytes,
            "bit_exact": _exact(model.tensors, approx),
        }
        if not done or n == len(enc.levels) - 1:
            row.update(model.score(approx))
            done = stop_when_exact and row["agreement"] == 1.0 and row["cosine"] > 0.99999
        rows.append(row)
    return {
        "codec": name,
        "params": enc.params,
        "levels": rows,
        "encode_MB_per_s": model.nbytes / t_enc / 1e6,
        "decode_MB_per_s": model.nbytes / t_dec / 1e6,
    }


def rtn(t: RawTensor, group: int = 128, bits: int = 4) -> tuple[RawTensor, int]:
    """Round-to-nearest asymmetric ``bits``-bit quantisation with a min/max per ``group``
    consecutive weights (scale and zero point 16 bits each); returns (approx, bits used)."""
    dt = dtype_of(t.dtype)
    if not dt.is_float or t.array.size < 1024:
        return t, t.array.size * dt.itemsize * 8
    x = models.to_float32(t).reshape(-1).astype(np.float64)
    n = x.size
    pad = (-n) % group
    xp = np.concatenate([x, np.full(pad, x[-1])]).reshape(-1, group)
    lo, hi = xp.min(1, keepdims=True), xp.max(1, keepdims=True)
    levels = (1 << bits) - 1
    scale = np.where(hi > lo, (hi - lo) / levels, 1.0)
    q = np.clip(np.round((xp - lo) / scale), 0, levels)
    y = (q * scale + lo).reshape(-1)[:n].astype(np.float32).reshape(t.array.shape)
    arr = models.bf16_bits(y) if t.dtype == "bfloat16" else y.astype(dt.storage)
    return RawTensor(t.dtype, arr), n * bits + xp.shape[0] * 32


def run_rtn(model: models.Model) -> dict[str, Any]:
    approx, bits = {}, 0
    for k, t in model.tensors.items():
        approx[k], b = rtn(t)
        bits += b
    row = {"level": 0, "bpw": bits / model.numel, "fraction": bits / 8 / model.nbytes}
    row.update(model.score(approx))
    return {"codec": "rtn4-g128", "levels": [row]}


def run_zipnn(model: models.Model) -> dict[str, Any]:
    """ZipNN (one thread) on each float tensor alone and on the whole model's float bytes at
    once, round trips verified. zipnn 0.5.4 rewrites the buffer given to ``compress`` in
    place (it moves sign bits), so it is given a copy and the result compared with the
    original."""
    import zipnn

    floats = [t for t in model.tensors.values() if dtype_of(t.dtype).is_float]
    comp_bytes, t_enc, t_dec, nbytes = 0, 0.0, 0.0, 0
    for t in floats:
        data = t.array.tobytes()
        z = zipnn.ZipNN(input_format="byte", bytearray_dtype=model.dtype, threads=1)
        t0 = time.perf_counter()
        comp = z.compress(bytearray(data))
        t_enc += time.perf_counter() - t0
        t0 = time.perf_counter()
        back = bytes(z.decompress(comp))
        t_dec += time.perf_counter() - t0
        if back != data:
            raise AssertionError("ZipNN round trip of a tensor is not exact")
        comp_bytes += len(comp)
        nbytes += len(data)
    whole = b"".join(t.array.tobytes() for t in floats)
    z = zipnn.ZipNN(input_format="byte", bytearray_dtype=model.dtype, threads=1)
    whole_comp = z.compress(bytearray(whole))
    whole_ok = bytes(z.decompress(whole_comp)) == whole
    rest = model.nbytes - nbytes
    return {
        "codec": "zipnn",
        "float_bytes": nbytes,
        "fraction": (comp_bytes + rest) / model.nbytes,
        "bpw": _bpw(comp_bytes + rest, model.numel),
        "round_trip_exact": True,
        "whole_model_fraction": (len(whole_comp) + rest) / model.nbytes,
        "whole_model_round_trip_exact": whole_ok,
        "encode_MB_per_s": nbytes / t_enc / 1e6,
        "decode_MB_per_s": nbytes / t_dec / 1e6,
    }


def bench_model(name: str, dt: str, codecs: list[str], params: dict[str, Any]) -> dict[str, Any]:
    model = models.LOADERS[name](dt)
    out: dict[str, Any] = {
        "model": model.name,
        "dtype": dt,
        "weights": model.numel,
        "source_bytes": model.nbytes,
        "results": [],
    }
    if name == "lm":
        out["full_perplexity"] = model.score(model.tensors)["perplexity"]
    for c in codecs:
        if c == "groupplane":
            res = run_groupplane(model, params)
        elif c == "rtn4":
            res = run_rtn(model)
        elif c == "zipnn":
            res = run_zipnn(model)
        else:
            res = run_registered(model, c)
        out["results"].append(res)
        print(json.dumps({"model": name, "dtype": dt, **res}, default=str), flush=True)
    return out


def sweep(name: str, dt: str, key: str, values: list[str], max_bpw: float) -> dict[str, Any]:
    """groupplane with one param varied; levels up to ``max_bpw`` scored."""
    model = models.LOADERS[name](dt)
    out: dict[str, Any] = {"model": model.name, "dtype": dt, "key": key, "runs": []}
    for v in values:
        val: Any = int(v) if v.lstrip("-").isdigit() else v
        res = run_groupplane(model, {key: val}, max_bpw)
        res["value"] = val
        out["runs"].append(res)
        print(
            json.dumps(
                {"sweep": key, "value": val, "model": name, "dtype": dt, **res}, default=str
            ),
            flush=True,
        )
    return out


def _fmt(row: Mapping[str, Any], key: str, pct: bool = False) -> str:
    v = row.get(key)
    if v is None:
        return "—"
    if pct:
        return f"{v:.2%}"
    return f"{v:.5f}" if key == "cosine" else f"{v:.3f}"


def markdown(doc: dict[str, Any], command: str) -> str:
    parts = [f"Reproduce: `{command}` (machine: {doc['machine']})\n"]
    for m in doc["models"]:
        extra = (
            f", full-model perplexity {m['full_perplexity']:.3f}" if "full_perplexity" in m else ""
        )
        parts.append(
            f"**{m['model']} {m['dtype']}** ({m['weights']:,} weights, "
            f"{m['source_bytes']:,} source bytes{extra}):\n"
        )
        rows = []
        for res in m["results"]:
            if res["codec"] == "zipnn":
                rows.append(
                    [
                        "zipnn",
                        "all",
                        f"{res['bpw']:.2f}",
                        f"{res['fraction']:.1%}",
                        "100.00%",
                        "1.00000",
                        "—",
                        "yes",
                    ]
                )
                continue
            for lv in res["levels"]:
                rows.append(
                    [
                        res["codec"],
                        lv["level"],
                        f"{lv['bpw']:.2f}",
                        f"{lv['fraction']:.1%}",
                        _fmt(lv, "agreement", True),
                        _fmt(lv, "cosine"),
                        _fmt(lv, "perplexity"),
                        {True: "yes", False: "no", None: "—"}[lv.get("bit_exact")],
                    ]
                )
        parts.append(
            table(
                [
                    "codec",
                    "level",
                    "bits/weight",
                    "of source",
                    "top-1 agreement",
                    "logit cosine",
                    "perplexity",
                    "bit-exact",
                ],
                rows,
            )
            + "\n"
        )
        sp = [
            [r["codec"], f"{r['encode_MB_per_s']:.0f}", f"{r['decode_MB_per_s']:.0f}"]
            for r in m["results"]
            if "encode_MB_per_s" in r
        ]
        parts.append(
            "Speed on this model (MB of source weights per second of one core; "
            "groupplane and registered codecs: all levels, incrementally; ZipNN: "
            "one thread):\n\n" + table(["codec", "encode MB/s", "decode MB/s"], sp) + "\n"
        )
    return "\n".join(parts)


def sweep_markdown(doc: dict[str, Any], command: str) -> str:
    parts = [f"Reproduce: `{command}` (machine: {doc['machine']})\n"]
    for sw in doc["sweeps"]:
        parts.append(f"**{sw['model']} {sw['dtype']}, groupplane by `{sw['key']}`:**\n")
        rows = []
        for run in sw["runs"]:
            for lv in run["levels"]:
                if "cosine" not in lv or lv["bit_exact"]:
                    continue
                rows.append(
                    [
                        run["value"],
                        lv["level"],
                        f"{lv['bpw']:.2f}",
                        _fmt(lv, "agreement", True),
                        _fmt(lv, "cosine"),
                        _fmt(lv, "perplexity"),
                    ]
                )
            last = run["levels"][-1]
            rows.append(
                [
                    run["value"],
                    f"all ({last['level']})",
                    f"{last['bpw']:.2f}",
                    f"{last['fraction']:.1%} of source",
                    "",
                    "",
                ]
            )
        parts.append(
            table(
                [
                    sw["key"],
                    "level",
                    "bits/weight",
                    "top-1 agreement",
                    "logit cosine",
                    "perplexity",
                ],
                rows,
            )
            + "\n"
        )
    return "\n".join(parts)


def chart(doc: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ms = doc["models"]
    fig, axes = plt.subplots(2, len(ms), figsize=(4 * len(ms), 7), squeeze=False)
    for j, m in enumerate(ms):
        for i, key in enumerate(("cosine", "agreement")):
            ax = axes[i][j]
            for res in m["results"]:
                pts = [(lv["bpw"], lv[key]) for lv in res.get("levels", []) if key in lv]
                if pts:
                    xs, ys = zip(*pts, strict=True)
                    ax.plot(xs, ys, "o-" if len(pts) > 1 else "s", label=res["codec"])
            ax.set_xscale("log", base=2)
            ax.set_xlim(1, 34)
            ax.set_ylim(0.9 if key == "cosine" else 0.5, 1.005)
            ax.set_xlabel("bits/weight (cumulative)")
            ax.set_ylabel(f"logit {key}" if key == "cosine" else "top-1 agreement")
            ax.set_title(f"{m['model']} {m['dtype']}")
            ax.grid(True, alpha=0.3)
            if i == 0 and j == 0:
                ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=90)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", default="effnet,lm")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--codecs", default="groupplane,rtn4,zipnn,bitplane,paper")
    ap.add_argument("--param", action="append", default=[], help="groupplane KEY=VALUE")
    ap.add_argument("--sweep", help="groupplane KEY=V1,V2,...: levels up to --max-bpw scored")
    ap.add_argument("--max-bpw", type=float, default=6.5)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--write", action="store_true")
    args = ap.parse_args()
    params: dict[str, Any] = {}
    for p in args.param:
        k, v = p.split("=", 1)
        params[k] = [int(x) for x in v.split(",")] if "," in v else (int(v) if v.isdigit() else v)
    doc: dict[str, Any] = {"machine": machine()}
    if args.sweep:
        key, vals = args.sweep.split("=", 1)
        doc["sweeps"] = [
            sweep(m, d, key, vals.split(","), args.max_bpw)
            for m in args.models.split(",")
            for d in args.dtypes.split(",")
        ]
    else:
        doc["models"] = [
            bench_model(m, d, args.codecs.split(","), params)
            for m in args.models.split(",")
            for d in args.dtypes.split(",")
        ]
    if args.json:
        args.json.write_text(json.dumps(doc, indent=1, default=str))
    if args.write and "sweeps" in doc:
        cmd = f"nice -n 10 python -m bench.codec_real --models {args.models} --dtypes "
        cmd += f"{args.dtypes} --sweep {args.sweep} --max-bpw {args.max_bpw} --write"
        write_section(
            f"sweep-{args.models}-{args.sweep.split('=')[0]}", sweep_markdown(doc, cmd), NOTES
        )
    if args.write and "models" in doc:
        write_section("real", markdown(doc, "nice -n 10 python -m bench.codec_real --write"))
        chart(doc, CHART)


if __name__ == "__main__":
    main()
