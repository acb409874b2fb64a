"""Per-level quality figures of an encoding, as integers (the manifest holds no floats).

For each level, decoding that level's prefix is compared with the original float tensors
(integer and bool tensors are always exact and are left out):

* ``rel_rmse_ppm``: ``sqrt(Σ(approx - x)² / Σx²)`` over every finite element of every float
  tensor (so tensors weigh by their size), in parts per million;
* ``max_rel_err_ppm``: the largest, over tensors, of ``max|approx - x| / max|x|``, in parts
  per million.

Both are rounded up and capped at 10^12. Tensors are decoded one at a time, so the extra
memory is about twice the largest tensor, not the model.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np

from peerprog.codec.base import Codec, Encoded, RawTensor
from peerprog.codec.common import Array, to_float64
from peerprog.codec.dtypes import DType, dtype
from peerprog.codec.layout import Segment, TensorLayout

_CAP = 10**12
_BLOCK = 1 << 20


def level_errors(
    original: Mapping[str, RawTensor], encoded: Encoded, codec: Codec
) -> list[dict[str, int]]:
    """Quality figures of every level of ``encoded`` (made by ``codec`` from ``original``)."""
    nlevels = len(encoded.levels)
    sq_err = [0.0] * nlevels
    max_rel = [0.0] * nlevels
    sq_ref = 0.0
    for layout in encoded.tensors:
        dt = dtype(layout.dtype)
        if not dt.is_float:
            continue
        ref = np.ascontiguousarray(original[layout.name].array).reshape(-1)
        alone = TensorLayout(
            layout.name,
            layout.dtype,
            layout.shape,
            tuple(Segment(0, s.length) for s in layout.segments),
            layout.params,
        )
        dec = codec.decoder(encoded.params, [alone])
        ref2, ref_max, finite = _reference(dt, ref)
        sq_ref += ref2
        for lvl, data in enumerate(encoded.levels):
            seg = layout.segments[lvl]
            dec.add_level(lvl, memoryview(data)[seg.offset : seg.offset + seg.length])
            approx = dec.tensors()[layout.name].array.reshape(-1)
            err2, err_max = _errors(dt, ref, approx, finite)
            sq_err[lvl] += err2
            if err_max > 0:
                rel = err_max / ref_max if ref_max > 0 else math.inf
                max_rel[lvl] = max(max_rel[lvl], rel)
    return [
        {
            "rel_rmse_ppm": _ppm(math.sqrt(e / sq_ref) if sq_ref > 0 else (math.inf if e else 0)),
            "max_rel_err_ppm": _ppm(m),
        }
        for e, m in zip(sq_err, max_rel, strict=True)
    ]


def _reference(dt: DType, ref: Array) -> tuple[float, float, Array | None]:
    """(Σx², max|x|) over the finite elements, and their mask (None if all are finite)."""
    ref2 = ref_max = 0.0
    finite = np.empty(ref.size, np.bool_)
    for s in range(0, ref.size, _BLOCK):
        a = to_float64(dt, ref[s : s + _BLOCK])
        keep = np.isfinite(a, out=finite[s : s + _BLOCK])
        if not keep.all():
            a = a[keep]
        if a.size:
            ref2 += float(np.dot(a, a))
            ref_max = max(ref_max, float(np.abs(a).max()))
    return ref2, ref_max, None if finite.all() else finite


def _errors(dt: DType, ref: Array, approx: Array, mask: Array | None) -> tuple[float, float]:
    """(Σ(approx - x)², max|approx - x|) over the finite elements of ``ref``; infinite if
    the approximation of a finite element is not finite."""
    err2 = err_max = 0.0
    with np.errstate(all="ignore"):
        for s in range(0, ref.size, _BLOCK):
            d = to_float64(dt, approx[s : s + _BLOCK])
            r = ref[s : s + _BLOCK]
            np.subtract(d, r if dt.name != "bfloat16" else to_float64(dt, r), out=d)
            if mask is not None:
                d = d[mask[s : s + _BLOCK]]
            if d.size:
                err2 += float(np.dot(d, d))
                err_max = max(err_max, float(d.max()), -float(d.min()))
    if not (math.isfinite(err2) and math.isfinite(err_max)):
        return math.inf, math.inf
    return err2, err_max


def _ppm(x: float) -> int:
    if not math.isfinite(x) or x * 1e6 >= _CAP:
        return _CAP
    return math.ceil(x * 1e6)
