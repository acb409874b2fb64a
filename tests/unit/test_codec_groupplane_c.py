"""groupplane's C kernels against the numpy reference: byte-identical encodings, identical
decodes (incremental and from scratch, each backend from the other's priors), on fp32,
bf16 and fp16 with special values, odd shapes, any plane schedule and group size; and on
corrupted streams both backends agree — FormatError from both, or the same array (the C
decoder must never crash or write out of bounds: these bytes come from the network). The C
kernels run both with their SIMD paths and with the portable ones."""

from __future__ import annotations

import math
import struct
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import pytest
import zstandard
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peerprog.codec import groupplane as gp
from peerprog.codec import zstd
from peerprog.codec.base import RawTensor
from peerprog.codec.dtypes import DTYPES
from peerprog.codec.groupplane import c_kernels
from peerprog.codec.groupplane.kernels import Kernels
from peerprog.codec.groupplane.selection import kernels_named
from peerprog.errors import FormatError
from tests.codectools import join_parts, split_parts

pytestmark = pytest.mark.skipif("c" not in gp.backends(), reason="C extension not built")

FLOATS = ("float32", "bfloat16", "float16")
SPECIAL = {
    "float32": [0x7FC00000, 0x7F800000, 0xFF800000, 0x80000000, 0x00000001, 0x807FFFFF,
                0x7F7FFFFF, 0xFFC00001, 0x7F800001, 0x00800000],
    "bfloat16": [0x7FC0, 0x7F80, 0xFF80, 0x8000, 0x0001, 0x807F, 0x7F7F, 0xFFC1, 0x0080],
    "float16": [0x7E00, 0x7C00, 0xFC00, 0x8000, 0x0001, 0x83FF, 0x7BFF, 0xFE01, 0x0400],
}  # fmt: skip
ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"
KINDS = ["normal", "special", "bits", "const", "zeros", "tiny", "groups"]


class simd:
    """Run a block with the C kernels' SIMD paths on or off (off: the portable kernels of
    CPUs without SSSE3 / AVX2 and of other architectures)."""

    def __init__(self, enable: bool) -> None:
        self.enable = enable

    def __enter__(self) -> None:
        ext = c_kernels.ext
        assert ext is not None
        self.prev = ext.simd()
        ext.simd(self.enable)

    def __exit__(self, *exc: object) -> None:
        ext = c_kernels.ext
        assert ext is not None
        ext.simd(self.prev)


class use:
    """Run a block with one backend, then restore the previous one."""

    def __init__(self, name: str) -> None:
        self.name = name

    def __enter__(self) -> None:
        self.prev = gp.backend()
        gp.set_backend(self.name)

    def __exit__(self, *exc: object) -> None:
        gp.set_backend(self.prev)


