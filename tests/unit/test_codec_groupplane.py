"""groupplane, with each backend (C kernels and numpy): bit-exact round trips, incremental =
from-scratch decoding, nested intervals (error never grows with a level), rate allocation
without empty levels, canonical params, and malformed input as FormatError (never a crash or
a huge allocation)."""

from __future__ import annotations

import math
import struct
import subprocess
import sys
from collections.abc import Iterator, Sequence
from typing import Any

import msgpack
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peerprog.codec import groupplane as gp
from peerprog.codec.base import RawTensor
from peerprog.codec.dtypes import DTYPES
from peerprog.codec.groupplane import varbits
from peerprog.codec.groupplane.format import geometry
from peerprog.errors import FormatError

FLOATS = ("float32", "bfloat16", "float16")
# Every tensor with planes, however small, so that the edge cases reach the plane code.
ALL_PLANES = {"small_tensor_elements": 0, "vector_elements": 0}
SPECIAL = {
    "float32": [0x7FC00000, 0x7F800000, 0xFF800000, 0x80000000, 0x00000001, 0x807FFFFF, 0x7F7FFFFF],
    "bfloat16": [0x7FC0, 0x7F80, 0xFF80, 0x8000, 0x0001, 0x807F, 0x7F7F, 0xFFC1],
    "float16": [0x7E00, 0x7C00, 0xFC00, 0x8000, 0x0001, 0x83FF, 0x7BFF, 0xFE01],
}


