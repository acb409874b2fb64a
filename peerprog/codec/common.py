"""What the codecs share: input and layout validation, params, whole tensors, the
whole-model conveniences over the per-tensor interface, and the bookkeeping half of an
incremental decoder.

Rules common to every codec here: integer and bool tensors, and float tensors with fewer
than ``small_tensor_elements`` elements, travel whole in level 0 (raw little-endian bytes,
zstd-compressed) with empty segments in the other levels. A level's stream is the
concatenation of its segments in tensor order.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from peerprog.codec import zstd
from peerprog.codec.base import Encoded, EncodedTensor, RawTensor
from peerprog.codec.dtypes import DType, dtype
from peerprog.codec.layout import ParamValue, Segment, TensorLayout
from peerprog.codec.sensitivity import Sensitivity
from peerprog.errors import FormatError, InputError

Array = npt.NDArray[Any]
Buffers = list[Any]  # bytes-like pieces of one tensor's segment in one level

# Refuse tensors larger than this (bytes): a bad shape must not reach numpy's allocator.
MAX_TENSOR_BYTES = 1 << 46
MAX_DIMS = 64
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


def to_float64(dt: DType, flat: Array) -> Array:
    """Float tensor values as float64 (bfloat16 bit patterns widened exactly)."""
    with np.errstate(invalid="ignore"):  # signalling NaNs warn when widened
        if dt.name == "bfloat16":
            wide = flat.astype(np.uint32) << np.uint32(16)
            return wide.view(np.float32).astype(np.float64)
        return flat.astype(np.float64)


def encode_whole(flat: Array) -> bytes:
    """A whole tensor's level-0 segment: its raw little-endian bytes, zstd-compressed."""
    return zstd.compress(flat.view(np.uint8))


@dataclass
class Input:
    """One validated encoder input."""

    name: str
    tensor: RawTensor
    dt: DType
    flat: Array
    whole: bool
    params: dict[str, ParamValue] = field(default_factory=dict)


class TensorwiseCodec(ABC):
    """What every codec here shares: params, whole tensors, the whole-model conveniences
    on top of the per-tensor interface, and a from-scratch :meth:`decode_tensor`.

    A codec implements :meth:`levels`, :meth:`small`, :meth:`_encode_progressive` and
    :meth:`decoder`, and may override :meth:`decode_tensor` to use ``prior``.
    """

    name: str
    lossless: bool

    @abstractmethod
    def default_params(self) -> dict[str, ParamValue]:
        """The params used when the publisher gives none."""

    @abstractmethod
    def levels(self, params: Mapping[str, ParamValue]) -> int:
        """How many levels (``params`` checked); :class:`FormatError` if they are bad."""

    @abstractmethod
    def small(self, params: Mapping[str, ParamValue]) -> int:
        """Float tensors with fewer elements travel whole in level 0."""

    @abstractmethod
    def _encode_progressive(self, params: Mapping[str, ParamValue], inp: Input) -> list[Buffers]:
        """A progressive tensor's pieces, one list per level (may set ``inp.params``)."""

    @abstractmethod
    def decoder(self, params: Mapping[str, ParamValue], tensors: Sequence[TensorLayout]) -> Any:
        """A fresh incremental decoder of a whole model."""

    def check_params(self, params: Mapping[str, ParamValue] | None) -> dict[str, ParamValue]:
        """``params`` over the defaults, validated (lists copied: the caller's may change)."""
        merged = merge_params(self.default_params(), params, self.name)
        merged = {k: list(v) if isinstance(v, list) else v for k, v in merged.items()}
        self.levels(merged)
        self.small(merged)
        return merged

    def planner(
        self, params: Mapping[str, ParamValue], sensitivity: Sensitivity | None = None
    ) -> None:
        """No first pass: every tensor is encoded the same way (InputError if given a
        sensitivity: nothing here would use it)."""
        if sensitivity is not None:
            raise InputError(f"codec {self.name!r} does not allocate its rate: no --sensitivity")
        return None

    def encode_tensor(
        self,
        params: Mapping[str, ParamValue],
        name: str,
        tensor: RawTensor,
        plan: Mapping[str, ParamValue] | None = None,
    ) -> EncodedTensor:
        """One tensor's pieces, one per level."""
        dt, flat = check_input(name, tensor)
        inp = Input(name, tensor, dt, flat, is_whole(dt, flat.size, self.small(params)))
        n = self.levels(params)
        if inp.whole:
            pieces: list[Buffers] = [[encode_whole(flat)], *([] for _ in range(n - 1))]
        else:
            pieces = self._encode_progressive(params, inp)
        return EncodedTensor(inp.params, tuple(pieces))

    def encode(
        self, tensors: Mapping[str, RawTensor], params: Mapping[str, ParamValue] | None = None
    ) -> Encoded:
        """A whole (small) model: every tensor encoded, each level's pieces joined."""
        merged = self.check_params(params)
        for name, tensor in tensors.items():
            check_input(name, tensor)  # every input checked before any work is done
        encoded = [(n, t, self.encode_tensor(merged, n, t)) for n, t in tensors.items()]
        return join_levels(self.name, merged, self.levels(merged), encoded)

    def decode_tensor(
        self,
        params: Mapping[str, ParamValue],
        layout: TensorLayout,
        pieces: Sequence[Any],
        prior: Array | None = None,
        prior_level: int | None = None,
    ) -> Array:
        """The tensor at level ``len(pieces) - 1``, decoded from all its pieces (``prior``
        is not used)."""
        if not 0 < len(pieces) <= len(layout.segments):
            raise FormatError(f"tensor {layout.name!r}: {len(pieces)} pieces for its levels")
        alone = TensorLayout(
            layout.name,
            layout.dtype,
            layout.shape,
            tuple(Segment(0, s.length) for s in layout.segments),
            layout.params,
        )
        dec = self.decoder(params, [alone])
        for lvl, piece in enumerate(pieces):
            dec.add_level(lvl, piece)
        out: Array = dec.take_tensors()[layout.name].array
        return out


