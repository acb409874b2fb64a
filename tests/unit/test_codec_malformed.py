"""Untrusted layouts and level data: every defect is a FormatError naming what is wrong."""

from __future__ import annotations

import contextlib
import dataclasses
import subprocess
import sys
from typing import Any

import numpy as np
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st

from peerprog.codec import CODECS, DTYPES, RawTensor, Segment, TensorLayout
from peerprog.codec.base import Codec, Encoded
from peerprog.errors import FormatError
from tests.unit.test_codec_support import make_array

NAMES = sorted(CODECS)

BITPLANE_LEVELS = len(CODECS["bitplane"].default_params()["mantissa_bits"])  # type: ignore[arg-type]


def _model() -> dict[str, RawTensor]:
    return {
        "w": RawTensor("float32", make_array(DTYPES["float32"], (40, 50), 1, "special")),
        "h": RawTensor("float64", make_array(DTYPES["float64"], (1500,), 2, "normal")),
        "b": RawTensor("float16", make_array(DTYPES["float16"], (30,), 3, "normal")),
        "n": RawTensor("int64", np.arange(6, dtype="<i8")),
        "m": RawTensor("bool", np.array([True, False])),
    }


def _encode(name: str) -> tuple[Codec, Encoded]:
    codec = CODECS[name]
    return codec, codec.encode(_model())


def _replace_layout(enc: Encoded, i: int, **changes: Any) -> tuple[TensorLayout, ...]:
    layouts = list(enc.tensors)
    layouts[i] = dataclasses.replace(layouts[i], **changes)
    return tuple(layouts)


def _decode_all(codec: Codec, params: Any, layouts: Any, levels: Any) -> None:
    dec = codec.decoder(params, layouts)
    for lvl, data in enumerate(levels):
        dec.add_level(lvl, data)
    dec.tensors()


@pytest.mark.parametrize("name", NAMES)
def test_truncated_or_padded_level(name: str) -> None:
    codec, enc = _encode(name)
    for lvl in range(len(enc.levels)):
        for bad in (enc.levels[lvl][:-1], enc.levels[lvl] + b"\0", b""):
            levels = list(enc.levels)
            levels[lvl] = bad
            with pytest.raises(FormatError, match=f"level {lvl}"):
                _decode_all(codec, enc.params, enc.tensors, levels)


@pytest.mark.parametrize("name", NAMES)
def test_segment_out_of_range(name: str) -> None:
    codec, enc = _encode(name)
    segs = list(enc.tensors[0].segments)
    segs[1] = Segment(segs[1].offset, segs[1].length + 10**9)
    with pytest.raises(FormatError, match="'h' level 1: segment"):  # the next one is off
        codec.decoder(enc.params, _replace_layout(enc, 0, segments=tuple(segs)))
    last = len(enc.tensors) - 1
    segs = list(enc.tensors[last].segments)
    segs[0] = Segment(segs[0].offset, segs[0].length + 10**9)
    with pytest.raises(FormatError, match=r"level 0: .* bytes, the layouts describe"):
        _decode_all(codec, enc.params, _replace_layout(enc, last, segments=tuple(segs)), enc.levels)
    segs = list(enc.tensors[1].segments)
    segs[0] = Segment(segs[0].offset + 1, segs[0].length)
    with pytest.raises(FormatError, match="'h' level 0"):
        codec.decoder(enc.params, _replace_layout(enc, 1, segments=tuple(segs)))
    segs[0] = Segment(-1, 5)
    with pytest.raises(FormatError):
        codec.decoder(enc.params, _replace_layout(enc, 1, segments=tuple(segs)))


@pytest.mark.parametrize("name", NAMES)
def test_consistently_moved_segment_is_caught_by_its_size(name: str) -> None:
    """Segments that still tile the level but give a tensor too few bytes."""
    codec, enc = _encode(name)
    layouts = list(enc.tensors)
    a, b = layouts[0].segments[1], layouts[1].segments[1]
    segs_a = list(layouts[0].segments)
    segs_b = list(layouts[1].segments)
    segs_a[1] = Segment(a.offset, a.length - 1)
    segs_b[1] = Segment(b.offset - 1, b.length + 1)
    layouts[0] = dataclasses.replace(layouts[0], segments=tuple(segs_a))
    layouts[1] = dataclasses.replace(layouts[1], segments=tuple(segs_b))
    with pytest.raises(FormatError, match="'w' level 1"):
        _decode_all(codec, enc.params, layouts, enc.levels)


@pytest.mark.parametrize("name", NAMES)
def test_wrong_order(name: str) -> None:
    codec, enc = _encode(name)
    dec = codec.decoder(enc.params, enc.tensors)
    with pytest.raises(FormatError, match="out of order"):
        dec.add_level(1, enc.levels[1])
    dec.add_level(0, enc.levels[0])
    with pytest.raises(FormatError, match="out of order"):
        dec.add_level(0, enc.levels[0])
    for lvl in range(1, len(enc.levels)):
        dec.add_level(lvl, enc.levels[lvl])
    with pytest.raises(FormatError):
        dec.add_level(len(enc.levels), b"")


