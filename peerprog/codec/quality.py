"""Per-level quality figures of an encoding, as integers (the manifest holds no floats).

For each level, decoding that level's prefix is compared with the original float tensors
(integer and bool tensors are always exact and are left out):

* ``rel_rmse_ppm``: ``sqrt(Σ(approx - x)² / Σx²)`` over every finite element of the float
  tensors measured (so tensors weigh by their size), in parts per million;
* ``max_rel_err_ppm``: the largest, over those tensors, of ``max|approx - x| / max|x|``,
  in parts per million.

Both are rounded up and capped at 10^12. Tensors are measured one at a time as they are
encoded. A large model is measured on a sample: tensors are taken while the elements
measured stay within ``budget``'s share of the elements seen, so the sample spreads over
the whole model and the cost does not grow with its size.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping

import numpy as np

from peerprog.codec.base import Codec, Encoded, EncodedTensor, RawTensor
from peerprog.codec.common import Array, to_float64
from peerprog.codec.dtypes import DType, dtype
from peerprog.codec.layout import ParamValue, Segment, TensorLayout

_CAP = 10**12
_BLOCK = 1 << 20
_TOGETHER = 1 << 18  # elements × levels of a tensor whose levels are measured together
BUDGET = 1 << 25
"""Elements measured at most per model (about 32 million)."""


class QualityMeter:
    """Accumulates the quality figures of ``nlevels`` levels, tensor by tensor."""

    def __init__(self, nlevels: int, *, total: int | None = None, budget: int = BUDGET) -> None:
        """``total``: the float elements to come, if known (to spread the sample)."""
        self._n = nlevels
        self._share = 1.0 if not total or total <= budget else budget / total
        self._seen = 0
        self._measured = 0
        self._sq_err = [0.0] * nlevels
        self._max_rel = [0.0] * nlevels
        self._sq_ref = 0.0

    def add(
        self,
        codec: Codec,
        params: Mapping[str, ParamValue],
        layout: TensorLayout,
        original: RawTensor,
        encoded: EncodedTensor,
    ) -> None:
        """Measure one tensor (if it falls in the sample) from its encoding."""
        dt = dtype(layout.dtype)
        if not dt.is_float or layout.numel == 0:  # (an empty tensor adds nothing)
            return
        self._seen += layout.numel
        if self._measured + layout.numel > self._share * self._seen and self._measured:
            return
        self._measured += layout.numel
        ref = np.ascontiguousarray(original.array).reshape(-1)
        ref2, ref_max, finite = _reference(dt, ref)
        self._sq_ref += ref2
        # bfloat16 widened once, not at every level (a block's worth at most)
        wide = to_float64(dt, ref) if dt.name == "bfloat16" and ref.size <= _BLOCK else None
        pieces = [b"".join(bytes(memoryview(b)) for b in level) for level in encoded.pieces]
        decoded = _levels(codec, params, layout, pieces[: self._n])
        errors: Iterable[tuple[float, float]]
        if ref.size * self._n <= _TOGETHER:  # a small tensor: its levels' errors at once
            errors = _level_errors(dt, ref, list(decoded), finite, wide)
        else:
            errors = _each_level_errors(dt, ref, decoded, finite, wide)
        for lvl, (err2, err_max) in enumerate(errors):
            self._sq_err[lvl] += err2
            if err_max > 0:
                rel = err_max / ref_max if ref_max > 0 else math.inf
                self._max_rel[lvl] = max(self._max_rel[lvl], rel)

    def level(self, n: int) -> dict[str, int]:
        """The figures of level ``n``."""
        e, m = self._sq_err[n], self._max_rel[n]
        rmse = math.sqrt(e / self._sq_ref) if self._sq_ref > 0 else (math.inf if e else 0.0)
        return {"rel_rmse_ppm": _ppm(rmse), "max_rel_err_ppm": _ppm(m)}


def level_errors(
    original: Mapping[str, RawTensor], encoded: Encoded, codec: Codec
) -> list[dict[str, int]]:
    """Quality figures of every level of a whole-model ``encoded`` (made by ``codec``
    from ``original``), every tensor measured."""
    nlevels = len(encoded.levels)
    meter = QualityMeter(nlevels, budget=1 << 62)
    for layout in encoded.tensors:
        pieces = tuple(
            [memoryview(data)[seg.offset : seg.offset + seg.length]]
            for data, seg in zip(encoded.levels, layout.segments, strict=True)
        )
        alone = EncodedTensor(layout.params, pieces)
        meter.add(codec, encoded.params, _alone(layout), original[layout.name], alone)
    return [meter.level(n) for n in range(nlevels)]


def _levels(
    codec: Codec, params: Mapping[str, ParamValue], layout: TensorLayout, pieces: list[bytes]
) -> Iterator[Array]:
    """The tensor decoded at each level of ``pieces`` in turn, each from the one before
    (by the codec's ``decode_levels`` where it has one: the same arrays, less work)."""
    levels = getattr(codec, "decode_levels", None)
    if levels is not None:
        yield from levels(params, layout, pieces)
        return
    prior = None
    for lvl in range(len(pieces)):
        prior = codec.decode_tensor(params, layout, pieces[: lvl + 1], prior)
        yield prior


def _each_level_errors(
    dt: DType, ref: Array, decoded: Iterator[Array], mask: Array | None, wide: Array | None
) -> Iterator[tuple[float, float]]:
    """:func:`_errors` of each level's array in turn (a level that leaves the tensor as it
    was, the same array, has the same errors)."""
    last: Array | None = None
    errors = (0.0, 0.0)
    for approx in decoded:
        if approx is not last:
            last = None  # (the level before's array is not kept while this one is measured)
            errors = _errors(dt, ref, approx.reshape(-1), mask, wide)
            last = approx
        yield errors


def _level_errors(
    dt: DType, ref: Array, decoded: list[Array], mask: Array | None, wide: Array | None
) -> list[tuple[float, float]]:
    """:func:`_each_level_errors` of a tensor of one block (``ref.size <= _BLOCK``): the
    same figures (the same float64 differences, each level's summed by the same np.dot),
    its levels widened and subtracted together rather than a few numpy calls each."""
    rows: list[Array] = []
    which: list[int] = []
    for approx in decoded:
        if not rows or approx is not rows[-1]:
            rows.append(approx)
        which.append(len(rows) - 1)
    with np.errstate(all="ignore"):
        stacked = np.stack([a.reshape(-1) for a in rows])
        d = to_float64(dt, stacked.reshape(-1)).reshape(stacked.shape)
        if dt.name != "bfloat16":
            np.subtract(d, ref, out=d)
        else:
            np.subtract(d, wide if wide is not None else to_float64(dt, ref), out=d)
        out = []
        for full in d:
            # a new array as _errors has (BLAS's sum of squares can depend on where the
            # data lies: the last bits of a row of d differed on float16 with NaNs)
            row = full[mask] if mask is not None else full.copy()
            err2 = err_max = 0.0
            if row.size:
                err2 += float(np.dot(row, row))
                err_max = max(err_max, float(row.max()), -float(row.min()))
            finite = math.isfinite(err2) and math.isfinite(err_max)
            out.append((err2, err_max) if finite else (math.inf, math.inf))
    return [out[i] for i in which]


def _alone(layout: TensorLayout) -> TensorLayout:
    return TensorLayout(
        layout.name,
        layout.dtype,
        layout.shape,
        tuple(Segment(0, s.length) for s in layout.segments),
        layout.params,
    )


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


def _errors(
    dt: DType, ref: Array, approx: Array, mask: Array | None, wide: Array | None = None
) -> tuple[float, float]:
    """(Σ(approx - x)², max|approx - x|) over the finite elements of ``ref``; infinite if
    the approximation of a finite element is not finite. ``wide``: a bfloat16 ``ref`` of
    one block already widened to float64."""
    err2 = err_max = 0.0
    with np.errstate(all="ignore"):
        for s in range(0, ref.size, _BLOCK):
            d = to_float64(dt, approx[s : s + _BLOCK])
            r = ref[s : s + _BLOCK]
            if dt.name != "bfloat16":
                np.subtract(d, r, out=d)
            else:
                np.subtract(d, wide if wide is not None else to_float64(dt, r), out=d)
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