def _check_layout(layout: TensorLayout, nlevels: int) -> DType:
    name = layout.name
    if not isinstance(name, str):
        raise FormatError(f"tensor name {name!r} is not a string")
    dt = dtype(layout.dtype)
    shape = layout.shape
    if (
        not isinstance(shape, tuple)
        or len(shape) > MAX_DIMS
        or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape)
    ):
        raise FormatError(f"tensor {name!r}: bad shape {shape!r}")
    if layout.numel * dt.itemsize > MAX_TENSOR_BYTES:
        raise FormatError(f"tensor {name!r}: shape {shape} is too large")
    if not isinstance(layout.segments, tuple):
        raise FormatError(f"tensor {name!r}: segments are not a list")
    if len(layout.segments) != nlevels:
        raise FormatError(f"tensor {name!r}: {len(layout.segments)} segments, codec has {nlevels}")
    if not isinstance(layout.params, dict):
        raise FormatError(f"tensor {name!r}: params are not a map")
    return dt


def join_levels(
    codec: str,
    params: dict[str, ParamValue],
    nlevels: int,
    encoded: Sequence[tuple[str, RawTensor, EncodedTensor]],
) -> Encoded:
    """A whole model's levels from its tensors' pieces, in order, with their layouts."""
    parts: list[list[Any]] = [[] for _ in range(nlevels)]
    offsets = [0] * nlevels
    layouts = []
    for name, tensor, enc in encoded:
        segments = []
        for lvl, (pieces, size) in enumerate(zip(enc.pieces, enc.sizes(), strict=True)):
            segments.append(Segment(offsets[lvl], size))
            offsets[lvl] += size
            parts[lvl] += pieces
        shape = tuple(tensor.array.shape)
        layouts.append(TensorLayout(name, tensor.dtype, shape, tuple(segments), enc.params))
    return Encoded(codec, params, tuple(layouts), tuple(b"".join(p) for p in parts))


def level_sizes(layouts: Sequence[TensorLayout], nlevels: int) -> list[int]:
    """Each level's size as the layouts describe it, their segments checked to follow on
    one another in tensor order; :class:`FormatError` if they do not."""
    sizes = [0] * nlevels
    seen: set[str] = set()
    for layout in layouts:
        if not isinstance(layout, TensorLayout):
            raise FormatError(f"not a tensor layout: {layout!r}")
        _check_layout(layout, nlevels)
        if layout.name in seen:
            raise FormatError(f"tensor {layout.name!r} appears twice")
        seen.add(layout.name)
        for lvl, seg in enumerate(layout.segments):
            ok = isinstance(seg, Segment) and all(
                isinstance(v, int) and not isinstance(v, bool) and v >= 0
                for v in (seg.offset, seg.length)
            )
            if not ok or seg.offset != sizes[lvl]:
                raise FormatError(
                    f"tensor {layout.name!r} level {lvl}: segment {seg!r} is not the "
                    f"next range of the level (expected offset {sizes[lvl]})"
                )
            sizes[lvl] += seg.length
    return sizes


class PriorDecoder:
    """A whole-model incremental decoder over a codec's ``decode_tensor``: each tensor's
    decoded array is its prior for the next level. For small models (tests, benchmarks);
    the store decodes tensor by tensor from disk instead."""

    def __init__(
        self, codec: Any, params: Mapping[str, ParamValue], layouts: Sequence[TensorLayout]
    ) -> None:
        self._codec = codec
        self._params = params
        self._layouts = tuple(layouts)
        self._nlevels = codec.levels(params)
        self._sizes = level_sizes(self._layouts, self._nlevels)
        self._pieces: list[list[Any]] = [[] for _ in self._layouts]
        self._arrays: list[Array | None] = [None] * len(self._layouts)
        self._done = 0

    @property
    def levels_done(self) -> int:
        return self._done

    def add_level(self, level: int, data: bytes | memoryview) -> None:
        """Merge level ``level`` (must equal :attr:`levels_done`); FormatError if malformed
        (the decoder is then as it was)."""
        if level != self._done or level >= self._nlevels:
            raise FormatError(f"level {level} out of order: expected level {self._done}")
        view = memoryview(data).cast("B")
        if len(view) != self._sizes[level]:
            raise FormatError(
                f"level {level}: {len(view)} bytes, the layouts describe {self._sizes[level]}"
            )
        new = []
        for i, layout in enumerate(self._layouts):
            seg = layout.segments[level]
            piece = bytes(view[seg.offset : seg.offset + seg.length])
            pieces = [*self._pieces[i], piece]
            new.append(
                (piece, self._codec.decode_tensor(self._params, layout, pieces, self._arrays[i]))
            )
        for i, (piece, arr) in enumerate(new):
            self._pieces[i].append(piece)
            self._arrays[i] = arr
        self._done += 1

    def tensors(self) -> dict[str, RawTensor]:
        if self._done <= 0:
            raise ValueError("no level has been added yet")
        out = {}
        for layout, arr in zip(self._layouts, self._arrays, strict=True):
            assert arr is not None
            out[layout.name] = RawTensor(layout.dtype, arr.copy().reshape(layout.shape))
        return out

    def take_tensors(self) -> dict[str, RawTensor]:
        out = self.tensors()
        self._arrays = [None] * len(self._layouts)
        self._done = -1
        return out


