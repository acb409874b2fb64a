"""The ``bitplane`` codec (default, lossless): float bit fields, most significant first.

A float word is cut into levels: level 0 holds the sign bit, the whole exponent field and
the top ``mantissa_bits[0]`` mantissa bits; level n holds the next ``mantissa_bits[n]``
mantissa bits; the last level holds whatever remains, so all levels give the original bit
for bit. ``mantissa_bits`` is a plan for float32; other float dtypes use the same
cumulative cut points clamped to their mantissa width, the last level taking any remainder
(levels a dtype has no bits for have empty segments).

A progressive tensor's segments (n elements, E exponent bits):

* level 0: one zstd frame of the exponent field as ``ceil(E/8)`` byte planes, most
  significant plane first (``exp_len`` bytes, a layout param), then the packed
  ``1 + mantissa_bits[0]``-bit fields sign ‖ top mantissa bits (:mod:`bitpack`);
* level n > 0: that level's mantissa bits, packed. Mantissa bits are close to random:
  zstd does not shrink them (measured), so they travel raw.

Missing bits are filled with the midpoint of the interval they leave open (the top
missing bit set), except for Inf/NaN words (exponent all ones) whose known mantissa bits
are all zero: those are filled with zeros so that ±Inf stays Inf. As the exponent is in
level 0, no prefix turns a finite weight into Inf/NaN.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

import numpy as np

from peerprog.codec import zstd
from peerprog.codec.bitpack import pack_into, packed_size, uint_dtype, unpack_range
from peerprog.codec.common import (
    BLOCK,
    Array,
    BaseDecoder,
    Buffers,
    Input,
    TensorwiseCodec,
    int_param,
    is_whole,
)
from peerprog.codec.dtypes import DType, dtype
from peerprog.codec.fields import extract, insert
from peerprog.codec.layout import ParamValue, TensorLayout
from peerprog.errors import FormatError

# Chosen by bench/codec.py on the reference model: 2 mantissa bits in level 0 keep 100%
# agreement at 23.9% of the float32 bytes; two small levels follow before the bulk.
DEFAULT_MANTISSA_BITS = (2, 2, 3, 8, 8)
DEFAULT_SMALL_TENSOR_ELEMENTS = 1024
MAX_LEVELS = 32


@dataclass(frozen=True)
class Split:
    """How one float dtype's words are cut into levels."""

    dt: DType
    # Mantissa bits of each level, level 0's being the top ones.
    level_bits: tuple[int, ...]

    @property
    def word(self) -> np.dtype[np.unsignedinteger[Any]]:
        return np.dtype(f"<u{self.dt.itemsize}")

    def known(self, levels: int) -> int:
        """Mantissa bits known after ``levels`` levels."""
        return sum(self.level_bits[:levels])

    def shift(self, level: int) -> int:
        """Bit position of the lowest bit of ``level``'s mantissa field."""
        return self.dt.mantissa_bits - self.known(level + 1)


def split_for(dt: DType, plan: Sequence[int]) -> Split:
    """Apply the float32 plan ``plan`` to float dtype ``dt``."""
    m = dt.mantissa_bits
    cuts = [min(c, m) for c in accumulate(plan)]
    cuts[-1] = m
    bits = [b - a for a, b in zip([0, *cuts[:-1]], cuts, strict=True)]
    return Split(dt, tuple(bits))


def _plan(params: Mapping[str, ParamValue]) -> tuple[list[int], int]:
    plan = params.get("mantissa_bits")
    if not isinstance(plan, list) or not 1 <= len(plan) <= MAX_LEVELS:
        raise FormatError(f"codec param 'mantissa_bits' must be a list of 1..{MAX_LEVELS} ints")
    bits = [int_param({"mantissa_bits": b}, "mantissa_bits", 0, 64) for b in plan]
    small = int_param(params, "small_tensor_elements", 0, 1 << 62)
    return bits, small


