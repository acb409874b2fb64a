"""The ``rowplane`` encoder of one progressive tensor: every level's pieces at once."""

from __future__ import annotations

from typing import Any

import numpy as np

from peerprog.codec import zstd
from peerprog.codec.bitpack import pack_into, packed_size
from peerprog.codec.common import BLOCK, Array
from peerprog.codec.rowplane_core import (
    EXP_DTYPE,
    Geometry,
    Quantiser,
    byte_planes,
    index_dtype,
    row_exponents,
    rows_of,
    split_level,
    sym_width,
)


def encode_tensor(
    g: Geometry, flat: Array, shape: tuple[int, ...], row_octaves: int
) -> tuple[list[list[Any]], list[int]]:
    """Every level's pieces for one progressive tensor, and each level's zstd frame length
    (the ``frame_bytes`` layout param)."""
    words = flat.view(g.word)
    n = words.size
    rows, cols = rows_of(shape, n, row_octaves)
    exps = row_exponents(g, words, rows, cols, row_octaves)
    quant = Quantiser(g, exps, rows, cols)
    mags = quant.magnitudes(words)
    ins: Array | None = None  # not yet significant, index order (None: all)
    nins = n
    order = np.empty(n, index_dtype(n))  # significant: by first non-zero plane, then index
    known = np.empty(n, g.state)  # their magnitudes, in that order
    resid = np.empty(n, g.word)  # and the bits below those
    count = 0
    groups: list[int] = []  # how many first became non-zero in each plane
    pieces: list[list[Any]] = []
    frames: list[int] = []
    st = g.state.type
    for level, k in enumerate(g.level_planes):
        head = exps.astype(EXP_DTYPE).tobytes() if level == 0 else b""
        if k == 0:
            frame = zstd.compress(head, symbols=True) if level == 0 else b""
            pieces.append([frame])
            frames.append(len(frame))
            continue
        shift = st(g.planes - g.done(level + 1))
        mask = st((1 << k) - 1)
        kw = sym_width(k)
        syms = np.empty(packed_size(nins, kw), np.uint8)
        total, src = nins, ins

        def fields_of(s: int, e: int) -> Array:
            f: Array = mags[s:e] if src is None else np.take(mags, src[s:e].astype(np.intp))  # noqa: B023
            f = (f >> shift) & mask  # noqa: B023
            pack_into(syms, f, kw, s, total)  # noqa: B023
            return f

        sp = split_level(nins, k, fields_of, ins)
        keep = np.empty(nins - sum(sp.counts), order.dtype) if ins is None else ins
        new = sp.write(keep, order, count, None)
        refine = np.empty(packed_size(count, k), np.uint8)
        for s in range(0, count, BLOCK):
            pack_into(refine, (known[s : min(count, s + BLOCK)] >> shift) & mask, k, s, count)
        signs = np.empty((new + 7) // 8, np.uint8)
        end = count + new
        for s in range(count, end, BLOCK):
            e = min(end, s + BLOCK)
            idx = order[s:e].astype(np.intp)
            m = np.take(mags, idx, out=known[s:e])
            w = np.take(words, idx)
            resid[s:e] = quant.residuals(w, m, idx)
            top = (w >> g.word.type(g.nbits - 1)).astype(np.bool_)
            signs[(s - count) // 8 : (e - count + 7) // 8] = np.packbits(top)
        frame = zstd.compress(head + syms.tobytes(), symbols=True)
        pieces.append([frame, signs, refine])
        frames.append(len(frame))
        count += new
        nins -= new
        ins = keep[:nins]
        groups += sp.counts
    del known
    rest = words if ins is None else words[ins]
    m0 = zstd.compress(byte_planes(rest), symbols=True)
    tail: list[Any] = [m0]
    start = 0
    for plane, size in enumerate(groups):
        width = g.width(plane)
        if size and width:
            out = np.empty(packed_size(size, width), np.uint8)
            for s in range(0, size, BLOCK):
                pack_into(out, resid[start + s : start + min(size, s + BLOCK)], width, s, size)
            tail.append(out)
        start += size
    pieces.append(tail)
    frames.append(len(m0))
    return pieces, frames