def _values(dtype: str, n: int, seed: int, kind: str) -> np.ndarray[Any, Any]:
    """``n`` words of ``dtype``: normal, special values sprinkled in, any bit pattern,
    constant, zeros, tiny (subnormal range), or groups of wildly different scales."""
    rng = np.random.default_rng(seed)
    d = DTYPES[dtype]
    word = d.word
    bits = 8 * word.itemsize
    if kind == "bits":
        return rng.integers(0, 1 << bits, n, dtype=np.uint64).astype(word)
    if kind == "zeros":
        return np.zeros(n, word)
    if kind == "const":
        return np.full(n, _words(dtype, np.array([0.375]))[0], word)
    if kind == "tiny":  # magnitudes around the smallest subnormals and normals
        w = rng.integers(0, 1 << (d.mantissa_bits + 2), n, dtype=np.uint64).astype(word)
        return w | (rng.integers(0, 2, n).astype(word) << word.type(bits - 1))
    x = rng.standard_normal(n) * 0.01
    if kind == "groups":  # per 16 weights a scale from 2**-140 to 2**120
        x = x * np.exp2(np.repeat(rng.integers(-140, 120, -(-n // 16)), 16)[:n])
    w = _words(dtype, x)
    if kind in ("special", "groups") and n:
        sp = np.array(SPECIAL[dtype], word)
        pos = rng.integers(0, n, min(n, 2 * len(sp)))
        w[pos] = sp[np.arange(pos.size) % sp.size]
    return w


def _words(dtype: str, x: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    with np.errstate(over="ignore"):
        if dtype == "bfloat16":
            u = x.astype(np.float32).view(np.uint32)
            r = u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))
            return (r >> np.uint32(16)).astype(np.uint16)
        return x.astype(dtype).view(DTYPES[dtype].word)


def _tensor(dtype: str, shape: tuple[int, ...], seed: int, kind: str) -> RawTensor:
    w = _values(dtype, math.prod(shape), seed, kind)
    return RawTensor(dtype, w.view(DTYPES[dtype].storage).reshape(shape))


def _setup(
    dtype: str,
    shape: tuple[int, ...],
    group: int,
    ladder: list[int],
    max_planes: int,
    layout: int = 2,
) -> tuple[dict[str, Any], dict[str, Any]]:
    """Codec params and tensor params for an explicit plane ladder (clamped to the dtype), in
    stream format ``layout`` (format 1: params without the key, as manifests before it)."""
    kmax = min(max_planes, DTYPES[dtype].mantissa_bits)
    planes = sorted(min(max(k, 1), kmax) for k in ladder)
    params = {
        "small_tensor_elements": 0,
        "vector_elements": 0,
        "max_planes": max_planes,
        "levels": len(planes) + 1,
        **({} if layout == 1 else {"format": layout}),
    }
    return params, {"group": group, "planes": planes}


def _raw(a: np.ndarray[Any, Any]) -> bytes:
    return np.ascontiguousarray(a).tobytes()


def _encode(backend: str, t: RawTensor, tp: dict[str, Any], params: dict[str, Any]) -> list[bytes]:
    tp2, pieces = gp.encode_tensor(t, tp, params, "w", kernels_named(backend))
    assert tp2 == tp
    return [bytes(p) for p in pieces]


def _decode(
    backend: str,
    params: dict[str, Any],
    t: RawTensor,
    tp: dict[str, Any],
    pieces: Sequence[bytes],
    prior: np.ndarray[Any, Any] | None,
    prior_level: int | None = None,
) -> np.ndarray[Any, Any]:
    k = kernels_named(backend)
    return gp.decode_tensor(
        params, t.dtype, t.array.shape, tp, pieces, prior, "w", k, prior_level=prior_level
    )


def _levels(
    backend: str, params: dict[str, Any], t: RawTensor, tp: dict[str, Any], pieces: list[bytes]
) -> Iterator[np.ndarray[Any, Any]]:
    prior = None
    for n in range(len(pieces)):
        prior = _decode(backend, params, t, tp, pieces[: n + 1], prior)
        yield prior


shapes = st.sampled_from(
    [(1,), (5,), (7, 3), (2, 9), (4, 1, 3, 3), (70,), (3, 130), (1, 64), (33, 65), (2, 1500),
     (5000,), (3, 4097)]
)  # fmt: skip
ladders = st.lists(st.integers(1, 23), min_size=1, max_size=7)
groups = st.sampled_from([1, 3, 8, 50, 64, 100, 1024, 1500, 5000])


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    dtype=st.sampled_from(FLOATS),
    shape=shapes,
    seed=st.integers(0, 2**31),
    kind=st.sampled_from(KINDS),
    group=groups,
    ladder=ladders,
    max_planes=st.sampled_from([1, 4, 7, 12, 23]),
    vector=st.booleans(),
    layout=st.sampled_from([1, 2]),
)
def test_c_and_numpy_give_identical_streams_and_decodes(
    dtype: str,
    shape: tuple[int, ...],
    seed: int,
    kind: str,
    group: int,
    ladder: list[int],
    max_planes: int,
    vector: bool,
    layout: int,
) -> None:
    with simd(vector):
        _check_identical(dtype, shape, seed, kind, group, ladder, max_planes, layout)


def _check_identical(
    dtype: str,
    shape: tuple[int, ...],
    seed: int,
    kind: str,
    group: int,
    ladder: list[int],
    max_planes: int,
    layout: int,
) -> None:
    t = _tensor(dtype, shape, seed, kind)
    params, tp = _setup(dtype, shape, group, ladder, max_planes, layout)
    c = _encode("c", t, tp, params)
    ref = _encode("numpy", t, tp, params)
    assert [len(p) for p in c] == [len(p) for p in ref]
    assert c == ref
    by_c = list(_levels("c", params, t, tp, ref))
    by_np = list(_levels("numpy", params, t, tp, c))
    for n, (a, b) in enumerate(zip(by_c, by_np, strict=True)):
        assert a.dtype == b.dtype == t.array.dtype and a.shape == b.shape == t.array.shape
        assert _raw(a) == _raw(b), f"level {n}"
        if n:  # each backend from the other's prior, and from scratch
            assert _raw(_decode("c", params, t, tp, ref[: n + 1], by_np[n - 1])) == _raw(a)
            assert _raw(_decode("numpy", params, t, tp, ref[: n + 1], by_c[n - 1])) == _raw(a)
            assert _raw(_decode("c", params, t, tp, ref[: n + 1], None)) == _raw(a)
        for m in range(n - 1):  # every level since an earlier one's prior, in one pass
            assert _raw(_decode("c", params, t, tp, ref[: n + 1], by_np[m], m)) == _raw(a)
            assert _raw(_decode("numpy", params, t, tp, ref[: n + 1], by_c[m], m)) == _raw(a)
    assert _raw(by_c[-1]) == _raw(t.array)


@pytest.mark.parametrize("vector", [True, False])
def test_the_planned_ladder_on_a_large_tensor_is_identical(vector: bool) -> None:
    """The default plan on a 256x4099 tensor per dtype (groups crossing rows, padding)."""
    with simd(vector):
        for dtype in FLOATS:
            _check_planned(dtype)


def _check_planned(dtype: str) -> None:
    t = _tensor(dtype, (256, 4099), 7, "special")
    params = {"small_tensor_elements": 0, "vector_elements": 0}
    pl = gp.plan(params, [gp.analyse("w", t, params)])
    tp = pl.tensors["w"]
    c = _encode("c", t, tp, pl.params)
    assert c == _encode("numpy", t, tp, pl.params)
    a = list(_levels("c", pl.params, t, tp, c))
    b = list(_levels("numpy", pl.params, t, tp, c))
    assert [_raw(x) for x in a] == [_raw(x) for x in b]
    assert _raw(a[-1]) == _raw(t.array)


# ---------------------------------------------------------------------------- malformed


def _mutate(data: bytes, op: str, pos: float, value: int) -> bytes:
    b = bytearray(data)
    i = int(pos * max(len(b) - 1, 0))
    if op == "flip" and b:
        b[i] ^= value or 1
    elif op == "truncate":
        del b[i:]
    elif op == "extend":
        b += bytes([value]) * (1 + value % 9)
    elif op == "drop" and b:
        del b[i]
    elif op == "set" and b:
        b[i:] = bytes([value]) * (len(b) - i)
    return bytes(b)


def _corrupt(piece: bytes, where: str, op: str, pos: float, value: int, part: int) -> bytes:
    """Corrupt a piece inside its framing: a part's zstd content (recompressed, so that the
    damage reaches the kernels), the raw bytes after the frame, or the framing itself."""
    parts = split_parts(piece)
    if where == "framing" or not parts:
        return _mutate(piece, op, pos, value)
    k = part % len(parts)
    p = parts[k]
    # a bare frame (scales; format 2's byte planes and low bytes), [u32][frame][rest] (plane
    # steps; format 1's remainder) or raw bytes (format 2's low bits)
    bare = p[:4] == ZSTD_MAGIC
    if bare:
        frame, rest = p, b""
    elif p[4:8] == ZSTD_MAGIC:
        (m,) = struct.unpack_from("<I", p)
        frame, rest = p[4 : 4 + m], p[4 + m :]
    else:
        parts[k] = _mutate(p, op, pos, value)
        return join_parts(parts)
    if where == "content" or bare:
        try:
            content = zstandard.ZstdDecompressor().decompress(frame)
        except zstandard.ZstdError:
            content = b""
        frame = zstd.compress(_mutate(content, op, pos, value), symbols=True)
    else:
        rest = _mutate(rest, op, pos, value)
    parts[k] = frame if bare else struct.pack("<I", len(frame)) + frame + rest
    return join_parts(parts)


def _outcome(
    backend: str,
    params: dict[str, Any],
    t: RawTensor,
    tp: dict[str, Any],
    pieces: list[bytes],
    n: int,
    prior: np.ndarray[Any, Any] | None,
) -> bytes | None:
    try:
        a = _decode(backend, params, t, tp, pieces[: n + 1], prior)
    except FormatError:
        return None
    assert a.shape == t.array.shape and a.dtype == t.array.dtype
    return _raw(a)


CASES: dict[str, tuple[dict[str, Any], RawTensor, dict[str, Any], list[bytes]]] = {}


def _case(
    dtype: str, group: int, layout: int = 2
) -> tuple[dict[str, Any], RawTensor, dict[str, Any], list[bytes]]:
    key = f"{dtype}/{group}/{layout}"
    if key not in CASES:
        t = _tensor(dtype, (6, 333), 5, "special")
        params, tp = _setup(dtype, t.array.shape, group, [3, 4, 4, 12, 23], 23, layout)
        CASES[key] = (params, t, tp, _encode("numpy", t, tp, params))
    return CASES[key]


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    dtype=st.sampled_from(FLOATS),
    group=st.sampled_from([9, 64, 1500]),
    level=st.integers(0, 9),
    where=st.sampled_from(["content", "rest", "framing"]),
    op=st.sampled_from(["flip", "truncate", "extend", "drop", "set"]),
    pos=st.floats(0, 1),
    value=st.integers(0, 255),
    part=st.integers(0, 5),
    vector=st.booleans(),
    layout=st.sampled_from([1, 2]),
)
def test_corrupt_levels_give_the_same_outcome_in_c_and_numpy(
    dtype: str,
    group: int,
    level: int,
    where: str,
    op: str,
    pos: float,
    value: int,
    part: int,
    vector: bool,
    layout: int,
) -> None:
    with simd(vector):
        _check_corrupt(dtype, group, level, where, op, pos, value, part, layout)


def _check_corrupt(
    dtype: str,
    group: int,
    level: int,
    where: str,
    op: str,
    pos: float,
    value: int,
    part: int,
    layout: int,
) -> None:
    params, t, tp, pieces = _case(dtype, group, layout)
    n = level % len(pieces)
    bad = list(pieces)
    bad[n] = _corrupt(pieces[n], where, op, pos, value, part)
    good = list(_levels("numpy", params, t, tp, pieces))
    prior = good[n - 1] if n else None
    got_c = _outcome("c", params, t, tp, bad, n, prior)
    got_np = _outcome("numpy", params, t, tp, bad, n, prior)
    assert got_c == got_np
    if n:  # from scratch too (level 0's damage reaches every later level)
        assert _outcome("c", params, t, tp, bad, n, None) == _outcome(
            "numpy", params, t, tp, bad, n, None
        )


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    dtype=st.sampled_from(FLOATS),
    group=st.sampled_from([9, 64, 1500]),
    m=st.integers(0, 8),
    n=st.integers(1, 9),
    edit=st.sampled_from(["bits", "-0", "nan", "inf", "double", "halve", "plus1", "level"]),
    where=st.lists(st.floats(0, 1), min_size=1, max_size=4),
    value=st.integers(0, 2**32 - 1),
    vector=st.booleans(),
)
def test_priors_that_are_not_midpoints_give_the_same_outcome_in_c_and_numpy(
    dtype: str,
    group: int,
    m: int,
    n: int,
    edit: str,
    where: list[float],
    value: int,
    vector: bool,
) -> None:
    """A prior is a decoded file on disk: one that is not this codec's value at its level
    (edited, or of another level) must give FormatError from both backends, or the same
    array (a ±0 where a midpoint was, say)."""
    params, t, tp, pieces = _case(dtype, group)
    good = list(_levels("numpy", params, t, tp, pieces))
    n = 1 + n % (len(pieces) - 1)
    m = m % n
    prior = good[m].copy().reshape(-1)
    words = prior.view(DTYPES[dtype].word)
    bits = 8 * words.itemsize
    for w in where:
        i = int(w * (words.size - 1))
        x = int(words[i])
        x = {
            "bits": value & ((1 << bits) - 1),
            "-0": 1 << (bits - 1),
            "nan": int(np.array(SPECIAL[dtype][0]).astype(np.uint64)),
            "inf": int(np.array(SPECIAL[dtype][1]).astype(np.uint64)),
            "double": x + (1 << DTYPES[dtype].mantissa_bits),  # twice the value
            "halve": max(x - (1 << DTYPES[dtype].mantissa_bits), 0),
            "plus1": x + 1,
            "level": int(good[n - 1 if m == 0 else m - 1].reshape(-1).view(words.dtype)[i]),
        }[edit] & ((1 << bits) - 1)
        words[i] = x
    prior = prior.reshape(t.array.shape)
    with simd(vector):
        outcomes = []
        for backend in ("c", "numpy"):
            try:
                a = _decode(backend, params, t, tp, pieces[: n + 1], prior, m)
                outcomes.append(_raw(a))
            except FormatError:
                outcomes.append(None)
    assert outcomes[0] == outcomes[1]


