"""Does the publisher's sensitivity (``peerprog.calibrate``) buy quality per bit?

For each real model (the byte-level LM and EfficientNet-Lite1, fp32 and bf16) groupplane is
planned data-free and with each calibration method, on a fine ladder (a level every 0.25
bits/weight from 2 to 6.5), and every level scored against the full model as
:mod:`bench.codec_real` scores it. The calibration data never overlaps the scoring data:

* LM: windows of the training split (scored on the held-out split); ``grad2`` is the LM's
  loss on them;
* EfficientNet-Lite1: scikit-image's pictures that the scoring batch does not use
  (:data:`CALIBRATION_IMAGES`) and 48 faces of its ``lfw_subset``, each resized to the
  input size; ``grad2`` is the cross-entropy against the full model's own top-1 (no labels).

This is also the worked example of the Python API (:func:`calibrate_lm`,
:func:`calibrate_effnet`). Prints JSON; ``--write`` puts the tables into BENCHMARKS.md.

    nice -n 10 python -m bench.calibrate_quality --write
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from bench import lm, models
from bench.codec_real import run_groupplane
from bench.report import machine, table, write_section
from peerprog import calibrate
from peerprog.codec.sensitivity import Array, Sensitivity, check

LADDER = [2000 + 250 * i for i in range(19)] + [7000, 8000]
CALIBRATION_IMAGES = ("cell", "colorwheel", "logo", "page", "text", "microaneurysms")
METHODS = ("fisher", "grad2", "activations")
THRESHOLDS = {"byte-gpt": ("agreement", (0.97, 0.99)), "effnet-lite1": ("cosine", (0.99,))}


# ---------------------------------------------------------------------------- worked examples


def calibrate_lm(module: torch.nn.Module, method: str, windows: int = 64) -> dict[str, Array]:
    """The LM's sensitivity from windows of its training split."""
    data = lm.corpus()
    batch = lm.eval_windows(data.train, windows)  # evenly spaced over the training text
    batches = [batch[i : i + 8] for i in range(0, len(batch), 8)]

    def output(m: torch.nn.Module, b: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = m(b[:, :-1])
        return out

    def loss(m: torch.nn.Module, b: torch.Tensor) -> torch.Tensor:
        logits = m(b[:, :-1])
        out: torch.Tensor = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), b[:, 1:].reshape(-1), reduction="sum"
        )
        return out

    return calibrate.sensitivity(module, batches, method=method, output=output, loss=loss)


def calibration_images(size: int) -> torch.Tensor:
    """Pictures the scoring batch does not hold, scaled to [-1, 1] at ``size`` px."""
    import skimage.data
    from skimage.transform import resize

    pics = []
    for name in CALIBRATION_IMAGES:
        img = np.asarray(getattr(skimage.data, name)())
        if img.ndim == 2:
            img = np.stack([img] * 3, axis=-1)
        pics.append(img[..., :3].astype(np.float32) / (255.0 if img.max() > 1 else 1.0))
    faces = skimage.data.lfw_subset()[:48]
    pics += [np.stack([f] * 3, axis=-1).astype(np.float32) for f in faces]
    out = []
    for p in pics:
        r = resize(p, (size, size), anti_aliasing=True).astype(np.float32)
        out.append(r * 2 - 1)
    return torch.from_numpy(np.ascontiguousarray(np.stack(out).transpose(0, 3, 1, 2)))


def calibrate_effnet(module: torch.nn.Module, method: str) -> dict[str, Array]:
    """EfficientNet-Lite1's sensitivity from pictures it is not scored on."""
    images = calibration_images(240)
    batches = [images[i : i + 8] for i in range(0, len(images), 8)]

    def loss(m: torch.nn.Module, b: torch.Tensor) -> torch.Tensor:
        logits = m(b)
        out: torch.Tensor = torch.nn.functional.cross_entropy(
            logits, logits.argmax(-1).detach(), reduction="sum"
        )
        return out

    return calibrate.sensitivity(module, batches, method=method, loss=loss)


# ---------------------------------------------------------------------------- the bench


def reached(levels: list[dict[str, Any]], metric: str, threshold: float) -> float | None:
    """Bits/weight of the first level whose ``metric`` reaches ``threshold``."""
    for row in levels:
        if row.get(metric) is not None and row[metric] >= threshold:
            return float(row["bpw"])
    return None


