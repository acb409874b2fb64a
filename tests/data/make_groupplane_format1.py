"""Writes tests/data/groupplane_format1.msgpack (run at commit 5f0e2d3, the last to write
format 1 by default: PYTHONPATH=<that checkout> python make_groupplane_format1.py > ...)."""

import sys

import msgpack
import numpy as np

from peerprog.codec import groupplane as gp
from peerprog.codec.base import RawTensor

rng = np.random.default_rng(18)
out = {}
for dt in ["float32", "bfloat16", "float16"]:
    x = (rng.standard_normal((48, 40)) * 0.02).astype(np.float32)
    x[0, :5] = [0.0, -0.0, 1e-30, np.inf, np.nan]
    x[1, :3] = [3e-6, -2e-7, 1e-8]
    if dt == "bfloat16":
        arr = (x.view(np.uint32) >> 16).astype(np.uint16)
    elif dt == "float16":
        arr = x.astype(np.float16)
    else:
        arr = x
    t = RawTensor(dt, arr)
    small = RawTensor(dt, arr[0, :8].copy())
    codec = gp.GroupplaneCodec()
    params = codec.check_params({"targets_mbpw": [2000, 4000], "small_tensor_elements": 16})
    planner = gp.GroupplanePlanner(params, None)
    planner.add("w", t)
    planner.add("b", small)
    merged, plans = planner.finish()
    for name, tt in [("w", t), ("b", small)]:
        tp, pieces = gp.encode_tensor(tt, plans[name], merged, name)
        out[f"{dt}/{name}"] = {
            "params": merged,
            "tensor_params": tp,
            "shape": list(tt.array.shape),
            "pieces": [bytes(p) for p in pieces],
            "words": tt.array.tobytes(),
        }
sys.stdout.buffer.write(msgpack.packb(out))