class BaseDecoder(ABC):
    """Level ordering, level-size and segment checks, and whole tensors; subclasses decode
    the progressive tensors (``_stage``, ``_apply`` and ``_materialise``)."""

    def __init__(self, layouts: Sequence[TensorLayout], nlevels: int, small: int) -> None:
        self._layouts = tuple(layouts)
        self._nlevels = nlevels
        self._done = 0
        self._whole: dict[int, Array] = {}
        self._dtypes: list[DType] = []
        self._is_whole: list[bool] = []
        self._level_sizes = level_sizes(self._layouts, nlevels)
        for layout in self._layouts:
            dt = dtype(layout.dtype)
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
        # Validate and decode everything before changing any state: a malformed level
        # leaves the decoder as it was.
        staged: list[Any] = []
        for i, layout in enumerate(self._layouts):
            seg = layout.segments[level]
            chunk = raw[seg.offset : seg.offset + seg.length]
            if self._is_whole[i]:
                staged.append(
                    self._decode_whole(layout, self._dtypes[i], chunk) if level == 0 else None
                )
            else:
                staged.append(self._stage(i, layout, self._dtypes[i], level, chunk))
        for i, item in enumerate(staged):
            if self._is_whole[i]:
                if level == 0:
                    self._whole[i] = item
            else:
                self._apply(i, self._dtypes[i], level, item)
        self._done += 1

    def tensors(self) -> dict[str, RawTensor]:
        """The current approximation; new arrays. ``ValueError`` before any level."""
        if self._done <= 0:
            raise ValueError("no level has been added yet")
        out = {}
        for i, layout in enumerate(self._layouts):
            dt = self._dtypes[i]
            flat = self._whole[i].copy() if self._is_whole[i] else self._materialise(i, dt)
            out[layout.name] = RawTensor(dt.name, flat.reshape(layout.shape))
        return out

    def take_tensors(self) -> dict[str, RawTensor]:
        """Like :meth:`tensors`, but hands the decoder's memory over: each tensor's state is
        released as soon as its output is built (and reused as the output where it already
        is the answer), so the peak stays near one copy of the model. The decoder is
        spent afterwards (``done`` reads -1; adding a level is refused)."""
        if self._done <= 0:
            raise ValueError("no level has been added yet")
        self._handing_over = True
        out = {}
        for i, layout in enumerate(self._layouts):
            dt = self._dtypes[i]
            flat = self._whole.pop(i) if self._is_whole[i] else self._materialise(i, dt)
            self._release(i)
            out[layout.name] = RawTensor(dt.name, flat.reshape(layout.shape))
        self._done = -1
        return out

    _handing_over = False
    """Set by :meth:`take_tensors`: ``_materialise`` may return its own state, uncopied."""

    def _release(self, i: int) -> None:  # noqa: B027 - an optional hook
        """Drop what is held for progressive tensor ``i`` (after a hand-over)."""

    @staticmethod
    def _decode_whole(layout: TensorLayout, dt: DType, chunk: Array) -> Array:
        what = f"tensor {layout.name!r} level 0"
        raw = zstd.decompress_exact(chunk, layout.numel * dt.itemsize, what)
        if dt.name == "bool" and raw.size and int(raw.max()) > 1:
            raise FormatError(f"{what}: bool bytes other than 0 and 1")
        return raw.view(dt.storage)

    @abstractmethod
    def _stage(self, i: int, layout: TensorLayout, dt: DType, level: int, chunk: Array) -> Any:
        """Check (and maybe decode) progressive tensor ``i``'s segment of ``level`` without
        changing state; FormatError if malformed. The result goes to :meth:`_apply`."""

    @abstractmethod
    def _apply(self, i: int, dt: DType, level: int, staged: Any) -> None:
        """Merge what :meth:`_stage` returned into tensor ``i`` (cannot fail)."""

    @abstractmethod
    def _materialise(self, i: int, dt: DType) -> Array:
        """Progressive tensor ``i``'s current approximation: a new flat storage array."""
