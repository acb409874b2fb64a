"""The numeric core of the ``rowplane`` codec: geometry, quantisation and the split of a
plane level (see :mod:`peerprog.codec.rowplane` for the format).

With a power-of-two scale ``2**E`` the B-bit magnitude ``m = floor(|x| / 2**(E - B))`` is
the float's significand shifted right by ``t = K - e`` (``K`` a per-row constant, ``e`` the
exponent field, at least 1), and the bits shifted out are the residual: both exact bit
fields. So the residual of a weight whose magnitude first became non-zero in plane P is
``M + 1 - B + P`` bits wide (M mantissa bits); subnormals have narrower ones. Quantisation
uses those integer fields, or for one-row float32/float64 tensors two multiplications by
powers of two, which give the same exact values faster.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import accumulate
from typing import Any

import numpy as np

from peerprog.codec.bitpack import unpack_range
from peerprog.codec.common import BLOCK, Array
from peerprog.codec.dtypes import DType

EXP_DTYPE = np.dtype("<i2")  # row exponents on the wire


def sym_width(k: int) -> int:
    """Packing width of a k-bit significance symbol: the next of 1, 2, 4, 8, 16, 32, so
    that whole symbols sit in a byte for zstd's byte-wise entropy coder."""
    return next(w for w in (1, 2, 4, 8, 16, 32) if w >= k)


def _symbol_tables() -> dict[int, Array]:
    """For 2- and 4-bit symbols: every byte's symbols, most significant first, as the
    little-endian bytes of one wider integer (so a lookup unpacks a whole byte)."""
    b = np.arange(256, dtype=np.uint32)
    two = (b >> 6) | ((b >> 4) & 3) << 8 | ((b >> 2) & 3) << 16 | (b & 3) << 24
    four = (b >> 4) | (b & 15) << 8
    return {2: two.astype("<u4"), 4: four.astype("<u2")}


_SYMBOL_TABLES = _symbol_tables()


