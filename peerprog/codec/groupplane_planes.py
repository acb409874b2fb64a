"""The numeric kernels of the ``groupplane`` codec: group scales, plane levels and the exact
remainder, for one tensor (see :mod:`peerprog.codec.groupplane` for the format).

Everything works on a tensor's values padded to ``ngroups * g`` and viewed as a
``(ngroups, g)`` array. Values are computed in float32, which holds every bfloat16 and
float16 value, and every intermediate value of the codec, exactly.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
import zstandard

from peerprog.codec import bitpack, varbits, zstd
from peerprog.codec.dtypes import DType
from peerprog.errors import FormatError

Array = npt.NDArray[Any]
Buffer = bytes | bytearray | memoryview

_U32 = struct.Struct("<I")
# Dense byte planes (whole tensors, the remainder's unknown words): zstd level 9 measured
# 0.07 points of the source smaller than level 3 on EfficientNet-Lite1 bf16 (level 19 no
# better); only the encoder's choice, any frame decodes.
_DENSE_PARAMS = zstandard.ZstdCompressionParameters.from_level(9)


def compress_dense(data: Any) -> bytes:
    # this thread's compressor: a ZstdCompressor is not thread-safe (publish encodes
    # tensors in a thread pool; one shared compressor crashed the process)
    out: bytes = zstd.compressor(_DENSE_PARAMS, memoryview(data).nbytes).compress(data)
    return out


@dataclass(frozen=True)
class Geometry:
    """A float dtype's numbers for this codec."""

    dt: DType
    max_planes: int  # planes the plane levels may carry (≤ significand bits - 1)
    e_floor: int  # smallest group exponent E (scale 2**E); a scale byte is E - e_floor
    e_ceil: int  # largest (the dtype's largest exponent + 1)

    @property
    def word(self) -> np.dtype[Any]:
        return self.dt.word


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


def group_exponents(g: Geometry, v: Array) -> Array:
    """Per group (row of ``v``), the smallest E ≥ e_floor with every finite |x| < 2**E."""
    a = np.abs(v)
    a[~np.isfinite(a)] = 0
    amax = a.max(axis=1) if v.shape[1] else np.zeros(v.shape[0], np.float32)
    _, e = np.frexp(amax.astype(np.float64))
    e = np.where(amax > 0, e, g.e_floor)
    return np.clip(e, g.e_floor, g.e_ceil).astype(np.int32)


def half_steps(exps: Array, k: int) -> Array:
    """``2**(E - k - 1)`` per group as a float32 column (exact, maybe subnormal)."""
    return np.ldexp(np.float32(1), (exps - k - 1).astype(np.int32))[:, None].astype(np.float32)


def magnitudes(v: Array, exps: Array, k: int) -> Array:
    """``floor(|x| / 2**(E - k))`` per element (0 for NaN and ±Inf), uint32: k planes."""
    with np.errstate(invalid="ignore"):  # signalling NaNs warn when widened
        a = np.abs(v.astype(np.float64))
    a[~np.isfinite(a)] = 0
    q: Array = np.floor(np.ldexp(a, (k - exps)[:, None])).astype(np.uint32)
    return q


# ---------------------------------------------------------------------------- symbols


def _alphabet(r: int) -> tuple[int, int]:
    """(alphabet size, symbols per byte) of the signed r-bit symbols of unknown-sign weights."""
    a = (1 << (r + 1)) - 1
    per = 1
    while a ** (per + 1) <= 256:
        per += 1
    return a, per


_TABLES: dict[int, Array] = {}


