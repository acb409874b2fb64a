"""groupplane's byte format: every rule about the bytes of a tensor's pieces is here, once.

A float tensor (float32, bfloat16, float16) that does not travel whole
(:func:`~peerprog.codec.groupplane.params.is_whole`) is coded as follows.

* **Groups.** The flat tensor is cut into groups of ``g`` consecutive weights (tensor param
  ``group``; the last group zero-padded to ``total = ngroups * g`` words). Each group has a
  power-of-two scale: the exponent ``E``, the smallest with every finite |x| < 2**E, clamped
  to ``e_floor .. e_ceil`` of the dtype (:func:`geometry`).
* **Planes.** After k planes a weight's magnitude is ``q = floor(|x| / 2**(E - k))``: exact
  bit fields, nothing is rounded. Tensor param ``planes`` lists the planes known after each
  level but the last (non-decreasing, at least 1, at most ``max_planes`` and the dtype's
  mantissa bits). A level's planes ``k0 → k1`` are cut into *steps* of at most
  :data:`MAX_STEP` planes (:func:`steps`), so that a step's symbols fit in a byte.
* **Decoded value** after k planes: ``±(2q + 1) * 2**(E - k - 1)``, the midpoint of the
  interval left open (0 for q = 0, whose sign is unknown). With a power-of-two scale and
  k ≤ mantissa bits these have at most k+1 significant bits and sit at or above the smallest
  subnormal, so they are exact in the dtype: a decoder recovers q and the sign from the
  value alone. Values are computed in float32, which holds every bfloat16 and float16 value
  exactly (:func:`to_f32`).
* **Framing.** Every piece is a sequence of parts, each ``[u32 little-endian length][part]``,
  and nothing else (:func:`frame`, :func:`read_parts`).
* **Level 0**: the scales part, ``E - e_floor``, one byte per group (a zstd frame in format 1,
  a frame of dense bytes in format 2); then one part per plane step of planes
  ``0 → planes[0]``.
* **A plane level** ``m`` (``0 < m < levels - 1``): one part per plane step of planes
  ``planes[m-1] → planes[m]``; empty when they are equal (the level does not refine it).
* **A plane step** ``k0 → k1`` (``r = k1 - k0 ≤ 7``): ``[u32 length][symbol frame]`` then
  the raw r-bit refinement fields, both in index order; the symbol frame is a zstd frame
  of the symbol bytes (format 1), or a zstd or an rANS frame of them (format 2). The weights
  with q = 0 after k0 planes have a *symbol*: their r new bits with the sign (sent once,
  when the weight first becomes non-zero), a value in ``-(2**r - 1) .. 2**r - 1``, stored as
  the digit ``s + 2**r - 1`` in base ``A = 2**(r+1) - 1``, as many digits per byte as fit
  (:func:`~.rans.symbols_per_byte`), first digit lowest, the last byte zero-padded; the entropy
  coder then codes several sparse symbols per byte. The others have a *refinement field*:
  their r new bits, packed MSB first, the last byte zero-padded. At the start of each level
  the padding weights count as 0, whatever the level before made of them.
* **The last level**, the remainder: the words whose value is 0 so far (tiny weights, ±0,
  NaN, ±Inf, subnormals below the scale, and the padding) come whole, as byte planes, most
  significant first; the other words' low bits are packed MSB first in index order: from
  the midpoint's marker (the lowest set bit of the word so far) down, a width that varies
  per weight and is known from the value so far. Together: the exact float bits. Its
  layout depends on the codec param ``format`` (:data:`~.params.LAYOUTS`):

  - format 1 (manifests without the param): one part, ``[u32 length][zstd frame of the
    byte planes]`` then the low bits;
  - format 2: one part per byte plane, each a frame of dense bytes of its own (a plane of
    exponents and one of mantissas no longer share a table: 0.03 bits/weight less on
    bfloat16 models), then a part with a frame of the *low bytes*, then a part with the low
    bits. A low-bit field wider than 8 bits (float32's, whose bottom bits are not
    uniform in every model: EfficientNet-Lite1's lowest byte has an entropy of 7.7 bits)
    sends its bottom 8 bits to the low bytes, in index order, and the rest to the low bits.

  In format 2 a step's symbol frame is an rANS frame where that is at least 1% smaller than
  the zstd frame, else the zstd frame (:func:`~.rans.encode_symbols`: 2-3% smaller than
  zstd's Huffman on real models), and a *frame of dense bytes* (the scales, byte planes, low
  bytes) is likewise an rANS frame with its byte table or a zstd frame
  (:func:`~.rans.encode_bytes`); format 1 has zstd frames only.

A tensor that travels whole has ``{"whole": True}``; its level-0 piece is a zstd frame of its
raw bytes (no framing), float words byte-shuffled first, most significant bytes together
(:func:`encode_whole`; 5% smaller on EfficientNet-Lite1 bf16's whole tensors), and its other
pieces are empty. In format 2 a float tensor's level-0 piece is instead one part per byte
plane, each a frame of dense bytes of its own (8% smaller again on EfficientNet-Lite1
bf16's).

A decoder never allocates more than the tensor's own size (known from the manifest) and the
lengths the pieces must have: a zstd frame's declared size is checked before it is
decompressed (:func:`rest_bytes`, :func:`scale_bytes`; a step's symbols:
:func:`~.rans.decode_symbols`).
"""

