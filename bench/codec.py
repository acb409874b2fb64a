"""Codec benchmark: bytes per level vs quality, speed, and publish memory.

For each codec on the bundled reference model: cumulative bytes of each level as a fraction
of the float32 bytes, accuracy and agreement with the full model. Then encode/decode speed
on a synthetic model of 25M float32 weights, and the peak memory of ``peerprog publish`` on
it. Prints JSON; ``--write`` also updates the codec section of BENCHMARKS.md.

    .venv/bin/python -m bench.codec --write
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.report import machine, table, write_section
from peerprog.codec import CODECS, RawTensor, get_codec
from peerprog.formats import write_safetensors
from peerprog.reference import digits


def reference_tensors() -> dict[str, RawTensor]:
    return {k: RawTensor("float32", v) for k, v in digits.load_state_dict().items()}


def quality_per_level(codec_name: str, params: dict[str, Any] | None = None) -> dict[str, Any]:
    tensors = reference_tensors()
    f32_bytes = sum(t.nbytes for t in tensors.values())
    codec = get_codec(codec_name)
    enc = codec.encode(tensors, params)
    dec = codec.decoder(enc.params, enc.tensors)
    rows = []
    cum = 0
    for n, data in enumerate(enc.levels):
        dec.add_level(n, data)
        cum += len(data)
        approx = {k: t.array for k, t in dec.tensors().items()}
        ev = digits.evaluate(approx)
        exact = all(
            np.array_equal(approx[k].view(np.uint32), tensors[k].array.view(np.uint32))
            for k in tensors
        )
        rows.append(
            {
                "level": n,
                "bytes": len(data),
                "cumulative_bytes": cum,
                "fraction_of_float32": cum / f32_bytes,
                "accuracy": ev.accuracy,
                "agreement": ev.agreement,
                "bit_exact": exact,
            }
        )
    full = digits.evaluate({k: t.array for k, t in tensors.items()})
    return {
        "codec": codec_name,
        "params": enc.params,
        "float32_bytes": f32_bytes,
        "full_accuracy": full.accuracy,
        "levels": rows,
    }


def synthetic(n_weights: int, seed: int = 0) -> dict[str, RawTensor]:
    """Layers of normal(0, 1/sqrt(fan_in)) weights, like an initialised-then-trained MLP."""
    rng = np.random.default_rng(seed)
    out: dict[str, RawTensor] = {}
    left, i = n_weights, 0
    while left > 0:
        rows, cols = 1024, min(4096, max(1, left // 1024))
        w = (rng.standard_normal((rows, cols), dtype=np.float32) / np.sqrt(cols)).astype(np.float32)
        out[f"layer{i}.weight"] = RawTensor("float32", w)
        out[f"layer{i}.bias"] = RawTensor(
            "float32", rng.standard_normal(rows, dtype=np.float32) * 0.01
        )
        left -= rows * cols
        i += 1
    return out


def speed(codec_name: str, tensors: dict[str, RawTensor], repeat: int = 3) -> dict[str, Any]:
    codec = get_codec(codec_name)
    nbytes = sum(t.nbytes for t in tensors.values())
    enc_t, dec_t = [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        enc = codec.encode(tensors)
        enc_t.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        dec = codec.decoder(enc.params, enc.tensors)
        for n, data in enumerate(enc.levels):
            dec.add_level(n, data)
        dec.tensors()
        dec_t.append(time.perf_counter() - t0)
    total = sum(len(d) for d in enc.levels)
    return {
        "codec": codec_name,
        "float32_bytes": nbytes,
        "encoded_bytes": total,
        "level0_fraction": len(enc.levels[0]) / nbytes,
        "all_levels_fraction": total / nbytes,
        "encode_MB_per_s": nbytes / min(enc_t) / 1e6,
        "decode_MB_per_s": nbytes / min(dec_t) / 1e6,
    }


def publish_memory(tensors: dict[str, RawTensor]) -> dict[str, Any]:
    """Peak RSS of ``peerprog publish`` in a subprocess, vs the model file's size."""
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        src = d / "model.safetensors"
        write_safetensors(src, tensors)
        key = d / "key"
        subprocess.run(
            [sys.executable, "-m", "peerprog", "keygen", str(key)], check=True, capture_output=True
        )
        baseline = _child_peak([sys.executable, "-c", "import peerprog.store, peerprog.codec"])
        peak = _child_peak(
            [
                sys.executable,
                "-m",
                "peerprog",
                "publish",
                str(src),
                "--name",
                "big",
                "--key",
                str(key),
                "--store",
                str(d / "store"),
                "--json",
            ]
        )
        size = src.stat().st_size
    return {
        "model_bytes": size,
        "publish_peak_rss_bytes": peak,
        "interpreter_baseline_rss_bytes": baseline,
        "peak_over_model": peak / size,
        "peak_above_baseline_over_model": (peak - baseline) / size,
    }


