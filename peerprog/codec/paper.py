"""The ``paper`` codec: the yardstick of Lee et al. 2021 ("progressivenet").

Each progressive float tensor is mapped to a ``code_bits``-bit (16) unsigned code by
per-tensor min-max uniform quantization, ``q = round((x - min) / (max - min) * (2^16-1))``,
and the code is cut into ``piece_bits``-bit (2) pieces, most significant first: level n
holds piece n of every tensor, bit-packed and not compressed (the paper's raw scheme).
Its last level is the 16-bit approximation ``min + q * (max - min) / (2^16-1)`` (computed
in float64, as a convex combination of min and max when ``max - min`` is extreme), cast
to the tensor's dtype: not the original.

min and max are taken over the finite values (both 0 if there are none) and travel as
the integer bit patterns of their float64 (layout params ``min_bits``/``max_bits``).
Values are clipped to [min, max], so +Inf codes as max and -Inf as min; NaN codes as min.
Missing code bits are filled with the midpoint (the top missing bit set).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from peerprog.codec.bitpack import pack_into, packed_size, uint_dtype, unpack_range
from peerprog.codec.common import (
    BLOCK,
    Array,
    BaseDecoder,
    Buffers,
    Input,
    TensorwiseCodec,
    int_param,
    to_float64,
)
from peerprog.codec.dtypes import DType
from peerprog.codec.fields import extract, insert
from peerprog.codec.layout import ParamValue, TensorLayout
from peerprog.errors import FormatError

_U64_MAX = (1 << 64) - 1
_EMPTY = np.zeros(0, np.uint8)


def level_bits(code_bits: int, piece_bits: int) -> list[int]:
    """Code bits carried by each level."""
    return [min(piece_bits, code_bits - c) for c in range(0, code_bits, piece_bits)]


def from_float64(dt: DType, x: Array) -> Array:
    """float64 values rounded to ``dt``'s storage (bfloat16: round to nearest even)."""
    if dt.name != "bfloat16":
        return x.astype(dt.storage)
    bits = x.astype(np.float32).view(np.uint32)
    rounded = (bits + np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))) >> np.uint32(16)
    return rounded.astype(np.uint16)


def _code_dtype(code_bits: int) -> np.dtype[np.unsignedinteger[Any]]:
    return np.dtype(f"<u{uint_dtype(code_bits).itemsize}")


def _moderate(lo: float, hi: float) -> bool:
    """Whether ``hi - lo`` and its inverse are safe to use directly."""
    return 1e-290 < hi - lo < 1e290


def quantize(x: Array, lo: float, hi: float, code_bits: int) -> Array:
    """float64 values to codes (see the module docstring for the non-finite rules)."""
    top = (1 << code_bits) - 1
    if hi == lo:
        return np.zeros(x.size, _code_dtype(code_bits))
    with np.errstate(all="ignore"):
        if _moderate(lo, hi) and np.isfinite(x).all():
            t = x - lo
            t *= top / (hi - lo)
        else:  # non-finite values or an extreme range: clip, divide (halves if hi - lo
            # overflows), NaN to 0
            x = np.clip(x, lo, hi)
            if np.isfinite(hi - lo):
                t = (x - lo) / (hi - lo)
            else:
                t = (x * 0.5 - lo * 0.5) / (hi * 0.5 - lo * 0.5)
            t = np.nan_to_num(t, nan=0.0)
            t *= top
        return np.rint(t, out=t).astype(_code_dtype(code_bits))


def dequantize(q: Array, lo: float, hi: float, code_bits: int) -> Array:
    """Codes to float64 values: ``lo + q * (hi - lo) / (2^code_bits - 1)`` (as the convex
    combination of lo and hi for an extreme range)."""
    top = (1 << code_bits) - 1
    if _moderate(lo, hi):
        x = q * ((hi - lo) / top)
        x += lo
        return x
    t = q * (1.0 / top)
    return lo * (1.0 - t) + hi * t


def finite_range(dt: DType, flat: Array) -> tuple[float, float]:
    """(min, max) over the finite values of a float tensor; (0, 0) if there are none."""
    lo, hi = np.inf, -np.inf
    for s in range(0, flat.size, BLOCK):
        x = flat[s : s + BLOCK]
        if dt.name == "bfloat16":
            x = to_float64(dt, x)
        fin = np.isfinite(x)
        if not fin.all():
            x = x[fin]
        if x.size:
            lo, hi = min(lo, float(x.min())), max(hi, float(x.max()))
    return (0.0, 0.0) if lo > hi else (lo, hi)


def _f64_bits(v: float) -> int:
    return int(np.float64(v).view(np.uint64))


def _f64_of(bits: int) -> float:
    return float(np.uint64(bits).view(np.float64))


def _settings(params: Mapping[str, ParamValue]) -> tuple[int, int, int]:
    code_bits = int_param(params, "code_bits", 1, 32)
    piece_bits = int_param(params, "piece_bits", 1, code_bits)
    small = int_param(params, "small_tensor_elements", 0, 1 << 62)
    return code_bits, piece_bits, small


