"""Pack unsigned fields of varying widths (0..56 bits each) into one bit stream, most
significant bit first, vectorised: no sort and no loop over widths.

Field i sits at bit offset ``sum(widths[:i])``; the stream is ``ceil(sum(widths) / 8)``
bytes, the last one zero-padded. Unpacking reads each field from the big-endian 64-bit
window that starts at its first byte, so every field of up to 56 bits lies in one window.
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
    bit = starts & 63
    v = values.astype(_U64)
    # Each field, left-aligned in a 128-bit pair of words (word, word + 1).
    end_bit = bit + w  # 1..120: where the field ends, from the word's top
    fits = end_bit <= 64
    hi = np.where(
        fits,
        v << (64 - end_bit).clip(0, 63).astype(_U64),
        v >> (end_bit - 64).clip(0, 63).astype(_U64),
    )
    hi = np.where(w == 0, _U64(0), hi)
    lo = np.where(fits, _U64(0), v << (128 - end_bit).clip(0, 63).astype(_U64))
    out = np.zeros(nwords, _U64)
    change = np.flatnonzero(np.diff(word, prepend=-1))
    out[word[change]] = np.bitwise_or.reduceat(hi, change)
    spill = np.flatnonzero(~fits)
    out[word[spill] + 1] |= lo[spill]
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
    buf = np.zeros(size + 8, np.uint8)
    buf[:size] = raw
    windows = np.ndarray((size + 1,), ">u8", buf, 0, (1,))
    w = widths.astype(np.int64)
    starts = np.cumsum(w) - w
    win = windows[starts >> 3].astype(_U64)
    shift = (64 - (starts & 7) - w).astype(_U64)
    mask = (_U64(1) << w.astype(_U64)) - _U64(1)
    out: Array = (win >> shift) & mask
    return out