from __future__ import annotations

import functools
import math
import struct
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from peerprog.codec import zstd
from peerprog.codec.dtypes import DType
from peerprog.codec.groupplane import rans
from peerprog.codec.groupplane.rans import symbols_per_byte
from peerprog.errors import FormatError

Array = npt.NDArray[Any]
Buffer = bytes | bytearray | memoryview
Data = Buffer | npt.NDArray[Any]
"""Stream contents: bytes-like, or a uint8 array."""

MAX_STEP = 7
"""Planes per step at most: a step's ``2**(r+1) - 1`` symbol values fit in a byte."""

_U32 = struct.Struct("<I")


# ---------------------------------------------------------------------------- geometry


@dataclass(frozen=True)
class Geometry:
    """A float dtype's numbers for this codec."""

    dt: DType
    max_planes: int
    """Planes the plane levels may carry (≤ the dtype's mantissa bits)."""
    e_floor: int
    """The smallest group exponent E (scale 2**E); a scale byte is ``E - e_floor``."""
    e_ceil: int
    """The largest (the dtype's largest exponent + 1)."""

    @property
    def word(self) -> np.dtype[Any]:
        return self.dt.word


@functools.lru_cache(maxsize=64)
def geometry(dt: DType, max_planes: int) -> Geometry:
    """The geometry of float dtype ``dt`` with at most ``max_planes`` planes.

    ``e_floor`` keeps every midpoint ``(2q + 1) * 2**(E - k - 1)`` (k ≤ max_planes) at or
    above the dtype's smallest subnormal, so it is exact, and keeps ``E - e_floor`` in a byte.
    """
    m = dt.mantissa_bits
    bias = (1 << (dt.exponent_bits - 1)) - 1
    e_ceil = bias + 1
    k = min(max_planes, m)
    e_sub = 1 - bias - m  # exponent of the smallest subnormal
    e_floor = max(e_sub + 1 + k, e_ceil - 255)
    return Geometry(dt, k, e_floor, e_ceil)


# ---------------------------------------------------------------------------- steps, symbols


def steps(k0: int, k1: int) -> list[tuple[int, int]]:
    """Planes ``k0 → k1`` in steps of at most :data:`MAX_STEP`."""
    return [(a, min(a + MAX_STEP, k1)) for a in range(k0, k1, MAX_STEP)]


def plane_steps(planes: Sequence[int]) -> tuple[tuple[tuple[int, int], ...], ...]:
    """Each plane level's steps, level 0 first (planes ``0 → planes[0]``)."""
    return _plane_steps(tuple(planes))


@functools.lru_cache(maxsize=256)
def _plane_steps(planes: tuple[int, ...]) -> tuple[tuple[tuple[int, int], ...], ...]:
    return tuple(tuple(steps(a, b)) for a, b in zip([0, *planes], planes, strict=False))


# ---------------------------------------------------------------------------- framing


def u32(n: int) -> bytes:
    return _U32.pack(n)


def split_u32(data: Buffer, what: str) -> tuple[memoryview, memoryview]:
    """``[u32 length][frame][rest]`` → (frame, rest)."""
    mv = memoryview(data).cast("B")
    if len(mv) < 4:
        raise FormatError(f"{what}: truncated header")
    (n,) = _U32.unpack_from(mv)
    if n > len(mv) - 4:
        raise FormatError(f"{what}: frame of {n} bytes overruns the piece")
    return mv[4 : 4 + n], mv[4 + n :]


def frame(parts: Sequence[Buffer]) -> bytes:
    """A piece of ``parts``: each ``[u32 length][part]``."""
    out: list[Buffer] = []
    for p in parts:
        out += [u32(memoryview(p).nbytes), p]
    return b"".join(out)


def read_parts(piece: Buffer, count: int, what: str) -> list[memoryview]:
    """A piece made of ``count`` parts, and nothing else."""
    out = []
    rest: Buffer = piece
    for _ in range(count):
        part, rest = split_u32(rest, what)
        out.append(part)
    if len(memoryview(rest)):
        raise FormatError(f"{what}: {len(memoryview(rest))} bytes of junk after the data")
    return out


# ---------------------------------------------------------------------------- pieces


