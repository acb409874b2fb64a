"""rowplane: lossless at the last level, midpoint of the fixed-point interval before it,
never a non-finite value from a finite weight."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerprog.codec import (
    DEFAULT_CODEC,
    DTYPES,
    RawTensor,
    RowplaneCodec,
    get_codec,
    rowplane_core,
    rowplane_decode,
    rowplane_encode,
)
from peerprog.codec.common import BLOCK
from peerprog.codec.dtypes import DType
from peerprog.codec.quality import level_errors
from tests.unit.test_codec_support import (
    FLOATS,
    as_float64,
    decode_prefixes,
    make_array,
    models_st,
    specials,
    words_of,
)

CODEC = RowplaneCodec()
smalls = st.sampled_from([0, 1, 1024])
octaves = st.sampled_from([0, 0, 2, 40])


@st.composite
def plans(draw: st.DrawFn) -> dict[str, Any]:
    """Codec params with a random plan (levels of 0..B planes) summing to a random B."""
    bits = draw(st.integers(1, 24))
    cuts = sorted(draw(st.lists(st.integers(0, bits), max_size=5)))
    plan = [b - a for a, b in itertools.pairwise([0, *cuts, bits])]
    return {"magnitude_bits": bits, "plan": plan}


def _assert_same(got: RawTensor, want: RawTensor, what: Any = None) -> None:
    assert got.dtype == want.dtype and got.array.dtype == want.array.dtype, what
    assert got.array.shape == want.array.shape, what
    assert got.array.tobytes() == want.array.tobytes(), what


def test_registered_beside_the_default() -> None:
    assert isinstance(get_codec("rowplane"), RowplaneCodec)
    assert DEFAULT_CODEC == "bitplane"
    assert CODEC.default_params() == {
        "magnitude_bits": 16,
        "plan": [3, 1, 1, 1, 2, 4, 4],
        "small_tensor_elements": 1024,
        "row_octaves": 0,
    }


@settings(max_examples=120, deadline=None)
@given(model=models_st(), params=plans(), small=smalls, octv=octaves)
def test_all_levels_bit_exact(
    model: dict[str, RawTensor], params: dict[str, Any], small: int, octv: int
) -> None:
    enc = CODEC.encode(model, {**params, "small_tensor_elements": small, "row_octaves": octv})
    assert len(enc.levels) == len(params["plan"]) + 1
    last = decode_prefixes(CODEC, enc)[-1]
    assert list(last) == list(model)
    for name, t in model.items():
        _assert_same(last[name], t, name)


@pytest.mark.parametrize("dt", FLOATS, ids=lambda d: d.name)
@pytest.mark.parametrize("shape", [(), (0,), (5, 0), (0, 4), (7,), (3, 4, 5), (2, 3, 2, 2)])
def test_shapes_round_trip(dt: DType, shape: tuple[int, ...]) -> None:
    x = RawTensor(dt.name, make_array(dt, shape, 3, "special"))
    for octv in (0, 3):
        enc = CODEC.encode({"x": x}, {"small_tensor_elements": 0, "row_octaves": octv})
        for approx in decode_prefixes(CODEC, enc):
            assert approx["x"].array.shape == shape
        _assert_same(decode_prefixes(CODEC, enc)[-1]["x"], x)


@pytest.mark.parametrize("dt", FLOATS, ids=lambda d: d.name)
def test_special_values(dt: DType) -> None:
    """NaN payloads, ±Inf, ±0, subnormals, the extremes: exact at the end; before it, NaN
    and ±Inf are 0 and every finite weight stays finite."""
    words = np.array(specials(dt) * 5, dtype=np.uint64).astype(f"<u{dt.itemsize}")
    x = RawTensor(dt.name, words.view(dt.storage))
    for small, octv in ((0, 0), (0, 5), (1024, 0)):
        enc = CODEC.encode({"x": x}, {"small_tensor_elements": small, "row_octaves": octv})
        prefixes = decode_prefixes(CODEC, enc)
        _assert_same(prefixes[-1]["x"], x)
        ref = as_float64(x)
        for approx in prefixes[:-1] if small == 0 else []:
            got = as_float64(approx["x"])
            assert np.isfinite(got).all()
            assert (got[~np.isfinite(ref)] == 0).all()


@pytest.mark.parametrize("dt", FLOATS, ids=lambda d: d.name)
@pytest.mark.parametrize("kind", ["subnormal", "huge", "tiny rows"])
def test_extreme_scales(dt: DType, kind: str) -> None:
    """Tensors wholly subnormal, near the largest finite value, or rows of very different
    scales (the subnormal residual path)."""
    rng = np.random.default_rng(7)
    m, word = dt.mantissa_bits, np.dtype(f"<u{dt.itemsize}")
    inf = ((1 << dt.exponent_bits) - 1) << m
    if kind == "subnormal":
        words = rng.integers(0, 1 << m, 3000).astype(word)
    elif kind == "huge":
        words = (inf - 1 - rng.integers(0, 1 << (m + 2), 3000)).astype(word)
    else:
        words = rng.integers(0, inf, (30, 100)).astype(word)
        words >>= rng.integers(0, 8 * dt.itemsize - 1, (30, 1)).astype(word)
    words |= (rng.integers(0, 2, words.shape).astype(word)) << word.type(8 * dt.itemsize - 1)
    x = RawTensor(dt.name, words.view(dt.storage))
    for octv in (0, 4, 4000):
        enc = CODEC.encode({"x": x}, {"small_tensor_elements": 0, "row_octaves": octv})
        prefixes = decode_prefixes(CODEC, enc)
        _assert_same(prefixes[-1]["x"], x)
        for approx in prefixes:
            assert np.isfinite(as_float64(approx["x"])).all()


@settings(max_examples=100, deadline=None)
@given(model=models_st(FLOATS), params=plans(), small=smalls, octv=octaves)
def test_prefix_never_makes_finite_non_finite(
    model: dict[str, RawTensor], params: dict[str, Any], small: int, octv: int
) -> None:
    enc = CODEC.encode(model, {**params, "small_tensor_elements": small, "row_octaves": octv})
    for approx in decode_prefixes(CODEC, enc):
        for name, t in model.items():
            finite = np.isfinite(as_float64(t))
            assert np.isfinite(as_float64(approx[name])[finite]).all(), name


# -- the documented prefix rule, computed independently with Python integers -------------


def _round_to(dt: DType, value: float) -> int:
    """``value`` (>= 0) as a ``dt`` word: round to nearest even, clamped to the largest
    finite value."""
    if dt.name == "bfloat16":
        bits = int(np.float32(min(value, 3.3895313892515355e38)).view(np.uint32))
        return (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
    largest = {t.__name__: float(np.finfo(t).max) for t in (np.float16, np.float32, np.float64)}
    return int(np.array(min(value, largest[dt.name]), dt.storage).view(f"<u{dt.itemsize}"))


def _reference_prefix(dt: DType, words: list[int], planes_known: int, bits: int) -> list[int]:
    """Approximation words after ``planes_known`` of ``bits`` magnitude planes (one row)."""
    m_bits, e_bits = dt.mantissa_bits, dt.exponent_bits
    bias = (1 << (e_bits - 1)) - 1
    nbits = 8 * dt.itemsize

    def split(w: int) -> tuple[int, int, bool]:  # significand, exponent (>= 1), finite
        ex, frac = (w >> m_bits) & ((1 << e_bits) - 1), w & ((1 << m_bits) - 1)
        return frac | ((ex != 0) << m_bits), max(ex, 1), ex != (1 << e_bits) - 1

    e_row = 2 - bias - m_bits  # no finite non-zero weight: the smallest
    for w in words:
        sig, ex, finite = split(w)
        if finite and sig:
            # The exponent of 2**E just above |x| = sig * 2**(ex - bias - m_bits).
            e_row = max(e_row, ex - bias - m_bits + sig.bit_length())
    out = []
    for w in words:
        sig, ex, finite = split(w)
        # m = floor(|x| / 2**(E - B)), exactly.
        t = (e_row - bits + bias + m_bits) - ex
        m = (sig >> t if t >= 0 else sig << -t) if finite else 0
        q = m >> (bits - planes_known)
        if q == 0:
            out.append(0)
            continue
        value = math.ldexp(2 * q + 1, e_row - planes_known - 1)
        out.append(_round_to(dt, value) | ((w >> (nbits - 1)) << (nbits - 1)))
    return out


@settings(max_examples=80, deadline=None)
@given(
    dt=st.sampled_from(FLOATS),
    seed=st.integers(0, 2**32 - 1),
    mode=st.sampled_from(["normal", "uniform", "special"]),
    n=st.integers(1, 200),
    params=plans(),
)
def test_prefix_is_the_midpoint_of_the_open_interval(
    dt: DType, seed: int, mode: str, n: int, params: dict[str, Any]
) -> None:
    x = RawTensor(dt.name, make_array(dt, (n,), seed, mode))
    enc = CODEC.encode({"x": x}, {**params, "small_tensor_elements": 0})
    bits = min(params["magnitude_bits"], dt.mantissa_bits + 1)
    words = [int(w) for w in words_of(x)]
    known = 0
    for lvl, approx in enumerate(decode_prefixes(CODEC, enc)[:-1]):
        known = min(known + params["plan"][lvl], bits)
        want = _reference_prefix(dt, words, known, bits)
        assert [int(w) for w in words_of(approx["x"])] == want, lvl


# -- quality and sizes -------------------------------------------------------------------


@pytest.mark.parametrize("dt", FLOATS, ids=lambda d: d.name)
def test_error_does_not_grow_with_levels(dt: DType) -> None:
    for seed in range(3):
        x = RawTensor(dt.name, make_array(dt, (40, 50), seed, "normal"))
        enc = CODEC.encode({"x": x})
        ref = as_float64(x)
        rmse = [
            np.sqrt(np.mean((as_float64(a["x"]) - ref) ** 2)) for a in decode_prefixes(CODEC, enc)
        ]
        assert all(b <= a for a, b in itertools.pairwise(rmse)), rmse
        assert rmse[-1] == 0 and rmse[0] > 0


def test_sizes_on_normal_weights() -> None:
    """Level 0 is a few percent of the float32 bytes; all levels less than 90%."""
    x = RawTensor("float32", make_array(DTYPES["float32"], (100, 2000), 0, "normal"))
    enc = CODEC.encode({"x": x})
    sizes = [len(level) for level in enc.levels]
    assert 0.02 < sizes[0] / x.nbytes < 0.08
    assert sum(sizes) / x.nbytes < 0.9
    bitplane = get_codec("bitplane").encode({"x": x})
    assert sum(sizes) < 1.01 * sum(len(level) for level in bitplane.levels)
    q = level_errors({"x": x}, enc, CODEC)
    assert q[-1] == {"rel_rmse_ppm": 0, "max_rel_err_ppm": 0}
    assert all(b["rel_rmse_ppm"] <= a["rel_rmse_ppm"] for a, b in itertools.pairwise(q))


def test_row_scales_refine_small_rows() -> None:
    """With row_octaves, a row 2**-10 the size of the others gets its own scale."""
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 500)).astype(np.float32)
    x[3] *= 2.0**-10
    model = {"x": RawTensor("float32", x)}
    errs = {}
    for octv in (0, 16):
        enc = CODEC.encode(model, {"row_octaves": octv})
        approx = decode_prefixes(CODEC, enc)[1]["x"].array
        errs[octv] = np.abs(approx[3] - x[3]).max() / np.abs(x[3]).max()
        _assert_same(decode_prefixes(CODEC, enc)[-1]["x"], model["x"])
    assert errs[16] < 0.1 < errs[0]


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
    assert set(by_name["w"].params) == {"frame_bytes"}
    level0 = decode_prefixes(CODEC, enc)[0]
    for name in ("b", "steps", "mask"):
        _assert_same(level0[name], model[name])


# -- the decoder -------------------------------------------------------------------------


@settings(max_examples=40, deadline=None)
@given(model=models_st(), params=plans(), octv=octaves)
def test_incremental_equals_from_scratch(
    model: dict[str, RawTensor], params: dict[str, Any], octv: int
) -> None:
    enc = CODEC.encode(model, {**params, "small_tensor_elements": 0, "row_octaves": octv})
    incremental = decode_prefixes(CODEC, enc)  # tensors() after every level
    for lvl in range(len(enc.levels)):
        dec = CODEC.decoder(enc.params, enc.tensors)
        for k in range(lvl + 1):
            dec.add_level(k, enc.levels[k])
        once = dec.tensors()
        for name in model:
            _assert_same(once[name], incremental[lvl][name], (name, lvl))


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
    _assert_same(dec.tensors()["x"], x)
    assert dec.levels_done == len(enc.levels)


def test_take_tensors_hands_the_final_words_over() -> None:
    model = {
        "x": RawTensor("bfloat16", make_array(DTYPES["bfloat16"], (30, 70), 4, "special")),
        "y": RawTensor("float64", make_array(DTYPES["float64"], (2000,), 5, "normal")),
    }
    enc = CODEC.encode(model)
    dec = CODEC.decoder(enc.params, enc.tensors)
    for lvl, data in enumerate(enc.levels):
        dec.add_level(lvl, data)
    got = dec.take_tensors()
    for name, t in model.items():
        _assert_same(got[name], t, name)
    with pytest.raises(ValueError):
        dec.tensors()


def test_params_are_copied() -> None:
    plan = [8, 8]
    params: dict[str, Any] = {"plan": plan}
    enc = CODEC.encode({}, params)
    plan[0] = 1
    assert enc.params["plan"] == [8, 8]


def test_multi_block_and_block_size_independence(monkeypatch: pytest.MonkeyPatch) -> None:
    """Tensors spanning many blocks decode right, and the format does not depend on the
    block size."""
    model = {dt.name: RawTensor(dt.name, make_array(dt, (1001,), 7, "special")) for dt in FLOATS}
    model["rows"] = RawTensor("float32", make_array(DTYPES["float32"], (50, 99), 9, "normal"))
    params = {"small_tensor_elements": 0, "row_octaves": 3}
    enc = CODEC.encode(model, params)
    for module in (rowplane_core, rowplane_encode, rowplane_decode):
        monkeypatch.setattr(module, "BLOCK", 24)
    small_block = CODEC.encode(model, params)
    assert small_block.levels == enc.levels
    for approx, again in zip(
        decode_prefixes(CODEC, enc), decode_prefixes(CODEC, small_block), strict=True
    ):
        for name in model:
            _assert_same(approx[name], again[name], name)
    monkeypatch.undo()
    big = make_array(DTYPES["float32"], (3 * BLOCK + 13,), 8, "special")
    model["big"] = RawTensor("float32", big)
    last = decode_prefixes(CODEC, CODEC.encode(model, params))[-1]
    for name, t in model.items():
        _assert_same(last[name], t, name)


# -- the reference model -----------------------------------------------------------------


def test_reference_model_quality_per_level() -> None:
    """On the bundled digits CNN: level 0 (a few percent of the bytes) already agrees with
    the full model on almost every image, accuracy never drops from level to level, and
    every prefix beats the ``paper`` yardstick's level of at least as many bytes."""
    from peerprog.reference import digits

    sd = digits.load_state_dict()
    model = {k: RawTensor("float32", v) for k, v in sd.items()}
    f32 = sum(t.nbytes for t in model.values())

    def curve(name: str) -> list[tuple[float, float]]:
        codec = get_codec(name)
        enc = codec.encode(model)
        out, cum = [], 0
        for lvl, approx in enumerate(decode_prefixes(codec, enc)):
            cum += len(enc.levels[lvl])
            ev = digits.evaluate({k: t.array for k, t in approx.items()})
            out.append((cum / f32, ev.accuracy))
            if name == "rowplane" and lvl == 0:
                assert ev.agreement >= 0.95
        return out

    ours = curve("rowplane")
    assert ours[0][0] < 0.06
    assert all(b[1] >= a[1] for a, b in itertools.pairwise(ours)), ours
    assert ours[-1][0] < 0.92
    for size, accuracy in curve("paper"):
        best = max((acc for s, acc in ours if s <= size), default=None)
        assert best is not None and best >= accuracy, (size, accuracy, ours)