def _child_peak(cmd: list[str]) -> int:
    code = (
        "import resource,subprocess,sys;subprocess.run(sys.argv[1:],check=True,"
        "stdout=subprocess.DEVNULL);"
        "print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, *cmd], check=True, capture_output=True, text=True
    ).stdout
    return int(out.strip()) * 1024


def sweep_level0() -> list[dict[str, Any]]:
    """Level-0 size and quality of bitplane for 1..5 mantissa bits in level 0."""
    rows = []
    for m0 in range(0, 6):
        plan = [m0, 7 - m0 if m0 < 7 else 1, 8, 8] if m0 else [0, 7, 8, 8]
        res = quality_per_level("bitplane", {"mantissa_bits": plan})
        lv0 = res["levels"][0]
        rows.append(
            {
                "level0_mantissa_bits": m0,
                "fraction_of_float32": lv0["fraction_of_float32"],
                "accuracy": lv0["accuracy"],
                "agreement": lv0["agreement"],
            }
        )
    return rows


def markdown(doc: dict[str, Any]) -> str:
    cmd = "`.venv/bin/python -m bench.codec --write`"
    parts = [
        f"## Codec: bytes per level vs quality\n\nReproduce: {cmd} (machine: {doc['machine']})\n"
    ]
    for res in doc["quality"]:
        parts.append(
            f"**{res['codec']}** on the bundled digits CNN "
            f"({res['float32_bytes']:,} float32 bytes, full-model accuracy "
            f"{res['full_accuracy']:.2%}), params `{json.dumps(res['params'])}`:\n"
        )
        rows = [
            [
                lv["level"],
                f"{lv['bytes']:,}",
                f"{lv['fraction_of_float32']:.1%}",
                f"{lv['accuracy']:.2%}",
                f"{lv['agreement']:.2%}",
                "yes" if lv["bit_exact"] else "no",
            ]
            for lv in res["levels"]
        ]
        parts.append(
            table(
                [
                    "level",
                    "bytes",
                    "cumulative / float32",
                    "accuracy",
                    "agreement with full",
                    "bit-exact",
                ],
                rows,
            )
            + "\n"
        )
    parts.append(
        "Level-0 size and quality of `bitplane` by mantissa bits in level 0 "
        "(the default plan's choice):\n"
    )
    parts.append(
        table(
            ["mantissa bits in level 0", "level 0 / float32", "accuracy", "agreement"],
            [
                [
                    r["level0_mantissa_bits"],
                    f"{r['fraction_of_float32']:.1%}",
                    f"{r['accuracy']:.2%}",
                    f"{r['agreement']:.2%}",
                ]
                for r in doc["sweep"]
            ],
        )
        + "\n"
    )
    sp = doc["speed"]
    parts.append(
        f"Speed on a synthetic model of {sp[0]['float32_bytes'] / 1e6:.0f} MB of float32 "
        "weights (one process, best of 3):\n"
    )
    parts.append(
        table(
            [
                "codec",
                "encode MB/s",
                "decode all levels MB/s",
                "level 0 / float32",
                "all levels / float32",
            ],
            [
                [
                    s["codec"],
                    f"{s['encode_MB_per_s']:.0f}",
                    f"{s['decode_MB_per_s']:.0f}",
                    f"{s['level0_fraction']:.1%}",
                    f"{s['all_levels_fraction']:.1%}",
                ]
                for s in sp
            ],
        )
        + "\n"
    )
    mem = doc["publish_memory"]
    parts.append(
        f"Peak memory of `peerprog publish` on that model "
        f"({mem['model_bytes'] / 1e6:.0f} MB file): "
        f"{mem['publish_peak_rss_bytes'] / 1e6:.0f} MB RSS "
        f"= {mem['peak_over_model']:.2f}× the model "
        f"({mem['peak_above_baseline_over_model']:.2f}× above the "
        f"{mem['interpreter_baseline_rss_bytes'] / 1e6:.0f} MB interpreter baseline).\n"
    )
    return "\n".join(parts)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--weights", type=int, default=25_000_000, help="synthetic model size")
    ap.add_argument("--write", action="store_true", help="update BENCHMARKS.md")
    args = ap.parse_args()
    big = synthetic(args.weights)
    doc = {
        "machine": machine(),
        "quality": [quality_per_level(name) for name in sorted(CODECS)],
        "sweep": sweep_level0(),
        "speed": [speed(name, big) for name in sorted(CODECS)],
        "publish_memory": publish_memory(big),
    }
    print(json.dumps(doc, indent=2))
    if args.write:
        write_section("codec", markdown(doc))


if __name__ == "__main__":
    main()
