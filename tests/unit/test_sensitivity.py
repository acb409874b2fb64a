"""The publisher's sensitivity: the file's checks, how it weighs groupplane's error
estimates, how it steers the rate allocation, and publish's handling of a bad file."""

from __future__ import annotations

import itertools
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from peerprog.codec import groupplane as gp
from peerprog.codec import zstd
from peerprog.codec.base import RawTensor
from peerprog.codec.dtypes import DTYPES
from peerprog.codec.groupplane import classes, format, selection
from peerprog.codec.sensitivity import as_matrix, check, matrix_shape
from peerprog.errors import FormatError, InputError
from peerprog.formats.safetensors import read_safetensors, read_sensitivity, write_safetensors
from peerprog.manifest import generate_key_file, load_key_file
from peerprog.store import Store, publish_tensors

Array = np.ndarray[Any, Any]


def _tensor(shape: tuple[int, ...], seed: int = 0) -> RawTensor:
    rng = np.random.default_rng(seed)
    return RawTensor("float32", (rng.standard_normal(shape) * 0.02).astype(np.float32))


# ---------------------------------------------------------------------------- the file's checks


@pytest.mark.parametrize(
    ("shape", "wshape", "want"),
    [
        ((8, 4, 3, 3), (), (1, 1)),
        ((8, 4, 3, 3), (1,), (1, 1)),
        ((8, 4, 3, 3), (8,), (8, 1)),
        ((8, 4, 3, 3), (8, 1), (8, 1)),
        ((8, 4, 3, 3), (1, 36), (1, 36)),
        ((8, 4, 3, 3), (8, 36), (8, 36)),
        ((8, 4, 3, 3), (8, 4, 3, 3), (8, 36)),
        ((100,), (100,), (1, 100)),
        ((100,), (), (1, 1)),
    ],
)
def test_accepted_shapes(
    shape: tuple[int, ...], wshape: tuple[int, ...], want: tuple[int, int]
) -> None:
    m = as_matrix("t", shape, np.ones(wshape, np.float32))
    assert m.shape == want
    np.broadcast_to(m, matrix_shape(shape))  # fits the tensor's matrix


@pytest.mark.parametrize(
    ("wshape", "values", "needle"),
    [
        ((36,), 1.0, "does not fit"),
        ((8, 4), 1.0, "does not fit"),
        ((2, 36), 1.0, "does not fit"),
        ((8,), float("nan"), "NaN"),
        ((8,), float("inf"), "infinite"),
        ((8,), -1.0, "negative"),
    ],
)
def test_bad_weights_are_named(wshape: tuple[int, ...], values: float, needle: str) -> None:
    w = np.full(wshape, values, np.float32)
    with pytest.raises(InputError, match=needle) as err:
        check({"conv.weight": w}, {"conv.weight": (8, 4, 3, 3)}, "sens.safetensors")
    assert "conv.weight" in str(err.value) and "sens.safetensors" in str(err.value)


def test_integer_weights_and_unknown_names_are_refused() -> None:
    shapes = {"a.weight": (4, 4)}
    with pytest.raises(InputError, match="floats"):
        check({"a.weight": np.ones((4,), np.int32)}, shapes)
    with pytest.raises(InputError, match=r"does not have: 'b\.weight'.*e\.g\. 'a\.weight'"):
        check({"a.weight": np.ones(()), "b.weight": np.ones(())}, shapes)
    with pytest.raises(InputError, match="positive"):
        check({"a.weight": np.zeros(())}, shapes)


def test_missing_tensors_get_the_mean_weight() -> None:
    shapes = {"a": (2, 3), "b": (4, 3), "c": (10, 10)}
    sens = check({"a": np.array([1.0, 3.0]), "b": np.full((1, 3), 5.0)}, shapes)
    # per weight: a holds 3 × 1 + 3 × 3, b holds 12 × 5
    assert sens.fill == pytest.approx((3 + 9 + 60) / 18)
    assert sens.of("c", (10, 10)).item() == pytest.approx(sens.fill)
    assert sens.of("a", (2, 3)).shape == (2, 1)


