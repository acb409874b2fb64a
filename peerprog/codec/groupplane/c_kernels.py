"""groupplane's kernels in C: the extension :mod:`peerprog.codec.groupplane._kernels`
(``c/*.c``, compiled by ``setup.py`` at ``pip install``; optional, skipped with a warning
where there is no compiler) behind :class:`~peerprog.codec.groupplane.kernels.Kernels`.

One pass over the tensor, chunk by chunk in cache, encodes it whole (scales, every plane
step, the remainder) or decodes any run of consecutive levels: a chunk's weights are held as
integer states (magnitude and sign) through every plane step, then written once, as
midpoints or through the remainder as the exact words. On x86-64 the hot loops have SSSE3 /
AVX2 / BMI2 versions chosen at load from the CPU's features (``ext.simd(False)`` selects the
portable C, which other CPUs use; ``-DGP_PORTABLE`` builds only that).

:data:`ext` is the extension module, or None when it is not built or was built for another
interface version (:data:`FORMAT`); :data:`error` then says why.
"""

from __future__ import annotations

from collections.abc import Sequence
from types import ModuleType

import numpy as np

from peerprog.codec.groupplane.format import (
    MAX_STEP,
    Array,
    Geometry,
    Streams,
)
from peerprog.codec.groupplane.kernels import Remainder, Step
from peerprog.codec.groupplane.rans import symbols_per_byte

FORMAT = 5
"""The interface version the extension must report; a stale build is not used."""


def _load() -> tuple[ModuleType | None, str]:
    try:
        from peerprog.codec.groupplane import _kernels
    except ImportError as e:
        return None, f"the C extension does not import: {e}"
    if getattr(_kernels, "FORMAT", None) != FORMAT:
        got = getattr(_kernels, "FORMAT", None)
        return None, f"the C extension is of interface {got}, not {FORMAT}: rebuild it"
    _kernels.tables([symbols_per_byte(r) for r in range(1, MAX_STEP + 1)])
    return _kernels, ""


ext, error = _load()


def _args(geo: Geometry) -> tuple[int, int, int]:
    d = geo.dt
    return d.itemsize, d.exponent_bits, d.mantissa_bits


class CKernels:
    """The C implementation of :class:`~peerprog.codec.groupplane.kernels.Kernels`."""

    name = "c"

    def __init__(self) -> None:
        if ext is None:
            raise RuntimeError(error)
        self._ext = ext

    def encode(
        self,
        geo: Geometry,
        words: Array,
        gsize: int,
        top: int,
        steps: Sequence[tuple[int, int]],
        split: bool,
    ) -> Streams:
        size, ebits, mbits = _args(geo)
        scales, outs, rest, low, bottom = self._ext.encode(
            np.ascontiguousarray(words), gsize, size, ebits, mbits, geo.e_floor, geo.e_ceil,
            top, list(steps), split,
        )  # fmt: skip
        return Streams(scales, outs, rest, low, bottom)

    def decode(
        self,
        geo: Geometry,
        out: Array,
        numel: int,
        gsize: int,
        scales: Array,
        prior: Array | None,
        steps: Sequence[Step],
        remainder: Remainder | None,
    ) -> None:
        size, ebits, mbits = _args(geo)
        self._ext.decode(
            out, numel, scales, geo.e_floor, gsize, size, ebits, mbits, prior,
            [(s.k1, s.r, s.first, s.codes, s.refine) for s in steps],
            None
            if remainder is None
            else (remainder.rest, remainder.low, remainder.low_bytes),
        )  # fmt: skip
