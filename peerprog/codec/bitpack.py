"""Pack n unsigned k-bit fields (1 ≤ k ≤ 64) into bytes, most significant bit first.

Packed form, always ``ceil(n * k / 8)`` bytes:

* k ≤ 8, or k a multiple of 8: the concatenation of every field's k bits, most significant
  first, zero-padded to a whole byte.
* any other k = 8q + r: the fields are split into two pieces, the high r bits and the low
  8q bits, and the packing is the r-bit packing of the high pieces followed by the 8q-bit
  packing of the low pieces (byte-aligned, so far faster than bit interleaving).

Everything is vectorised numpy over whole arrays. :func:`pack_into` and
:func:`unpack_range` work on a block of elements starting at a multiple of 8, so a long
array can be processed block by block (in cache) with the same result as all at once.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from peerprog.errors import FormatError

UIntArray = npt.NDArray[np.unsignedinteger[Any]]
Bytes = npt.NDArray[np.uint8]
Buffer = bytes | bytearray | memoryview | npt.NDArray[np.uint8]

_U64 = np.uint64
_UINTS: list[np.dtype[np.unsignedinteger[Any]]] = [
    np.dtype(f"u{1 if i == 0 else 2 if i == 1 else 4 if i < 4 else 8}") for i in range(8)
]


def packed_size(n: int, k: int) -> int:
    """The packed length in bytes of ``n`` fields of ``k`` bits."""
    return (n * k + 7) // 8


def uint_dtype(k: int) -> np.dtype[np.unsignedinteger[Any]]:
    """The narrowest numpy unsigned dtype holding ``k`` bits (1 ≤ k ≤ 64)."""
    _check_k(k)
    return _UINTS[(k - 1) // 8]


def pack(values: UIntArray, k: int) -> Bytes:
    """Pack the 1-D unsigned array ``values`` as ``k``-bit fields into a new ``uint8`` array.

    Every value must be below ``2**k`` (callers mask); higher bits would corrupt other
    fields. The result is contiguous, usable directly with ``bytes.join``.
    """
    v = np.ravel(values)
    out = np.empty(packed_size(v.size, k), np.uint8)
    pack_into(out, v, k, 0, v.size)
    return out


def unpack(data: Buffer, n: int, k: int, dtype: npt.DTypeLike | None = None) -> UIntArray:
    """Unpack ``n`` fields of ``k`` bits from ``data`` into a new 1-D array.

    ``dtype`` defaults to the narrowest unsigned dtype holding k bits. Raises
    :class:`FormatError` if ``data`` is not exactly :func:`packed_size` bytes. Padding bits
    in a last partial byte are ignored.
    """
    return unpack_range(data, n, k, 0, n, dtype)


def pack_into(out: Bytes, values: UIntArray, k: int, start: int, total: int) -> None:
    """Write elements ``start .. start+len(values)`` of a ``total``-element packing into
    ``out`` (the whole packed buffer, :func:`packed_size` (total, k) bytes).

    ``start`` must be a multiple of 8 and the block must end at ``total`` or at a multiple
    of 8 (blocks do not share bytes).
    """
    _check_k(k)
    count = values.size
    if start % 8 or start + count > total or ((start + count) % 8 and start + count != total):
        raise ValueError(f"bad block {start}+{count} of {total}")
    if out.size != packed_size(total, k):
        raise ValueError(f"output buffer of {out.size} bytes, need {packed_size(total, k)}")
    if count == 0:
        return
    pieces = _pieces(k)
    offset = 0
    for bits, shift in pieces:
        piece = values if len(pieces) == 1 else _piece_of(values, bits, shift)
        lo = offset + start * bits // 8
        hi = offset + packed_size(start + count, bits)
        out[lo:hi] = _pack1(piece, bits)
        offset += packed_size(total, bits)


def unpack_range(
    data: Buffer, total: int, k: int, start: int, count: int, dtype: npt.DTypeLike | None = None
) -> UIntArray:
    """Unpack elements ``start .. start+count`` of a ``total``-element packing ``data``.

    Same block rule as :func:`pack_into`. Raises :class:`FormatError` if ``data`` is not
    exactly :func:`packed_size` (total, k) bytes.
    """
    _check_k(k)
    if total < 0 or start % 8 or count < 0 or start + count > total:
        raise ValueError(f"bad block {start}+{count} of {total}")
    raw = data if isinstance(data, np.ndarray) else np.frombuffer(data, np.uint8)
    want = packed_size(total, k)
    if raw.size != want:
        raise FormatError(
            f"packed {k}-bit data for {total} elements is {raw.size} bytes, expected {want}"
        )
    out_dtype = uint_dtype(k) if dtype is None else np.dtype(dtype)
    if count == 0:
        return np.zeros(0, out_dtype)
    pieces = _pieces(k)
    result: UIntArray | None = None
    offset = 0
    for bits, shift in pieces:
        lo = offset + start * bits // 8
        hi = offset + packed_size(start + count, bits)
        part = _unpack1(raw[lo:hi], count, bits)
        if len(pieces) == 1:
            return part.astype(out_dtype, copy=False)
        part = part.astype(out_dtype)
        if shift:
            part <<= np.asarray(shift, out_dtype)
            result = part
        else:
            assert result is not None
            result |= part
        offset += packed_size(total, bits)
    assert result is not None
    return result


def _check_k(k: int) -> None:
    if not 1 <= k <= 64:
        raise ValueError(f"field width must be in 1..64, got {k}")


def _pieces(k: int) -> list[tuple[int, int]]:
    """(bits, shift) of the pieces a k-bit field is stored as, most significant first."""
    if k <= 8 or k % 8 == 0:
        return [(k, 0)]
    q, r = divmod(k, 8)
    return [(r, 8 * q), (8 * q, 0)]


def _piece_of(values: UIntArray, bits: int, shift: int) -> UIntArray:
    if shift:
        return (values >> values.dtype.type(shift)).astype(uint_dtype(bits))
    if bits in (8, 16, 32):  # the narrowing cast drops exactly the high bits
        return values.astype(uint_dtype(bits))
    return values & values.dtype.type((1 << bits) - 1)


def _pack1(v: UIntArray, k: int) -> Bytes:
    """Pack one piece: k ≤ 8 or a multiple of 8."""
    if k == 1:
        return np.packbits(v.astype(np.bool_, copy=False))
    if k % 8 == 0:
        q = k // 8
        container = uint_dtype(k)
        be = v.astype(container.newbyteorder(">"), copy=False).view(np.uint8)
        if q == container.itemsize:
            return be
        return np.ascontiguousarray(be.reshape(v.size, container.itemsize)[:, -q:]).reshape(-1)
    v8 = v.astype(np.uint8, copy=False)
    if 8 % k == 0:
        return _pack_subbyte(v8, k)
    return _pack_group(v8, k)


def _unpack1(raw: Bytes, n: int, k: int) -> UIntArray:
    if k == 1:
        return np.unpackbits(raw, count=n)
    if k % 8 == 0:
        q = k // 8
        container = uint_dtype(k)
        if q == container.itemsize:
            return raw.view(container.newbyteorder(">")).astype(container)
        buf = np.zeros((n, container.itemsize), np.uint8)
        buf[:, -q:] = raw.reshape(n, q)
        return buf.view(container.newbyteorder(">")).reshape(n).astype(container)
    if 8 % k == 0:
        return _unpack_subbyte(raw, n, k)
    return _unpack_group(raw, n, k)


def _pad8(v: Bytes) -> Bytes:
    if v.size % 8:
        v = np.concatenate([v, np.zeros(8 - v.size % 8, np.uint8)])
    return v


def _pack_subbyte(v: Bytes, k: int) -> Bytes:
    """k in (2, 4): each byte holds 8/k whole fields."""
    per = 8 // k
    cols = _pad8(v).reshape(-1, per)
    out = cols[:, 0] << np.uint8(8 - k)
    for j in range(1, per):
        out |= cols[:, j] << np.uint8(8 - k * (j + 1))
    return out[: packed_size(v.size, k)]


def _unpack_subbyte(raw: Bytes, n: int, k: int) -> Bytes:
    per = 8 // k
    mask = np.uint8((1 << k) - 1)
    out = np.empty((raw.size, per), np.uint8)
    for j in range(per):
        np.bitwise_and(raw >> np.uint8(8 - k * (j + 1)), mask, out=out[:, j])
    return out.reshape(-1)[:n]


def _lane_masks(k: int) -> tuple[np.uint64, np.uint64]:
    m1 = sum(((1 << k) - 1) << (16 * i) for i in range(4))
    m2 = sum(((1 << (2 * k)) - 1) << (32 * i) for i in range(2))
    return _U64(m1), _U64(m2)


def _pack_group(v: Bytes, k: int) -> Bytes:
    """k in (3, 5, 6, 7): 8 fields (one per byte of a big-endian uint64) are squeezed into
    its low 8k bits in three pairwise merge steps, then its k low bytes are kept."""
    n = v.size
    x = _pad8(v).view(">u8").astype(np.uint64)
    b8, b16, b32 = _U64(0x00FF00FF00FF00FF), _U64(0x0000FFFF0000FFFF), _U64(0xFFFFFFFF)
    x = (((x >> _U64(8)) & b8) << _U64(k)) | (x & b8)
    x = (((x >> _U64(16)) & b16) << _U64(2 * k)) | (x & b16)
    x = ((x >> _U64(32)) << _U64(4 * k)) | (x & b32)
    be = x.astype(">u8").view(np.uint8).reshape(-1, 8)[:, 8 - k :]
    return np.ascontiguousarray(be).reshape(-1)[: packed_size(n, k)]


def _unpack_group(raw: Bytes, n: int, k: int) -> Bytes:
    g = -(-n // 8)
    buf = np.zeros((g, 8), np.uint8)
    if raw.size == g * k:
        buf[:, 8 - k :] = raw.reshape(g, k)
    else:
        padded = np.zeros(g * k, np.uint8)
        padded[: raw.size] = raw
        buf[:, 8 - k :] = padded.reshape(g, k)
    x = buf.view(">u8").reshape(g).astype(np.uint64)
    m1, m2 = _lane_masks(k)
    x = ((x >> _U64(4 * k)) << _U64(32)) | (x & _U64((1 << (4 * k)) - 1))
    x = (((x >> _U64(2 * k)) & m2) << _U64(16)) | (x & m2)
    x = (((x >> _U64(k)) & m1) << _U64(8)) | (x & m1)
    return x.astype(">u8").view(np.uint8)[:n]