class PaperCodec(TensorwiseCodec):
    """Per-tensor min-max 16-bit codes in 2-bit pieces; see the module docstring."""

    name = "paper"
    lossless = False

    def default_params(self) -> dict[str, ParamValue]:
        """``code_bits`` 16, ``piece_bits`` 2, ``small_tensor_elements`` 1024."""
        return {"code_bits": 16, "piece_bits": 2, "small_tensor_elements": 1024}

    def levels(self, params: Mapping[str, ParamValue]) -> int:
        """``ceil(code_bits / piece_bits)``."""
        code_bits, piece_bits, _ = _settings(params)
        return len(level_bits(code_bits, piece_bits))

    def small(self, params: Mapping[str, ParamValue]) -> int:
        return _settings(params)[2]

    def _encode_progressive(self, params: Mapping[str, ParamValue], inp: Input) -> list[Buffers]:
        code_bits, piece_bits, _ = _settings(params)
        outs, inp.params = _encode_float(
            inp.dt, inp.flat, code_bits, level_bits(code_bits, piece_bits)
        )
        return [[out] for out in outs]

    def decoder(
        self, params: Mapping[str, ParamValue], tensors: Sequence[TensorLayout]
    ) -> PaperDecoder:
        """A fresh incremental decoder."""
        code_bits, piece_bits, small = _settings(self.check_params(params))
        return PaperDecoder(code_bits, level_bits(code_bits, piece_bits), small, tensors)


def _encode_float(
    dt: DType, flat: Array, code_bits: int, bits: list[int]
) -> tuple[list[Array], dict[str, ParamValue]]:
    n = flat.size
    lo, hi = finite_range(dt, flat)
    outs = [np.empty(packed_size(n, b), np.uint8) for b in bits]
    for s in range(0, n, BLOCK):
        q = quantize(to_float64(dt, flat[s : s + BLOCK]), lo, hi, code_bits)
        done = 0
        for lvl, b in enumerate(bits):
            done += b
            pack_into(outs[lvl], extract(q, code_bits - done, b), b, s, n)
    return outs, {"min_bits": _f64_bits(lo), "max_bits": _f64_bits(hi)}


class PaperDecoder(BaseDecoder):
    """Incremental decoder: per tensor the known high bits of every code."""

    def __init__(
        self, code_bits: int, bits: list[int], small: int, layouts: Sequence[TensorLayout]
    ) -> None:
        super().__init__(layouts, len(bits), small)
        self._code_bits = code_bits
        self._bits = bits
        self._codes: dict[int, Array] = {}
        self._range: dict[int, tuple[float, float]] = {}

    def _stage(self, i: int, layout: TensorLayout, dt: DType, level: int, chunk: Array) -> Array:
        what = f"tensor {layout.name!r} level {level}"
        if level == 0:
            self._range[i] = _check_range(layout, what)  # a pure function of the layout
        want = packed_size(layout.numel, self._bits[level])
        if chunk.size != want:
            raise FormatError(f"{what}: {chunk.size} bytes, expected {want}")
        return chunk

    def _apply(self, i: int, dt: DType, level: int, staged: Array) -> None:
        if level == 0:
            n = self._layouts[i].numel
            self._codes[i] = np.zeros(n, _code_dtype(self._code_bits))
        codes = self._codes[i]
        n, b = codes.size, self._bits[level]
        shift = self._code_bits - sum(self._bits[: level + 1])
        for s in range(0, n, BLOCK):
            cnt = min(BLOCK, n - s)
            insert(codes[s : s + cnt], shift, b, unpack_range(staged, n, b, s, cnt))

    def _release(self, i: int) -> None:
        self._codes.pop(i, None)

    def _materialise(self, i: int, dt: DType) -> Array:
        codes = self._codes[i]
        lo, hi = self._range[i]
        missing = self._code_bits - sum(self._bits[: self.levels_done])
        fill = codes.dtype.type(1 << (missing - 1) if missing else 0)
        out = np.empty(codes.size, dt.storage)
        for s in range(0, codes.size, BLOCK):
            q = codes[s : s + BLOCK] | fill if missing else codes[s : s + BLOCK]
            out[s : s + BLOCK] = from_float64(dt, dequantize(q, lo, hi, self._code_bits))
        return out


def _check_range(layout: TensorLayout, what: str) -> tuple[float, float]:
    p = layout.params
    if set(p) != {"min_bits", "max_bits"}:
        raise FormatError(f"{what}: params must be exactly 'min_bits' and 'max_bits'")
    vals = []
    for key in ("min_bits", "max_bits"):
        v = p[key]
        if not isinstance(v, int) or isinstance(v, bool) or not 0 <= v <= _U64_MAX:
            raise FormatError(f"{what}: {key} is not a 64-bit pattern")
        vals.append(_f64_of(v))
    lo, hi = vals
    if not (np.isfinite(lo) and np.isfinite(hi) and lo <= hi):
        raise FormatError(f"{what}: bad range [{lo}, {hi}]")
    return lo, hi
