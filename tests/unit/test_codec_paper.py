"""paper: per-tensor min-max 16-bit codes in 2-bit pieces (Lee et al. 2021)."""

from __future__ import annotations

import itertools
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerprog.codec import DTYPES, PaperCodec, RawTensor, get_codec
from peerprog.codec import paper as paper_module
from peerprog.codec.common import BLOCK
from peerprog.codec.paper import dequantize, from_float64, quantize
from tests.unit.test_codec_support import FLOATS, as_float64, decode_prefixes, make_array, models_st

CODEC = PaperCodec()


def _range(t: RawTensor) -> tuple[float, float]:
    x = as_float64(t)
    x = x[np.isfinite(x)]
    return (float(x.min()), float(x.max())) if x.size else (0.0, 0.0)


def test_registered() -> None:
    assert isinstance(get_codec("paper"), PaperCodec)


@settings(max_examples=100, deadline=None)
@given(model=models_st(), small=st.sampled_from([0, 1024]))
def test_levels_and_whole_tensors(model: dict[str, RawTensor], small: int) -> None:
    enc = CODEC.encode(model, {"small_tensor_elements": small})
    assert len(enc.levels) == 8
    prefixes = decode_prefixes(CODEC, enc)
    for name, t in model.items():
        dt = DTYPES[t.dtype]
        if not dt.is_float or t.array.size < small:  # whole in level 0: exact at once
            assert prefixes[0][name].array.tobytes() == t.array.tobytes()
        for p in prefixes:
            assert p[name].array.dtype == t.array.dtype and p[name].array.shape == t.array.shape


@settings(max_examples=100, deadline=None)
@given(
    dt=st.sampled_from(FLOATS),
    seed=st.integers(0, 2**32 - 1),
    mode=st.sampled_from(["normal", "special", "uniform"]),
    n=st.integers(1, 300),
)
def test_prefixes_are_midpoint_filled_codes(dt: Any, seed: int, mode: str, n: int) -> None:
    x = RawTensor(dt.name, make_array(dt, (n,), seed, mode))
    enc = CODEC.encode({"x": x}, {"small_tensor_elements": 0})
    lo, hi = _range(x)
    assert enc.tensors[0].params == {
        "min_bits": int(np.float64(lo).view(np.uint64)),
        "max_bits": int(np.float64(hi).view(np.uint64)),
    }
    q = quantize(as_float64(x), lo, hi, 16).astype(np.uint32)
    for lvl, approx in enumerate(decode_prefixes(CODEC, enc)):
        missing = 16 - 2 * (lvl + 1)
        known = (q >> missing) << missing
        filled = known | (1 << (missing - 1)) if missing else known
        want = from_float64(dt, dequantize(filled, lo, hi, 16))
        assert approx["x"].array.tobytes() == want.tobytes(), lvl


@settings(max_examples=100, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), scale=st.sampled_from([1e-30, 0.05, 1.0, 1e30]))
def test_code_is_the_rounded_uniform_quantization(seed: int, scale: float) -> None:
    x = np.random.default_rng(seed).standard_normal(500) * scale
    lo, hi = float(x.min()), float(x.max())
    q = quantize(x, lo, hi, 16)
    ref = np.rint((x - lo) / (hi - lo) * 65535)
    assert q.dtype == np.dtype("<u2")
    assert np.abs(q.astype(np.float64) - ref).max() <= 1
    assert q.min() == 0 and q.max() == 65535
    back = dequantize(q, lo, hi, 16)
    assert np.abs(back - x).max() <= (hi - lo) / 65535 * 0.5000001


def test_last_level_is_the_16_bit_approximation() -> None:
    x = RawTensor("float32", make_array(DTYPES["float32"], (100, 50), 4, "normal"))
    enc = CODEC.encode({"x": x})
    last = decode_prefixes(CODEC, enc)[-1]["x"].array
    lo, hi = _range(x)
    err = np.abs(last.astype(np.float64) - x.array.astype(np.float64))
    assert 0 < err.max() <= (hi - lo) / 65535 * 0.5 + np.spacing(np.float32(hi))


def test_non_finite_values_are_clipped() -> None:
    x = np.array([np.nan, np.inf, -np.inf, -1.0, 0.5, 2.0] * 200, dtype=np.float32)
    enc = CODEC.encode({"x": RawTensor("float32", x)})
    last = decode_prefixes(CODEC, enc)[-1]["x"].array
    assert np.isfinite(last).all()
    assert last[1] == 2.0 and last[2] == -1.0 and last[0] == -1.0


@pytest.mark.parametrize("value", [0.0, -3.5, 1e38])
def test_constant_tensor_is_exact(value: float) -> None:
    x = np.full(2000, value, np.float32)
    enc = CODEC.encode({"x": RawTensor("float32", x)})
    for p in decode_prefixes(CODEC, enc):
        assert p["x"].array.tobytes() == x.tobytes()


def test_all_non_finite_tensor() -> None:
    x = np.array([np.nan, np.inf] * 1000, np.float32)
    enc = CODEC.encode({"x": RawTensor("float32", x)})
    assert (decode_prefixes(CODEC, enc)[-1]["x"].array == 0).all()


@pytest.mark.parametrize(
    "values",
    [[-1.7e308, 1.7e308, 0.0, 1e-300], [0.0, 5e-324, 1e-323], [1e-310, 2e-310, 1.5e-310]],
)
def test_extreme_float64_range(values: list[float]) -> None:
    x = np.array(values * 300)
    enc = CODEC.encode({"x": RawTensor("float64", x)})
    last = decode_prefixes(CODEC, enc)[-1]["x"].array
    assert np.isfinite(last).all()
    assert last.min() == x.min() and last.max() == x.max()
    assert np.abs(last - x).max() <= (x.max() / 65535 - x.min() / 65535) * 0.51 + 5e-324


@pytest.mark.parametrize("dt", FLOATS, ids=lambda d: d.name)
def test_error_decreases_with_each_level(dt: Any) -> None:
    x = RawTensor(dt.name, make_array(dt, (40, 50), 5, "normal"))
    enc = CODEC.encode({"x": x})
    ref = as_float64(x)
    rmse = [np.sqrt(np.mean((as_float64(a["x"]) - ref) ** 2)) for a in decode_prefixes(CODEC, enc)]
    assert all(b <= a for a, b in itertools.pairwise(rmse)), rmse


def test_level_sizes_are_raw_two_bit_pieces() -> None:
    x = RawTensor("float32", make_array(DTYPES["float32"], (10_000,), 6, "normal"))
    enc = CODEC.encode({"x": x})
    assert [len(level) for level in enc.levels] == [2500] * 8


def test_block_size_independence(monkeypatch: pytest.MonkeyPatch) -> None:
    x = RawTensor("bfloat16", make_array(DTYPES["bfloat16"], (3 * BLOCK + 5,), 9, "special"))
    enc = CODEC.encode({"x": x})
    monkeypatch.setattr(paper_module, "BLOCK", 40)
    assert CODEC.encode({"x": x}).levels == enc.levels
    small = decode_prefixes(CODEC, enc)
    monkeypatch.undo()
    assert all(
        a["x"].array.tobytes() == b["x"].array.tobytes()
        for a, b in zip(small, decode_prefixes(CODEC, enc), strict=True)
    )