def test_garbage_zstd() -> None:
    codec = CODECS["bitplane"]
    enc = codec.encode(_model())
    w, n = enc.tensors[0], enc.tensors[3]
    exp_len = w.params["exp_len"]
    assert isinstance(exp_len, int)
    level0 = bytearray(enc.levels[0])
    level0[w.segments[0].offset + 20 : w.segments[0].offset + 30] = b"\xff" * 10
    with pytest.raises(FormatError, match="'w' level 0"):
        _decode_all(codec, enc.params, enc.tensors, [bytes(level0), *enc.levels[1:]])
    level0 = bytearray(enc.levels[0])
    level0[n.segments[0].offset : n.segments[0].offset + 4] = b"junk"
    with pytest.raises(FormatError, match="'n' level 0"):
        _decode_all(codec, enc.params, enc.tensors, [bytes(level0), *enc.levels[1:]])


@pytest.mark.parametrize("name", NAMES)
def test_bomb_frame_is_refused_before_allocating(name: str) -> None:
    """A whole tensor whose frame declares (and holds) far more than its shape."""
    codec = CODECS[name]
    enc = codec.encode({"n": RawTensor("int64", np.arange(4, dtype="<i8"))})
    (layout,) = enc.tensors
    bomb = zstandard.ZstdCompressor().compress(b"\0" * 10_000_000)
    segs = (Segment(0, len(bomb)), *(Segment(0, 0) for _ in layout.segments[1:]))
    dec = codec.decoder(enc.params, [dataclasses.replace(layout, segments=segs)])
    with pytest.raises(FormatError, match="declares 10000000 bytes, expected 32"):
        dec.add_level(0, bomb)
    # No content size in the header at all.
    cobj = zstandard.ZstdCompressor(write_content_size=False).compressobj()
    stream = cobj.compress(b"\0" * 32) + cobj.flush()
    segs = (Segment(0, len(stream)), *(Segment(0, 0) for _ in layout.segments[1:]))
    dec = codec.decoder(enc.params, [dataclasses.replace(layout, segments=segs)])
    with pytest.raises(FormatError):
        dec.add_level(0, stream)


def test_frame_followed_by_junk() -> None:
    codec = CODECS["bitplane"]
    frame = zstandard.ZstdCompressor().compress(np.arange(4, dtype="<i8").tobytes()) + b"x"
    layout = TensorLayout(
        "n", "int64", (4,), (Segment(0, len(frame)),) + (Segment(0, 0),) * (BITPLANE_LEVELS - 1)
    )
    with pytest.raises(FormatError, match="junk"):
        codec.decoder(codec.default_params(), [layout]).add_level(0, frame)


def test_bad_bitplane_params() -> None:
    codec = CODECS["bitplane"]
    enc = codec.encode(_model())
    w = enc.tensors[0]
    for params in (
        {},
        {"exp_len": True},
        {"exp_len": -1},
        {"exp_len": 10**9},
        {"exp_len": 3, "x": 1},
    ):
        layouts = _replace_layout(enc, 0, params=params)
        with pytest.raises(FormatError, match="'w' level 0"):
            codec.decoder(enc.params, layouts).add_level(0, enc.levels[0])
    assert w.params  # the original is fine
    # Whole tensors carry no params and nothing beyond level 0.
    with pytest.raises(FormatError, match="'n'"):
        codec.decoder(enc.params, _replace_layout(enc, 3, params={"exp_len": 0}))


def test_bad_paper_params() -> None:
    codec = CODECS["paper"]
    enc = codec.encode(_model())
    nan = int(np.float64(np.nan).view(np.uint64))
    one = int(np.float64(1.0).view(np.uint64))
    zero = int(np.float64(0.0).view(np.uint64))
    for params in (
        {},
        {"min_bits": one, "max_bits": zero},
        {"min_bits": nan, "max_bits": one},
        {"min_bits": -1, "max_bits": one},
        {"min_bits": 1 << 64, "max_bits": one},
        {"min_bits": "0", "max_bits": one},
    ):
        with pytest.raises(FormatError, match="'w' level 0"):
            codec.decoder(enc.params, _replace_layout(enc, 0, params=params)).add_level(
                0, enc.levels[0]
            )


@pytest.mark.parametrize("name", NAMES)
def test_bad_layouts(name: str) -> None:
    codec, enc = _encode(name)
    bad: list[tuple[TensorLayout, ...]] = [
        _replace_layout(enc, 0, dtype="complex64"),
        _replace_layout(enc, 0, shape=(40, -50)),
        _replace_layout(enc, 0, shape=(2**40, 2**40)),
        _replace_layout(enc, 0, shape=[40, 50]),
        _replace_layout(enc, 0, segments=enc.tensors[0].segments[:-1]),
        _replace_layout(enc, 1, name="w"),
        _replace_layout(enc, 0, params="x"),
    ]
    for layouts in bad:
        with pytest.raises(FormatError):
            codec.decoder(enc.params, layouts)


