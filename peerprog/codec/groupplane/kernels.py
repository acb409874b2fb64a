"""The interface of groupplane's numeric kernels: what the C and the numpy implementations
(:mod:`~peerprog.codec.groupplane.c_kernels`, :mod:`~peerprog.codec.groupplane.numpy_kernels`)
both do, on uncompressed streams. zstd and the framing stay outside, in
:mod:`~peerprog.codec.groupplane.format`; :mod:`~peerprog.codec.groupplane.selection` picks
the implementation used when none is passed in.

The two implementations make byte-identical streams and identical arrays, also from each
other's priors and on malformed streams (where both raise FormatError, or both give the same
array): property-tested in ``tests/unit/test_codec_groupplane_c.py``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

from peerprog.codec.groupplane.format import Array, Data, Geometry, Streams


@dataclass(frozen=True)
class Step:
    """One plane step to decode, its symbols decompressed."""

    k1: int
    """Planes known after it."""
    r: int
    """Planes it adds (1 .. MAX_STEP)."""
    first: bool
    """The first step of its level: the padding weights count as 0 before it."""
    codes: Data
    """Its symbol bytes."""
    refine: Data
    """Its refinement fields."""


@dataclass(frozen=True)
class Remainder:
    """The last level, decompressed."""

    rest: Data
    """Byte planes of the words whose value is 0 before it."""
    low: Data
    """The low bits of the others."""
    low_bytes: Data | None
    """Format 2: the bottom bytes of the low-bit fields wider than 8 bits, in order (those
    fields are then in ``low`` without them); None: format 1, every field whole in ``low``."""


class Kernels(Protocol):
    """A tensor's passes: encode it whole, decode any run of consecutive levels."""

    name: str
    """``"c"`` or ``"numpy"``."""

    def encode(
        self,
        geo: Geometry,
        words: Array,
        gsize: int,
        top: int,
        steps: Sequence[tuple[int, int]],
        split: bool,
    ) -> Streams:
        """The streams of a planed tensor: ``words`` are its flat words (not padded),
        ``top`` the planes of its last plane level, ``steps`` every plane step ``(k0, k1)``
        of every plane level in order. ``split`` (format 2): the low-bit fields wider than 8
        bits send their bottom byte to ``Streams.low_bytes``."""
        ...

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
        """Decode consecutive levels into ``out`` (flat words, padded to whole groups of
        ``gsize``; its first ``numel`` words are the tensor's): the plane ``steps`` in
        order, then the ``remainder`` if given. ``prior``: the tensor's ``numel`` words
        before the first step (None: all 0, for level 0), each ±0 or a midpoint of its group
        at the planes before the first step (a prior of another level is refused);
        ``scales``: level 0's scale bytes (range-checked). FormatError, with a message
        naming what is wrong but not where, when the streams or the prior do not fit the
        tensor."""
        ...
