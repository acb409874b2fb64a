"""What the codecs share: input and layout validation, params, whole tensors, the level
assembly of an encode, and the bookkeeping half of an incremental decoder.

Rules common to every codec here: integer and bool tensors, and float tensors with fewer
than ``small_tensor_elements`` elements, travel whole in level 0 (raw little-endian bytes,
zstd-compressed) with empty segments in the other levels. A level's stream is the
concatenation of its segments in tensor order.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from peerprog.codec import zstd
from peerprog.codec.base import Encoded, RawTensor
from peerprog.codec.dtypes import DType, dtype
from peerprog.codec.layout import ParamValue, Segment, TensorLayout
from peerprog.errors import FormatError

Array = npt.NDArray[Any]
Buffers = list[Any]  # bytes-like pieces of one tensor's segment in one level

# Refuse tensors larger than this (bytes): a bad shape must not reach numpy's allocator.
MAX_TENSOR_BYTES = 1 << 46
# Elements processed per step of the vectorised loops: large enough to amortise the
# Python overhead, small enough that the temporaries stay in cache.
BLOCK = 1 << 16


def int_param(params: Mapping[str, ParamValue], key: str, lo: int, hi: int) -> int:
    """``params[key]``, checked to be an int (not bool) in ``lo..hi``."""
    v = params.get(key)
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise FormatError(f"codec param {key!r} must be an integer in {lo}..{hi}, got {v!r}")
    return v


def merge_params(
    defaults: dict[str, ParamValue], params: Mapping[str, ParamValue] | None, codec: str
) -> dict[str, ParamValue]:
    """``defaults`` updated with ``params``; unknown keys are a :class:`FormatError`."""
    merged = dict(defaults)
    for key, value in (params or {}).items():
        if key not in defaults:
            raise FormatError(f"unknown {codec} codec param {key!r}")
        merged[key] = value
    return merged


def is_whole(dt: DType, numel: int, small: int) -> bool:
    """Whether a tensor travels whole in level 0."""
    return not dt.is_float or numel < small


def check_input(name: str, tensor: RawTensor) -> tuple[DType, Array]:
    """Validate one encoder input; returns its dtype and its flat array."""
    if not isinstance(name, str):
        raise FormatError(f"tensor name {name!r} is not a string")
    dt = dtype(tensor.dtype)
    arr = tensor.array
    if not isinstance(arr, np.ndarray) or arr.dtype != dt.storage:
        got = getattr(arr, "dtype", type(arr).__name__)
        raise FormatError(f"tensor {name!r}: array of {got}, {dt.name} needs {dt.storage}")
    return dt, np.ascontiguousarray(arr).reshape(-1)


def encode_whole(flat: Array) -> bytes:
    """A whole tensor's level-0 segment: its raw little-endian bytes, zstd-compressed."""
    return zstd.compress(flat.view(np.uint8))


def assemble(
    codec: str,
    params: dict[str, ParamValue],
    names: Sequence[str],
    inputs: Sequence[RawTensor],
    pieces: Sequence[tuple[list[Buffers], dict[str, ParamValue]]],
) -> Encoded:
    """Concatenate every tensor's per-level pieces into level streams and layouts."""
    nlevels = len(pieces[0][0]) if pieces else 0
    offsets = [0] * nlevels
    layouts = []
    for name, tensor, (levels, tparams) in zip(names, inputs, pieces, strict=True):
        segments = []
        for lvl, bufs in enumerate(levels):
            length = sum(memoryview(b).nbytes for b in bufs)
            segments.append(Segment(offsets[lvl], length))
            offsets[lvl] += length
        layouts.append(
            TensorLayout(name, tensor.dtype, tuple(tensor.array.shape), tuple(segments), tparams)
        )
    streams = []
    for lvl in range(nlevels):
        streams.append(b"".join(b for levels, _ in pieces for b in levels[lvl]))
    return Encoded(codec, params, tuple(layouts), tuple(streams))


def _check_layout(layout: TensorLayout, nlevels: int) -> DType:
    name = layout.name
    if not isinstance(name, str):
        raise FormatError(f"tensor name {name!r} is not a string")
    dt = dtype(layout.dtype)
    shape = layout.shape
    if not isinstance(shape, tuple) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise FormatError(f"tensor {name!r}: bad shape {shape!r}")
    if layout.numel * dt.itemsize > MAX_TENSOR_BYTES:
        raise FormatError(f"tensor {name!r}: shape {shape} is too large")
    if not isinstance(layout.segments, tuple) or len(layout.segments) != nlevels:
        raise FormatError(f"tensor {name!r}: {len(layout.segments)} segments, codec has {nlevels}")
    if not isinstance(layout.params, dict):
        raise FormatError(f"tensor {name!r}: params are not a map")
    return dt


