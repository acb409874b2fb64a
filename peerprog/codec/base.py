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
from peerprog.codec.sensitivity import Sensitivity


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


@dataclass(frozen=True)
class EncodedTensor:
    """One tensor's share of every level: its layout params and, per level, its bytes."""

    params: dict[str, ParamValue]
    pieces: tuple[Sequence[Any], ...]
    """``pieces[n]``: the bytes-like pieces of the tensor's segment of level ``n``."""

    def sizes(self) -> list[int]:
        """The segment length of each level."""
        return [sum(memoryview(b).nbytes for b in level) for level in self.pieces]


class Planner(Protocol):
    """A first pass over a model's tensors (e.g. rate allocation)."""

    def add(self, name: str, tensor: RawTensor) -> None:
        """Look at one tensor (cheap: a sample is enough)."""
        ...

    def finish(self) -> tuple[dict[str, ParamValue], dict[str, dict[str, ParamValue]]]:
        """The codec params to publish with, and each tensor's plan (by name)."""
        ...


class Decoder(Protocol):
    """Incremental decoder of a whole (small) model: levels are added in order; adding
    level n costs about its size."""

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
    """A registered codec. It works per tensor — publish and decode need one tensor in
    memory at a time — and offers whole-model conveniences on top for small models."""

    name: str
    lossless: bool
    """Whether all levels give the original bit for bit."""

    def default_params(self) -> dict[str, ParamValue]:
        """The params used when the publisher gives none."""
        ...

    def check_params(self, params: Mapping[str, ParamValue] | None) -> dict[str, ParamValue]:
        """``params`` merged over the defaults and validated (:class:`FormatError`)."""
        ...

    def levels(self, params: Mapping[str, ParamValue]) -> int:
        """How many levels a model encoded with (checked) ``params`` has."""
        ...

    def planner(
        self, params: Mapping[str, ParamValue], sensitivity: Sensitivity | None = None
    ) -> Planner | None:
        """For a codec that allocates its rate over the whole model: a planner to show
        every tensor to first, steered by the publisher's ``sensitivity`` if given (None:
        no such pass; InputError if the codec cannot use a sensitivity)."""
        ...

    def encode_tensor(
        self,
        params: Mapping[str, ParamValue],
        name: str,
        tensor: RawTensor,
        plan: Mapping[str, ParamValue] | None = None,
    ) -> EncodedTensor:
        """One tensor's pieces, one per level (``params`` checked; ``plan``: what the
        planner decided for this tensor)."""
        ...

    def decode_tensor(
        self,
        params: Mapping[str, ParamValue],
        layout: TensorLayout,
        pieces: Sequence[Any],
        prior: np.ndarray[Any, np.dtype[Any]] | None = None,
        prior_level: int | None = None,
    ) -> np.ndarray[Any, np.dtype[Any]]:
        """The tensor at level ``len(pieces) - 1`` from its pieces of levels 0..that
        (bytes-like; only those a codec needs are read), as an array of its storage dtype
        and shape. ``prior``, if given, is the same tensor decoded at level ``prior_level``
        (default: the level before): an incremental codec then does work in proportion to
        the pieces after it alone, all of them in one pass. :class:`FormatError` on
        malformed pieces."""
        ...

    def encode(
        self, tensors: Mapping[str, RawTensor], params: Mapping[str, ParamValue] | None = None
    ) -> Encoded:
        """Split a whole (small) model into levels, in the mapping's order."""
        ...

    def decoder(self, params: Mapping[str, ParamValue], tensors: Sequence[TensorLayout]) -> Decoder:
        """A fresh incremental decoder of a whole model encoded with ``params``."""
        ...