def _table(r: int) -> Array:
    """(256, per) int16: the signed symbols packed in each byte value."""
    t = _TABLES.get(r)
    if t is None:
        a, per = _alphabet(r)
        codes = np.arange(256)
        t = np.stack([(codes // a**i) % a for i in range(per)], axis=1) - ((1 << r) - 1)
        t = _TABLES[r] = t.astype(np.int16)
    return t


def pack_symbols(sym: Array, r: int) -> bytes:
    """Signed symbols in ``[-(2**r - 1), 2**r - 1]``, packed base ``2**(r+1) - 1`` (as many
    per byte as fit) and zstd-compressed (its Huffman stage is the entropy coder)."""
    a, per = _alphabet(r)
    digits = sym.astype(np.int32) + ((1 << r) - 1)
    n = -(-digits.size // per) * per
    d = padded(digits, n).reshape(-1, per) if n != digits.size else digits.reshape(-1, per)
    powers = np.array([a**i for i in range(per)], np.int32)
    codes = (d @ powers).astype(np.uint8)
    return zstd.compress(codes.data, symbols=True)


def unpack_symbols(frame: Buffer, n: int, r: int, what: str) -> Array:
    """The ``n`` signed symbols of :func:`pack_symbols` (int16)."""
    a, per = _alphabet(r)
    codes = zstd.decompress_exact(frame, -(-n // per), what)
    if codes.size and int(codes.max()) >= a**per:
        raise FormatError(f"{what}: symbol byte out of range")
    out: Array = _table(r)[codes].reshape(-1)[:n]
    return out


def split_u32(data: Buffer, what: str) -> tuple[memoryview, memoryview]:
    """A piece ``[u32 length][frame][rest]`` → (frame, rest)."""
    mv = memoryview(data).cast("B")
    if len(mv) < 4:
        raise FormatError(f"{what}: truncated header")
    (n,) = _U32.unpack_from(mv)
    if n > len(mv) - 4:
        raise FormatError(f"{what}: frame of {n} bytes overruns the piece")
    return mv[4 : 4 + n], mv[4 + n :]


def with_u32(frame: bytes, *rest: Any) -> list[Any]:
    return [_U32.pack(len(frame)), frame, *rest]


# ---------------------------------------------------------------------------- encode


def encode_scales(g: Geometry, exps: Array) -> bytes:
    return zstd.compress((exps - g.e_floor).astype(np.uint8).data, symbols=True)


def decode_scales(g: Geometry, frame: Buffer, ngroups: int, what: str) -> Array:
    raw = zstd.decompress_exact(frame, ngroups, what)
    exps = raw.astype(np.int32) + g.e_floor
    if ngroups and int(exps.max()) > g.e_ceil:
        raise FormatError(f"{what}: group exponent out of range")
    return exps


def encode_plane_level(q: Array, neg: Array, total: int, k0: int, k1: int) -> list[Any]:
    """Planes ``k0+1 .. k1`` of the magnitudes ``q`` (known to ``total`` planes): the
    symbols of the weights still 0 after ``k0`` planes (their sign with them), then the raw
    bits of the others."""
    r = k1 - k0
    bits = (q >> np.uint32(total - k1)) & np.uint32((1 << r) - 1)
    sig = (q >> np.uint32(total - k0)) != 0
    insig = ~sig
    b = bits[insig].astype(np.int16)
    sym = np.where(neg[insig], -b, b)
    frame = pack_symbols(sym, r)
    refine = bitpack.pack(bits[sig].astype(np.uint8), r)
    return with_u32(frame, refine)


def midpoints(g: Geometry, q: Array, neg: Array, exps: Array, k: int) -> Array:
    """The decoded float32 values of magnitudes ``q`` after ``k`` planes (0 where q is 0)."""
    odd = (2 * q.astype(np.float32) + 1) * (q != 0)
    val = odd * half_steps(exps, k)
    out: Array = np.where(neg & (q != 0), -val, val)
    return out


def encode_remainder(g: Geometry, words: Array, prior_words: Array) -> list[Any]:
    """The exact words: those whose prior is 0 whole (byte-shuffled, zstd), then the low
    bits of the others (the midpoint marker and below: its width varies), packed."""
    sig = prior_words != 0
    rest = words[~sig]
    frame = compress_dense(shuffle(rest).data)
    pw = prior_words[sig]
    low_mask, widths = _markers(g, pw)
    low = words[sig] & low_mask
    return with_u32(frame, varbits.pack(low, widths))


def _markers(g: Geometry, pw: Array) -> tuple[Array, Array]:
    """For non-zero prior words: the mask of the marker bit and below, and its width."""
    m = pw & (~pw + np.asarray(1, pw.dtype))
    widths = (m.astype(np.float32).view(np.int32) >> 23) - 126
    return (m << np.asarray(1, pw.dtype)) - np.asarray(1, pw.dtype), widths.astype(np.uint8)


def shuffle(words: Array) -> Array:
    """Byte planes of ``words``, most significant first."""
    b = words.view(np.uint8).reshape(-1, words.dtype.itemsize)
    return np.ascontiguousarray(b[:, ::-1].T).reshape(-1)


def unshuffle(raw: Array, n: int, dtype: np.dtype[Any]) -> Array:
    size = dtype.itemsize
    b = raw.reshape(size, n)[::-1].T
    return np.ascontiguousarray(b).reshape(-1).view(dtype)


# ---------------------------------------------------------------------------- decode


def decode_plane_level(
    g: Geometry, v: Array, exps: Array, k0: int, k1: int, piece: Buffer, what: str
) -> Array:
    """Refine the float32 values ``v`` ((ngroups, gsize), known to ``k0`` planes) to ``k1``
    planes with a level's piece; returns a new array."""
    r = k1 - k0
    sig = v != 0
    nsig = int(np.count_nonzero(sig))
    frame, refine = split_u32(piece, what)
    if len(refine) != bitpack.packed_size(nsig, r):
        raise FormatError(
            f"{what}: refinement bits of {len(refine)} bytes, expected "
            f"{bitpack.packed_size(nsig, r)}"
        )
    sym = unpack_symbols(frame, v.size - nsig, r, what)
    step = np.empty(v.shape, np.float32)
    step[~sig] = 2 * sym + np.sign(sym)
    if nsig:
        bits = bitpack.unpack(refine, nsig, r).astype(np.float32)
        step[sig] = 2 * bits + (1 - (1 << r))
    h = half_steps(exps, k1)
    out: Array = v + step * np.copysign(h, v)
    return out


def decode_first_level(
    g: Geometry, exps: Array, gsize: int, k: int, piece: Buffer, what: str
) -> Array:
    """Level 0's plane symbols (every weight unknown) → float32 (ngroups, gsize)."""
    sym = unpack_symbols(piece, exps.size * gsize, k, what).reshape(exps.size, gsize)
    out: Array = (2 * sym + np.sign(sym)).astype(np.float32) * half_steps(exps, k)
    return out


def decode_remainder(g: Geometry, prior_words: Array, piece: Buffer, what: str) -> Array:
    """The exact words from the prior words (flat, padded) and the remainder piece."""
    sig = prior_words != 0
    nsig = int(np.count_nonzero(sig))
    frame, rest = split_u32(piece, what)
    size = g.word.itemsize
    nrest = prior_words.size - nsig
    raw = zstd.decompress_exact(frame, nrest * size, what)
    out = np.empty_like(prior_words)
    out[~sig] = unshuffle(raw, nrest, g.word)
    pw = prior_words[sig]
    low_mask, widths = _markers(g, pw)
    if nsig and (int(widths.min()) < 1 or int(widths.max()) > g.dt.mantissa_bits + 1):
        raise FormatError(f"{what}: prior values are not midpoints of this codec")
    low = varbits.unpack(rest, widths, what).astype(g.word)
    out[sig] = (pw & ~low_mask) | low
    return out
