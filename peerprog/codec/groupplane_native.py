"""groupplane's levels through the C kernels of :mod:`peerprog.codec._groupplane`.

The C extension (``_groupplane.c``, CPython buffer protocol only) makes one pass over a
tensor per plane step and one for the remainder, chunk by chunk in cache: the decoder reads
the prior's significance, expands the symbol and refinement streams into the weights' order,
computes the midpoints in float32 exactly as numpy does; the encoder computes the group
exponents and magnitudes once, then each step's symbols and refinement fields and the
remainder's bits. zstd stays here (the ``zstandard`` package). On x86-64 the hot loops have
SSSE3 / AVX2 / BMI2 versions chosen at load from the CPU's features (``ext.simd(False)``
selects the portable C, which other CPUs use). The byte format is exactly that of the numpy
kernels in :mod:`peerprog.codec.groupplane_planes` (the reference): both produce identical
streams and decode each other's (property-tested in ``tests/unit/test_codec_groupplane_c.py``,
SIMD and portable).

:data:`ext` is the extension module, or None when it is not built (or was built from another
format version): :mod:`peerprog.codec.groupplane` then uses the numpy kernels.

Bounds: a symbol frame may declare at most the bytes that ``ngroups * gsize`` symbols need and
a remainder frame at most the tensor's words, so nothing larger than the tensor is allocated;
the kernels check every count against the streams' lengths after their pass.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType
from typing import Any

import numpy as np
import zstandard

from peerprog.codec import zstd
from peerprog.codec.groupplane_planes import Array, Buffer, Geometry, compress_dense, split_u32
from peerprog.errors import FormatError

FORMAT = 2  # the kernels' interface version; a stale build is not used


def _load() -> ModuleType | None:
    try:
        from peerprog.codec import _groupplane
    except ImportError:
        return None
    return _groupplane if getattr(_groupplane, "FORMAT", None) == FORMAT else None


ext = _load()

_PER = {r: next(p for p in range(8, 0, -1) if (2 ** (r + 1) - 1) ** p <= 256) for r in range(1, 8)}


def _u32(n: int) -> bytes:
    return n.to_bytes(4, "little")


def _args(geo: Geometry) -> tuple[int, int, int]:
    d = geo.dt
    return d.itemsize, d.exponent_bits, d.mantissa_bits


def _kernels() -> ModuleType:
    if ext is None:
        raise RuntimeError("the groupplane C extension is not built")
    return ext


# ---------------------------------------------------------------------------- encode


def encode(
    geo: Geometry, words: Array, gsize: int, ks: Sequence[int], levels: Sequence[Sequence[Any]]
) -> list[bytes]:
    """A planed tensor's pieces (all levels, the remainder last) from its flat words (not
    padded); ``levels`` lists each plane level's steps ``(k0, k1)``."""
    k = _kernels()
    steps = [step for level in levels for step in level]
    size, ebits, mbits = _args(geo)
    scales, outs, rest, low = k.encode(
        np.ascontiguousarray(words), gsize, size, ebits, mbits, geo.e_floor, geo.e_ceil,
        ks[-1], steps,
    )  # fmt: skip
    pieces: list[bytes] = []
    it = iter(outs)
    for n, level in enumerate(levels):
        chunks: list[bytes] = []
        if n == 0:
            frame = zstd.compress(scales, symbols=True)
            chunks += [_u32(len(frame)), frame]
        for _ in level:
            codes, refine = next(it)
            frame = zstd.compress(codes, symbols=True)
            chunks += [_u32(4 + len(frame) + len(refine)), _u32(len(frame)), frame, refine]
        pieces.append(b"".join(chunks))
    frame = compress_dense(rest)
    pieces.append(b"".join([_u32(4 + len(frame) + len(low)), _u32(len(frame)), frame, low]))
    return pieces


# ---------------------------------------------------------------------------- decode