@pytest.mark.parametrize("layout", [1, 2])
def test_huge_declared_frames_are_refused_before_allocating(layout: int) -> None:
    params, t, tp, pieces = _case("float32", 64, layout)
    bomb = zstandard.ZstdCompressor().compress(b"\0" * (1 << 24))  # declares 16 MiB
    last = len(pieces) - 1
    # a plane step's symbols; the remainder's byte planes (one frame, or the first of four)
    # and format 2's low bytes (the part before the low bits)
    for n, k in [(1, 0), (last, 0), *([(last, -2)] if layout == 2 else [])]:
        parts = split_parts(pieces[n])
        if parts[k][:4] == ZSTD_MAGIC:  # a bare frame
            parts[k] = bomb
        else:
            (m,) = struct.unpack_from("<I", parts[k])
            parts[k] = struct.pack("<I", len(bomb)) + bomb + parts[k][4 + m :]
        good = list(_levels("c", params, t, tp, pieces))
        with pytest.raises(FormatError, match="declares"):
            gp.decode_tensor(params, t.dtype, t.array.shape, tp, [*pieces[:n], join_parts(parts)],
                             good[n - 1], "w", kernels_named("c"))  # fmt: skip


class Counting:
    """Kernels that count their decode calls (one a pass over the tensor)."""

    def __init__(self, inner: Kernels) -> None:
        self.inner = inner
        self.name = inner.name
        self.encode = inner.encode
        self.passes = 0

    def decode(self, *args: Any) -> None:
        self.passes += 1
        self.inner.decode(*args)


