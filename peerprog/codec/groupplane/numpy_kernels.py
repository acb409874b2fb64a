"""groupplane's kernels in numpy: the reference implementation of
:class:`~peerprog.codec.groupplane.kernels.Kernels`, many array passes per level (10-30x
slower than the C kernels), used where the C extension is not built.

Everything works on a tensor's values padded to ``ngroups * g`` and viewed as a
``(ngroups, g)`` float32 array, which holds every value of the codec exactly.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from peerprog.codec import bitpack
from peerprog.codec.groupplane import varbits
from peerprog.codec.groupplane.format import (
    Array,
    Data,
    Geometry,
    Streams,
    from_f32,
    padded,
    shuffle,
    to_f32,
    unshuffle,
)
from peerprog.codec.groupplane.kernels import Remainder, Step
from peerprog.codec.groupplane.rans import alphabet, symbols_per_byte
from peerprog.errors import FormatError

# ---------------------------------------------------------------------------- values


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


def midpoints(g: Geometry, q: Array, neg: Array, exps: Array, k: int) -> Array:
    """The decoded float32 values of magnitudes ``q`` after ``k`` planes (0 where q is 0)."""
    odd = (2 * q.astype(np.float32) + 1) * (q != 0)
    val = odd * half_steps(exps, k)
    out: Array = np.where(neg & (q != 0), -val, val)
    return out


# ---------------------------------------------------------------------------- symbols

_TABLES: dict[int, Array] = {}


def _table(r: int) -> Array:
    """(256, per) int16: the signed symbols packed in each byte value."""
    t = _TABLES.get(r)
    if t is None:
        a, per = alphabet(r), symbols_per_byte(r)
        codes = np.arange(256)
        t = np.stack([(codes // a**i) % a for i in range(per)], axis=1) - ((1 << r) - 1)
        t = _TABLES[r] = t.astype(np.int16)
    return t


def pack_codes(sym: Array, r: int) -> bytes:
    """Signed symbols in ``[-(2**r - 1), 2**r - 1]`` as symbol bytes (the format's digits,
    :func:`~peerprog.codec.groupplane.rans.symbols_per_byte` a byte)."""
    a, per = alphabet(r), symbols_per_byte(r)
    digits = sym.astype(np.int32) + ((1 << r) - 1)
    n = -(-digits.size // per) * per
    d = padded(digits, n).reshape(-1, per)
    powers = np.array([a**i for i in range(per)], np.int32)
    return (d @ powers).astype(np.uint8).tobytes()


def unpack_codes(codes: Data, n: int, r: int) -> Array:
    """The ``n`` signed symbols of :func:`pack_codes` (int16); FormatError unless
    ``codes`` holds exactly them."""
    raw = np.frombuffer(codes, np.uint8)
    want = -(-n // symbols_per_byte(r))
    if raw.size and int(raw.max()) >= alphabet(r) ** symbols_per_byte(r):
        raise FormatError("symbol byte out of range")
    if raw.size != want:
        raise FormatError(f"{raw.size} symbol bytes, expected {want}")
    out: Array = _table(r)[raw].reshape(-1)[:n]
    return out


# ---------------------------------------------------------------------------- remainder


def _markers(pw: Array) -> tuple[Array, Array]:
    """For non-zero words so far: the mask of the marker bit and below, and its width."""
    m = pw & (~pw + np.asarray(1, pw.dtype))
    widths = (m.astype(np.float32).view(np.int32) >> 23) - 126
    return (m << np.asarray(1, pw.dtype)) - np.asarray(1, pw.dtype), widths.astype(np.uint8)


def decode_remainder(g: Geometry, prior_words: Array, rem: Remainder) -> Array:
    """The exact words from the words so far (flat, padded) and the remainder."""
    sig = prior_words != 0
    nsig = int(np.count_nonzero(sig))
    size = g.word.itemsize
    raw = np.frombuffer(rem.rest, np.uint8)
    nrest = prior_words.size - nsig
    pw = prior_words[sig]
    low_mask, widths = _markers(pw)
    if nsig and (int(widths.min()) < 1 or int(widths.max()) > g.dt.mantissa_bits + 1):
        raise FormatError("prior values are not midpoints of this codec")
    if raw.size != nrest * size:
        raise FormatError(f"remainder of {raw.size} whole bytes, expected {nrest * size}")
    out = np.empty_like(prior_words)
    out[~sig] = unshuffle(raw, nrest, g.word)
    if rem.low_bytes is None:
        low = varbits.unpack(rem.low, widths, "low bits").astype(g.word)
    else:  # format 2: a field wider than 8 bits has its bottom byte apart
        big = widths > 8
        bottom = np.frombuffer(rem.low_bytes, np.uint8)
        if bottom.size != int(np.count_nonzero(big)):
            raise FormatError(f"{bottom.size} low bytes, expected {np.count_nonzero(big)}")
        packed = np.where(big, widths - 8, widths).astype(np.uint8)
        low = varbits.unpack(rem.low, packed, "low bits").astype(g.word)
        low[big] = (low[big] << np.asarray(8, g.word)) | bottom
    out[sig] = (pw & ~low_mask) | low
    return out


def split_low(fields: Array, widths: Array) -> tuple[Array, Array, Array]:
    """Format 2's split of the low-bit ``fields`` of ``widths``: (the fields packed, their
    widths, the bottom bytes of those wider than 8 bits, in order)."""
    big = widths > 8
    bottom = (fields[big] & np.asarray(0xFF, fields.dtype)).astype(np.uint8)
    packed = np.where(big, fields >> np.asarray(8, fields.dtype), fields)
    return packed, np.where(big, widths - 8, widths).astype(np.uint8), bottom


# ---------------------------------------------------------------------------- planes


def check_prior(v: Array, exps: Array, k0: int) -> None:
    """FormatError unless every value of ``v`` ((ngroups, gsize) float32) is ±0 or a
    midpoint of its group after ``k0`` planes, ``±(2q + 1) * 2**(E - k0 - 1)`` with
    ``1 <= q < 2**k0`` (a prior of another level, or none of this codec's, would be refined
    into nonsense): ``|v| / 2**(E - k0 - 1)`` must be an odd integer in ``3 .. 2**(k0+1)``.
    The division is two exact float32 scalings by powers of two (one could overflow)."""
    x = (k0 + 1 - exps).astype(np.int32)
    with np.errstate(over="ignore", invalid="ignore"):  # NaN, Inf: not midpoints
        t = np.abs(v) * np.ldexp(np.float32(1), x // 2)[:, None]
        t *= np.ldexp(np.float32(1), x - x // 2)[:, None]
        ok = (t >= 3) & (t < np.float32(2 << k0))
        ti = t.astype(np.int32)  # (where ok is false, any value)
    ok &= ti == t
    ok &= np.bitwise_and(ti, np.int32(1)) != 0
    ok |= v == 0
    if not ok.all():
        raise FormatError("prior values are not midpoints of this codec")


def decode_step(g: Geometry, v: Array, exps: Array, step: Step) -> Array:
    """Refine the float32 values ``v`` ((ngroups, gsize), known to ``k1 - r`` planes) by a
    plane step; returns a new array."""
    r = step.r
    sig = v != 0
    nsig = int(np.count_nonzero(sig))
    refine = np.frombuffer(step.refine, np.uint8)
    if refine.size != bitpack.packed_size(nsig, r):
        raise FormatError(
            f"refinement bits of {refine.size} bytes, expected {bitpack.packed_size(nsig, r)}"
        )
    sym = unpack_codes(step.codes, v.size - nsig, r)
    delta = np.empty(v.shape, np.float32)
    delta[~sig] = 2 * sym + np.sign(sym)
    if nsig:
        bits = bitpack.unpack(refine, nsig, r).astype(np.float32)
        delta[sig] = 2 * bits + (1 - (1 << r))
    h = half_steps(exps, step.k1)
    out: Array = v + delta * np.copysign(h, v)
    return out


class NumpyKernels:
    """The numpy implementation of :class:`~peerprog.codec.groupplane.kernels.Kernels`."""

    name = "numpy"

    def encode(
        self,
        geo: Geometry,
        words: Array,
        gsize: int,
        top: int,
        steps: Sequence[tuple[int, int]],
        split: bool,
    ) -> Streams:
        ngroups = -(-words.size // gsize)
        padded_words = padded(words, ngroups * gsize)
        v = to_f32(geo, padded_words).reshape(ngroups, gsize)
        exps = group_exponents(geo, v)
        q = magnitudes(v, exps, top).reshape(-1)
        neg = np.signbit(v).reshape(-1)
        out: list[tuple[Any, Any]] = []
        for a, b in steps:
            r = b - a
            bits = (q >> np.uint32(top - b)) & np.uint32((1 << r) - 1)
            sig = (q >> np.uint32(top - a)) != 0
            insig = ~sig
            field = bits[insig].astype(np.int16)
            sym = np.where(neg[insig], -field, field)
            out.append((pack_codes(sym, r), bitpack.pack(bits[sig].astype(np.uint8), r)))
        mids = midpoints(geo, q.reshape(v.shape), neg.reshape(v.shape), exps, top)
        prior = from_f32(geo, mids).reshape(-1).view(geo.word)
        sig = prior != 0
        low_mask, widths = _markers(prior[sig])
        fields = padded_words[sig] & low_mask
        bottom = np.zeros(0, np.uint8)
        if split:
            fields, widths, bottom = split_low(fields, widths)
        low = varbits.pack(fields, widths)
        scales = (exps - geo.e_floor).astype(np.uint8).tobytes()
        return Streams(scales, out, shuffle(padded_words[~sig]), low, bottom)

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
        total = out.size
        exps = np.frombuffer(scales, np.uint8)[: total // gsize].astype(np.int32) + geo.e_floor
        words = prior
        v: Array | None = None
        for step in steps:
            if step.first or v is None:  # a level starts: the padding counts as 0
                if v is not None:
                    words = from_f32(geo, v.reshape(-1)[:numel]).view(geo.word)
                start = np.zeros(total, geo.word) if words is None else padded(words, total)
                v = to_f32(geo, start).reshape(-1, gsize)
                if step is steps[0] and prior is not None:
                    check_prior(v, exps, step.k1 - step.r)
            v = decode_step(geo, v, exps, step)
        if v is not None:
            words = from_f32(geo, v.reshape(-1)).view(geo.word)
        assert words is not None, "level 0 has plane steps"
        if remainder is not None:
            out[:] = decode_remainder(geo, padded(words[:numel], total), remainder)
        else:
            out[: words.size] = words