@pytest.fixture(autouse=True, scope="module", params=gp.backends())
def backend(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every test here runs with each available backend (C kernels, numpy)."""
    prev = gp.backend()
    gp.set_backend(request.param)
    yield request.param
    gp.set_backend(prev)


def _values(dtype: str, shape: tuple[int, ...], seed: int, kind: str) -> np.ndarray[Any, Any]:
    """A tensor's storage array: normal with per-row scales, special values, or constant."""
    rng = np.random.default_rng(seed)
    n = math.prod(shape)
    word = DTYPES[dtype].word
    if kind == "bits":  # any bit pattern at all
        w = rng.integers(0, 1 << (8 * word.itemsize), n, dtype=np.uint64).astype(word)
    else:
        rows = shape[0] if len(shape) >= 2 else 1
        scale = np.exp(rng.normal(0, 3, (rows, 1)))
        x = rng.standard_normal((rows, max(n // max(rows, 1), 0))) * scale * 0.01
        if kind == "const":
            x = np.full_like(x, 0.375)
        elif kind == "zeros":
            x = np.zeros_like(x)
        x = x.reshape(-1)
        w = _to_words(dtype, x)
        if kind == "special" and n:
            sp = np.array(SPECIAL[dtype], word)
            pos = rng.integers(0, n, min(n, 3 * len(sp)))
            w[pos] = sp[np.arange(pos.size) % sp.size]
    return w.view(DTYPES[dtype].storage).reshape(shape)


def _to_words(dtype: str, x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    if dtype == "bfloat16":
        u = x.astype(np.float32).view(np.uint32)
        return ((u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))) >> 16).astype(
            np.uint16
        )
    return x.astype(dtype).view(DTYPES[dtype].word)


def _encode(
    tensors: dict[str, RawTensor], params: dict[str, Any] | None = None
) -> tuple[dict[str, Any], dict[str, tuple[dict[str, Any], list[bytes]]]]:
    params = {**ALL_PLANES, **(params or {})}
    pl = gp.plan(params, [gp.analyse(k, t, params) for k, t in tensors.items()])
    out = {}
    for k, t in tensors.items():
        tp, pieces = gp.encode_tensor(t, pl.tensors[k], pl.params, k)
        out[k] = (tp, [bytes(p) for p in pieces])
    return pl.params, out


def _decode_all(
    params: dict[str, Any], t: RawTensor, tp: dict[str, Any], pieces: Sequence[bytes]
) -> list[np.ndarray[Any, Any]]:
    """Every level, incrementally; each checked against decoding from scratch."""
    out: list[np.ndarray[Any, Any]] = []
    prior = None
    for n in range(len(pieces)):
        mvs = [memoryview(p) for p in pieces[: n + 1]]
        a = gp.decode_tensor(params, t.dtype, t.array.shape, tp, mvs, prior, "w")
        b = gp.decode_tensor(params, t.dtype, t.array.shape, tp, mvs, None, "w")
        assert a.dtype == t.array.dtype and a.shape == t.array.shape
        assert np.array_equal(_raw(a), _raw(b)), f"level {n}"
        out.append(a)
        prior = a
    return out


def _raw(a: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    return np.ascontiguousarray(a).reshape(-1).view(np.uint8)


def _f64(dtype: str, a: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    with np.errstate(invalid="ignore"):  # signalling NaNs warn when widened
        if dtype == "bfloat16":
            return (a.astype(np.uint32) << np.uint32(16)).view(np.float32).astype(np.float64)
        return a.astype(np.float64)


shapes = st.sampled_from(
    [(0,), (), (1,), (5,), (3, 0), (7, 3), (2, 9), (4, 1, 3, 3), (70,), (3, 130), (1, 64), (33, 65)]
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    dtype=st.sampled_from(FLOATS),
    shape=shapes,
    seed=st.integers(0, 2**31),
    kind=st.sampled_from(["normal", "special", "bits", "const", "zeros"]),
    group=st.sampled_from([1, 4, 16, 64]),
)
def test_round_trip_is_bit_exact_at_the_last_level(
    dtype: str, shape: tuple[int, ...], seed: int, kind: str, group: int
) -> None:
    t = RawTensor(dtype, _values(dtype, shape, seed, kind))
    params, enc = _encode({"w": t}, {"group": group})
    tp, pieces = enc["w"]
    levels = _decode_all(params, t, tp, pieces)
    assert np.array_equal(_raw(levels[-1]), _raw(t.array))
    # No prefix turns a finite weight into NaN or Inf, nor an infinite one into NaN.
    x = _f64(dtype, t.array)
    for a in levels[:-1]:
        y = _f64(dtype, a)
        assert np.all(np.isfinite(y[np.isfinite(x)]))


@settings(max_examples=30, deadline=None)
@given(dtype=st.sampled_from(FLOATS), seed=st.integers(0, 2**31), group=st.sampled_from([8, 64]))
def test_error_shrinks_level_by_level(dtype: str, seed: int, group: int) -> None:
    """Each level's value lies in the interval the previous level left open, and that
    interval halves with each plane: the error bound never grows, the RMS error falls."""
    t = RawTensor(dtype, _values(dtype, (16, 256), seed, "normal"))
    params, enc = _encode({"w": t}, {"group": group})
    tp, pieces = enc["w"]
    levels = _decode_all(params, t, tp, pieces)
    x = _f64(dtype, t.array).reshape(-1)
    g = tp["group"]
    amax = np.abs(x.reshape(-1, g)).max(axis=1)
    geo = geometry(DTYPES[dtype], int(params["max_planes"]))
    e = np.frexp(amax)[1]  # 2**E > every |x| of the group (power-of-two scale)
    e = np.clip(np.where(amax > 0, e, geo.e_floor), geo.e_floor, geo.e_ceil)
    prev_rms = math.inf
    for n, a in enumerate(levels[:-1]):
        k = tp["planes"][n]
        err = np.abs(_f64(dtype, a).reshape(-1) - x).reshape(-1, g)
        bound = np.ldexp(1.0, e - k)[:, None]
        assert np.all(err <= bound), f"level {n}"
        rms = float(np.sqrt(np.mean(err**2)))
        assert rms <= prev_rms
        prev_rms = rms
    assert np.array_equal(levels[-1], t.array)


@pytest.mark.parametrize("dtype", FLOATS)
def test_plan_gives_a_ladder_without_empty_levels(dtype: str) -> None:
    rng = np.random.default_rng(1)
    tensors = {
        f"l{i}.weight": RawTensor(
            dtype,
            _to_words(dtype, rng.standard_normal(256 * 512) * 0.02)
            .view(DTYPES[dtype].storage)
            .reshape(256, 512),
        )
        for i in range(3)
    }
    tensors["l0.bias"] = RawTensor(
        dtype, _to_words(dtype, rng.standard_normal(256)).view(DTYPES[dtype].storage)
    )
    tensors["steps"] = RawTensor("int64", np.arange(3, dtype=np.int64))
    params = gp.default_params()
    pl = gp.plan(params, [gp.analyse(k, t, params) for k, t in tensors.items()])
    assert pl.tensors["l0.bias"] == {"whole": True} and pl.tensors["steps"] == {"whole": True}
    sizes = [0] * int(pl.params["levels"])  # type: ignore[arg-type]
    for k, t in tensors.items():
        tp, pieces = gp.encode_tensor(t, pl.tensors[k], pl.params, k)
        assert tp == pl.tensors[k]
        assert len(pieces) == len(sizes)
        for n, p in enumerate(pieces):
            sizes[n] += len(p)
    assert all(s > 0 for s in sizes), sizes
    numel = sum(t.array.size for t in tensors.values())
    bpw = np.cumsum(sizes) * 8 / numel
    assert bpw[0] <= 2.5, bpw
    assert len(sizes) >= 4
    # Manifest values: canonical msgpack, no floats.
    for value in (pl.params, *pl.tensors.values()):
        assert msgpack.unpackb(msgpack.packb(value), strict_map_key=True) == value
        assert "float" not in repr(_types(value))


def _types(v: Any) -> set[str]:
    if isinstance(v, dict):
        return set().union(*(_types(x) for x in v.values())) if v else set()
    if isinstance(v, list):
        return set().union(*(_types(x) for x in v)) if v else set()
    return {type(v).__name__}


def test_a_model_of_whole_tensors_has_one_level() -> None:
    tensors = {
        "a": RawTensor("int32", np.arange(10, dtype=np.int32)),
        "b": RawTensor("float32", np.ones(3, np.float32)),
    }
    params, enc = _encode(tensors, {"small_tensor_elements": 1024, "vector_elements": 1024})
    assert params["levels"] == 1
    for k, t in tensors.items():
        tp, pieces = enc[k]
        assert tp == {"whole": True} and len(pieces) == 1
        assert np.array_equal(_decode_all(params, t, tp, pieces)[-1], t.array)


# ---------------------------------------------------------------------------- malformed


def _sample() -> tuple[dict[str, Any], RawTensor, dict[str, Any], list[bytes]]:
    t = RawTensor("float32", _values("float32", (8, 100), 3, "special"))
    params, enc = _encode({"w": t})
    tp, pieces = enc["w"]
    return params, t, tp, pieces


SAMPLE = _sample()


def _try_decode(
    params: dict[str, Any], t: RawTensor, tp: dict[str, Any], pieces: Sequence[bytes]
) -> None:
    """Decode every prefix, incrementally; only FormatError may come out."""
    prior = None
    for n in range(len(pieces)):
        try:
            prior = gp.decode_tensor(params, t.dtype, t.array.shape, tp, pieces[: n + 1], prior)
        except FormatError:
            return
        assert prior.shape == t.array.shape and prior.dtype == t.array.dtype


@settings(max_examples=150, deadline=None)
@given(
    level=st.integers(0, 20),
    op=st.sampled_from(["truncate", "flip", "append", "header"]),
    pos=st.floats(0, 1),
    value=st.integers(0, 255),
)
def test_malformed_level_bytes_give_format_errors(
    level: int, op: str, pos: float, value: int
) -> None:
    params, t, tp, pieces = SAMPLE
    pieces = list(pieces)
    n = level % len(pieces)
    p = bytearray(pieces[n])
    i = int(pos * max(len(p) - 1, 0))
    if op == "truncate":
        p = p[:i]
    elif op == "flip" and p:
        p[i] ^= value or 1
    elif op == "append":
        p += bytes([value])
    elif op == "header":
        p[:4] = struct.pack("<I", 0xFFFFFFFF - value)
    pieces[n] = bytes(p)
    _try_decode(params, t, tp, pieces)


@pytest.mark.parametrize(
    "bad",
    [
        {"planes": [0, 1, 1, 1, 1, 1]},
        {"planes": [5, 4, 4, 4, 4, 4]},
        {"planes": [1, 2, 3, 4, 5, 99]},
        {"planes": [1, 2]},
        {"planes": "x"},
        {"group": 0},
        {"group": True},
        {"extra": 1},
    ],
)
def test_malformed_tensor_params_give_format_errors(bad: dict[str, Any]) -> None:
    params, t, tp, pieces = SAMPLE
    tp2 = {**tp, **bad}
    with pytest.raises(FormatError):
        gp.decode_tensor(params, t.dtype, t.array.shape, tp2, pieces[:1])


@pytest.mark.parametrize(
    "bad", [{"levels": 0}, {"levels": 99}, {"group": -1}, {"weighting": "x"}, {"nope": 1}]
)
def test_malformed_codec_params_give_format_errors(bad: dict[str, Any]) -> None:
    params, t, tp, pieces = SAMPLE
    with pytest.raises(FormatError):
        gp.decode_tensor({**params, **bad}, t.dtype, t.array.shape, tp, pieces[:1])


def test_too_many_pieces_or_a_huge_shape_give_format_errors() -> None:
    params, t, tp, pieces = SAMPLE
    with pytest.raises(FormatError):
        gp.decode_tensor(params, t.dtype, t.array.shape, tp, [*pieces, b""])
    with pytest.raises(FormatError):
        gp.decode_tensor(params, t.dtype, (1 << 40, 1 << 20), tp, pieces[:1])
    with pytest.raises(FormatError):
        gp.decode_tensor(params, "complex64", t.array.shape, tp, pieces[:1])


def test_varbits_round_trip_and_size_check() -> None:
    rng = np.random.default_rng(0)
    w = rng.integers(0, 57, 1000).astype(np.uint8)
    v = rng.integers(0, 1 << 62, 1000, dtype=np.uint64) & (
        (np.uint64(1) << w.astype(np.uint64)) - np.uint64(1)
    )
    data = varbits.pack(v, w)
    assert len(data) == varbits.packed_size(w)
    assert np.array_equal(varbits.unpack(data, w, "x"), v)
    with pytest.raises(FormatError):
        varbits.unpack(data[:-1], w, "x")


def test_codec_imports_no_torch_or_asyncio() -> None:
    code = (
        "import sys\n"
        "import peerprog.codec.groupplane\n"
        "bad = sorted(m for m in ('asyncio', 'aiohttp', 'torch') if m in sys.modules)\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "", f"peerprog.codec.groupplane imported: {out.stdout.strip()}"


def test_tensors_encode_at_once_in_threads() -> None:
    """Publish encodes tensors in a thread pool: the codec keeps no shared compressor (one
    such crashed the process) and each thread's streams decode to its tensor."""
    from concurrent.futures import ThreadPoolExecutor

    rng = np.random.default_rng(7)
    tensors = [
        {"w": RawTensor("float32", rng.standard_normal(30_000).astype(np.float32))}
        for _ in range(8)
    ]

    def round_trip(ts: dict[str, RawTensor]) -> bool:
        for _ in range(4):
            params, enc = _encode(ts)
            tp, pieces = enc["w"]
            if not np.array_equal(
                _raw(_decode_all(params, ts["w"], tp, pieces)[-1]), _raw(ts["w"].array)
            ):
                return False
        return True

    with ThreadPoolExecutor(4) as pool:
        assert all(pool.map(round_trip, tensors))
