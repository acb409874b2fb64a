"""groupplane's stream formats: streams of format 1 (written by peerprog before the codec
param ``format`` existed, kept in ``tests/data/groupplane_format1.msgpack``, made by
``tests/data/make_groupplane_format1.py`` at commit 5f0e2d3) still decode bit-exact and are
still written the same for params without the key; format 2 is the default, and its
remainder's parts are checked."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgpack
import numpy as np
import pytest
import zstandard

from peerprog.codec import groupplane as gp
from peerprog.codec import zstd
from peerprog.codec.base import RawTensor
from peerprog.codec.groupplane import params as gp_params
from peerprog.codec.groupplane.selection import backends, kernels_named
from peerprog.errors import FormatError
from tests.codectools import join_parts, split_parts

GOLDEN = Path(__file__).parent.parent / "data" / "groupplane_format1.msgpack"


def _golden() -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = msgpack.unpackb(GOLDEN.read_bytes())
    return out


@pytest.mark.parametrize("backend", backends())
def test_format_1_streams_still_decode_bit_exact(backend: str) -> None:
    k = kernels_named(backend)
    for key, case in _golden().items():
        dt = key.split("/")[0]
        assert "format" not in case["params"]
        assert gp_params.settings(case["params"]).layout == 1
        pieces = case["pieces"]
        prior = None
        for n in range(len(pieces)):
            prior = gp.decode_tensor(
                case["params"], dt, case["shape"], case["tensor_params"], pieces[: n + 1],
                prior, key, k,
            )  # fmt: skip
        assert prior is not None and prior.tobytes() == case["words"], key
        whole = gp.decode_tensor(
            case["params"], dt, case["shape"], case["tensor_params"], pieces, None, key, k
        )
        assert whole.tobytes() == case["words"], key


@pytest.mark.parametrize("backend", backends())
def test_params_without_format_still_write_format_1(backend: str) -> None:
    for key, case in _golden().items():
        dt = key.split("/")[0]
        storage = np.uint16 if dt == "bfloat16" else np.dtype(dt)
        arr = np.frombuffer(case["words"], storage).reshape(case["shape"])
        _, pieces = gp.encode_tensor(
            RawTensor(dt, arr), case["tensor_params"], case["params"], key, kernels_named(backend)
        )
        assert [bytes(p) for p in pieces] == case["pieces"], key


def test_format_2_is_the_default_and_bad_formats_are_refused() -> None:
    assert gp.GroupplaneCodec().check_params(None)["format"] == 2
    for bad in (0, 3, "2", True, None):
        with pytest.raises(FormatError, match="'format'"):
            gp_params.settings({"format": bad})


def _encode(
    dt: str, arr: np.ndarray[Any, Any]
) -> tuple[dict[str, Any], dict[str, Any], list[bytes]]:
    params = gp.GroupplaneCodec().check_params({"small_tensor_elements": 0, "vector_elements": 0})
    planner = gp.GroupplanePlanner(params, None)
    planner.add("w", RawTensor(dt, arr))
    merged, plans = planner.finish()
    tp, pieces = gp.encode_tensor(RawTensor(dt, arr), plans["w"], merged, "w")
    return merged, tp, [bytes(p) for p in pieces]


def _content(frame: bytes) -> np.ndarray[Any, Any]:
    size: int = zstandard.frame_content_size(frame)
    return zstd.decompress_exact(frame, size, "test")


@pytest.mark.parametrize("backend", backends())
def test_format_2_remainder_parts_are_checked(backend: str) -> None:
    """float32's remainder: four byte planes, the low bytes, the low bits; a wrong count of
    low bytes, planes of different lengths, or a missing part is a FormatError."""
    rng = np.random.default_rng(3)
    x = (rng.standard_normal((64, 300)) * 0.05).astype(np.float32)
    x[0, :4] = [0.0, 1e-30, -1e-32, np.nan]  # words that come whole
    params, tp, pieces = _encode("float32", x)
    k = kernels_named(backend)
    parts = split_parts(pieces[-1])
    assert len(parts) == 6
    low_bytes = _content(parts[4])
    assert low_bytes.size > x.size // 2  # most float32 fields are wider than 8 bits
    ok = gp.decode_tensor(params, "float32", x.shape, tp, pieces, None, "w", k)
    assert ok.tobytes() == x.tobytes()
    fewer = zstd.compress(low_bytes[:-1].tobytes())
    more = zstd.compress(low_bytes.tobytes() + b"\0")
    short_plane = zstd.compress(_content(parts[0])[:-1].tobytes())
    for bad in (
        [*parts[:4], fewer, parts[5]],
        [*parts[:4], more, parts[5]],
        [short_plane, *parts[1:]],
        parts[:5],
    ):
        with pytest.raises(FormatError):
            gp.decode_tensor(
                params, "float32", x.shape, tp, [*pieces[:-1], join_parts(bad)], None, "w", k
            )


@pytest.mark.parametrize("dt", ["float32", "bfloat16", "float16"])
def test_format_2_is_smaller_than_format_1_on_a_gaussian_tensor(dt: str) -> None:
    """The layout only regroups the same bits into better-modelled frames: never larger on a
    plain tensor."""
    rng = np.random.default_rng(4)
    x = (rng.standard_normal((256, 512)) * 0.02).astype(np.float32)
    arr = (x.view(np.uint32) >> 16).astype(np.uint16) if dt == "bfloat16" else x.astype(dt)
    t = RawTensor(dt, arr)
    sizes = {}
    for layout in (1, 2):
        params = gp.GroupplaneCodec().check_params({"format": layout})
        planner = gp.GroupplanePlanner(params, None)
        planner.add("w", t)
        merged, plans = planner.finish()
        if layout == 1:
            merged = {k: v for k, v in merged.items() if k != "format"}
        _, pieces = gp.encode_tensor(t, plans["w"], merged, "w")
        sizes[layout] = sum(len(p) for p in pieces)
    assert sizes[2] <= sizes[1] * 1.001, sizes
