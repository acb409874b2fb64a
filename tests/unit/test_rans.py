"""groupplane's rANS coder of the symbol bytes (peerprog/codec/groupplane/rans.py): the model,
round trips for every plane count, the lane boundaries and the edge cases, the same frames
and the same decodes (errors included, to the message) from the C extension and both numpy
strategies (numpy steps across the lanes, a Python loop per lane), and malformed frames:
FormatError, never a crash or a read past the frame (the C decoder is fed them too)."""

from __future__ import annotations

import os
import shutil
import struct
import sysconfig
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peerprog.codec import zstd
from peerprog.codec.groupplane import rans
from peerprog.errors import FormatError

Array = np.ndarray[Any, Any]

LOOP = rans.NumpyCoder(vector_lanes=1 << 30)
"""numpy's Python loop per lane, whatever the number of lanes."""
VECTOR = rans.NumpyCoder(vector_lanes=1)
"""numpy's steps across the lanes, whatever the number of lanes."""
NUMPY: list[rans.Coder] = [LOOP, VECTOR]
needs_c = pytest.mark.skipif(rans.ext is None, reason=f"rANS C extension not built: {rans.error}")


def coders() -> list[str | rans.Coder]:
    """Every implementation here: C (if built) by name, both numpy strategies."""
    return [*(["c"] if rans.ext is not None else []), *NUMPY]


def skewed(n: int, r: int, seed: int, zero: float = 0.85) -> Array:
    """``n`` symbol bytes of an r-plane step as real ones are: mostly zero digits, the
    others' magnitudes geometric, either sign; the last byte's padding (digit 0) as the
    kernels leave it."""
    rng = np.random.default_rng(seed)
    a, p, top = rans.alphabet(r), rans.symbols_per_byte(r), (1 << r) - 1
    digits = n * p
    mag = np.minimum(rng.geometric(0.45, digits), top)
    mag[rng.random(digits) < zero] = 0
    d = (mag * rng.choice([-1, 1], digits) + top).reshape(n, p)
    if n:
        pad = int(rng.integers(0, p))
        d[-1, p - pad :] = 0
    out: Array = (d * a ** np.arange(p)).sum(axis=1).astype(np.uint8)
    return out


def decode(frame: bytes, r: int, n: int, impl: str | rans.Coder | None = None) -> Array:
    return rans.decode_symbols(frame, r, n, "t", impl=impl)


def outcome(frame: bytes, r: int, limit: int, impl: str | rans.Coder) -> bytes | str:
    """What decoding ``frame`` gives: the bytes, or the FormatError's message."""
    try:
        return rans.decode_symbols(frame, r, limit, "t", impl=impl).tobytes()
    except FormatError as e:
        return f"FormatError: {e}"


@contextmanager
def simd(enable: bool) -> Iterator[None]:
    """The C decoder with its AVX2 path on (where the CPU has it) or off."""
    assert rans.ext is not None
    before = rans.ext.simd()
    rans.ext.simd(enable)
    try:
        yield
    finally:
        rans.ext.simd(before)


# ---------------------------------------------------------------------------- the model


def test_lanes() -> None:
    assert [rans.lanes(n) for n in (0, 1, 16383, 16384, 32767, 32768, 49152)] == [
        1, 1, 1, 1, 1, 2, 3,
    ]  # fmt: skip
    assert rans.lanes(4096 << 14) == rans.lanes(1 << 40) == 4096


