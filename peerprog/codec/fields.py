"""Read and write bit fields of little-endian unsigned word arrays, vectorised.

Reading a field that lies inside one byte of the word works on a strided ``uint8`` view
of that byte, which moves a quarter (float32) or an eighth (float64) of the memory that
whole-word shifts would.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from peerprog.codec.bitpack import uint_dtype

Array = npt.NDArray[Any]


def _byte_view(words: Array, byte: int) -> Array:
    """Byte ``byte`` (0 = least significant) of every little-endian word, as a view."""
    return words.view(np.uint8).reshape(words.size, words.itemsize)[:, byte]


def extract(words: Array, shift: int, bits: int) -> Array:
    """``(words >> shift) & (2**bits - 1)`` in the narrowest unsigned dtype (maybe a view)."""
    if shift // 8 == (shift + bits - 1) // 8:
        b = _byte_view(words, shift // 8)
        if bits == 8:
            return b
        return (b >> np.uint8(shift % 8)) & np.uint8((1 << bits) - 1)
    w = words.dtype.type
    v = (words >> w(shift)) if shift else words
    if shift + bits < 8 * words.itemsize:
        v = v & w((1 << bits) - 1)
    return v.astype(uint_dtype(bits))


def insert(words: Array, shift: int, bits: int, values: Array) -> None:
    """OR ``values << shift`` into ``words`` in place; those bits of ``words`` must be 0."""
    if bits == 8 and shift % 8 == 0:
        _byte_view(words, shift // 8)[...] = values
        return
    # Read-modify-write of a strided byte view is slower than contiguous word ops.
    v = values.astype(words.dtype)
    if shift:
        v <<= words.dtype.type(shift)
    words |= v