class BitplaneCodec(TensorwiseCodec):
    """Lossless float bit-field split; see the module docstring."""

    name = "bitplane"
    lossless = True

    def default_params(self) -> dict[str, ParamValue]:
        """``mantissa_bits`` (float32 plan) and ``small_tensor_elements``."""
        return {
            "mantissa_bits": list(DEFAULT_MANTISSA_BITS),
            "small_tensor_elements": DEFAULT_SMALL_TENSOR_ELEMENTS,
        }

    def levels(self, params: Mapping[str, ParamValue]) -> int:
        """``len(mantissa_bits)``."""
        return len(_plan(params)[0])

    def small(self, params: Mapping[str, ParamValue]) -> int:
        return _plan(params)[1]

    def _encode_progressive(self, params: Mapping[str, ParamValue], inp: Input) -> list[Buffers]:
        sp = split_for(inp.dt, _plan(params)[0])
        frame, packed = _encode_level0(sp, inp.flat)
        inp.params["exp_len"] = len(frame)
        return [
            [frame, packed],
            *([_encode_level(sp, inp.flat, n)] for n in range(1, len(sp.level_bits))),
        ]

    def decoder(
        self, params: Mapping[str, ParamValue], tensors: Sequence[TensorLayout]
    ) -> BitplaneDecoder:
        """A fresh incremental decoder."""
        plan, small = _plan(self.check_params(params))
        return BitplaneDecoder(plan, small, tensors)

    def decode_tensor(
        self,
        params: Mapping[str, ParamValue],
        layout: TensorLayout,
        pieces: Sequence[Any],
        prior: Array | None = None,
        prior_level: int | None = None,
    ) -> Array:
        """From ``prior`` at the level before only the last piece is read: its known bits are
        those of ``prior`` with the midpoint fill masked off (from a prior of an earlier
        level, all pieces are decoded)."""
        plan, small = _plan(params)
        dt = dtype(layout.dtype)
        level = len(pieces) - 1
        if prior_level not in (None, level - 1):
            prior = None
        if prior is None or level == 0 or is_whole(dt, layout.numel, small):
            return super().decode_tensor(params, layout, pieces, None)
        sp = split_for(dt, plan)
        if level >= len(sp.level_bits) or prior.dtype != dt.storage or prior.size != layout.numel:
            raise FormatError(f"tensor {layout.name!r}: prior does not match level {level}")
        staged = np.frombuffer(pieces[level], np.uint8)
        want = packed_size(layout.numel, sp.level_bits[level])
        if staged.size != want:
            raise FormatError(
                f"tensor {layout.name!r} level {level}: {staged.size} bytes, expected {want}"
            )
        wt = sp.word.type
        unknown = dt.mantissa_bits - sp.known(level)
        acc = prior.reshape(-1).view(sp.word) & wt(
            ~((1 << unknown) - 1) & ((1 << (8 * dt.itemsize)) - 1)
        )
        _insert_level(sp, acc, level, staged)
        return _filled(sp, acc, level + 1, copy=False).reshape(layout.shape)


def _encode_level0(sp: Split, flat: Array) -> tuple[bytes, Array]:
    """The zstd frame of the exponent planes, and the packed sign ‖ top mantissa bits."""
    dt, n = sp.dt, flat.size
    e_bits, m_bits = dt.exponent_bits, dt.mantissa_bits
    m0 = sp.level_bits[0]
    k0 = 1 + m0
    wt = sp.word.type
    nplanes = (e_bits + 7) // 8
    planes = np.empty((nplanes, n), np.uint8)
    packed = np.empty(packed_size(n, k0), np.uint8)
    words = flat.view(sp.word)
    for s in range(0, n, BLOCK):
        w = words[s : s + BLOCK]
        t = w >> wt(m_bits - m0)  # sign | exponent | top m0 mantissa bits
        exp = t >> wt(m0)
        for p in range(nplanes):
            # The narrowing cast keeps the low byte; the top plane may still hold the sign.
            planes[p, s : s + w.size] = exp >> wt(8 * (nplanes - 1 - p))
        if e_bits % 8:
            planes[0, s : s + w.size] &= np.uint8((1 << (e_bits % 8)) - 1)
        f0 = (t >> wt(e_bits + m0)) << wt(m0)
        if m0:
            f0 |= t & wt((1 << m0) - 1)
        pack_into(packed, f0.astype(uint_dtype(k0)), k0, s, n)
    return zstd.compress(planes, symbols=True), packed


def _encode_level(sp: Split, flat: Array, level: int) -> Array:
    """Level ``level`` > 0: that level's mantissa bits, packed."""
    n, bits = flat.size, sp.level_bits[level]
    out = np.empty(packed_size(n, bits), np.uint8)
    if bits:
        words = flat.view(sp.word)
        shift = sp.shift(level)
        for s in range(0, n, BLOCK):
            pack_into(out, extract(words[s : s + BLOCK], shift, bits), bits, s, n)
    return out