def bench_model(
    name: str,
    dtype: str,
    methods: list[str],
    extra: dict[str, Any] | None = None,
    data_free: bool = True,
) -> dict[str, Any]:
    model = models.LOADERS[name](dtype)
    params = {"targets_mbpw": LADDER, **(extra or {})}
    runs: dict[str, Any] = {}
    if data_free:
        runs["data-free"] = run_groupplane(model, params, max_bpw=8.5)
    suffix = "".join(f" {k}={json.dumps(v)}" for k, v in (extra or {}).items())
    for method in methods:
        t0 = time.perf_counter()
        module = model.full_module()
        weights = (calibrate_lm if name == "lm" else calibrate_effnet)(module, method)
        seconds = time.perf_counter() - t0
        shapes = {k: t.array.shape for k, t in model.tensors.items()}
        sens: Sensitivity = check(weights, shapes, f"{name} {method}")
        run = run_groupplane(model, params, max_bpw=8.5, sensitivity=sens)
        run["calibrate_s"] = seconds
        runs[method + suffix] = run
    metric, thresholds = THRESHOLDS[model.name]
    summary = {
        variant: {f"{metric}>={t}": reached(r["levels"], metric, t) for t in thresholds}
        for variant, r in runs.items()
    }
    return {"model": model.name, "dtype": dtype, "runs": runs, "summary": summary}


def markdown(doc: dict[str, Any], runs: str) -> str:
    out = [
        "## Codec: the publisher's sensitivity",
        "",
        f"Reproduce: {runs} (machine: {doc['machine']}). groupplane on a ladder of a level "
        "every 0.25 bits/weight, planned data-free and with each calibration method of "
        "`peerprog.calibrate` (calibration data disjoint from the scoring data: see "
        "`bench/calibrate_quality.py`).",
        "",
        "Bits/weight of the first level reaching each quality:",
        "",
    ]
    rows = []
    for m in doc["models"]:
        for variant, s in m["summary"].items():
            cells = [f"{k}: {'—' if v is None else f'{v:.2f}'}" for k, v in s.items()]
            rows.append([f"{m['model']} {m['dtype']}", variant, "; ".join(cells)])
    out.append(table(["model", "plan", "bits/weight to reach"], rows))
    out += ["", "Quality at each level near 2.5–5 bits/weight:", ""]
    for m in doc["models"]:
        metric = THRESHOLDS[m["model"]][0]
        variants = list(m["runs"])
        rows = []
        base = next(iter(m["runs"].values()))["levels"]
        for i, row in enumerate(base):
            if not 2.0 <= row["bpw"] <= 6.6:
                continue
            cells = [f"{row['bpw']:.2f}"]
            for v in variants:
                lv = m["runs"][v]["levels"]
                r = lv[i] if i < len(lv) else None
                cells.append(
                    "—" if r is None or metric not in r else f"{r[metric]:.4f} @ {r['bpw']:.2f}"
                )
            rows.append(cells)
        out += [f"**{m['model']} {m['dtype']}** ({metric} @ bits/weight):", ""]
        out.append(table([f"{variants[0]} b/w", *variants], rows))
        out.append("")
    return "\n".join(out) + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--models", default="lm,effnet")
    ap.add_argument("--dtypes", default="float32,bfloat16")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="KEY=JSON",
        help="a groupplane codec param for every plan, e.g. row_classes=true",
    )
    ap.add_argument("--no-data-free", action="store_true", help="skip the data-free plan")
    ap.add_argument("--json", type=Path)
    ap.add_argument("--write", action="store_true")
    ap.add_argument(
        "--merge",
        type=Path,
        nargs="+",
        help="write the tables from the --json files of earlier runs instead of running",
    )
    args = ap.parse_args()
    if args.merge:
        docs = [json.loads(p.read_text()) for p in args.merge]
        merged = {"machine": docs[0]["machine"], "models": [m for d in docs for m in d["models"]]}
        runs = [f"`{d['command']}` (at {d['machine']['commit']})" for d in docs]
        write_section("calibrate", markdown(merged, "; ".join(runs)))
        return
    torch.manual_seed(0)
    doc: dict[str, Any] = {"machine": machine()}
    extra = {k: json.loads(v) for k, v in (p.split("=", 1) for p in args.param)}
    doc["command"] = (
        f"nice -n 10 python -m bench.calibrate_quality --models {args.models} "
        f"--dtypes {args.dtypes} --methods {args.methods}"
        + "".join(f" --param {p}" for p in args.param)
        + (" --no-data-free" if args.no_data_free else "")
    )
    doc["models"] = [
        bench_model(m, d, args.methods.split(","), extra, not args.no_data_free)
        for m in args.models.split(",")
        for d in args.dtypes.split(",")
    ]
    for m in doc["models"]:
        print(json.dumps({"model": m["model"], "dtype": m["dtype"], "summary": m["summary"]}))
    if args.json:
        args.json.write_text(json.dumps(doc, indent=1, default=str))
    if args.write:
        write_section("calibrate", markdown(doc, f"`{doc['command']} --write`"))


if __name__ == "__main__":
    main()
