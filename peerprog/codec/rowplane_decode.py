"""The ``rowplane`` decoding state of one progressive tensor.

Between levels it holds the weights not yet significant (index order) and, for the
significant ones, in the order of the streams (first non-zero plane, then index), their
index, known magnitude bits and sign. After the residual level only the final words remain.
Every ``stage_*`` method checks a level without changing anything; ``apply_*`` cannot fail.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from peerprog.codec import zstd
from peerprog.codec.bitpack import packed_size, unpack_range
from peerprog.codec.common import BLOCK, Array
from peerprog.codec.rowplane_core import (
    EXP_DTYPE,
    Geometry,
    Split,
    index_dtype,
    row_k,
    rows_of,
    split_level,
    sym_width,
    to_words,
    unpack_symbols,
)
from peerprog.errors import FormatError


@dataclass
class PlaneStep:
    """A checked plane level of one tensor, ready to merge."""

    exps: Array | None  # level 0: the rows' exponents
    split: Split | None  # what it does to the weights still zero
    signs: Array  # packed signs of those that become non-zero
    refine: Array  # packed refinement fields of the weights already non-zero


class TensorState:
    """Incremental decoding state of one progressive tensor (see the module docstring)."""

    def __init__(self, g: Geometry, name: str, shape: tuple[int, ...], numel: int, octaves: int):
        self.g = g
        self.name = name
        self.n = numel
        self.rows, self.cols = rows_of(shape, numel, octaves)
        self.exps: Array = np.zeros(0, np.int64)
        self.ins: Array | None = None  # None: every weight
        self.nins = numel
        # Allocated when the first weight becomes significant (not for a mere layout).
        self.order: Array = np.zeros(0, index_dtype(numel))
        self.mags: Array = np.zeros(0, g.state)
        self.signs: Array = np.zeros(0, np.uint8)
        self.count = 0
        self.groups: list[int] = []
        self.final: Array | None = None

    # -- plane levels --------------------------------------------------------------------

    def stage_plane(self, level: int, chunk: Array, frame_len: int) -> PlaneStep | None:
        """Check plane level ``level``; None if it carries nothing for this tensor."""
        g = self.g
        what = f"tensor {self.name!r} level {level}"
        k = g.level_planes[level]
        if frame_len > chunk.size:
            raise FormatError(f"{what}: frame of {frame_len} bytes in a {chunk.size}-byte segment")
        if k == 0 and level > 0:
            if chunk.size:
                raise FormatError(f"{what}: {chunk.size} bytes for a level without planes")
            return None
        head = 2 * self.rows if level == 0 else 0
        body = packed_size(self.nins, sym_width(k)) if k else 0
        raw = zstd.decompress_exact(chunk[:frame_len], head + body, what)
        exps = None
        if level == 0:
            exps = raw[:head].view(EXP_DTYPE).astype(np.int64)
            if exps.size and (exps.min() < g.e_lo or exps.max() > g.e_hi):
                raise FormatError(f"{what}: row exponent outside {g.e_lo}..{g.e_hi}")
        sp = None
        if k:
            sp = split_level(self.nins, k, FieldsReader(raw[head:], self.nins, k, what), self.ins)
        new = sum(sp.counts) if sp else 0
        rest = chunk[frame_len:]
        nsign = (new + 7) // 8
        nref = packed_size(self.count, k)
        if rest.size != nsign + nref:
            raise FormatError(
                f"{what}: {rest.size} bytes of signs and refinement bits, expected {nsign + nref}"
            )
        return PlaneStep(exps, sp, rest[:nsign], rest[nsign:])

    def apply_plane(self, level: int, step: PlaneStep | None) -> None:
        if step is None:
            return
        if step.exps is not None:
            self.exps = step.exps
        sp = step.split
        if sp is None:
            return
        k = self.g.level_planes[level]
        c, st = self.count, self.g.state
        for s in range(0, c, BLOCK):
            live = self.mags[s : min(c, s + BLOCK)]
            live <<= st.type(k)
            live |= unpack_range(step.refine, c, k, s, live.size, st)
        counts = sp.counts
        if self.order.size < self.n:
            self.order = np.empty(self.n, self.order.dtype)
            self.mags = np.empty(self.n, self.mags.dtype)
            self.signs = np.empty(self.n, np.uint8)
        keep = np.empty(self.nins - sum(counts), self.order.dtype) if self.ins is None else self.ins
        new = sp.write(keep, self.order, c, self.mags)
        self.signs[c : c + new] = np.unpackbits(step.signs, count=new)
        self.count += new
        self.nins -= new
        self.ins = keep[: self.nins]
        self.groups += counts

    # -- the residual level --------------------------------------------------------------

    def stage_residual(self, level: int, chunk: Array, frame_len: int) -> Array:
        """Check the residual level and return the tensor's final words."""
        g = self.g
        what = f"tensor {self.name!r} level {level}"
        if frame_len > chunk.size:
            raise FormatError(f"{what}: frame of {frame_len} bytes in a {chunk.size}-byte segment")
        size = g.dt.itemsize
        planes = zstd.decompress_exact(chunk[:frame_len], self.nins * size, what)
        out = np.empty(self.n, g.word)
        tiny = planes.reshape(size, -1)[::-1].T
        if self.ins is None:
            out.view(np.uint8).reshape(-1, size)[...] = tiny
        else:
            out.view(np.uint8).reshape(-1, size)[self.ins] = tiny
        rest = chunk[frame_len:]
        want = sum(packed_size(c, g.width(p)) for p, c in enumerate(self.groups))
        if rest.size != want:
            raise FormatError(f"{what}: {rest.size} bytes of residual bits, expected {want}")
        kconst = g.k_of(self.exps)
        start = offset = 0
        for plane, c in enumerate(self.groups):
            width = g.width(plane)
            data = rest[offset : offset + packed_size(c, width)]
            for s in range(0, c, BLOCK):
                cnt = min(BLOCK, c - s)
                sl = slice(start + s, start + s + cnt)
                idx = self.order[sl].astype(np.intp)
                r = unpack_range(data, c, width, s, cnt, g.word) if width else None
                k = row_k(kconst, self.rows, self.cols, idx)
                out[idx] = self._words(sl, width, r, k, what)
            start += c
            offset += data.size
        return out

    def _words(self, sl: slice, width: int, r: Array | None, k: Array, what: str) -> Array:
        """Final words of the significant weights ``sl``, all first non-zero in the plane
        whose residual is ``width`` bits wide (``k``: their rows' K)."""
        g = self.g
        wt = g.word.type
        m_bits = g.dt.mantissa_bits
        mags = self.mags[sl].astype(g.word)
        if int(k.min()) > width:  # all normal: the shift is the nominal width
            sig = mags << wt(width)
            if r is not None:
                sig |= r
            expo = (k - (width + 1)).astype(g.word) << wt(m_bits)
        else:  # subnormals: a narrower residual, zero-padded to the width
            t = k - np.maximum(1, k - width)
            w = np.maximum(t, 0).astype(g.word)
            down = np.maximum(-t, 0).astype(g.word)
            if r is not None and (r >> w).any():
                raise FormatError(f"{what}: residual wider than its subnormal weight")
            if (mags & ((wt(1) << down) - wt(1))).any():
                raise FormatError(f"{what}: magnitude bits below the float's precision")
            sig = ((mags << w) | (r if r is not None else wt(0))) >> down
            expo = (k - t - 1).astype(g.word) << wt(m_bits)
        out: Array = sig + expo
        out |= self.signs[sl].astype(g.word) << wt(g.nbits - 1)
        return out

    def apply_residual(self, final: Array) -> None:
        self.final = final
        self.ins = None
        self.order = np.zeros(0, self.order.dtype)
        self.mags = np.zeros(0, self.mags.dtype)
        self.signs = np.zeros(0, np.uint8)

    # -- the approximation ---------------------------------------------------------------

    def materialise(self, plane_levels: int, copy: bool = True) -> Array:
        """The current approximation as a storage array: a new one, unless ``copy`` is
        false and the final words are known (then those, handed over)."""
        g = self.g
        if self.final is not None:
            final = self.final.view(g.dt.storage)
            return final.copy() if copy else final
        out = np.zeros(self.n, g.word)
        p = g.done(plane_levels)
        sign = g.word.type(g.nbits - 1)
        for s in range(0, self.count, BLOCK):
            sl = slice(s, min(self.count, s + BLOCK))
            idx = self.order[sl].astype(np.intp)
            e = self.exps if self.rows == 1 else self.exps[idx // self.cols]
            # The midpoint of the open interval: (2q + 1) * 2**(E - p - 1).
            q = self.mags[sl].astype(np.float64)
            q *= 2.0
            q += 1.0
            words = to_words(g.dt, np.ldexp(q, (e - (p + 1)).astype(np.int32)))
            words |= self.signs[sl].astype(g.word) << sign
            out[idx] = words
        return out.view(g.dt.storage)


class FieldsReader:
    """``fields_of`` for :func:`split_level`: unpacks a level's significance symbols block
    by block and checks that they fit in k bits."""

    def __init__(self, syms: Array, nins: int, k: int, what: str) -> None:
        self.syms, self.nins, self.k, self.what = syms, nins, k, what
        self.kw = sym_width(k)

    def __call__(self, s: int, e: int) -> Array:
        f = unpack_symbols(self.syms, self.nins, self.kw, s, e - s)
        if self.kw != self.k and e > s and int(f.max()) >> self.k:
            raise FormatError(f"{self.what}: significance symbol wider than {self.k} bits")
        return f