@dataclass(frozen=True)
class Streams:
    """A planed tensor's pieces before compression and framing (what the kernels make)."""

    scales: Data
    """``E - e_floor`` per group."""
    steps: Sequence[tuple[Data, Data]]
    """Per plane step, every level's in order: (symbol bytes, refinement bytes)."""
    rest: Data
    """The remainder's words whose value is 0 before it, as byte planes."""
    low: Data
    """The remainder's low bits of the others."""
    low_bytes: Data
    """Format 2: the bottom bytes of the low-bit fields wider than 8 bits (empty in
    format 1)."""


def write_pieces(
    planes: Sequence[int],
    streams: Streams,
    symbols: Sequence[bytes],
    layout: int,
    itemsize: int,
) -> list[bytes]:
    """A planed tensor's pieces, one per level, from its streams and its steps' symbol
    frames (``symbols``, one per step in order), in format ``layout`` (words of ``itemsize``
    bytes)."""
    it = iter(zip(symbols, streams.steps, strict=True))
    pieces = []
    for n, level in enumerate(plane_steps(planes)):
        parts: list[Buffer] = [] if n else [_encode_scales(streams.scales, layout)]
        for _ in level:
            frame_, (_, refine) = next(it)
            parts.append(b"".join([u32(len(frame_)), frame_, _buffer(refine)]))
        pieces.append(frame(parts))
    if layout == 1:
        rest = zstd.compress_dense(streams.rest)
        pieces.append(frame([b"".join([u32(len(rest)), rest, _buffer(streams.low)])]))
        return pieces
    raw = memoryview(_buffer(streams.rest)).cast("B")
    nrest = len(raw) // itemsize
    planes_ = [rans.encode_bytes(raw[i * nrest : (i + 1) * nrest]) for i in range(itemsize)]
    low_bytes = rans.encode_bytes(streams.low_bytes)
    pieces.append(frame([*planes_, low_bytes, _buffer(streams.low)]))
    return pieces


def _encode_scales(scales: Data, layout: int) -> bytes:
    return zstd.compress(scales, symbols=True) if layout == 1 else rans.encode_bytes(scales)


def _buffer(data: Data) -> Buffer:
    return data.tobytes() if isinstance(data, np.ndarray) else data


@dataclass(frozen=True)
class StepFrames:
    """One plane step as it travels."""

    k0: int
    k1: int
    first: bool
    """The first step of its level: the padding weights count as 0 before it."""
    symbols: memoryview
    """The zstd frame of its symbol bytes."""
    refine: memoryview
    """Its refinement fields."""

    @property
    def r(self) -> int:
        return self.k1 - self.k0


@dataclass(frozen=True)
class RemainderFrames:
    """The last level as it travels."""

    rest: Sequence[memoryview]
    """The zstd frames of the byte planes of the words whose value is 0 before it: one
    (format 1) or one per plane (format 2)."""
    low: memoryview
    """The low bits of the others."""
    low_bytes: memoryview | None
    """Format 2: the zstd frame of the low bytes; None in format 1."""


def scales_frame(piece0: Buffer, what: str) -> memoryview:
    """Level 0's scales part (the rest of level 0 is read by :func:`read_level`)."""
    return split_u32(piece0, what)[0]


def read_level(
    planes: Sequence[int], piece: Buffer, m: int, what: str, layout: int, itemsize: int
) -> list[StepFrames] | RemainderFrames:
    """Level ``m``'s piece: its plane steps (none if it does not refine the tensor), or the
    remainder for the last level (``m == len(planes)``), in format ``layout`` (words of
    ``itemsize`` bytes)."""
    if m == len(planes):
        if layout == 1:
            (part,) = read_parts(piece, 1, what)
            rest, low = split_u32(part, what)
            return RemainderFrames((rest,), low, None)
        *rests, low_bytes, low = read_parts(piece, itemsize + 2, what)
        return RemainderFrames(rests, low, low_bytes)
    level = plane_steps(planes)[m]
    if not level:
        if len(memoryview(piece)):
            raise FormatError(f"{what}: data in a level that does not refine the tensor")
        return []
    skip = 1 if m == 0 else 0  # level 0's scales
    parts = read_parts(piece, skip + len(level), what)[skip:]
    out = []
    for i, ((a, b), part) in enumerate(zip(level, parts, strict=True)):
        symbols, refine = split_u32(part, what)
        if m == 0 and i == 0 and len(refine):
            raise FormatError(f"{what}: junk after level 0's symbols")
        out.append(StepFrames(a, b, i == 0, symbols, refine))
    return out


# ---------------------------------------------------------------------------- zstd frames


