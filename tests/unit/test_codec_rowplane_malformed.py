"""rowplane on untrusted params, layouts and level data: every defect is a FormatError
naming the tensor and level (the generic cases are in test_codec_malformed.py)."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from peerprog.codec import DTYPES, RawTensor, RowplaneCodec, Segment, TensorLayout
from peerprog.codec.base import Encoded
from peerprog.errors import FormatError
from tests.unit.test_codec_support import make_array

CODEC = RowplaneCodec()


def _one(words: np.ndarray[Any, Any], dtype: str = "float32", **params: Any) -> Encoded:
    """An encoding of one progressive tensor (so a level is that tensor's segment)."""
    x = RawTensor(dtype, words.view(DTYPES[dtype].storage))
    return CODEC.encode({"w": x}, {"small_tensor_elements": 0, **params})


def _normal() -> Encoded:
    return _one(make_array(DTYPES["float32"], (40, 50), 1, "normal").view("<u4"))


def _frames(enc: Encoded) -> list[int]:
    frames = enc.tensors[0].params["frame_bytes"]
    assert isinstance(frames, list) and all(isinstance(f, int) for f in frames)
    return [int(f) for f in frames]  # type: ignore[arg-type]


def _decode(enc: Encoded, levels: list[bytes] | None = None) -> None:
    dec = CODEC.decoder(enc.params, enc.tensors)
    for lvl, data in enumerate(levels if levels is not None else enc.levels):
        dec.add_level(lvl, data)
    dec.tensors()


def _with_frame(enc: Encoded, level: int, content: bytes) -> tuple[Encoded, list[bytes]]:
    """``enc`` with level ``level``'s zstd frame replaced by one holding ``content``."""
    t = enc.tensors[0]
    frames = _frames(enc)
    old = enc.levels[level]
    frame = zstandard.ZstdCompressor().compress(content)
    data = frame + old[frames[level] :]
    frames[level] = len(frame)
    segs = list(t.segments)
    segs[level] = Segment(0, len(data))
    layout = dataclasses.replace(t, segments=tuple(segs), params={"frame_bytes": [*frames]})
    levels = list(enc.levels)
    levels[level] = data
    return dataclasses.replace(enc, tensors=(layout,), levels=tuple(levels)), levels


def _frame_content(enc: Encoded, level: int) -> bytearray:
    n = _frames(enc)[level]
    return bytearray(zstandard.ZstdDecompressor().decompress(enc.levels[level][:n]))


@pytest.mark.parametrize(
    "params",
    [
        {"plan": [3, 1]},  # does not sum to magnitude_bits
        {"plan": []},
        {"plan": "3,13"},
        {"plan": [16, True]},
        {"plan": [17, -1]},
        {"plan": [1.5, 14.5]},
        {"plan": [1] * 32, "magnitude_bits": 32},
        {"magnitude_bits": 0, "plan": []},
        {"magnitude_bits": 25, "plan": [25]},
        {"magnitude_bits": "16"},
        {"row_octaves": -1},
        {"row_octaves": True},
        {"row_octaves": 10**6},
        {"small_tensor_elements": -5},
        {"extra": 1},
    ],
)
def test_bad_codec_params(params: dict[str, Any]) -> None:
    enc = _normal()
    with pytest.raises(FormatError):
        CODEC.encode({"w": RawTensor("float32", np.zeros(3000, np.float32))}, params)
    with pytest.raises(FormatError):
        CODEC.decoder({**enc.params, **params}, enc.tensors)


@pytest.mark.parametrize(
    "params",
    [
        {},
        {"frame_bytes": [1] * 7},
        {"frame_bytes": [1] * 9},
        {"frame_bytes": [-1] + [1] * 7},
        {"frame_bytes": [True] + [1] * 7},
        {"frame_bytes": "1" * 8},
        {"frame_bytes": [1] * 8, "exp_len": 3},
    ],
)
def test_bad_layout_params(params: dict[str, Any]) -> None:
    enc = _normal()
    layout = dataclasses.replace(enc.tensors[0], params=params)
    with pytest.raises(FormatError, match="'w'"):
        CODEC.decoder(enc.params, [layout])


@pytest.mark.parametrize("level", range(8))
def test_frame_longer_than_its_segment(level: int) -> None:
    enc = _normal()
    t = enc.tensors[0]
    frames = _frames(enc)
    frames[level] = t.segments[level].length + 1
    layout = dataclasses.replace(t, params={"frame_bytes": [*frames]})
    with pytest.raises(FormatError, match=f"'w' level {level}"):
        _decode(dataclasses.replace(enc, tensors=(layout,)))


@pytest.mark.parametrize("level", range(8))
def test_garbage_frames(level: int) -> None:
    enc = _normal()
    n = _frames(enc)[level]
    levels = list(enc.levels)
    data = bytearray(levels[level])
    data[4 : min(n, 14)] = b"\xff" * (min(n, 14) - 4)
    levels[level] = bytes(data)
    with pytest.raises(FormatError, match=f"'w' level {level}"):
        _decode(enc, levels)


def test_frame_of_the_wrong_size() -> None:
    enc = _normal()
    content = _frame_content(enc, 1)
    for bad in (content[:-1], content + b"\0"):
        enc2, levels = _with_frame(enc, 1, bytes(bad))
        with pytest.raises(FormatError, match="'w' level 1: zstd frame declares"):
            _decode(enc2, levels)


@pytest.mark.parametrize("exp", [-32768, -149, 129, 32767])
def test_row_exponent_out_of_range(exp: int) -> None:
    enc = _normal()
    content = _frame_content(enc, 0)
    content[0:2] = np.int16(exp).tobytes()
    enc2, levels = _with_frame(enc, 0, bytes(content))
    with pytest.raises(FormatError, match="'w' level 0: row exponent"):
        _decode(enc2, levels)


def test_significance_symbol_wider_than_its_planes() -> None:
    """Level 0 has 3 planes, packed as 4-bit symbols: a symbol of 8 or more is malformed."""
    enc = _normal()
    content = _frame_content(enc, 0)
    content[2 + 100] |= 0x80  # after the row exponent
    enc2, levels = _with_frame(enc, 0, bytes(content))
    with pytest.raises(FormatError, match="'w' level 0: significance symbol wider"):
        _decode(enc2, levels)


def test_more_significant_weights_than_signs() -> None:
    """A symbol turned non-zero means one more sign bit than the segment holds (or one
    byte more), or fewer refinement bits: the sizes no longer match."""
    enc = _normal()
    for level in (0, 1):
        content = _frame_content(enc, level)
        start = 2 if level == 0 else 0
        hits = 0
        for i in range(start, len(content)):
            if content[i] == 0:
                content[i] = 0x11 if level == 0 else 0xFF
                hits += 1
            if hits == 8:
                break
        enc2, levels = _with_frame(enc, level, bytes(content))
        with pytest.raises(FormatError, match=f"'w' level {level}: .* signs and refinement"):
            _decode(enc2, levels)


def test_residual_wider_than_a_subnormal() -> None:
    """Subnormal weights have narrower residuals, zero-padded: padding bits set are
    malformed."""
    rng = np.random.default_rng(3)
    words = rng.integers(1, 1 << 23, 3000).astype("<u4")  # float32 subnormals
    enc = _one(words)
    last = len(enc.levels) - 1
    n = _frames(enc)[last]
    levels = list(enc.levels)
    levels[last] = levels[last][:n] + b"\xff" * (len(levels[last]) - n)
    with pytest.raises(FormatError, match=f"'w' level {last}: residual wider"):
        _decode(enc, levels)
    _decode(enc)


def test_magnitude_bits_below_the_float_precision() -> None:
    """In a row of tiny subnormals the grid is finer than the float: the low magnitude
    bits must be 0 (a corrupt refinement sets them, caught at the residual level)."""
    rng = np.random.default_rng(4)
    words = rng.integers(1, 1 << 9, 3000).astype("<u4")
    enc = _one(words)
    levels = list(enc.levels)
    level = len(levels) - 2  # the last plane level: raw refinement bits at its end
    data = bytearray(levels[level])
    data[-100:] = b"\xff" * 100
    levels[level] = bytes(data)
    dec = CODEC.decoder(enc.params, enc.tensors)
    for lvl in range(level + 1):
        dec.add_level(lvl, levels[lvl])
    assert np.isfinite(dec.tensors()["w"].array).all()
    with pytest.raises(FormatError, match="below the float's precision"):
        dec.add_level(level + 1, levels[level + 1])
    assert dec.levels_done == level + 1


def test_whole_tensors_carry_no_params() -> None:
    model = {
        "w": RawTensor("float32", make_array(DTYPES["float32"], (40, 50), 1, "normal")),
        "n": RawTensor("int64", np.arange(6, dtype="<i8")),
    }
    enc = CODEC.encode(model)
    layouts = list(enc.tensors)
    layouts[1] = dataclasses.replace(layouts[1], params={"frame_bytes": [0] * 8})
    with pytest.raises(FormatError, match="'n'"):
        CODEC.decoder(enc.params, layouts)
    layout = TensorLayout("n", "int64", (6,), tuple(Segment(0, 0) for _ in range(8)))
    with pytest.raises(FormatError, match="'n' level 0"):
        CODEC.decoder(enc.params, [layout]).add_level(0, b"")


_FUZZ = {
    "f16 rows": _one(
        make_array(DTYPES["float16"], (30, 70), 5, "special").view("<u2"), "float16", row_octaves=6
    ),
    "f32 tiny": _one(np.random.default_rng(6).integers(0, 1 << 12, 2000).astype("<u4")),
    "bf16": _one(make_array(DTYPES["bfloat16"], (1500,), 7, "special").view("<u2"), "bfloat16"),
}


@settings(max_examples=100, deadline=None)
@given(
    name=st.sampled_from(sorted(_FUZZ)),
    level=st.integers(0, 7),
    edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=8),
    cut=st.integers(0, 3),
)
def test_fuzzed_levels_raise_only_format_errors(
    name: str, level: int, edits: list[tuple[int, int]], cut: int
) -> None:
    enc = _FUZZ[name]
    levels = list(enc.levels)
    data = bytearray(levels[level])
    if not data:
        return
    for pos, val in edits:
        data[pos % len(data)] = val
    if cut:
        del data[-cut:]
    levels[level] = bytes(data)
    with contextlib.suppress(FormatError):
        _decode(enc, levels)
