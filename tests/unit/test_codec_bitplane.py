"""bitplane: lossless at the last level, midpoint fill before, never finite -> non-finite."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerprog.codec import DTYPES, BitplaneCodec, RawTensor, get_codec
from peerprog.codec import bitplane as bitplane_module
from peerprog.codec.bitplane import split_for
from peerprog.codec.common import BLOCK
from tests.unit.test_codec_support import (
    FLOATS,
    as_float64,
    decode_prefixes,
    make_array,
    models_st,
    reference_fill,
    specials,
    words_of,
)

CODEC = BitplaneCodec()
plans = st.lists(st.integers(0, 12), min_size=1, max_size=5)
# 0: every float tensor progressive (even empty and scalar); 1024: the default.
smalls = st.sampled_from([0, 1, 1024])


def _params(plan: list[int], small: int) -> dict[str, Any]:
    return {"mantissa_bits": plan, "small_tensor_elements": small}


def test_registered() -> None:
    assert isinstance(get_codec("bitplane"), BitplaneCodec)
    assert CODEC.default_params()["mantissa_bits"] == [2, 2, 3, 8, 8]


@settings(max_examples=150, deadline=None)
@given(model=models_st(), plan=plans, small=smalls)
def test_all_levels_bit_exact(model: dict[str, RawTensor], plan: list[int], small: int) -> None:
    enc = CODEC.encode(model, _params(plan, small))
    assert len(enc.levels) == len(plan)
    assert all(len(t.segments) == len(plan) for t in enc.tensors)
    last = decode_prefixes(CODEC, enc)[-1]
    assert list(last) == list(model)
    for name, t in model.items():
        got = last[name]
        assert got.dtype == t.dtype and got.array.dtype == t.array.dtype
        assert got.array.shape == t.array.shape
        assert got.array.tobytes() == t.array.tobytes(), name


@pytest.mark.parametrize("dt", FLOATS, ids=lambda d: d.name)
def test_special_values_round_trip(dt: Any) -> None:
    words = np.array(specials(dt) * 3, dtype=np.uint64).astype(f"<u{dt.itemsize}")
    model = {"s": RawTensor(dt.name, words.view(dt.storage))}
    for small in (0, 1024):
        enc = CODEC.encode(model, {"small_tensor_elements": small})
        got = decode_prefixes(CODEC, enc)[-1]["s"]
        assert got.array.tobytes() == model["s"].array.tobytes()


@settings(max_examples=100, deadline=None)
@given(model=models_st(FLOATS), plan=plans)
def test_prefix_equals_reference_midpoint_fill(
    model: dict[str, RawTensor], plan: list[int]
) -> None:
    """Every prefix is the known high bits with the documented fill (also checks that
    incremental decoding, with tensors() called at every level, matches the rule)."""
    enc = CODEC.encode(model, _params(plan, 0))
    for lvl, approx in enumerate(decode_prefixes(CODEC, enc)):
        for name, t in model.items():
            dt = DTYPES[t.dtype]
            known = sum(split_for(dt, plan).level_bits[: lvl + 1])
            want = reference_fill(dt, words_of(t), dt.mantissa_bits - known)
            assert np.array_equal(words_of(approx[name]), want), (name, lvl)


@settings(max_examples=100, deadline=None)
@given(model=models_st(FLOATS), plan=plans, small=smalls)
def test_prefix_never_makes_finite_non_finite(
    model: dict[str, RawTensor], plan: list[int], small: int
) -> None:
    enc = CODEC.encode(model, _params(plan, small))
    for approx in decode_prefixes(CODEC, enc):
        for name, t in model.items():
            finite = np.isfinite(as_float64(t))
            got = as_float64(approx[name])
            assert np.isfinite(got[finite]).all()
            # Infinities stay infinities (zero fill), with their sign.
            inf = np.isinf(as_float64(t))
            assert np.array_equal(got[inf], as_float64(t)[inf])


@settings(max_examples=60, deadline=None)
@given(
    dt=st.sampled_from(FLOATS),
    seed=st.integers(0, 2**32 - 1),
    plan=plans,
    mode=st.sampled_from(["normal", "uniform"]),
)
def test_level0_error_within_half_interval(dt: Any, seed: int, plan: list[int], mode: str) -> None:
    x = RawTensor(dt.name, make_array(dt, (300,), seed, mode))
    enc = CODEC.encode({"x": x}, _params(plan, 0))
    sp = split_for(dt, plan)
    w = words_of(x).astype(np.uint64)
    for lvl, approx in enumerate(decode_prefixes(CODEC, enc)):
        missing = dt.mantissa_bits - sum(sp.level_bits[: lvl + 1])
        if missing == 0:
            continue
        finite = np.isfinite(as_float64(x))
        lo_words = (w >> np.uint64(missing)) << np.uint64(missing)
        hi_words = lo_words + np.uint64(1 << missing)  # exclusive end of the interval
        lo = as_float64(RawTensor(dt.name, lo_words.astype(f"<u{dt.itemsize}").view(dt.storage)))
        hi = as_float64(RawTensor(dt.name, hi_words.astype(f"<u{dt.itemsize}").view(dt.storage)))
        with np.errstate(invalid="ignore", over="ignore"):
            half = np.abs(hi - lo) / 2
            err = np.abs(as_float64(approx["x"]) - as_float64(x))
        assert (err[finite] <= half[finite]).all()


@pytest.mark.parametrize("dt", FLOATS, ids=lambda d: d.name)
def test_error_decreases_with_each_level(dt: Any) -> None:
    for seed in range(3):
        x = RawTensor(dt.name, make_array(dt, (40, 50), seed, "normal"))
        enc = CODEC.encode({"x": x})
        ref = as_float64(x)
        rmse = [
            np.sqrt(np.mean((as_float64(a["x"]) - ref) ** 2)) for a in decode_prefixes(CODEC, enc)
        ]
        assert all(b <= a for a, b in itertools.pairwise(rmse)), rmse
        assert rmse[-1] == 0 and rmse[0] > 0


def test_dtype_splits_follow_float32_plan() -> None:
    plan = [3, 4, 8, 8]
    assert split_for(DTYPES["float32"], plan).level_bits == (3, 4, 8, 8)
    assert split_for(DTYPES["float64"], plan).level_bits == (3, 4, 8, 37)
    assert split_for(DTYPES["float16"], plan).level_bits == (3, 4, 3, 0)
    assert split_for(DTYPES["bfloat16"], plan).level_bits == (3, 4, 0, 0)
    assert split_for(DTYPES["float32"], [2, 2]).level_bits == (2, 21)


def test_small_int_and_bool_tensors_travel_whole_in_level0() -> None:
    model = {
        "w": RawTensor("float32", make_array(DTYPES["float32"], (64, 32), 1, "normal")),
        "b": RawTensor("float32", make_array(DTYPES["float32"], (64,), 2, "normal")),
        "steps": RawTensor("int64", np.arange(7, dtype="<i8")),
        "mask": RawTensor("bool", np.array([True, False, True])),
    }
    enc = CODEC.encode(model)
    by_name = {t.name: t for t in enc.tensors}
    for name in ("b", "steps", "mask"):
        assert all(s.length == 0 for s in by_name[name].segments[1:])
        assert by_name[name].params == {}
    assert all(s.length > 0 for s in by_name["w"].segments)
    assert set(by_name["w"].params) == {"exp_len"}
    level0 = decode_prefixes(CODEC, enc)[0]
    for name in ("b", "steps", "mask"):
        assert level0[name].array.tobytes() == model[name].array.tobytes()


def test_segments_tile_the_levels() -> None:
    model = {
        f"t{i}": RawTensor("float32", make_array(DTYPES["float32"], (50, 30), i, "normal"))
        for i in range(3)
    }
    enc = CODEC.encode(model)
    for lvl, data in enumerate(enc.levels):
        offset = 0
        for t in enc.tensors:
            assert t.segments[lvl].offset == offset
            offset += t.segments[lvl].length
        assert offset == len(data)


def test_level_sizes_on_normal_weights() -> None:
    """Plan [3, 4, 8, 8] on normal(0, 0.05) float32: level 0 near 20% of the bytes."""
    x = RawTensor("float32", make_array(DTYPES["float32"], (200_000,), 0, "normal"))
    enc = CODEC.encode({"x": x}, {"mantissa_bits": [3, 4, 8, 8]})
    sizes = [len(level) for level in enc.levels]
    assert 0.19 < sizes[0] / x.nbytes < 0.23
    assert sizes[1:] == [x.nbytes // 8, x.nbytes // 4, x.nbytes // 4]


def test_tensors_are_new_arrays_and_decoder_unaffected() -> None:
    x = RawTensor("float32", make_array(DTYPES["float32"], (40, 40), 3, "normal"))
    enc = CODEC.encode({"x": x})
    dec = CODEC.decoder(enc.params, enc.tensors)
    with pytest.raises(ValueError):
        dec.tensors()
    dec.add_level(0, enc.levels[0])
    first = dec.tensors()["x"].array
    first[...] = 0
    assert not np.array_equal(dec.tensors()["x"].array, first)
    for lvl in range(1, len(enc.levels)):
        dec.add_level(lvl, enc.levels[lvl])
    out = dec.tensors()["x"].array
    out[...] = 0
    assert dec.tensors()["x"].array.tobytes() == x.array.tobytes()
    assert dec.levels_done == len(enc.levels)


def test_multi_block_and_block_size_independence(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tensors spanning many blocks decode right, and the format does not depend on the
    block size."""
    model = {dt.name: RawTensor(dt.name, make_array(dt, (1001,), 7, "special")) for dt in FLOATS}
    big = make_array(DTYPES["float32"], (3 * BLOCK + 13,), 8, "special")
    model["big"] = RawTensor("float32", big)
    enc = CODEC.encode(model, {"small_tensor_elements": 0})
    monkeypatch.setattr(bitplane_module, "BLOCK", 24)
    small_block = CODEC.encode(model, {"small_tensor_elements": 0})
    assert small_block.levels == enc.levels
    last = decode_prefixes(CODEC, enc)[-1]
    for name, t in model.items():
        assert last[name].array.tobytes() == t.array.tobytes()