def unpack_symbols(data: Array, total: int, kw: int, start: int, count: int) -> Array:
    """Symbols ``start .. start+count`` of ``total`` packed at ``kw`` bits (``start`` a
    multiple of 8, ``data`` exactly ``packed_size(total, kw)`` bytes), as uint8 if
    ``kw`` <= 8. The same as :func:`bitpack.unpack_range`, faster for 2 and 4 bits."""
    table = _SYMBOL_TABLES.get(kw)
    if table is None:
        return unpack_range(data, total, kw, start, count)
    raw = data[start * kw // 8 : (start + count) * kw // 8 + 1]
    return np.take(table, raw).view(np.uint8)[:count]


def bit_length(x: Array) -> Array:
    """Bit length (0 for 0) of unsigned integers below 2**53, as int64."""
    e = (x.astype(np.float64).view(np.uint64) >> np.uint64(52)).astype(np.int64)
    return np.maximum(e - 1022, 0)


@dataclass(frozen=True)
class Geometry:
    """How one float dtype is cut: ``planes`` magnitude bits (the codec's B clamped to the
    dtype's precision), ``level_planes`` of them in each plane level."""

    dt: DType
    planes: int
    level_planes: tuple[int, ...]

    @property
    def word(self) -> np.dtype[np.unsignedinteger[Any]]:
        return np.dtype(f"<u{self.dt.itemsize}")

    @property
    def state(self) -> np.dtype[np.unsignedinteger[Any]]:
        """Dtype of the magnitudes."""
        return np.dtype(np.uint16 if self.planes <= 16 else np.uint32)

    @property
    def nbits(self) -> int:
        return 8 * self.dt.itemsize

    @property
    def bias(self) -> int:
        return (1 << (self.dt.exponent_bits - 1)) - 1

    @property
    def e_lo(self) -> int:
        """Smallest row exponent: 2**e_lo is just above the smallest subnormal."""
        return 2 - self.bias - self.dt.mantissa_bits

    @property
    def e_hi(self) -> int:
        """Largest row exponent: 2**e_hi is above the largest finite value."""
        return self.bias + 1

    def k_of(self, exps: Array) -> Array:
        """The per-row shift constant ``K = E - B + bias + M``."""
        return exps.astype(np.int64) + (self.dt.mantissa_bits + self.bias - self.planes)

    def done(self, plane_levels: int) -> int:
        """Magnitude bits known after ``plane_levels`` plane levels."""
        return sum(self.level_planes[:plane_levels])

    def width(self, plane: int) -> int:
        """Residual bits of a weight first significant in ``plane`` (0 = most significant)."""
        return self.dt.mantissa_bits + 1 - self.planes + plane


def geometry(dt: DType, plan: Sequence[int]) -> Geometry:
    """Apply the plane plan ``plan`` (B = its sum) to float dtype ``dt``."""
    planes = min(sum(plan), dt.mantissa_bits + 1)
    cuts = [min(c, planes) for c in accumulate(plan)]
    bits = tuple(b - a for a, b in zip([0, *cuts[:-1]], cuts, strict=True))
    return Geometry(dt, planes, bits)


def rows_of(shape: tuple[int, ...], numel: int, row_octaves: int) -> tuple[int, int]:
    """(rows, row length): the first dimension's rows if ``row_octaves`` and the tensor has
    two or more dimensions, else one row."""
    rows = shape[0] if row_octaves and len(shape) >= 2 else 1
    return rows, (numel // rows if rows else 0)


def fields(g: Geometry, words: Array) -> tuple[Array, Array, Array]:
    """(significand, exponent field clamped to >= 1, finite mask) of ``words``."""
    m_bits = g.dt.mantissa_bits
    wt = g.word.type
    mag = words & wt((1 << (g.nbits - 1)) - 1)
    ex = mag >> wt(m_bits)
    finite = ex != wt((1 << g.dt.exponent_bits) - 1)
    sig = mag & wt((1 << m_bits) - 1)
    normal = ex != 0
    sig |= normal.astype(g.word) << wt(m_bits)
    return sig, np.maximum(ex, wt(1)), finite


def _spans(n: int, rows: int, cols: int) -> list[tuple[int, int, slice]]:
    """Blocks of about BLOCK elements: (start, end, rows covered). One row: plain blocks of
    its elements; several rows: whole rows."""
    if n == 0:
        return []
    if rows <= 1:
        return [(s, min(n, s + BLOCK), slice(0, 1)) for s in range(0, n, BLOCK)]
    per = max(1, BLOCK // cols) if cols else rows
    return [(r * cols, min(rows, r + per) * cols, slice(r, r + per)) for r in range(0, rows, per)]


def _grid(block: Array, rows: int, cols: int) -> Array:
    return block.reshape(-1, cols) if rows > 1 else block.reshape(1, -1)


def row_exponents(g: Geometry, words: Array, rows: int, cols: int, row_octaves: int) -> Array:
    """Per row the smallest E with 2**E above every finite |x| (e_lo for none)."""
    wt = g.word.type
    top = np.zeros(rows, g.word)
    inf = wt(((1 << g.dt.exponent_bits) - 1) << g.dt.mantissa_bits)
    if cols:
        for s, e, rs in _spans(words.size, rows, cols):
            mag = _grid(words[s:e], rows, cols) & wt((1 << (g.nbits - 1)) - 1)
            mag *= mag < inf  # non-finite values do not count
            np.maximum(top[rs], mag.max(axis=1), out=top[rs])
    sig, ex, _ = fields(g, top)
    exps = ex.astype(np.int64) - g.bias - g.dt.mantissa_bits + bit_length(sig)
    exps[top == 0] = g.e_lo
    if rows > 1:
        exps = np.maximum(exps, exps.max() - row_octaves)
    return exps


class Quantiser:
    """Magnitudes and residuals of one tensor's words (rows of ``cols`` words; ``exps`` the
    rows' exponents). Integer bit-field arithmetic in general; for one-row float32/float64
    tensors with a moderate scale, the same exact values from two float multiplications by
    powers of two (faster)."""

    def __init__(self, g: Geometry, exps: Array, rows: int, cols: int) -> None:
        self.g, self.rows, self.cols = g, rows, cols
        self.kconst = g.k_of(exps)
        self.fast: tuple[Any, Any] | None = None
        if rows == 1 and g.dt.name in ("float32", "float64"):
            f = g.dt.storage.type
            shift = int(exps[0]) - g.planes
            lo = 1 - g.bias  # smallest normal exponent
            if lo <= shift <= g.bias and lo <= -shift <= g.bias:
                self.fast = (f(2.0**-shift), f(2.0**shift))

    def magnitudes(self, words: Array) -> Array:
        """Every word's B-bit magnitude ``m``, in index order (0 for NaN and ±Inf)."""
        g = self.g
        mags = np.empty(words.size, g.state)
        wt = g.word.type
        inf = wt(((1 << g.dt.exponent_bits) - 1) << g.dt.mantissa_bits)
        for s, e, rs in _spans(words.size, self.rows, self.cols):
            if self.fast is not None:
                mag = words[s:e] & wt((1 << (g.nbits - 1)) - 1)
                mag *= mag < inf
                mags[s:e] = mag.view(g.dt.storage) * self.fast[0]  # floor by the cast
                continue
            sig, ex, finite = fields(g, _grid(words[s:e], self.rows, self.cols))
            t = self.kconst[rs, None] - ex.astype(np.int64)  # m = sig >> t (or << -t)
            m = sig >> np.clip(t, 0, 63).astype(g.word)
            if int(t.min()) < 0:  # rows wholly in the subnormal range
                m <<= np.clip(-t, 0, 63).astype(g.word)
            m *= finite
            mags[s:e] = m.reshape(-1)
        return mags

    def residuals(self, words: Array, mags: Array, idx: Array) -> Array:
        """The bits of the significands of ``words`` (the weights ``idx``, non-zero
        magnitudes ``mags``) below their magnitudes."""
        g = self.g
        mag: Array = words & g.word.type((1 << (g.nbits - 1)) - 1)
        if self.fast is not None:
            approx = mags.astype(g.dt.storage) * self.fast[1]  # exact: |x| truncated
            mag -= approx.view(g.word)
            return mag
        sig, ex, _ = fields(g, words)
        k = row_k(self.kconst, self.rows, self.cols, idx)
        t = np.clip(k - ex.astype(np.int64), 0, 63).astype(g.word)
        low: Array = sig & ((g.word.type(1) << t) - g.word.type(1))
        return low


def row_k(kconst: Array, rows: int, cols: int, idx: Array) -> Array:
    """K of the weights ``idx``: the constant of their rows."""
    return kconst if rows == 1 else kconst[idx // cols]


FieldsOf = Callable[[int, int], Array]


@dataclass
class Split:
    """What a plane level does to the weights that were still zero before it."""

    keep: list[Array]  # chunks of the weights still zero after it, index order
    runs: list[list[Array]]  # per plane of the level: chunks of the weights first non-zero there
    fields: list[list[Array]]  # their fields in the level, alike (empty for 1-plane levels)

    @property
    def counts(self) -> list[int]:
        return [sum(c.size for c in run) for run in self.runs]

    def write(self, keep: Array, order: Array, start: int, mags: Array | None) -> int:
        """Copy the result into ``keep`` and, from ``order[start]`` on, ``order`` (and
        ``mags``); returns how many weights became non-zero."""
        _concat(self.keep, keep[: sum(c.size for c in self.keep)])
        at = start
        for j, run in enumerate(self.runs):
            size = sum(c.size for c in run)
            _concat(run, order[at : at + size])
            if mags is not None:
                if self.fields[j]:
                    _concat(self.fields[j], mags[at : at + size])
                else:  # a one-plane level: every new field is 1
                    mags[at : at + size] = 1
            at += size
        return at - start


def _concat(chunks: list[Array], out: Array) -> None:
    if chunks:
        np.concatenate(chunks, out=out, casting="unsafe")


def split_level(nins: int, k: int, fields_of: FieldsOf, ins: Array | None) -> Split:
    """Walk the ``nins`` weights not yet significant (``ins``, index order; None: all of
    them) block by block; ``fields_of(s, e)`` gives the level's k-bit fields of entries
    ``s..e``. Each newly non-zero weight goes to the run of the plane of its leading bit."""
    sp = Split([], [[] for _ in range(k)], [[] for _ in range(k)])
    for s in range(0, nins, BLOCK):
        e = min(nins, s + BLOCK)
        f = fields_of(s, e)
        nz = f.view(np.bool_) if f.dtype == np.uint8 and k == 1 else f != 0
        hit = np.flatnonzero(nz)
        zero = np.flatnonzero(~nz)
        if ins is None:  # level 0: the entries are the indices
            sp.keep.append(zero + s)
            ih = hit + s
        else:
            block = ins[s:e]
            sp.keep.append(np.take(block, zero))
            ih = np.take(block, hit)
        if k == 1:
            sp.runs[0].append(ih)
            continue
        fh = np.take(f, hit)
        for j in range(k):
            # Leading bit in plane j of the level: the field shifted down to just it is 1.
            sel = np.flatnonzero((fh >> fh.dtype.type(k - 1 - j)) == 1)
            sp.runs[j].append(np.take(ih, sel))
            sp.fields[j].append(np.take(fh, sel))
    return sp


def run_starts(base: int, counts: list[int]) -> list[int]:
    """Where each plane's run of a level starts in the significance order."""
    return [base + c for c in accumulate([0, *counts[:-1]])]


def byte_planes(words: Array) -> Array:
    """Little-endian words as byte planes, most significant byte first."""
    size = words.dtype.itemsize
    return np.ascontiguousarray(words.view(np.uint8).reshape(-1, size)[:, ::-1].T)


def index_dtype(n: int) -> np.dtype[Any]:
    return np.dtype(np.int32 if n < 2**31 else np.int64)


def to_words(dt: DType, v: Array) -> Array:
    """Non-negative float64 values as ``dt`` words, rounded to nearest and clamped to the
    largest finite value (never Inf)."""
    np.minimum(v, _LARGEST[dt.name], out=v)
    if dt.name == "bfloat16":
        bits = v.astype(np.float32).view(np.uint32)
        up = (bits >> np.uint32(16)) & np.uint32(1)
        return ((bits + np.uint32(0x7FFF) + up) >> np.uint32(16)).astype(np.uint16)
    return v.astype(dt.storage).view(f"<u{dt.itemsize}")


_LARGEST = {
    "bfloat16": float(np.uint32(0x7F7F0000).view(np.float32)),
    **{t.__name__: float(np.finfo(t).max) for t in (np.float16, np.float32, np.float64)},
}
