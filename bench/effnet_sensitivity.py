"""How sensitive EfficientNet-Lite1 is on the bench's inputs: the fp32 model's scores against
itself after rounding its weights to bf16, and after multiplying every float weight of two or
more dimensions by (1 + s·N(0, 1)).

    PYTHONPATH=. nice -n 10 python -m bench.effnet_sensitivity
"""

from __future__ import annotations

import json

import numpy as np

from bench import models
from peerprog.codec.base import RawTensor


def main() -> None:
    m = models.effnet("float32")
    out = {}
    rounded = {
        k: RawTensor("float32", models.to_float32(RawTensor("bfloat16", models.bf16_bits(t.array))))
        if t.array.dtype == np.float32
        else t
        for k, t in m.tensors.items()
    }
    out["bf16 rounding"] = m.score(rounded)
    rng = np.random.default_rng(0)
    for s in (1e-4, 1e-3):
        noisy = {
            k: RawTensor(
                "float32",
                (t.array * (1 + s * rng.standard_normal(t.array.shape))).astype(np.float32),
            )
            if t.array.dtype == np.float32 and t.array.ndim >= 2
            else t
            for k, t in m.tensors.items()
        }
        out[f"relative noise {s:g}"] = m.score(noisy)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
