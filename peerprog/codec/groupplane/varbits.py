"""Pack unsigned fields of varying widths (0..56 bits each) into one bit stream, most
significant bit first, vectorised: no sort and no loop over widths.

Field i sits at bit offset ``sum(widths[:i])``; the stream is ``ceil(sum(widths) / 8)``
bytes, the last one zero-padded. A field lies in at most two aligned big-endian 64-bit
words: packing sums each field's share of each word (fields do not overlap, so a sum is an
OR; ``bincount`` sums exactly in float64 per 32-bit half), unpacking gathers the two words
and shifts.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from peerprog.errors import FormatError

Array = npt.NDArray[Any]
MAX_WIDTH = 56
_U64 = np.uint64


def packed_size(widths: Array) -> int:
    return (int(widths.sum(dtype=np.int64)) + 7) // 8


def pack(values: Array, widths: Array) -> bytes:
    """Pack ``values[i]`` (below ``2**widths[i]``) at ``widths[i]`` bits each."""
    n = values.size
    if n == 0:
        return b""
    w = widths.astype(np.int64)
    ends = np.cumsum(w)
    total = int(ends[-1])
    starts = ends - w
    nwords = (total + 63) // 64 + 1
    word = starts >> 6
    end_bit = (starts & 63) + w  # where the field ends, counted from its word's top bit
    v = values.astype(_U64)
    fits = end_bit <= 64
    left = np.where(fits, 64 - end_bit, 0).astype(_U64)
    right = np.where(fits, 0, end_bit - 64).astype(_U64)
    hi = (v << left) >> right  # the part in ``word``
    # The part spilling into ``word + 1``: its low (end_bit - 64) bits, left-aligned.
    lo = np.where(fits, _U64(0), (v << (np.maximum(128 - end_bit, 1) - 1).astype(_U64)) << _U64(1))
    out = np.zeros(nwords, _U64)
    # Fields do not overlap, so OR is a sum; bincount sums exactly in float64 per 32-bit half.
    for part, where in ((hi, word), (lo, word + 1)):
        for shift in (32, 0):
            half = ((part >> _U64(shift)) & _U64(0xFFFFFFFF)).astype(np.float64)
            summed = np.bincount(where, weights=half, minlength=nwords)[:nwords]
            out |= summed.astype(_U64) << _U64(shift)
    raw = out.astype(">u8").view(np.uint8)[: (total + 7) // 8]
    return raw.tobytes()


def unpack(data: Any, widths: Array, what: str) -> Array:
    """The fields of :func:`pack` (uint64); FormatError unless ``data`` has exactly the
    packed size."""
    raw = np.frombuffer(data, np.uint8) if not isinstance(data, np.ndarray) else data
    size = packed_size(widths)
    if raw.size != size:
        raise FormatError(f"{what}: {raw.size} bytes of packed bits, expected {size}")
    n = widths.size
    if n == 0:
        return np.zeros(0, _U64)
    if int(widths.max()) > MAX_WIDTH:
        raise FormatError(f"{what}: field wider than {MAX_WIDTH} bits")
    nwords = size // 8 + 2
    buf = np.zeros(nwords * 8, np.uint8)
    buf[:size] = raw
    words = buf.view(">u8").astype(_U64)
    w = widths.astype(np.int64)
    starts = np.cumsum(w) - w
    at = starts >> 6
    s = (starts & 63).astype(_U64)
    one = _U64(1)
    top = (words[at] << s) | ((words[at + 1] >> one) >> (_U64(63) - s))
    out: Array = (top >> one) >> (_U64(63) - w.astype(_U64))
    return out