@pytest.mark.parametrize("r", range(1, 8))
def test_magnitudes_count_every_digit_padding_included(r: int) -> None:
    a, p, top = rans.alphabet(r), rans.symbols_per_byte(r), (1 << r) - 1
    data = skewed(1000, r, r)
    digits = np.stack([(data.astype(np.int64) // a**k) % a for k in range(p)], 1)
    expect = np.bincount(np.abs(digits - top).reshape(-1), minlength=top + 1)
    assert rans.magnitudes(data, r) == expect.tolist()
    assert rans.magnitudes(b"\x00", r) == [0] * top + [p]  # digit 0: magnitude 2**r - 1


def test_magnitudes_reject_bytes_that_are_not_digits() -> None:
    with pytest.raises(ValueError):
        rans.magnitudes(bytes([255]), 7)
    with pytest.raises(ValueError):
        rans.magnitudes(bytes([243]), 1)  # 3**5
    assert sum(rans.magnitudes(bytes([242]), 1)) == 5


@given(st.lists(st.integers(0, 10**12), min_size=1, max_size=256), st.sampled_from([15, 16]))
def test_normalise(weights: list[int], bits: int) -> None:
    if not any(weights):
        with pytest.raises(ValueError):
            rans.normalise(weights, 1 << bits)
        return
    out = rans.normalise(weights, 1 << bits)
    assert sum(out) == 1 << bits
    assert all((f >= 1) == (w > 0) for f, w in zip(out, weights, strict=True))


def test_normalise_fixes_the_largest_lowest_index_first() -> None:
    assert rans.normalise([1, 1, 1], 16) == [6, 5, 5]
    assert rans.normalise([1, 3, 3], 8) == [1, 4, 3]
    assert rans.normalise([10**9, 1, 0, 1], 1 << 15) == [32766, 1, 0, 1]


@pytest.mark.parametrize("r", range(1, 8))
def test_byte_frequencies(r: int) -> None:
    table = rans.magnitude_table(skewed(5000, r, r), r)
    assert sum(table) == rans.TABLE_TOTAL
    weights = rans.byte_weights(r, table)
    valid = rans.alphabet(r) ** rans.symbols_per_byte(r)
    assert sum(weights) == (2 * rans.TABLE_TOTAL) ** rans.symbols_per_byte(r)
    assert all(w == 0 for w in weights[valid:])
    freq = rans.byte_frequencies(r, table)
    assert sum(freq) == 1 << rans.SCALE_BITS
    assert all((f > 0) == (w > 0) for f, w in zip(freq, weights, strict=True))
    m = rans.model(r, tuple(table))
    assert m.sym.tolist() == [s for s, f in enumerate(freq) for _ in range(f)]
    assert (m.cum == np.concatenate([[0], np.cumsum(freq)[:-1]])).all()


def test_digit_weights_are_sign_symmetric() -> None:
    """r = 2: bytes d0 + 7 * d1; with d1 = 3 (zero, weight 2 * 100) the weight is d0's."""
    w = rans.byte_weights(2, [100, 20, 5, 1])
    assert [w[d + 3 * 7] // 200 for d in range(7)] == [1, 5, 20, 200, 20, 5, 1]
    assert w[49:] == [0] * (256 - 49)


# ---------------------------------------------------------------------------- round trips


SIZES = [0, 1, 2, 3, 100, 2047, 2048, 5000, 16383, 16384, 16385, 32767, 32768, 49153]


@pytest.mark.parametrize("r", range(1, 8))
def test_round_trip_every_r(r: int) -> None:
    for n in SIZES:
        data = skewed(n, r, 1000 * r + n)
        # numpy's steps, one per byte of a lane (slow), past one lane for r = 1 only
        impls = [c for c in coders() if c is not VECTOR or n <= 16385 or r == 1]
        frames = {rans.rans_frame(data, r, impl=c) for c in impls}
        assert len(frames) == 1, (r, n)
        (frame,) = frames
        for c in impls:
            assert decode(frame, r, n, c).tobytes() == data.tobytes(), (r, n, c)
        assert decode(frame, r, n + 1).tobytes() == data.tobytes()  # limit not reached


@needs_c
@pytest.mark.parametrize("k", [2, 8, 33, 50, 101])
def test_many_lanes_c_and_numpy_agree(k: int) -> None:
    """Lane counts around the C decoder's tiles (32 lanes, AVX2 groups of 8, the rest one
    by one) and numpy's switch between its two strategies; the last row partial."""
    n = (k << 14) + 1234 + (k % 7) * 1000
    assert rans.lanes(n) == k
    r = 1 + k % 7
    data = skewed(n, r, k, zero=0.6)
    frame = rans.rans_frame(data, r, impl="c")
    assert rans.rans_frame(data, r) == frame
    assert rans.rans_frame(data, r, impl=LOOP if k < 50 else VECTOR) == frame
    for on in (True, False):
        with simd(on):
            assert decode(frame, r, n, "c").tobytes() == data.tobytes()
    assert decode(frame, r, n, LOOP if k >= 50 else VECTOR).tobytes() == data.tobytes()


@pytest.mark.parametrize("r", range(1, 8))
def test_one_symbol_value_only(r: int) -> None:
    """Every digit zero: one byte value with all 2**15 slots, no bytes after the states."""
    p, top = rans.symbols_per_byte(r), (1 << r) - 1
    byte = sum(top * rans.alphabet(r) ** k for k in range(p))
    for n in (1, 40000):
        data = np.full(n, byte, np.uint8)
        frame = rans.rans_frame(data, r)
        assert frame[-4 * rans.lanes(n) :] == struct.pack("<I", rans.L) * rans.lanes(n)
        for c in coders():
            assert rans.rans_frame(data, r, impl=c) == frame
            assert decode(frame, r, n, c).tobytes() == data.tobytes()


@pytest.mark.parametrize("r", range(1, 8))
def test_every_byte_value(r: int) -> None:
    """Every byte that is p digits, equally often (the flattest model there is)."""
    valid = rans.alphabet(r) ** rans.symbols_per_byte(r)
    data = np.tile(np.arange(valid, dtype=np.uint8), 20000 // valid + 1)
    frame = rans.rans_frame(data, r)
    for c in coders():
        assert rans.rans_frame(data, r, impl=c) == frame
        assert decode(frame, r, len(data), c).tobytes() == data.tobytes()
    with pytest.raises(ValueError):
        rans.rans_frame(np.arange(256, dtype=np.uint8), r)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.integers(1, 7),
    st.integers(0, 40000),
    st.integers(0, 2**32 - 1),
    st.floats(0.0, 1.0),
)
def test_round_trip_property(r: int, n: int, seed: int, zero: float) -> None:
    data = skewed(n, r, seed, zero)
    frame = rans.rans_frame(data, r, impl=coders()[0])
    for c in coders():
        if c is VECTOR and n > 20000:
            continue  # a numpy step per byte of a lane: slow
        assert rans.rans_frame(data, r, impl=c) == frame
        assert decode(frame, r, n, c).tobytes() == data.tobytes()


def test_a_frame_pinned() -> None:
    """The byte format: this frame (r = 2, 24 bytes, magnitudes counted [38, 5, 2, 3], 8 of
    them the 3 padding digits 0 of the last byte) must not change, nor decode otherwise."""
    data = bytes([3, 24, 24, 24, 24, 23, 24, 24, 24, 24, 23, 24, 25, 24, 40, 24, 17, 24, 23, 24,
                  24, 3, 24, 3])  # fmt: skip
    assert rans.magnitudes(data, 2) == [38, 5, 2, 3]
    frame = rans.rans_frame(data, 2)
    assert frame.hex() == "0118ac9503aa35aa1580209082d40960e4fa3122f26c"
    for c in coders():
        assert rans.rans_frame(data, 2, impl=c) == frame
        assert decode(frame, 2, len(data), c).tobytes() == data


# ---------------------------------------------------------------------------- choosing a frame


def test_encode_symbols_takes_the_smaller() -> None:
    small = skewed(rans.MIN_RANS_BYTES - 1, 2, 0)
    assert rans.encode_symbols(small, 2) == zstd.compress(small, symbols=True)
    data = skewed(50000, 2, 1)
    frame = rans.encode_symbols(data, 2)
    assert frame[0] == rans.RANS
    assert len(frame) < len(zstd.compress(data, symbols=True))
    assert decode(frame, 2, len(data)).tobytes() == data.tobytes()
    # a stream with long repeats: zstd's matches beat any order-0 model
    repeats = np.tile(skewed(64, 2, 2), 1000)
    frame = rans.encode_symbols(repeats, 2)
    assert frame == zstd.compress(repeats, symbols=True)
    assert decode(frame, 2, len(repeats)).tobytes() == repeats.tobytes()


def test_zstd_frames_decode_with_the_declared_size_checked() -> None:
    data = skewed(3000, 3, 0).tobytes()
    frame = zstd.compress(data, symbols=True)
    assert decode(frame, 3, 3000).tobytes() == data
    assert rans.decode_symbols(frame, 3, 3000, "t", rans=False).tobytes() == data
    with pytest.raises(FormatError, match="t: zstd frame declares 3000 bytes, at most 2999"):
        decode(frame, 3, 2999)


def test_rans_frames_only_where_allowed() -> None:
    frame = rans.rans_frame(skewed(100, 2, 0), 2)
    with pytest.raises(FormatError, match="an rANS frame in a format-1 stream"):
        rans.decode_symbols(frame, 2, 100, "t", rans=False)


# ---------------------------------------------------------------------------- malformed frames


def assert_all_agree(frame: bytes, r: int, limit: int) -> bytes | str:
    """Every implementation gives the same bytes or the same FormatError."""
    results = {outcome(frame, r, limit, c) for c in coders()}
    assert len(results) == 1, results
    (result,) = results
    return result


def test_malformed_headers() -> None:
    data = skewed(40000, 2, 0)  # 2 lanes
    frame = rans.rans_frame(data, 2)
    head, _, payload = _header_and_lanes(frame, 2)
    count = bytes([rans.RANS]) + b"\xc0\xb8\x02"  # n = 40000
    assert head.startswith(count)
    table = rans.magnitude_table(data, 2)
    cases: dict[str, tuple[bytes, str]] = {
        "empty": (b"", "empty symbol frame"),
        "unknown kind": (b"\x02" + frame[1:], "symbol frame of unknown kind 0x02"),
        "truncated n": (frame[:2], "truncated in a symbol count"),
        "n over the limit": (frame, "symbol count 40000 above 39999"),
        "truncated table": (head[:-1], "truncated in a magnitude frequency"),
        "table entry too large": (count + b"\x81\x80\x04" + payload, "65537 above 65536"),
        "table sums to 0": (count + bytes(4) + payload, "table sums to 0, not 65536"),
        "table off by one": (
            b"".join([count, *map(rans._varint, [table[0] - 1, *table[1:]]), frame[len(head) :]]),
            "sums to 65535, not 65536",
        ),
        "no lane lengths": (head, "truncated in a lane length"),
        "lane past the frame": (
            head + rans._varint(len(payload) - 3) + payload,
            "shorter than their state, or overrunning",
        ),
        "short lane": (head + rans._varint(3) + payload, "shorter than their state"),
    }
    for name, (bad, message) in cases.items():
        limit = 39999 if name == "n over the limit" else 40000
        result = assert_all_agree(bad, 2, limit)
        assert isinstance(result, str) and result.startswith("FormatError: t: "), name
        assert message in result, (name, result)


def _header_and_lanes(frame: bytes, r: int) -> tuple[bytes, list[int], bytes]:
    """An rANS frame's bytes up to its lane lengths, the lane lengths, the payload."""
    mv = memoryview(frame)
    n, at = rans._read_varint(mv, 1, 1 << 40, "n")
    for _ in range(1 << r):
        _, at = rans._read_varint(mv, at, 1 << 40, "f")
    head = bytes(mv[:at])
    lengths = []
    for _ in range(rans.lanes(n) - 1):
        size, at = rans._read_varint(mv, at, 1 << 40, "size")
        lengths.append(size)
    payload = bytes(mv[at:])
    return head, [*lengths, len(payload) - sum(lengths)], payload


def _with_lanes(head: bytes, lengths: list[int], payload: bytes) -> bytes:
    return b"".join([head, *map(rans._varint, lengths[:-1]), payload])


def test_wrong_lane_lengths_and_states() -> None:
    data = skewed(3 * 16384 + 77, 3, 5, zero=0.5)
    frame = rans.rans_frame(data, 3)
    head, lengths, payload = _header_and_lanes(frame, 3)
    assert assert_all_agree(frame, 3, len(data)) == data.tobytes()
    for shift in (-2, -1, 1, 2):
        moved = [lengths[0] + shift, lengths[1] - shift, lengths[2]]
        result = assert_all_agree(_with_lanes(head, moved, payload), 3, len(data))
        assert isinstance(result, str) and "rANS lane" in result, result
    for lane_state in (rans.L - 1, 1 << 31, 0, 0xFFFFFFFF):
        state = bytearray(payload)
        state[lengths[0] : lengths[0] + 4] = struct.pack("<I", lane_state)
        result = assert_all_agree(_with_lanes(head, lengths, bytes(state)), 3, len(data))
        assert f"rANS lane 1 starts in state {lane_state:#x}, out of range" in str(result)
    # one byte fewer or more in the last lane, n one more or less
    for bad in (frame[:-1], frame + b"\0"):
        assert "rANS lane 2 ends" in str(assert_all_agree(bad, 3, len(data)))
    for count in (len(data) - 1, len(data) + 1):
        other = bytes([rans.RANS]) + rans._varint(count) + frame[4:]
        assert "rANS lane" in str(assert_all_agree(other, 3, len(data) + 1))


def test_truncated_anywhere() -> None:
    """Cuts in the header, and through the lanes, of a one-lane frame and a two-lane one."""
    data = skewed(3000, 1, 3)
    frame = rans.rans_frame(data, 1)
    for cut in [*range(40), *range(40, len(frame), 101)]:
        result = assert_all_agree(frame[:cut], 1, len(data))
        assert isinstance(result, str) and result.startswith("FormatError"), cut
    data = skewed(33000, 4, 3)
    frame = rans.rans_frame(data, 4)
    for cut in [*range(40), len(frame) // 2, len(frame) - 1]:
        result = assert_all_agree(frame[:cut], 4, len(data))
        assert isinstance(result, str) and result.startswith("FormatError"), cut


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_corrupt_frames_agree(draw: st.DataObject) -> None:
    """Flipped bytes, inserted and deleted runs anywhere: every implementation gives the
    same bytes or the same FormatError (the C decoder reads nothing outside the frame)."""
    r = draw.draw(st.integers(1, 7))
    n = draw.draw(st.sampled_from([0, 5, 700, 16385, 33000]))
    data = skewed(n, r, draw.draw(st.integers(0, 1000)))
    frame = bytearray(rans.rans_frame(data, r))
    for _ in range(draw.draw(st.integers(1, 4))):
        at = draw.draw(st.integers(0, len(frame) - 1))
        kind = draw.draw(st.sampled_from(["flip", "insert", "delete"]))
        if kind == "flip":
            frame[at] ^= draw.draw(st.integers(1, 255))
        elif kind == "insert":
            frame[at:at] = draw.draw(st.binary(min_size=1, max_size=8))
        else:
            del frame[at : at + draw.draw(st.integers(1, 8))]
    assert_all_agree(bytes(frame), r, n + 10)


def test_no_allocation_beyond_the_limit() -> None:
    """A frame claiming more symbols than the limit fails before anything is decoded."""
    frame = bytes([rans.RANS]) + rans._varint(1 << 40) + bytes(20)
    for c in coders():
        with pytest.raises(FormatError, match="symbol count 1099511627776 above 1000"):
            decode(frame, 2, 1000, c)


# ---------------------------------------------------------------------------- the C extension


@needs_c
def test_c_rejects_tables_that_are_not_a_distribution() -> None:
    ext = rans.ext
    assert ext is not None
    m = rans.model(2, (60000, 5000, 500, 36))
    data = np.zeros(10, np.uint8)
    half = (m.freq // 2).astype(np.uint32)
    with pytest.raises(ValueError):
        ext.encode(data, half, m.cum, 1)
    with pytest.raises(ValueError):
        ext.encode(data, m.freq[:100], m.cum, 1)
    payload, lengths = ext.encode(np.full(10, 24, np.uint8), m.freq, m.cum, 1)
    sizes = np.asarray(lengths, np.uint64)
    sym = m.sym.copy()
    sym[0] ^= 1
    with pytest.raises(ValueError):
        ext.decode(payload, sizes, m.freq, m.cum, sym, 10)
    with pytest.raises(ValueError):
        ext.decode(payload, sizes + 1, m.freq, m.cum, m.sym, 10)
    assert ext.decode(payload, sizes, m.freq, m.cum, m.sym, 10) == bytes([24] * 10)


def test_the_extension_is_built_where_a_compiler_is() -> None:
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(cc) is None:
        pytest.skip(f"no C compiler ({cc})")
    assert rans.ext is not None, rans.error
    assert rans.implementations() == ("c", "numpy")


def test_the_environment_selects_numpy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PEERPROG_GROUPPLANE", "numpy")
    assert rans._initial() == "numpy"
    monkeypatch.setenv("PEERPROG_GROUPPLANE", "")
    assert rans._initial() == rans.implementations()[0]
    monkeypatch.setenv("PEERPROG_GROUPPLANE", "fortran")
    with pytest.raises(RuntimeError):
        rans._initial()
    if os.environ.get("PEERPROG_GROUPPLANE") is None:
        assert rans.implementation() == rans.implementations()[0]
    with pytest.raises(ValueError):
        rans.rans_frame(b"", 1, impl="fortran")


# ---------------------------------------------------------------------------- dense bytes


def _dense(n: int, seed: int, values: int = 40) -> Array:
    """``n`` bytes of a skewed order-0 source over ``values`` byte values (scales, the high
    byte plane of float words)."""
    rng = np.random.default_rng(seed)
    return (100 + np.minimum(rng.geometric(0.3, n), values)).astype(np.uint8)


@pytest.mark.parametrize("n", [0, 1, 255, 256, 5000, 16384 * 3 + 7])
def test_dense_bytes_round_trip_alike_everywhere(n: int) -> None:
    data = _dense(n, n)
    frames = {rans.encode_bytes(data, impl=c) for c in coders()}
    assert len(frames) == 1
    (frame,) = frames
    if n >= 5000:
        assert frame[0] == rans.BYTES  # a skewed source: rANS wins over zstd by far
    if n < rans.MIN_BYTES_RANS:
        assert frame[0] == rans.ZSTD
    for c in coders():
        got = rans.decode_bytes(frame, n, "t", impl=c)
        assert got.tobytes() == data.tobytes()
    assert rans.declared(frame, n, "t") == n
    with pytest.raises(FormatError, match="t: "):
        rans.decode_bytes(frame, n - 1, "t") if n else rans.decode_bytes(b"", 0, "t")


def test_dense_bytes_of_one_value_and_of_all_values() -> None:
    for data in (np.full(4000, 7, np.uint8), np.arange(256 * 40, dtype=np.uint32).astype(np.uint8)):
        frame = rans.encode_bytes(data)
        assert rans.decode_bytes(frame, data.size, "t").tobytes() == data.tobytes()
        raw = _bytes_frame(data)  # the rANS frame even where zstd's is smaller
        for c in coders():
            assert rans.decode_bytes(raw, data.size, "t", impl=c).tobytes() == data.tobytes()


def _bytes_frame(data: Array) -> bytes:
    """The rANS frame of dense bytes, whatever zstd's size (MIN_GAIN set out of the way)."""
    keep = rans.MIN_GAIN
    try:
        rans.MIN_GAIN = -1e9
        return rans.encode_bytes(data)
    finally:
        rans.MIN_GAIN = keep


def _leb(v: int) -> bytes:
    out = bytearray()
    while v >= 0x80:
        out.append(v & 0x7F | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def test_malformed_byte_tables() -> None:
    half = 1 << (rans.SCALE_BITS - 1)
    lanes = b"\x00\x00\x80\x00"  # one lane, state L, no bytes: decodes 0 bytes
    cases = {
        "out of order": [(5, half), (5, half)],
        "frequency 0": [(3, 0), (5, 2 * half)],
        "sums to": [(3, half), (5, half - 1)],
    }
    for message, table in cases.items():
        body = b"".join(bytes([b]) + _leb(f) for b, f in table)
        frame = bytes([rans.BYTES]) + _leb(0) + _leb(len(table) - 1) + body + lanes
        for c in coders():
            with pytest.raises(FormatError, match=message):
                rans.decode_bytes(frame, 10, "t", impl=c)
    good = bytes([rans.BYTES]) + _leb(0) + _leb(0) + bytes([9]) + _leb(2 * half) + lanes
    assert rans.decode_bytes(good, 10, "t").size == 0
    for cut in range(1, len(good) - len(lanes)):
        with pytest.raises(FormatError):
            rans.decode_bytes(good[:cut], 10, "t")
    with pytest.raises(FormatError, match="not a frame of bytes"):
        rans.decode_bytes(b"\x01" + good[1:], 10, "t")


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_corrupt_byte_frames_agree(draw: st.DataObject) -> None:
    data = _dense(3000, 1)
    frame = bytearray(_bytes_frame(data))
    i = draw.draw(st.integers(0, len(frame) - 1))
    frame[i] ^= draw.draw(st.integers(1, 255))
    outcomes: list[bytes | str] = []
    for c in coders():
        try:
            outcomes.append(rans.decode_bytes(bytes(frame), 4000, "t", impl=c).tobytes())
        except FormatError as e:
            outcomes.append(str(e))
    assert len(set(outcomes)) == 1