class BaseDecoder(ABC):
    """Level ordering, level-size and segment checks, and whole tensors; subclasses decode
    the progressive tensors (``_add`` and ``_materialise``)."""

    def __init__(self, layouts: Sequence[TensorLayout], nlevels: int, small: int) -> None:
        self._layouts = tuple(layouts)
        self._nlevels = nlevels
        self._done = 0
        self._whole: dict[int, Array] = {}
        self._dtypes: list[DType] = []
        self._is_whole: list[bool] = []
        self._level_sizes = [0] * nlevels
        seen: set[str] = set()
        for layout in self._layouts:
            if not isinstance(layout, TensorLayout):
                raise FormatError(f"not a tensor layout: {layout!r}")
            dt = _check_layout(layout, nlevels)
            if layout.name in seen:
                raise FormatError(f"tensor {layout.name!r} appears twice")
            seen.add(layout.name)
            for lvl, seg in enumerate(layout.segments):
                ok = isinstance(seg, Segment) and all(
                    isinstance(v, int) and not isinstance(v, bool) and v >= 0
                    for v in (seg.offset, seg.length)
                )
                if not ok or seg.offset != self._level_sizes[lvl]:
                    raise FormatError(
                        f"tensor {layout.name!r} level {lvl}: segment {seg!r} is not the "
                        f"next range of the level (expected offset {self._level_sizes[lvl]})"
                    )
                self._level_sizes[lvl] += seg.length
            whole = is_whole(dt, layout.numel, small)
            if whole:
                if layout.params:
                    raise FormatError(f"tensor {layout.name!r}: unexpected params")
                if any(s.length for s in layout.segments[1:]):
                    raise FormatError(f"tensor {layout.name!r} travels whole in level 0 only")
            self._dtypes.append(dt)
            self._is_whole.append(whole)

    @property
    def levels_done(self) -> int:
        """How many levels have been added (0 before the first)."""
        return self._done

    def add_level(self, level: int, data: bytes | memoryview) -> None:
        """Merge level ``level`` (must equal :attr:`levels_done`); FormatError if malformed."""
        if level != self._done:
            raise FormatError(f"level {level} out of order: expected level {self._done}")
        if level >= self._nlevels:
            raise FormatError(f"level {level} does not exist (the codec has {self._nlevels})")
        try:
            raw = np.frombuffer(data, np.uint8)
        except (TypeError, ValueError) as e:
            raise FormatError(f"level {level}: unusable data ({e})") from None
        if raw.size != self._level_sizes[level]:
            raise FormatError(
                f"level {level}: {raw.size} bytes, the layouts describe {self._level_sizes[level]}"
            )
        for i, layout in enumerate(self._layouts):
            seg = layout.segments[level]
            chunk = raw[seg.offset : seg.offset + seg.length]
            if self._is_whole[i]:
                if level == 0:
                    self._whole[i] = self._decode_whole(layout, self._dtypes[i], chunk)
            else:
                self._add(i, layout, self._dtypes[i], level, chunk)
        self._done += 1

    def tensors(self) -> dict[str, RawTensor]:
        """The current approximation; new arrays. ``ValueError`` before any level."""
        if self._done == 0:
            raise ValueError("no level has been added yet")
        out = {}
        for i, layout in enumerate(self._layouts):
            dt = self._dtypes[i]
            flat = self._whole[i].copy() if self._is_whole[i] else self._materialise(i, dt)
            out[layout.name] = RawTensor(dt.name, flat.reshape(layout.shape))
        return out

    @staticmethod
    def _decode_whole(layout: TensorLayout, dt: DType, chunk: Array) -> Array:
        what = f"tensor {layout.name!r} level 0"
        raw = zstd.decompress_exact(chunk, layout.numel * dt.itemsize, what)
        if dt.name == "bool" and raw.size and int(raw.max()) > 1:
            raise FormatError(f"{what}: bool bytes other than 0 and 1")
        return raw.view(dt.storage)

    @abstractmethod
    def _add(self, i: int, layout: TensorLayout, dt: DType, level: int, chunk: Array) -> None:
        """Decode progressive tensor ``i``'s segment of ``level`` (already range-checked)."""

    @abstractmethod
    def _materialise(self, i: int, dt: DType) -> Array:
        """Progressive tensor ``i``'s current approximation: a new flat storage array."""