def _declared(frame: Buffer, limit: int, what: str) -> int:
    """The content size a zstd frame declares, checked to be at most ``limit`` bytes."""
    try:
        declared: int = zstandard.frame_content_size(frame)
    except zstandard.ZstdError as e:
        raise FormatError(f"{what}: not a zstd frame ({e})") from None
    if not 0 <= declared <= limit:
        raise FormatError(f"{what}: zstd frame declares {declared} bytes, at most {limit}")
    return declared


def _frame(frame: Buffer, limit: int, what: str) -> Array:
    """A zstd frame's content, of the size it declares, at most ``limit`` bytes."""
    return zstd.decompress_exact(frame, _declared(frame, limit, what), what)


def scales(geo: Geometry, frame: Buffer, ngroups: int, what: str) -> Array:
    """Level 0's scale bytes (``E - e_floor``), range-checked."""
    raw = zstd.decompress_exact(frame, ngroups, what)
    if ngroups and int(raw.max()) + geo.e_floor > geo.e_ceil:
        raise FormatError(f"{what}: group exponent out of range")
    return raw


def plane_steps(
    geo: Geometry,
    prior: Array | None,
    n_in: int,
    out: Array,
    scale_bytes: Array,
    gsize: int,
    steps: Sequence[tuple[int, int]],
    parts: Sequence[Buffer],
    what: str,
) -> None:
    """Decode a level's plane steps into ``out`` (flat words, padded to whole groups) from
    ``prior`` (its first ``n_in`` words; None: all 0, level 0)."""
    k = _kernels()
    size, ebits, mbits = _args(geo)
    total = out.size
    src: Array | None = prior
    for (a, b), part in zip(steps, parts, strict=True):
        r = b - a
        frame, refine = split_u32(part, what)
        codes = _frame(frame, -(-total // _PER[r]), what)
        k.decode_planes(
            src, n_in, out, scale_bytes, geo.e_floor, gsize, size, ebits, mbits, b, r,
            codes, refine,
        )  # fmt: skip
        src, n_in = out, total


def remainder(geo: Geometry, prior: Array, out: Array, part: Buffer, what: str) -> None:
    """Decode the exact words into ``out`` (flat, padded) from the prior's words."""
    k = _kernels()
    size, ebits, mbits = _args(geo)
    frame, low = split_u32(part, what)
    raw = _frame(frame, out.size * size, what)
    k.decode_remainder(prior, prior.size, out, raw, low, size, ebits, mbits)


Step = tuple[int, int, bool, Buffer, str]  # (k1, r, first step of its level, part, what)


def levels(
    geo: Geometry,
    out: Array,
    numel: int,
    scale_bytes: Array,
    gsize: int,
    steps: Sequence[Step],
    rem: tuple[Buffer, str] | None,
) -> bool:
    """Decode levels 0..n from scratch into ``out`` in one pass (every plane step of every
    level, then the remainder part ``rem`` if the last level is there). False, having done
    nothing, when the symbol frames together declare more than the tensor's size (then the
    caller decodes level by level, which never holds more than one frame)."""
    k = _kernels()
    size, ebits, mbits = _args(geo)
    total = out.size
    frames = []
    budget = total * size
    for k1, r, first, part, what in steps:
        frame, refine = split_u32(part, what)
        budget -= _declared(frame, -(-total // _PER[r]), what)
        frames.append((k1, r, first, frame, refine, what))
    remargs = None
    if rem is not None:
        part, what = rem
        frame, low = split_u32(part, what)
        budget -= _declared(frame, total * size, what)
        remargs = (frame, low, what)
    if budget < 0:
        return False
    args = [
        (k1, r, first, zstd.decompress_exact(f, zstandard.frame_content_size(f), w), refine)
        for k1, r, first, f, refine, w in frames
    ]
    raw = None
    if remargs is not None:
        f, low, w = remargs
        raw = (zstd.decompress_exact(f, zstandard.frame_content_size(f), w), low)
    k.decode_levels(out, numel, scale_bytes, geo.e_floor, gsize, size, ebits, mbits, args, raw)
    return True