@pytest.mark.parametrize("name", NAMES)
def test_bad_codec_params(name: str) -> None:
    codec, enc = _encode(name)
    key = "mantissa_bits" if name == "bitplane" else "code_bits"
    value: Any
    for value in (
        None,
        True,
        -1,
        "3",
        [1.5] if name == "bitplane" else 99,
        [] if name == "bitplane" else 0,
    ):
        with pytest.raises(FormatError):
            codec.decoder({**enc.params, key: value}, enc.tensors)
        with pytest.raises(FormatError):
            codec.encode(_model(), {key: value})
    with pytest.raises(FormatError, match="unknown"):
        codec.decoder({**enc.params, "extra": 1}, enc.tensors)
    with pytest.raises(FormatError, match="unknown"):
        codec.encode(_model(), {"extra": 1})


def test_bool_bytes_must_be_0_or_1() -> None:
    codec = CODECS["bitplane"]
    frame = zstandard.ZstdCompressor().compress(b"\x00\x01\x02")
    layout = TensorLayout(
        "m", "bool", (3,), (Segment(0, len(frame)),) + (Segment(0, 0),) * (BITPLANE_LEVELS - 1)
    )
    with pytest.raises(FormatError, match="bool"):
        codec.decoder(codec.default_params(), [layout]).add_level(0, frame)


def test_exponent_planes_must_fit_the_field() -> None:
    """float16 has a 5-bit exponent: a byte plane value of 32 or more is malformed."""
    codec = CODECS["bitplane"]
    n = 16
    frame = zstandard.ZstdCompressor().compress(bytes([40] * n))
    level0 = frame + bytes(n * 4 // 8)
    layout = TensorLayout(
        "f",
        "float16",
        (n,),
        (Segment(0, len(level0)), Segment(0, 2 * n // 8 * 2), Segment(0, 6), Segment(0, 0)),
        {"exp_len": len(frame)},
    )
    dec = codec.decoder({"mantissa_bits": [3, 4, 8, 8], "small_tensor_elements": 0}, [layout])
    with pytest.raises(FormatError, match="exponent"):
        dec.add_level(0, level0)


@pytest.mark.parametrize("name", NAMES)
def test_encode_validates_inputs(name: str) -> None:
    codec = CODECS[name]
    x = np.zeros(2000, np.float32)
    bad = [
        {"x": RawTensor("float128", x)},
        {"x": RawTensor("float32", x.astype(np.float64))},
        {"x": RawTensor("float32", x.astype(">f4"))},
        {"x": RawTensor("bfloat16", x)},
        {"x": RawTensor("int32", x)},
    ]
    for model in bad:
        with pytest.raises(FormatError, match=r"'x'|float128"):
            codec.encode(model)


@pytest.mark.parametrize("name", NAMES)
def test_failed_level_leaves_decoder_unchanged(name: str) -> None:
    codec, enc = _encode(name)
    dec = codec.decoder(enc.params, enc.tensors)
    for lvl, data in enumerate(enc.levels):
        corrupt = bytearray(data)
        corrupt[-1] ^= 0xFF
        if lvl == 0:
            with pytest.raises(FormatError):
                dec.add_level(0, data[:-1])
        else:
            dec.add_level(lvl, bytes(corrupt))  # raw bits: undetectable, so accepted...
            dec = codec.decoder(enc.params, enc.tensors)  # ...start over
            for k in range(lvl):
                dec.add_level(k, enc.levels[k])
            with pytest.raises(FormatError):
                dec.add_level(lvl, data + b"\0")
        assert dec.levels_done == lvl
        dec.add_level(lvl, data)
    out = dec.tensors()
    ref = codec.decoder(enc.params, enc.tensors)
    for lvl, data in enumerate(enc.levels):
        ref.add_level(lvl, data)
    assert all(out[k].array.tobytes() == v.array.tobytes() for k, v in ref.tensors().items())


@settings(max_examples=150, deadline=None)
@given(
    name=st.sampled_from(NAMES),
    level=st.integers(0, 7),
    edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=8),
    cut=st.integers(0, 64),
)
def test_fuzzed_levels_raise_only_format_errors(
    name: str, level: int, edits: list[tuple[int, int]], cut: int
) -> None:
    codec, enc = _fuzz_encoded(name)
    level %= len(enc.levels)
    data = bytearray(enc.levels[level])
    for pos, val in edits:
        data[pos % len(data)] = val
    if cut:
        del data[-cut:]
    levels = list(enc.levels)
    levels[level] = bytes(data)
    with contextlib.suppress(FormatError):
        _decode_all(codec, enc.params, enc.tensors, levels)


_FUZZ: dict[str, tuple[Codec, Encoded]] = {}


def _fuzz_encoded(name: str) -> tuple[Codec, Encoded]:
    if name not in _FUZZ:
        _FUZZ[name] = _encode(name)
    return _FUZZ[name]


def test_codec_imports_no_torch_or_io() -> None:
    code = (
        "import peerprog.codec, peerprog.codec.quality, sys; "
        "assert not any(m in sys.modules for m in ('torch', 'asyncio', 'aiohttp'))"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