def symbol_limit(total: int, r: int) -> int:
    """The most symbol bytes an r-plane step of ``total`` weights can have."""
    return -(-total // symbols_per_byte(r))


def remainder_declared(rem: RemainderFrames, total: int, itemsize: int, what: str) -> int:
    """The bytes the remainder's zstd frames declare, each checked against its bound."""
    if rem.low_bytes is None:
        return sum(zstd.declared(f, total * itemsize, what) for f in rem.rest)
    return sum(rans.declared(f, total, what) for f in [*rem.rest, rem.low_bytes])


def rest_bytes(rem: RemainderFrames, total: int, itemsize: int, what: str) -> Array:
    """The remainder's byte planes (their count is checked by the kernels)."""
    if rem.low_bytes is None:
        (f,) = rem.rest
        return zstd.decompress_exact(f, zstd.declared(f, total * itemsize, what), what)
    planes = [rans.decode_bytes(f, total, what) for f in rem.rest]
    if len({p.size for p in planes}) != 1:
        raise FormatError(f"{what}: the remainder's byte planes differ in length")
    return np.concatenate(planes)


def low_bytes(rem: RemainderFrames, total: int, what: str) -> Array | None:
    """Format 2's low bytes (their count is checked by the kernels); None in format 1."""
    return None if rem.low_bytes is None else rans.decode_bytes(rem.low_bytes, total, what)


def scale_bytes(geo: Geometry, frame: Buffer, ngroups: int, what: str, layout: int) -> Array:
    """Level 0's scale bytes in format ``layout``, one per group, range-checked."""
    if layout == 1:
        raw = zstd.decompress_exact(frame, ngroups, what)
    else:
        raw = rans.decode_bytes(frame, ngroups, what)
        if raw.size != ngroups:
            raise FormatError(f"{what}: {raw.size} scale bytes, expected {ngroups}")
    if ngroups and int(raw.max()) + geo.e_floor > geo.e_ceil:
        raise FormatError(f"{what}: group exponent out of range")
    return raw


# ---------------------------------------------------------------------------- values


def to_f32(g: Geometry, words: Array) -> Array:
    """The values of a flat array of the dtype's storage as float32 (exact)."""
    name = g.dt.name
    if name == "bfloat16":
        return (words.astype(np.uint32) << np.uint32(16)).view(np.float32)
    if name == "float32":
        return words.view(np.float32)
    return words.view(np.float16).astype(np.float32)


def from_f32(g: Geometry, values: Array) -> Array:
    """float32 values that the dtype holds exactly, back to the dtype's storage."""
    name = g.dt.name
    if name == "bfloat16":
        return (values.view(np.uint32) >> np.uint32(16)).astype(np.uint16)
    if name == "float32":
        return values
    return values.astype(np.float16)


def padded(flat: Array, total: int) -> Array:
    """``flat`` zero-padded to ``total`` elements (``flat`` itself when already so long)."""
    if flat.size == total:
        return flat
    out = np.zeros(total, flat.dtype)
    out[: flat.size] = flat
    return out


# ---------------------------------------------------------------------------- byte planes


def shuffle(words: Array) -> Array:
    """Byte planes of ``words``, most significant first."""
    b = words.view(np.uint8).reshape(-1, words.dtype.itemsize)
    return np.ascontiguousarray(b[:, ::-1].T).reshape(-1)


def unshuffle(raw: Array, n: int, dtype: np.dtype[Any]) -> Array:
    """The ``n`` words of :func:`shuffle`'s byte planes."""
    b = raw.reshape(dtype.itemsize, n)[::-1].T
    return np.ascontiguousarray(b).reshape(-1).view(dtype)


def encode_whole(dt: DType, flat: Array, layout: int) -> bytes:
    """A whole tensor's level-0 piece in format ``layout`` (see the module docstring)."""
    if not dt.is_float:
        return zstd.compress_dense(flat.view(np.uint8).data)
    data = shuffle(flat.view(dt.word))
    if layout == 1:
        return zstd.compress_dense(data.data)
    n = flat.size
    return frame([rans.encode_bytes(data[i * n : (i + 1) * n]) for i in range(dt.itemsize)])


def decode_whole(dt: DType, shape: tuple[int, ...], piece: Buffer, what: str, layout: int) -> Array:
    """A whole tensor from its level-0 piece in format ``layout``."""
    numel = math.prod(shape)
    if dt.is_float and layout == 2:
        planes = [rans.decode_bytes(f, numel, what) for f in read_parts(piece, dt.itemsize, what)]
        if any(p.size != numel for p in planes):
            raise FormatError(f"{what}: a byte plane of the wrong length")
        raw = np.concatenate(planes)
    else:
        raw = zstd.decompress_exact(piece, numel * dt.itemsize, what)
    if dt.is_float:
        return unshuffle(raw, numel, dt.word).view(dt.storage).reshape(shape)
    return raw.view(dt.storage).reshape(shape).copy()
