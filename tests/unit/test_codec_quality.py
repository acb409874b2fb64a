"""quality.level_errors: integer per-level error figures for the manifest."""

from __future__ import annotations

import itertools

import numpy as np

from peerprog.codec import DTYPES, BitplaneCodec, PaperCodec, RawTensor
from peerprog.codec.quality import level_errors
from tests.unit.test_codec_support import as_float64, decode_prefixes, make_array


def _model() -> dict[str, RawTensor]:
    return {
        "w": RawTensor("float32", make_array(DTYPES["float32"], (60, 50), 1, "normal")),
        "v": RawTensor("bfloat16", make_array(DTYPES["bfloat16"], (2000,), 2, "special")),
        "b": RawTensor("float32", make_array(DTYPES["float32"], (60,), 3, "normal")),
        "n": RawTensor("int32", np.arange(10, dtype="<i4")),
    }


def test_bitplane_figures_shrink_to_zero() -> None:
    codec = BitplaneCodec()
    enc = codec.encode(_model())
    q = level_errors(_model(), enc, codec)
    assert len(q) == len(enc.levels)
    assert all(set(d) == {"rel_rmse_ppm", "max_rel_err_ppm"} for d in q)
    assert all(isinstance(v, int) for d in q for v in d.values())
    rmse = [d["rel_rmse_ppm"] for d in q]
    assert rmse[0] > 0 and rmse[-1] == 0 and q[-1]["max_rel_err_ppm"] == 0
    assert all(b <= a for a, b in itertools.pairwise(rmse))


def test_figures_match_a_direct_computation() -> None:
    codec = PaperCodec()
    model = _model()
    enc = codec.encode(model)
    q = level_errors(model, enc, codec)
    for lvl, approx in enumerate(decode_prefixes(codec, enc)):
        err2 = ref2 = 0.0
        worst = 0.0
        for name in ("w", "v", "b"):
            x, a = as_float64(model[name]), as_float64(approx[name])
            keep = np.isfinite(x)
            d = a[keep] - x[keep]
            err2 += float(d @ d)
            ref2 += float(x[keep] @ x[keep])
            worst = max(worst, float(np.abs(d).max() / np.abs(x[keep]).max()))
        assert abs(q[lvl]["rel_rmse_ppm"] - np.sqrt(err2 / ref2) * 1e6) <= 1
        assert abs(q[lvl]["max_rel_err_ppm"] - worst * 1e6) <= 1
    assert q[-1]["rel_rmse_ppm"] > 0  # paper's last level is an approximation


def test_integer_only_model() -> None:
    codec = BitplaneCodec()
    model = {"n": RawTensor("int8", np.arange(5, dtype=np.int8))}
    enc = codec.encode(model)
    assert level_errors(model, enc, codec) == [{"rel_rmse_ppm": 0, "max_rel_err_ppm": 0}] * len(
        enc.levels
    )
