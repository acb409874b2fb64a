"""bitpack: k-bit fields packed most significant bit first, against a bit-string reference."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from peerprog.codec.bitpack import pack, pack_into, packed_size, uint_dtype, unpack, unpack_range
from peerprog.errors import FormatError
from tests.unit.test_codec_support import Array


def _bits(values: list[int], k: int) -> str:
    return "".join(format(v, f"0{k}b") for v in values)


def reference_pack(values: list[int], k: int) -> bytes:
    """The documented format: MSB-first fields; k = 8q + r > 8 (r > 0) as two pieces."""
    if k <= 8 or k % 8 == 0:
        s = _bits(values, k)
    else:
        q = 8 * (k // 8)
        hi = _bits([v >> q for v in values], k - q)
        hi += "0" * (-len(hi) % 8)
        s = hi + _bits([v & ((1 << q) - 1) for v in values], q)
    s += "0" * (-len(s) % 8)
    return bytes(int(s[i : i + 8], 2) for i in range(0, len(s), 8))


def _values(k: int, n: int, seed: int) -> Array:
    rng = np.random.default_rng(seed)
    v = rng.integers(0, 1 << 63, n, dtype=np.uint64) * np.uint64(2) + rng.integers(
        0, 2, n, np.uint64
    )
    if k < 64:
        v &= np.uint64((1 << k) - 1)
    out: Array = v.astype(uint_dtype(k))
    return out


@pytest.mark.parametrize("k", range(1, 65))
@pytest.mark.parametrize("n", [0, 1, 7, 8, 9, 23, 64, 101])
def test_pack_matches_reference_and_round_trips(k: int, n: int) -> None:
    v = _values(k, n, seed=k * 1000 + n)
    packed = pack(v, k)
    assert packed.dtype == np.uint8 and packed.size == packed_size(n, k) == (n * k + 7) // 8
    assert packed.tobytes() == reference_pack([int(x) for x in v], k)
    back = unpack(packed.tobytes(), n, k)
    assert back.dtype == uint_dtype(k)
    assert np.array_equal(back, v)


@settings(max_examples=150, deadline=None)
@given(k=st.integers(1, 64), n=st.integers(0, 300), seed=st.integers(0, 2**32 - 1))
def test_round_trip_any_k(k: int, n: int, seed: int) -> None:
    v = _values(k, n, seed)
    assert np.array_equal(unpack(memoryview(pack(v, k).tobytes()), n, k), v)


@settings(max_examples=100, deadline=None)
@given(
    k=st.integers(1, 64),
    n=st.integers(0, 200),
    block=st.sampled_from([8, 16, 24, 64]),
    seed=st.integers(0, 2**32 - 1),
)
def test_blocks_equal_whole(k: int, n: int, block: int, seed: int) -> None:
    v = _values(k, n, seed)
    out = np.zeros(packed_size(n, k), np.uint8)
    starts = list(range(0, n, block))
    for s in reversed(starts):  # any order: blocks do not share bytes
        pack_into(out, v[s : s + block], k, s, n)
    assert np.array_equal(out, pack(v, k))
    for s in starts:
        part = unpack_range(out, n, k, s, min(block, n - s))
        assert np.array_equal(part, v[s : s + block])


@pytest.mark.parametrize("k", [1, 2, 3, 8, 12, 16, 23, 37, 64])
def test_wrong_length_is_format_error(k: int) -> None:
    v = _values(k, 50, seed=1)
    data = pack(v, k).tobytes()
    for bad in (data[:-1], data + b"\0", b""):
        with pytest.raises(FormatError):
            unpack(bad, 50, k)


def test_output_dtype_can_be_chosen() -> None:
    v = _values(5, 40, seed=2)
    out = unpack(pack(v, 5), 40, 5, np.dtype("<u4"))
    assert out.dtype == np.dtype("<u4") and np.array_equal(out, v)