def test_read_sensitivity_file(tmp_path: Path) -> None:
    good = tmp_path / "s.safetensors"
    write_safetensors(good, {"a": RawTensor("bfloat16", np.array([0x3F80], np.uint16))})
    assert read_sensitivity(good)["a"].tolist() == [1.0]
    ints = tmp_path / "i.safetensors"
    write_safetensors(ints, {"a": RawTensor("int32", np.array([1], np.int32))})
    with pytest.raises(InputError, match="int32, floats are needed"):
        read_sensitivity(ints)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 3)
    with pytest.raises(InputError, match=r"junk\.safetensors: not a sensitivity file"):
        read_sensitivity(junk)
    with pytest.raises(InputError, match="cannot read"):
        read_sensitivity(tmp_path / "absent")


# ---------------------------------------------------------------------------- analyse and plan


def test_weighted_errors_are_the_weighted_sums() -> None:
    t = _tensor((32, 128))
    plain = gp.analyse("t", t)
    scaled = gp.analyse("t", t, None, np.full((1, 1), 3.0))
    assert scaled.weighted and not plain.weighted
    assert np.allclose(scaled.sq_error, np.array(plain.sq_error) * 3.0, rtol=1e-12)
    assert scaled.plane_bytes == plain.plane_bytes
    # rows weighted 1 (the first half) and 0 (the rest): the first half's own errors
    rows = np.r_[np.ones(16), np.zeros(16)][:, None]
    half = gp.analyse("t", t, None, rows)
    top = gp.analyse("t", RawTensor("float32", t.array[:16].copy()))
    assert np.allclose(half.sq_error, top.sq_error, rtol=1e-9)
    # one weight per column: the error of column j counts w_j times
    cols = np.arange(128, dtype=np.float64)[None, :] % 2  # odd columns only
    odd = gp.analyse("t", t, None, cols)
    only = gp.analyse("t", RawTensor("float32", t.array.copy()), None, np.ones((1, 1)))
    assert 0 < odd.sq_error[3] < only.sq_error[3]


def test_sensitivity_steers_planes_to_the_tensor_that_matters() -> None:
    tensors = {"a": _tensor((256, 256), 1), "b": _tensor((256, 256), 2)}
    params = {"targets_mbpw": [2500, 3000, 3500, 4000]}
    base = gp.plan(params, [gp.analyse(k, t, params) for k, t in tensors.items()])
    sens = check({"a": np.ones(()), "b": np.full((), 1e-4)}, {"a": (256, 256), "b": (256, 256)})
    steered = gp.plan(
        params, [gp.analyse(k, t, params, sens.of(k, t.array.shape)) for k, t in tensors.items()]
    )
    pa, pb = base.tensors["a"]["planes"], base.tensors["b"]["planes"]
    assert isinstance(pa, list) and isinstance(pb, list)
    assert max(abs(x - y) for x, y in zip(pa, pb, strict=True)) <= 1  # alike without
    sa, sb = steered.tensors["a"]["planes"], steered.tensors["b"]["planes"]
    assert isinstance(sa, list) and isinstance(sb, list)
    assert all(x >= y for x, y in zip(sa, sb, strict=True))
    assert sa[1] - sb[1] >= 3  # the sensitive tensor is several planes ahead
    assert math.isclose(
        sum(base.estimated_bytes[:-1]), sum(steered.estimated_bytes[:-1]), rel_tol=0.1
    )


# ---------------------------------------------------------------------------- publish


