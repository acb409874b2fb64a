"""The codec interface: split tensors into significance levels, merge any prefix back.

A codec is pure: bytes and arrays in, bytes and arrays out. Level 0 alone gives a usable
model; each further level refines every tensor; all levels give the original bit for bit
(except the ``paper`` yardstick, whose last level is its 16-bit approximation).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from peerprog.codec.layout import ParamValue, TensorLayout


@dataclass(frozen=True)
class RawTensor:
    """A tensor as peerprog holds it: a dtype name and a C-contiguous numpy array.

    ``array.dtype`` is the storage dtype of :data:`peerprog.codec.dtypes.DTYPES` (bfloat16:
    ``uint16`` bit patterns) and ``array.shape`` is the tensor's shape.
    """

    dtype: str
    array: np.ndarray[Any, np.dtype[Any]]

    @property
    def nbytes(self) -> int:
        return int(self.array.nbytes)


@dataclass(frozen=True)
class Encoded:
    """A codec's output: the codec's params, every tensor's layout, and the level streams."""

    codec: str
    params: dict[str, ParamValue]
    tensors: tuple[TensorLayout, ...]
    levels: tuple[bytes, ...]
    # Optional per-level quality figures (integers: canonical msgpack has no floats).
    level_quality: tuple[dict[str, int], ...] = field(default=())


class Decoder(Protocol):
    """Incremental decoder: levels are added in order; adding level n costs about its size."""

    @property
    def levels_done(self) -> int:
        """How many levels have been added (0 before the first)."""
        ...

    def add_level(self, level: int, data: bytes | memoryview) -> None:
        """Merge level ``level`` (must equal :attr:`levels_done`). Raises FormatError on
        malformed data."""
        ...

    def tensors(self) -> dict[str, RawTensor]:
        """The current approximation, missing bits filled with the interval midpoint.

        Before any level is added, raises ``ValueError``. The arrays returned are new
        (the caller owns them)."""
        ...

    def take_tensors(self) -> dict[str, RawTensor]:
        """Like :meth:`tensors`, handing the decoder's memory over (peak near one model
        copy); the decoder cannot be used afterwards."""
        ...


class Codec(Protocol):
    """A registered codec."""

    name: str
    lossless: bool
    """Whether all levels give the original bit for bit."""

    def default_params(self) -> dict[str, ParamValue]:
        """The params used when the publisher gives none."""
        ...

    def encode(
        self, tensors: Mapping[str, RawTensor], params: Mapping[str, ParamValue] | None = None
    ) -> Encoded:
        """Split ``tensors`` (in the mapping's order) into levels."""
        ...

    def decoder(self, params: Mapping[str, ParamValue], tensors: Sequence[TensorLayout]) -> Decoder:
        """A fresh incremental decoder for a model encoded with ``params``."""
        ...
