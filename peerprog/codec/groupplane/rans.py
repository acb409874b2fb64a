"""rANS coding of groupplane's frames (format 2), or zstd where rANS gains too little.

A plane step's symbol bytes (:mod:`.format`: base ``A = alphabet(r)`` digits ``d = s + 2**r - 1``,
``symbols_per_byte(r)`` to a byte, first digit lowest) are coded by one of two frames, told
apart by their first byte:

* **zstd** (``0x28``, zstd's magic): ``zstd.compress(codes, symbols=True)``, as format 1 does.
* **rANS** (``0x01``): ``varint(n)``, the magnitude table (``2**r`` varints), the byte lengths
  of lanes ``0 .. K-2`` (``K - 1`` varints; lane ``K - 1`` takes the rest), then the lanes'
  streams concatenated. Varints are unsigned LEB128. A decoder takes ``n`` up to the most
  the step can have, a table summing to ``2**16`` exactly, lanes of at least their 4 state
  bytes filling the frame exactly; it allocates the ``n`` bytes and copies of the frame,
  nothing more.

Format 2's dense bytes (scales, byte planes, low bytes: :func:`encode_bytes`) are a zstd frame
(``zstd.compress_dense``) or an rANS frame of bytes (``0x02``): ``varint(n)``,
``varint(count - 1)``, then ``count`` pairs ``[byte value][varint frequency]`` in increasing
byte order (each frequency at least 1, together ``2**SCALE_BITS``: the bytes' order-0 model
itself), then the lanes as above.

**Model.** A static order-0 model of the digits, sign-symmetric. The encoder counts the
digits of the bytes (the last byte's padding digits as they are) by magnitude
``m = |d - (2**r - 1)|`` (:func:`magnitudes`) and sends the counts normalised to ``2**16``
(:func:`normalise`), every magnitude that occurs at least 1. A digit's weight is ``2 * f[0]``
for ``m = 0`` and ``f[m]`` for each sign of ``m > 0``; a byte's weight is the product of its
``p = symbols_per_byte(r)`` digits' weights (0 for a byte ``≥ A**p``), and the byte
frequencies are the byte weights normalised to ``2**SCALE_BITS`` (:func:`byte_frequencies`).
The byte alphabet thus codes the digits at their order-0 entropy with a table of ``2**r``
numbers, up to the rounding to ``2**15``.

**Lanes.** ``K = max(1, min(n >> 14, 4096))`` (:func:`lanes`, derived from ``n``, not sent):
byte ``i`` belongs to lane ``i % K`` at position ``i // K``. Each lane is an independent
32-bit rANS stream (ryg_rans, byte-wise renormalisation, ``L = 2**23``): the encoder goes
backward over the lane's bytes from state ``L`` (renormalise: while
``x >= ((L >> 15) << 8) * f`` emit ``x & 0xff``, ``x >>= 8``; then
``x = ((x // f) << 15) + x % f + cum``); the lane's stream is its final state (4 bytes,
little-endian) then the emitted bytes in the order the decoder reads them (reversed). The
decoder, per byte: ``slot = x & 0x7fff``, ``s = sym[slot]``,
``x = f[s] * (x >> 15) + slot - cum[s]``, then while ``x < L``: ``x = (x << 8) | next byte``.
A lane must start in a state in ``L .. 2**31 - 1`` (an encoder's always does; the decoder
then never reads more than 2 bytes per byte decoded) and end in state ``L`` with its bytes
consumed exactly; anything else is a :class:`~peerprog.errors.FormatError`.

**Implementations.** The C extension :mod:`peerprog.codec.groupplane._rans`
(``c_rans/rans.c``: the lanes in tiles of 64 rows by 32 lanes, 8 lanes at a time with AVX2
where the CPU has it) when it is built, else numpy (:class:`NumpyCoder`: a step per position
for all the lanes at once, or a Python loop per lane when there are few);
``PEERPROG_GROUPPLANE=numpy`` forces numpy. They make the same frames and decode alike,
errors included, to the message; :func:`implementations` lists them and the functions'
``impl`` argument picks one. The model and the framing are here, once. Measured on a 16 MB
stream (the level-0 symbol bytes of a Gaussian float32 tensor; 2 shared cores of an AMD
EPYC): C decodes 530 MB/s (300 MB/s without AVX2), encodes 175 MB/s (the model included),
zstd decodes 770 .. 1600 MB/s; the frames are 0.05 .. 0.13% above the digits' order-0
entropy, zstd's 0.6 .. 8%.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from types import ModuleType
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from peerprog.codec import zstd
from peerprog.errors import FormatError

Array = npt.NDArray[Any]
Buffer = bytes | bytearray | memoryview
Data = Buffer | npt.NDArray[np.uint8]

SCALE_BITS = 15
"""The byte frequencies sum to ``2**SCALE_BITS``."""
TABLE_TOTAL = 1 << 16
"""The magnitude table sums to this."""
L = 1 << 23
"""The lower bound of a rANS state (ryg_rans' ``RANS_BYTE_L``)."""
LANE_BYTES = 1 << 14
MAX_LANES = 4096
RANS = 0x01
"""The first byte of an rANS frame."""
ZSTD = 0x28
"""The first byte of a zstd frame (of its magic number)."""
BYTES = 0x02
"""The first byte of an rANS frame of dense bytes (:func:`encode_bytes`)."""
MIN_GAIN = 0.01
"""An rANS frame is chosen over the zstd frame only when it is at least this much smaller:
it decodes at ~530 MB/s with AVX2, zstd's Huffman at 800-1600 MB/s. Measured on the LM and
EfficientNet-Lite1 bf16: rANS whenever smaller gives 10.523 / 10.658 bits/weight with 98% /
90% of the symbol bytes in rANS frames; from 1% smaller, 10.537 / 10.671 with 45% / 42%
(from 2%: 10.543 / 10.677, 33% / 34%)."""
MIN_BYTES_RANS = 256
"""Dense bytes below this many are left to zstd."""
MIN_RANS_BYTES = 2048
"""Below this many symbol bytes :func:`encode_symbols` does not try rANS (zstd only).

Measured on the symbol bytes of Gaussian float32 tensors of 2K .. 512K weights under three
plane schedules (160 streams of 1 .. 256K bytes): rANS tried on every stream made them
1.40% smaller than zstd alone, from 2048 bytes 1.31%, from 8192 1.21% (rANS wins by 3-15%
on streams of 64 .. 2K bytes, whose zstd frames carry a Huffman table, but these are few
bytes in all). From 2048 bytes half as many streams are rANS frames (84 of 160), each of
which costs ~50 µs more than zstd to decode with the C extension (the model, the table) and
~0.5 µs a byte without it."""

_SCALE = 1 << SCALE_BITS
_SMALL = [bytes((v,)) for v in range(0x80)]
_STATE_END = 1 << 31  # a lane's state is below this
_VERSION = 1  # the C extension's interface version


# ---------------------------------------------------------------------------- the model


def alphabet(r: int) -> int:
    """The number of symbol values of an r-plane step: ``2**(r+1) - 1``."""
    return (1 << (r + 1)) - 1


def symbols_per_byte(r: int) -> int:
    """How many symbols of an r-plane step a byte holds: the most ``p`` with
    ``alphabet(r) ** p <= 256``."""
    a, per = alphabet(r), 1
    while a ** (per + 1) <= 256:
        per += 1
    return per


def lanes(n: int) -> int:
    """The number of rANS lanes of ``n`` symbol bytes."""
    return max(1, min(n // LANE_BYTES, MAX_LANES))


@functools.lru_cache(maxsize=8)
def _digit_magnitudes(r: int) -> Array:
    """``[b, m]``: how many of byte ``b``'s digits have magnitude ``m`` (bytes ``< A**p``)."""
    a, p, top = alphabet(r), symbols_per_byte(r), (1 << r) - 1
    out = np.zeros((a**p, top + 1), np.int64)
    for b in range(a**p):
        for k in range(p):
            out[b, abs((b // a**k) % a - top)] += 1
    return out


def _histogram(data: Array) -> Array:
    """How many times each byte value occurs in ``data``: pairs of bytes counted as uint16
    (``np.bincount`` widens its input to 64 bits: half as many, in chunks), then folded;
    a short ``data`` directly."""
    if len(data) < 1 << 16:
        small: Array = np.bincount(data, minlength=256)
        return small
    pairs = data[: len(data) & ~1].view(np.uint16)
    counts = np.zeros(1 << 16, np.int64)
    step = 1 << 20
    for i in range(0, len(pairs), step):
        counts += np.bincount(pairs[i : i + step], minlength=1 << 16)
    square = counts.reshape(256, 256)
    hist: Array = square.sum(axis=0) + square.sum(axis=1)
    if len(data) & 1:
        hist[data[-1]] += 1
    return hist


def magnitudes(codes: Data, r: int, hist: Array | None = None) -> list[int]:
    """The digits of ``codes`` (every digit of every byte, the last byte's padding too)
    counted by magnitude ``m = |d - (2**r - 1)|``, ``m = 0 .. 2**r - 1`` (``hist``: the
    bytes' histogram, if already counted).

    ValueError if a byte is not ``symbols_per_byte(r)`` digits (``≥ alphabet(r) ** p``)."""
    table = _digit_magnitudes(r)
    if hist is None:
        hist = _histogram(_bytes(codes))
    if hist[len(table) :].any():
        raise ValueError(f"symbol bytes of r = {r} must be below {len(table)}")
    return [int(c) for c in hist[: len(table)] @ table]


def normalise(weights: Sequence[int], total: int) -> list[int]:
    """``weights`` (not all 0) scaled to sum to ``total``, in integers: ``w * total // W``,
    raised to 1 where ``w > 0``, the difference to ``total`` added to the largest (the lowest
    index on ties). With at most 256 weights and ``total ≥ 2**15`` the largest stays ≥ 1."""
    whole = sum(weights)
    if whole <= 0:
        raise ValueError("weights that sum to 0")
    if whole < 1 << 40 and total <= 1 << 20:  # in int64: the same integers, faster
        w = np.asarray(weights, np.int64)
        scaled = np.where(w > 0, np.maximum(w * total // whole, 1), 0)
        out = [int(x) for x in scaled]
    else:
        out = [max(w * total // whole, 1) if w > 0 else 0 for w in weights]
    big = out.index(max(out))
    out[big] += total - sum(out)
    assert out[big] >= 1
    return out


def byte_weights(r: int, table: Sequence[int]) -> list[int]:
    """The 256 byte weights of the magnitude ``table``: the product of a byte's digits'
    weights (``2 * f[0]`` for the zero digit, ``f[m]`` for each sign of magnitude ``m``),
    0 for the bytes that are not ``symbols_per_byte(r)`` digits."""
    top = (1 << r) - 1
    digit = [2 * table[0] if d == top else table[abs(d - top)] for d in range(alphabet(r))]
    out = [1]
    for _ in range(symbols_per_byte(r)):
        out = [high * low for high in out for low in digit]
    return out + [0] * (256 - len(out))


def byte_frequencies(r: int, table: Sequence[int]) -> list[int]:
    """The 256 byte frequencies (sum ``2**SCALE_BITS``) of the magnitude ``table``."""
    return normalise(byte_weights(r, table), _SCALE)


@dataclass(frozen=True)
class Model:
    """The coding tables of one magnitude table."""

    freq: npt.NDArray[np.uint32]
    """Each byte value's frequency (256, summing to ``2**SCALE_BITS``)."""
    cum: npt.NDArray[np.uint32]
    """The sum of the frequencies of the byte values below (256)."""
    sym: npt.NDArray[np.uint8]
    """The byte value of each slot (``2**SCALE_BITS``)."""


@functools.lru_cache(maxsize=32)
def model(r: int, table: tuple[int, ...]) -> Model:
    """The coding tables of an r-plane step's magnitude ``table`` (cached)."""
    return _tables(byte_frequencies(r, table))


def _tables(frequencies: Sequence[int]) -> Model:
    """The coding tables of 256 byte ``frequencies`` summing to ``2**SCALE_BITS``."""
    freq = np.array(frequencies, np.uint32)
    cum = np.concatenate([[0], np.cumsum(freq)[:-1]]).astype(np.uint32)
    sym = np.repeat(np.arange(256, dtype=np.uint8), freq)
    for a in (freq, cum, sym):
        a.flags.writeable = False
    return Model(freq, cum, sym)


# ---------------------------------------------------------------------------- implementations


class Coder(Protocol):
    """One implementation of the lanes' rANS streams."""

    name: str

    def encode(self, data: Array, m: Model, k: int) -> tuple[bytes, list[int]]:
        """``data``'s ``k`` lane streams concatenated, and their lengths."""
        ...

    def decode(self, payload: Array, lengths: Sequence[int], m: Model, n: int) -> Array:
        """``n`` bytes from the lane streams (FormatError if they are not exactly that)."""
        ...


class NumpyCoder:
    """The lanes in numpy, for all lanes at once: one step per position (the lanes with a
    byte there, a prefix, are sliced), at most 2 renormalisation bytes a step. A numpy step
    costs ~15 µs whatever the number of lanes, a byte in a Python loop ~0.3 µs: below
    ``vector_lanes`` lanes (streams below ``vector_lanes * 2**14`` bytes) the lanes are
    coded one by one in a Python loop instead, 40 times faster for one lane."""

    name = "numpy"

    def __init__(self, vector_lanes: int = 100) -> None:
        self.vector_lanes = vector_lanes

    def encode(self, data: Array, m: Model, k: int) -> tuple[bytes, list[int]]:
        if k < self.vector_lanes:
            return _encode_loop(data, m, k)
        return _encode_vector(data, m, k)

    def decode(self, payload: Array, lengths: Sequence[int], m: Model, n: int) -> Array:
        x, pos, ends = _start(payload, lengths)
        if len(lengths) < self.vector_lanes:
            out = _decode_loop(payload, m, n, x, pos, ends)
        else:
            out = _decode_vector(payload, m, n, x, pos, ends)
        _check_ends(x, pos, ends)
        return out


def _encode_vector(data: Array, m: Model, k: int) -> tuple[bytes, list[int]]:
    n = len(data)
    rows = -(-n // k)
    flat = np.zeros(rows * k, np.uint8)
    flat[:n] = data
    grid = flat.reshape(rows, k)
    freq, cum = m.freq.astype(np.int64), m.cum.astype(np.int64)
    x = np.full(k, L, np.int64)
    # [row, lane, 1]: the byte emitted first, [.., 0] the second (the decoder's order)
    out = np.zeros((rows, k, 2), np.uint8)
    emitted = np.zeros((rows, k, 2), bool)
    for j in range(rows - 1, -1, -1):
        a = _active(n, k, j)
        s = grid[j, :a]
        f = freq[s]
        xa = x[:a]
        for e in (1, 0):
            more = xa >= f << 16
            out[j, :a, e] = xa & 0xFF
            emitted[j, :a, e] = more
            xa >>= more * 8
        q = xa // f
        xa[:] = (q << SCALE_BITS) + (xa - q * f) + cum[s]
    state = (x[:, None] >> np.arange(0, 32, 8)).astype(np.uint8)
    body = np.concatenate([state, out.transpose(1, 0, 2).reshape(k, -1)], axis=1)
    keep = np.concatenate([np.ones((k, 4), bool), emitted.transpose(1, 0, 2).reshape(k, -1)], 1)
    return body[keep].tobytes(), [int(c) for c in keep.sum(axis=1)]


def _encode_loop(data: Array, m: Model, k: int) -> tuple[bytes, list[int]]:
    freq, cum = m.freq.tolist(), m.cum.tolist()
    streams = []
    for lane in range(k):
        x, emitted = L, bytearray()
        for s in reversed(data[lane::k].tolist()):
            f = freq[s]
            while x >= f << 16:  # at most twice
                emitted.append(x & 0xFF)
                x >>= 8
            x = ((x // f) << SCALE_BITS) + x % f + cum[s]
        emitted.reverse()
        streams.append(x.to_bytes(4, "little") + emitted)
    return b"".join(streams), [len(s) for s in streams]


def _start(payload: Array, lengths: Sequence[int]) -> tuple[Array, Array, Array]:
    """The lanes' states, where their bytes after the state begin, where they end."""
    ends = np.cumsum(lengths, dtype=np.int64)
    starts = ends - np.asarray(lengths, np.int64)
    x = np.zeros(len(lengths), np.int64)
    for i in range(4):
        x |= payload[starts + i].astype(np.int64) << (8 * i)
    bad = np.flatnonzero((x < L) | (x >= _STATE_END))
    if len(bad):
        raise FormatError(f"rANS lane {bad[0]} starts in state {x[bad[0]]:#x}, out of range")
    return x, starts + 4, ends


def _slot_tables(m: Model) -> tuple[Array, Array]:
    """Each slot's byte frequency and ``slot - cum``."""
    freq = m.freq.astype(np.int64)[m.sym]
    bias = np.arange(_SCALE, dtype=np.int64) - m.cum.astype(np.int64)[m.sym]
    return freq, bias


def _decode_vector(payload: Array, m: Model, n: int, x: Array, pos: Array, ends: Array) -> Array:
    """Decodes into the states ``x`` and positions ``pos`` (updated); a byte past a lane's end
    reads as 0 (the lane then ends past its end)."""
    k = len(x)
    rows = -(-n // k)
    sym = m.sym
    slot_freq, slot_bias = _slot_tables(m)
    pay = np.concatenate([payload, np.zeros(1, np.uint8)])
    last = len(payload)
    out = np.empty((rows, k), np.uint8)
    for j in range(rows):
        a = _active(n, k, j)
        xa, pa, ea = x[:a], pos[:a], ends[:a]
        slot = xa & (_SCALE - 1)
        out[j, :a] = sym[slot]
        xa[:] = slot_freq[slot] * (xa >> SCALE_BITS) + slot_bias[slot]
        for _ in range(2):
            need = xa < L
            if not need.any():
                break
            byte = np.where(pa < ea, pay[np.minimum(pa, last)], 0)
            xa[:] = np.where(need, (xa << 8) | byte, xa)
            pa += need
    return out.reshape(-1)[:n]


def _decode_loop(payload: Array, m: Model, n: int, x: Array, pos: Array, ends: Array) -> Array:
    """:func:`_decode_vector` lane by lane in a Python loop."""
    k = len(x)
    pay = payload.tobytes()
    sym, freq, cum = m.sym.tolist(), m.freq.tolist(), m.cum.tolist()
    out = np.empty(n, np.uint8)
    for lane in range(k):
        v, p, e = int(x[lane]), int(pos[lane]), int(ends[lane])
        got = bytearray()
        for _ in range(lane, n, k):
            slot = v & (_SCALE - 1)
            s = sym[slot]
            got.append(s)
            v = freq[s] * (v >> SCALE_BITS) + slot - cum[s]
            while v < L:  # at most twice
                v = (v << 8) | (pay[p] if p < e else 0)
                p += 1
        out[lane::k] = np.frombuffer(got, np.uint8)
        x[lane], pos[lane] = v, p
    return out


def _active(n: int, k: int, j: int) -> int:
    """How many lanes have a byte at position ``j``."""
    return min(k, n - j * k)


def _check_ends(x: Array, pos: Array, ends: Array) -> None:
    bad = np.flatnonzero(pos != ends)
    if len(bad):
        lane = bad[0]
        raise FormatError(f"rANS lane {lane} ends at byte {pos[lane]}, not {ends[lane]}")
    bad = np.flatnonzero(x != L)
    if len(bad):
        raise FormatError(f"rANS lane {bad[0]} ends in state {x[bad[0]]:#x}, not {L:#x}")


class CCoder:
    """The lanes in C (the extension :mod:`peerprog.codec.groupplane._rans`)."""

    name = "c"

    def __init__(self, ext: ModuleType) -> None:
        self.ext = ext

    def encode(self, data: Array, m: Model, k: int) -> tuple[bytes, list[int]]:
        payload, lengths = self.ext.encode(data, m.freq, m.cum, k)
        return payload, lengths

    def decode(self, payload: Array, lengths: Sequence[int], m: Model, n: int) -> Array:
        sizes = np.asarray(lengths, np.uint64)
        out = self.ext.decode(payload, sizes, m.freq, m.cum, m.sym, n)
        return np.frombuffer(out, np.uint8)


def _load() -> tuple[ModuleType | None, str]:
    try:
        from peerprog.codec.groupplane import _rans
    except ImportError as e:
        return None, f"the rANS C extension does not import: {e}"
    if getattr(_rans, "VERSION", None) != _VERSION:
        got = getattr(_rans, "VERSION", None)
        return None, f"the rANS C extension is of interface {got}, not {_VERSION}: rebuild it"
    return _rans, ""


ext, error = _load()
"""The C extension, or None (and why not)."""

_CODERS: dict[str, Coder] = {"numpy": NumpyCoder()}
if ext is not None:
    _CODERS["c"] = CCoder(ext)


def implementations() -> tuple[str, ...]:
    """The implementations available here: ``"c"`` (when the extension is built), ``"numpy"``."""
    return ("c", "numpy") if "c" in _CODERS else ("numpy",)


def _initial() -> str:
    want = os.environ.get("PEERPROG_GROUPPLANE", "")
    if want in ("", "auto"):
        return implementations()[0]
    if want not in _CODERS:
        raise RuntimeError(f"PEERPROG_GROUPPLANE={want!r}: rANS has {implementations()}")
    return want


_default = _initial()


def implementation() -> str:
    """The name of the implementation used when none is named."""
    return _default


def _coder(impl: str | Coder | None) -> Coder:
    """The implementation named ``impl`` (None: the default; a Coder: itself)."""
    if impl is not None and not isinstance(impl, str):
        return impl
    name = _default if impl is None else impl
    if name not in _CODERS:
        raise ValueError(f"rANS implementation {name!r} is not available ({implementations()})")
    return _CODERS[name]


# ---------------------------------------------------------------------------- frames


def encode_symbols(codes: Data, r: int, *, impl: str | Coder | None = None) -> bytes:
    """The frame of an r-plane step's symbol bytes: rANS if it is smaller than zstd's by
    :data:`MIN_GAIN`, else zstd (and below :data:`MIN_RANS_BYTES` bytes, where rANS is not
    tried). ``impl``: an implementation's name (:func:`implementations`) or a
    :class:`Coder`; None, the default."""
    data = _bytes(codes)
    packed = zstd.compress(data, symbols=True)
    if len(data) < MIN_RANS_BYTES:
        return packed
    hist = _histogram(data)
    table = magnitude_table(data, r, hist)
    m = model(r, tuple(table))
    if _estimate(hist, m.freq, 2**r) >= len(packed) * (1 - MIN_GAIN):
        return packed
    coded = _rans_frame(data, r, table, m, impl)
    return coded if len(coded) < len(packed) * (1 - MIN_GAIN) else packed


def _estimate(hist: Array, freq: Array, table_entries: int) -> float:
    """The least bytes an rANS frame of the bytes counted by ``hist`` under ``freq`` can
    take: their cost in bits, a varint per table entry, a lane's state per lane (the frame
    is not made when this already loses to zstd's)."""
    n = int(hist.sum())
    used = hist > 0
    bits = float(np.dot(hist[used], SCALE_BITS - np.log2(freq[used].astype(np.float64))))
    return bits / 8 + table_entries + 4 * lanes(n)


def rans_frame(codes: Data, r: int, *, impl: str | Coder | None = None) -> bytes:
    """The rANS frame of an r-plane step's symbol bytes (ValueError if a byte is not
    ``symbols_per_byte(r)`` digits)."""
    data = _bytes(codes)
    table = magnitude_table(data, r)
    return _rans_frame(data, r, table, model(r, tuple(table)), impl)


def _rans_frame(
    data: Array, r: int, table: Sequence[int], m: Model, impl: str | Coder | None
) -> bytes:
    payload, lengths = _coder(impl).encode(data, m, lanes(len(data)))
    head = [len(data), *table, *lengths[:-1]]
    return b"".join([bytes([RANS]), *map(_varint, head), payload])


def encode_bytes(data: Data, *, impl: str | Coder | None = None) -> bytes:
    """The frame of dense bytes (format 2's scales, byte planes and low bytes): an rANS
    frame with its own order-0 byte table (:data:`BYTES`) if it is smaller than the zstd
    frame (:func:`~peerprog.codec.zstd.compress_dense`) by :data:`MIN_GAIN`, else the zstd
    frame (and below :data:`MIN_BYTES_RANS` bytes, where rANS is not tried)."""
    raw = _bytes(data)
    packed = zstd.compress_dense(raw)
    if len(raw) < MIN_BYTES_RANS:
        return packed
    hist = _histogram(raw)
    freq = normalise(hist.tolist(), _SCALE)
    if _estimate(hist, np.array(freq), 2 * int(np.count_nonzero(hist))) >= len(packed) * (
        1 - MIN_GAIN
    ):
        return packed
    payload, lengths = _coder(impl).encode(raw, _tables(freq), lanes(len(raw)))
    present = [b for b in range(256) if freq[b]]
    table = b"".join(bytes([b]) + _varint(freq[b]) for b in present)
    head = b"".join(map(_varint, [len(raw), len(present) - 1]))
    coded = b"".join([bytes([BYTES]), head, table, *map(_varint, lengths[:-1]), payload])
    return coded if len(coded) < len(packed) * (1 - MIN_GAIN) else packed


def decode_bytes(frame: Buffer, limit: int, what: str, *, impl: str | Coder | None = None) -> Array:
    """Dense bytes (at most ``limit``) from their frame (:func:`encode_bytes`): FormatError
    naming ``what`` if it is malformed; nothing larger than ``limit`` and the frame is
    allocated."""
    mv = memoryview(frame).cast("B")
    if len(mv) and mv[0] == ZSTD:
        return zstd.decompress_exact(mv, zstd.declared(mv, limit, what), what)
    if not len(mv) or mv[0] != BYTES:
        raise FormatError(f"{what}: not a frame of bytes")
    try:
        n, at = _read_varint(mv, 1, limit, "byte count")
        count, at = _read_varint(mv, at, 255, "byte value count")
        freq = [0] * 256
        prev = -1
        for _ in range(count + 1):
            if at >= len(mv):
                raise FormatError("rANS frame truncated in its byte table")
            b = mv[at]
            if b <= prev:
                raise FormatError("rANS byte table out of order")
            freq[b], at = _read_varint(mv, at + 1, _SCALE, "byte frequency")
            if not freq[b]:
                raise FormatError(f"rANS byte table lists byte {b} with frequency 0")
            prev = b
        if sum(freq) != _SCALE:
            raise FormatError(f"rANS byte table sums to {sum(freq)}, not {_SCALE}")
        payload, lengths = _read_lanes(mv, at, n)
        return _coder(impl).decode(payload, lengths, _tables(freq), n)
    except FormatError as e:
        raise FormatError(f"{what}: {e}") from None


def magnitude_table(codes: Data, r: int, hist: Array | None = None) -> list[int]:
    """The magnitude table an rANS frame of ``codes`` sends: :func:`magnitudes` normalised
    to :data:`TABLE_TOTAL` (no bytes: all on magnitude 0). ``hist``: the bytes' histogram,
    if already counted."""
    counts = magnitudes(codes, r, hist)
    return normalise(counts if any(counts) else [1, *counts[1:]], TABLE_TOTAL)


def declared(frame: Buffer, limit: int, what: str) -> int:
    """The bytes a frame (rANS, of symbols or of bytes, or zstd) declares, checked to be at
    most ``limit`` (FormatError naming ``what`` otherwise)."""
    mv = memoryview(frame).cast("B")
    if len(mv) and mv[0] in (RANS, BYTES):
        try:
            return _read_varint(mv, 1, limit, "byte count")[0]
        except FormatError as e:
            raise FormatError(f"{what}: {e}") from None
    return zstd.declared(mv, limit, what)


def decode_symbols(
    frame: Buffer,
    r: int,
    limit: int,
    what: str,
    rans: bool = True,
    *,
    impl: str | Coder | None = None,
) -> Array:
    """An r-plane step's symbol bytes (at most ``limit``) from their frame, rANS or zstd.

    ``rans=False`` (format 1) accepts zstd frames only. FormatError naming ``what`` if the
    frame is malformed; nothing larger than ``limit`` and the frame is allocated."""
    mv = memoryview(frame).cast("B")
    if not len(mv):
        raise FormatError(f"{what}: empty symbol frame")
    if mv[0] == ZSTD:
        return zstd.decompress_exact(mv, zstd.declared(mv, limit, what), what)
    if mv[0] != RANS:
        raise FormatError(f"{what}: symbol frame of unknown kind {mv[0]:#04x}")
    if not rans:
        raise FormatError(f"{what}: an rANS frame in a format-1 stream")
    try:
        return _decode_rans(mv, r, limit, _coder(impl))
    except FormatError as e:
        raise FormatError(f"{what}: {e}") from None


def _decode_rans(mv: memoryview, r: int, limit: int, coder: Coder) -> Array:
    n, at = _read_varint(mv, 1, limit, "symbol count")
    table = []
    for _ in range(1 << r):
        f, at = _read_varint(mv, at, TABLE_TOTAL, "magnitude frequency")
        table.append(f)
    if sum(table) != TABLE_TOTAL:
        raise FormatError(f"rANS magnitude table sums to {sum(table)}, not {TABLE_TOTAL}")
    payload, lengths = _read_lanes(mv, at, n)
    return coder.decode(payload, lengths, model(r, tuple(table)), n)


def _read_lanes(mv: memoryview, at: int, n: int) -> tuple[Array, list[int]]:
    """The lanes of ``n`` bytes from ``mv[at]`` to the frame's end: their payload and
    lengths (each at least its 4 state bytes)."""
    lengths = []
    for _ in range(lanes(n) - 1):
        size, at = _read_varint(mv, at, len(mv), "lane length")
        lengths.append(size)
    lengths.append(len(mv) - at - sum(lengths))
    if min(lengths) < 4:
        raise FormatError("rANS lanes shorter than their state, or overrunning the frame")
    return np.frombuffer(mv, np.uint8, offset=at), lengths


def _varint(v: int) -> bytes:
    """Unsigned LEB128."""
    if v < 0x80:
        return _SMALL[v]
    if v < 0x4000:
        return bytes((v & 0x7F | 0x80, v >> 7))
    out = bytearray()
    while v >= 0x80:
        out.append(v & 0x7F | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def _read_varint(mv: memoryview, at: int, most: int, name: str) -> tuple[int, int]:
    """The unsigned LEB128 at ``mv[at]`` (at most ``most``), and where the next begins."""
    value = shift = 0
    while True:
        if at >= len(mv):
            raise FormatError(f"rANS frame truncated in a {name}")
        byte = mv[at]
        value |= (byte & 0x7F) << shift
        at += 1
        if value > most:
            raise FormatError(f"rANS {name} {value} above {most}")
        if byte < 0x80:
            return value, at
        shift += 7


def _bytes(codes: Data) -> npt.NDArray[np.uint8]:
    if isinstance(codes, np.ndarray):
        return np.ascontiguousarray(codes, np.uint8).reshape(-1)
    return np.frombuffer(codes, np.uint8)
