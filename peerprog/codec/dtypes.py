"""The dtypes peerprog carries, and how each is stored in numpy.

numpy has no bfloat16, so a bfloat16 tensor is held as a ``uint16`` array of its bit patterns
with the peerprog dtype name ``"bfloat16"`` beside it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from peerprog.errors import FormatError


@dataclass(frozen=True)
class DType:
    """A dtype: its name, numpy storage dtype, and for floats the bit-field widths."""

    name: str
    storage: np.dtype[np.generic]
    # Float field widths; zero for integers and bool.
    exponent_bits: int = 0
    mantissa_bits: int = 0

    @property
    def is_float(self) -> bool:
        return self.exponent_bits > 0

    @property
    def itemsize(self) -> int:
        return int(self.storage.itemsize)

    @property
    def word(self) -> np.dtype[np.unsignedinteger[Any]]:
        """The unsigned integer dtype of the same width (the bit pattern's dtype)."""
        return np.dtype(f"u{self.itemsize}")


def _d(name: str, storage: str, e: int = 0, m: int = 0) -> DType:
    return DType(name, np.dtype(storage), e, m)


DTYPES: dict[str, DType] = {
    d.name: d
    for d in (
        _d("float16", "<f2", 5, 10),
        _d("bfloat16", "<u2", 8, 7),
        _d("float32", "<f4", 8, 23),
        _d("float64", "<f8", 11, 52),
        _d("bool", "|b1"),
        _d("int8", "|i1"),
        _d("uint8", "|u1"),
        _d("int16", "<i2"),
        _d("uint16", "<u2"),
        _d("int32", "<i4"),
        _d("uint32", "<u4"),
        _d("int64", "<i8"),
        _d("uint64", "<u8"),
    )
}


def dtype(name: str) -> DType:
    """Look a dtype up by its peerprog name; :class:`FormatError` if unknown."""
    try:
        return DTYPES[name]
    except KeyError:
        raise FormatError(f"unsupported dtype {name!r}") from None


def name_of(array: np.ndarray[Any, np.dtype[Any]]) -> str:
    """The peerprog dtype name of a numpy array (never ``bfloat16``: numpy has none)."""
    kind = array.dtype
    for d in DTYPES.values():
        if d.name != "bfloat16" and d.storage.kind == kind.kind and d.itemsize == kind.itemsize:
            return d.name
    raise FormatError(f"unsupported numpy dtype {kind}")