class BitplaneDecoder(BaseDecoder):
    """Incremental decoder: per tensor the known high bits of every word."""

    def __init__(self, plan: list[int], small: int, layouts: Sequence[TensorLayout]) -> None:
        super().__init__(layouts, len(plan), small)
        self._plan = plan
        self._splits: dict[str, Split] = {}
        self._acc: dict[int, Array] = {}

    def _split(self, dt: DType) -> Split:
        sp = self._splits.get(dt.name)
        if sp is None:
            sp = self._splits[dt.name] = split_for(dt, self._plan)
        return sp

    def _stage(self, i: int, layout: TensorLayout, dt: DType, level: int, chunk: Array) -> Array:
        sp = self._split(dt)
        what = f"tensor {layout.name!r} level {level}"
        if level == 0:
            return _decode_level0(sp, layout, chunk, what)
        want = packed_size(layout.numel, sp.level_bits[level])
        if chunk.size != want:
            raise FormatError(f"{what}: {chunk.size} bytes, expected {want}")
        return chunk

    def _apply(self, i: int, dt: DType, level: int, staged: Array) -> None:
        if level == 0:
            self._acc[i] = staged
        else:
            _insert_level(self._split(dt), self._acc[i], level, staged)

    def _release(self, i: int) -> None:
        self._acc.pop(i, None)

    def _materialise(self, i: int, dt: DType) -> Array:
        return _filled(self._split(dt), self._acc[i], self.levels_done, copy=not self._handing_over)


def _insert_level(sp: Split, acc: Array, level: int, staged: Array) -> None:
    """Put level ``level``'s packed mantissa bits into the words ``acc`` (in place)."""
    bits, shift = sp.level_bits[level], sp.shift(level)
    n = acc.size
    if not bits:
        return
    for s in range(0, n, BLOCK):
        cnt = min(BLOCK, n - s)
        insert(acc[s : s + cnt], shift, bits, unpack_range(staged, n, bits, s, cnt))


def _filled(sp: Split, acc: Array, levels: int, *, copy: bool) -> Array:
    """The words known after ``levels`` levels with the missing bits at their midpoint (a
    new array unless nothing is missing and not ``copy``), as the dtype's storage."""
    dt = sp.dt
    missing = dt.mantissa_bits - sp.known(levels)
    if missing == 0:
        return acc.view(dt.storage).copy() if copy else acc.view(dt.storage)
    wt = sp.word.type
    fill = wt(1 << (missing - 1))
    exp_mask = wt(((1 << dt.exponent_bits) - 1) << dt.mantissa_bits)
    man_mask = wt((1 << dt.mantissa_bits) - 1)
    out = np.empty_like(acc)
    for s in range(0, acc.size, BLOCK):
        a, o = acc[s : s + BLOCK], out[s : s + BLOCK]
        np.bitwise_or(a, fill, out=o)
        special = (a & exp_mask) == exp_mask
        if special.any():
            # Inf/NaN whose known mantissa bits are all zero: zero fill keeps Inf an Inf.
            keep = special & ((a & man_mask) == 0)
            o[keep] = a[keep]
    return out.view(dt.storage)


def _decode_level0(sp: Split, layout: TensorLayout, chunk: Array, what: str) -> Array:
    dt, n = sp.dt, layout.numel
    e_bits, m_bits = dt.exponent_bits, dt.mantissa_bits
    m0 = sp.level_bits[0]
    k0 = 1 + m0
    exp_len = layout.params.get("exp_len")
    if set(layout.params) != {"exp_len"} or not isinstance(exp_len, int):
        raise FormatError(f"{what}: params must be exactly an integer 'exp_len'")
    if isinstance(exp_len, bool) or not 0 <= exp_len <= chunk.size:
        raise FormatError(f"{what}: exp_len {exp_len} outside the {chunk.size}-byte segment")
    nplanes = (e_bits + 7) // 8
    planes = zstd.decompress_exact(chunk[:exp_len], nplanes * n, what).reshape(nplanes, n)
    if e_bits % 8 and n and int(planes[0].max()) >> (e_bits % 8):
        raise FormatError(f"{what}: exponent values wider than {e_bits} bits")
    packed = chunk[exp_len:]
    if packed.size != packed_size(n, k0):
        raise FormatError(
            f"{what}: {packed.size} bytes of sign/mantissa, expected {packed_size(n, k0)}"
        )
    wt = sp.word.type
    acc = np.empty(n, sp.word)
    for s in range(0, n, BLOCK):
        cnt = min(BLOCK, n - s)
        f0 = unpack_range(packed, n, k0, s, cnt, sp.word)
        t = planes[0, s : s + cnt].astype(sp.word)
        for p in range(1, nplanes):
            t <<= wt(8)
            t |= planes[p, s : s + cnt]
        t |= (f0 >> wt(m0)) << wt(e_bits)
        if m0:
            t <<= wt(m0)
            t |= f0 & wt((1 << m0) - 1)
        t <<= wt(m_bits - m0)
        acc[s : s + cnt] = t
    return acc