@pytest.mark.parametrize("layout", [1, 2])
@pytest.mark.parametrize("backend", ["c", "numpy"])
def test_frames_declaring_more_than_the_tensor_are_decoded_level_by_level(
    backend: str, layout: int
) -> None:
    """From scratch, all levels' symbols are held at once only while their frames together
    declare at most the tensor's size; past that, level by level (one level's at a time)."""
    params, t, tp, pieces = _case("bfloat16", 64, layout)
    k = Counting(kernels_named(backend))
    total = -(-t.array.size // 64) * 64
    bad = list(pieces)
    parts = split_parts(bad[-1])  # the remainder's frames declare the whole tensor
    if layout == 1:
        (m,) = struct.unpack_from("<I", parts[0])
        frame = zstd.compress(b"\0" * total * 2, symbols=True)
        bad[-1] = join_parts([struct.pack("<I", len(frame)) + frame + parts[0][4 + m :]])
    else:  # two byte planes of the whole tensor's words
        plane = zstd.compress(b"\0" * total, symbols=True)
        bad[-1] = join_parts([plane, plane, *parts[2:]])
    n = len(pieces) - 1
    with pytest.raises(FormatError):
        gp.decode_tensor(params, t.dtype, t.array.shape, tp, bad, None, "w", k)
    # over the budget: level by level (those that refine the tensor), and the last one fails
    assert k.passes == sum(1 for p in pieces if p) and n + 1 > k.passes
    k.passes = 0
    out = gp.decode_tensor(params, t.dtype, t.array.shape, tp, pieces, None, "w", k)
    assert _raw(out) == _raw(t.array)
    assert k.passes == 1


def test_backend_selection() -> None:
    assert gp.backends()[0] == "c" and "numpy" in gp.backends()
    with use("numpy"):
        assert gp.backend() == "numpy"
    with pytest.raises(ValueError):
        gp.set_backend("fortran")