def test_publish_with_sensitivity_and_bad_files(tmp_path: Path) -> None:
    generate_key_file(tmp_path / "key")
    key = load_key_file(tmp_path / "key")
    store = Store(tmp_path / "store")
    tensors = {"a": _tensor((128, 128), 1), "b": _tensor((128, 128), 2)}
    opts: dict[str, Any] = {"name": "m", "key": key, "store": store}
    good = {"a": np.ones((128,)), "b": np.full((1, 128), 1e-3)}
    result = publish_tensors(tensors, sensitivity=good, **opts)
    planes = {t.name: t.params["planes"] for t in result.signed.manifest.tensors}
    assert planes["a"] != planes["b"]
    with pytest.raises(InputError, match="'c'"):
        publish_tensors(tensors, sensitivity={"c": np.ones(())}, **opts)
    with pytest.raises(InputError, match="negative"):
        publish_tensors(tensors, sensitivity={"a": -np.ones(())}, **opts)
    with pytest.raises(InputError, match="does not allocate its rate"):
        publish_tensors(tensors, sensitivity=good, codec="paper", **opts)
    assert store.model_ids() == [result.signed.model_id]  # the refused left nothing


# ---------------------------------------------------------------------------- row classes


def _classed(dtype: str = "float32") -> tuple[dict[str, Any], dict[str, Any], RawTensor]:
    """A tensor whose rows differ in sensitivity by up to 10⁴, planned by a planner."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((512, 192)) * 0.02).astype(np.float32)
    arr = x if dtype == "float32" else (x.view(np.uint32) >> 16).astype(np.uint16)
    t = RawTensor(dtype, arr)
    sens = check({"w": 10.0 ** rng.uniform(-4, 0, (512, 1))}, {"w": (512, 192)})
    codec = gp.GroupplaneCodec()
    planner = codec.planner(codec.check_params({"row_classes": True}), sens)
    planner.add("w", t)
    params, plans = planner.finish()
    return params, plans["w"], t


def test_rows_are_classed_by_worth_only_when_they_differ() -> None:
    rng = np.random.default_rng(0)
    values = rng.standard_normal((256, 512)).astype(np.float32)
    geo = format.geometry(DTYPES["float32"], 12)

    def choose(v: Array, s: Array) -> Array | None:
        return classes.choose(classes.row_worth(geo, v, s), v.shape[1])

    assert choose(values, np.ones((1, 1))) is None  # alike: one class
    assert choose(values[:2], np.array([[1.0], [1e-6]])) is None  # too small
    # 10× is 1.7 class widths (4× each) down, 10⁵× more than the deepest class
    s = np.r_[np.ones(128), np.full(64, 0.1), np.full(64, 1e-5)][:, None]
    cls = choose(values, s)
    assert cls is not None and cls.dtype == np.uint8
    assert (cls[:128] == 0).all() and (cls[128:192] == 1).all() and (cls[192:] == 2).all()
    few = np.r_[np.ones(250), np.full(6, 1e-5)][:, None]  # 6 rows: too few for a class
    assert choose(values, few) is None


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_row_classes_round_trip_with_each_backend(dtype: str) -> None:
    params, plan, t = _classed(dtype)
    assert "rows" in plan and len(plan["row_classes"]) == 512
    ladders = plan["rows"]
    assert all(a >= b for a, b in zip(ladders[0], ladders[-1], strict=True))  # worth first
    assert ladders[0][0] > ladders[-1][0]
    streams = {}
    for backend in gp.backends():
        kernels = selection.kernels_named(backend)
        tp, pieces = gp.encode_tensor(t, plan, params, "w", kernels)
        assert tp == {"group": plan["group"], "rows": ladders}  # no class map in the manifest
        streams[backend] = [bytes(p) for p in pieces]
        prior, errors, levels = None, [], []
        for n in range(len(pieces)):
            step = gp.decode_tensor(
                params, dtype, t.array.shape, tp, pieces[: n + 1], prior, "w", kernels
            )
            scratch = gp.decode_tensor(
                params, dtype, t.array.shape, tp, pieces[: n + 1], None, "w", kernels
            )
            assert np.array_equal(step, scratch)
            if n >= 2:  # several levels in one go from an older prior
                jump = gp.decode_tensor(
                    params, dtype, t.array.shape, tp, pieces[: n + 1], levels[n - 2], "w", kernels,
                    prior_level=n - 2,
                )  # fmt: skip
                assert np.array_equal(jump, step)
            prior = step
            levels.append(step)
            errors.append(float(np.sum((_floats(dtype, step) - _floats(dtype, t.array)) ** 2)))
        assert np.array_equal(prior, t.array)  # bit-exact at the last level
        assert all(a >= b for a, b in itertools.pairwise(errors))
        together = list(gp.decode_levels(params, dtype, t.array.shape, tp, pieces, "w", kernels))
        assert all(np.array_equal(a, b) for a, b in zip(together, levels, strict=True))
    assert len({tuple(s) for s in streams.values()}) == 1  # the same bytes from each backend


def _floats(dtype: str, a: Array) -> Array:
    if dtype == "float32":
        return a.astype(np.float64)
    return (a.astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def test_malformed_row_classes_are_format_errors() -> None:
    params, plan, t = _classed()
    tp, pieces = gp.encode_tensor(t, plan, params, "w")
    pieces = [bytes(p) for p in pieces]
    shape = t.array.shape

    def decode(tparams: dict[str, Any], ps: list[bytes]) -> None:
        gp.decode_tensor(params, "float32", shape, tparams, ps, None, "w")

    for bad in ({"group": 64, "rows": [[1, 2]]}, {"group": 64, "rows": "x"}, {"rows": tp["rows"]}):
        with pytest.raises(FormatError, match="'w'"):
            decode(bad, pieces[:1])
    head = format.read_parts(pieces[0], 1 + len(tp["rows"]), "")
    wrong = np.zeros(512, np.uint8)  # class 0 only: the others unused
    forged = format.frame([zstd.compress(wrong.tobytes()), *head[1:]])
    with pytest.raises(FormatError, match="row classes"):
        decode(tp, [forged])
    with pytest.raises(FormatError):
        decode(tp, [pieces[0][:-3]])
    with pytest.raises(FormatError):
        decode(tp, [pieces[0], pieces[1] + b"\0"])
    with pytest.raises(FormatError, match="row_classes"):
        gp.encode_tensor(t, {**plan, "row_classes": b"\0" * 511}, params, "w")
    with pytest.raises(FormatError, match="'row_classes' must be true or false"):
        gp.settings({"row_classes": 1})


def test_a_published_model_with_row_classes_decodes_from_the_store(tmp_path: Path) -> None:
    """Publish → store → decode at every level, from scratch and from the level before (as
    a node builds them), bit-exact at the last: the path an edge takes."""
    _, _, t = _classed("bfloat16")
    generate_key_file(tmp_path / "key")
    store = Store(tmp_path / "store")
    sens = {"w": 10.0 ** np.random.default_rng(4).uniform(-4, 0, (512, 1))}
    key = load_key_file(tmp_path / "key")
    plain = publish_tensors({"w": t}, name="p", key=key, store=store, sensitivity=sens)
    assert "planes" in plain.signed.manifest.tensors[0].params  # row classes are asked for
    result = publish_tensors(
        {"w": t}, name="m", key=key, store=store, sensitivity=sens, params={"row_classes": True}
    )
    signed = result.signed
    (layout,) = signed.manifest.tensors
    assert len(layout.params["rows"]) >= 2  # planed by row classes
    last = len(signed.manifest.levels) - 1
    prior = None
    for level in range(last + 1):
        out = tmp_path / f"level{level}.safetensors"
        store.decode(signed, level, out, prior=prior)
        scratch = tmp_path / f"scratch{level}.safetensors"
        store.decode(signed, level, scratch)
        assert out.read_bytes() == scratch.read_bytes()
        prior = out
    (tensors, _) = read_safetensors(prior)
    assert np.array_equal(tensors["w"].array, t.array)
