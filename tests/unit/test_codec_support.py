"""Shared helpers of the codec tests: tensor generators, special values, reference fills."""

from __future__ import annotations

from typing import Any

import numpy as np
from hypothesis import strategies as st

from peerprog.codec import DTYPES, RawTensor
from peerprog.codec.base import Codec, Encoded
from peerprog.codec.dtypes import DType

FLOATS = [d for d in DTYPES.values() if d.is_float]
Array = np.ndarray[Any, np.dtype[Any]]


def word_bits(dt: DType) -> int:
    return 8 * dt.itemsize


def specials(dt: DType) -> list[int]:
    """Bit patterns of the awkward values of a float dtype."""
    e, m = dt.exponent_bits, dt.mantissa_bits
    sign = 1 << (word_bits(dt) - 1)
    inf = ((1 << e) - 1) << m
    one = ((1 << (e - 1)) - 1) << m
    pos = [
        0,  # +0
        inf,  # +Inf
        inf | (1 << (m - 1)),  # quiet NaN
        inf | 1,  # signalling NaN, payload 1
        inf | 0b101,  # NaN with a payload in the low bits only
        inf | ((1 << m) - 1),  # NaN, all payload bits
        1,  # smallest subnormal
        (1 << m) - 1,  # largest subnormal
        1 << m,  # smallest normal
        inf - 1,  # largest finite
        one,  # 1.0
    ]
    return pos + [w | sign for w in pos]


def make_array(dt: DType, shape: tuple[int, ...], seed: int, mode: str) -> Array:
    """Deterministic test data: ``uniform`` bit patterns, ``normal`` weights, or
    ``special`` (normal weights with special values mixed in)."""
    rng = np.random.default_rng(seed)
    n = int(np.prod(shape)) if shape else 1
    if not dt.is_float:
        if dt.name == "bool":
            return rng.integers(0, 2, n).astype(bool).reshape(shape)
        info = np.iinfo(dt.storage)  # type: ignore[type-var]
        vals = rng.integers(
            info.min, info.max, n, dtype=dt.storage.newbyteorder("="), endpoint=True
        )
        return vals.astype(dt.storage).reshape(shape)
    word = np.dtype(f"<u{dt.itemsize}")
    if mode == "uniform":
        words = rng.integers(0, 1 << word_bits(dt), n, dtype=np.uint64, endpoint=False)
        words = words.astype(word)
    else:
        x = rng.standard_normal(n) * 0.05
        words = to_words(dt, x)
        if mode == "special" and n:
            sp = np.array(specials(dt), dtype=np.uint64).astype(word)
            idx = rng.integers(0, n, max(1, n // 3))
            words[idx] = sp[rng.integers(0, sp.size, idx.size)]
    return words.view(dt.storage).reshape(shape)


def to_words(dt: DType, x: Array) -> Array:
    """float64 values as ``dt`` bit patterns (bfloat16 by truncation)."""
    if dt.name == "bfloat16":
        return (x.astype(np.float32).view(np.uint32) >> np.uint32(16)).astype("<u2")
    return x.astype(dt.storage).view(f"<u{dt.itemsize}")


def words_of(t: RawTensor) -> Array:
    dt = DTYPES[t.dtype]
    return np.ascontiguousarray(t.array).reshape(-1).view(f"<u{dt.itemsize}")


def as_float64(t: RawTensor) -> Array:
    with np.errstate(invalid="ignore"):  # signalling NaNs warn when widened
        if t.dtype == "bfloat16":
            w = words_of(t).astype(np.uint32) << np.uint32(16)
            return w.view(np.float32).astype(np.float64)
        return np.asarray(t.array, dtype=np.float64).reshape(-1)


@st.composite
def tensors_st(draw: st.DrawFn, dtypes: list[DType] | None = None) -> RawTensor:
    dts = dtypes or list(DTYPES.values())
    dt = draw(st.sampled_from(dts))
    shape = tuple(draw(st.lists(st.integers(0, 7), max_size=3)))
    mode = draw(st.sampled_from(["uniform", "normal", "special"]))
    seed = draw(st.integers(0, 2**32 - 1))
    return RawTensor(dt.name, make_array(dt, shape, seed, mode))


@st.composite
def models_st(draw: st.DrawFn, dtypes: list[DType] | None = None) -> dict[str, RawTensor]:
    ts = draw(st.lists(tensors_st(dtypes), min_size=1, max_size=4))
    return {f"layer{i}.w": t for i, t in enumerate(ts)}


def decode_prefixes(codec: Codec, enc: Encoded) -> list[dict[str, RawTensor]]:
    """The approximation after each level, decoding incrementally."""
    dec = codec.decoder(enc.params, enc.tensors)
    out = []
    for lvl, data in enumerate(enc.levels):
        dec.add_level(lvl, data)
        out.append(dec.tensors())
    return out


def reference_fill(dt: DType, words: Array, missing: int) -> Array:
    """The bitplane rule, element by element: known high bits, midpoint fill, zero fill for
    Inf/NaN words whose known mantissa bits are all zero."""
    out = []
    m = dt.mantissa_bits
    exp_all = ((1 << dt.exponent_bits) - 1) << m
    for w in (int(v) for v in words):
        known = (w >> missing) << missing
        inf_or_nan_zero = known & exp_all == exp_all and known & ((1 << m) - 1) == 0
        if missing == 0 or inf_or_nan_zero:
            out.append(known)
        else:
            out.append(known | (1 << (missing - 1)))
    return np.array(out, dtype=np.uint64).astype(words.dtype)
