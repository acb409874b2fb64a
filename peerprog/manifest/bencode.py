"""Bencoding (BEP 3), as torrents use it: integers, byte strings, lists and dictionaries.

:func:`encode` writes the canonical form (dictionary keys sorted as raw bytes), so that the
same torrent always encodes to the same bytes and hashes to the same info-hash. :func:`decode`
reads untrusted input strictly: one value and nothing after it, no leading zeros, sorted
unique keys, bounded nesting; anything else is a :class:`BencodeError` naming what is wrong.
"""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence

from peerprog.errors import FormatError

Value = int | bytes | list["Value"] | dict[bytes, "Value"]
"""A decoded value: strings stay bytes (keys too)."""

MAX_DEPTH = 64


class BencodeError(FormatError):
    """Bytes that are not one canonical bencoded value."""


def encode(value: object) -> bytes:
    """``value`` bencoded: ``int``, ``bytes`` / ``str`` (UTF-8), sequences and mappings
    (keys ``bytes`` or ``str``, written sorted)."""
    out: list[bytes] = []
    _encode(value, out)
    return b"".join(out)


def _encode(value: object, out: list[bytes]) -> None:
    if isinstance(value, bool):
        raise TypeError("bencode has no booleans")
    if isinstance(value, int):
        out.append(b"i%de" % value)
    elif isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        out.append(b"%d:" % len(raw))
        out.append(raw)
    elif isinstance(value, str):
        _encode(value.encode(), out)
    elif isinstance(value, Mapping):
        items = sorted(
            (k.encode() if isinstance(k, str) else bytes(k), v) for k, v in value.items()
        )
        if any(a[0] == b[0] for a, b in itertools.pairwise(items)):
            raise ValueError("a dictionary with the same key twice")
        out.append(b"d")
        for k, v in items:
            _encode(k, out)
            _encode(v, out)
        out.append(b"e")
    elif isinstance(value, Sequence):
        out.append(b"l")
        for v in value:
            _encode(v, out)
        out.append(b"e")
    else:
        raise TypeError(f"cannot bencode a {type(value).__name__}")


def decode(data: bytes) -> Value:
    """The one value ``data`` holds; :class:`BencodeError` unless it is canonical."""
    value, end = _decode(data, 0, 0)
    if end != len(data):
        raise BencodeError(f"bencode: {len(data) - end} bytes after the value")
    return value


def _decode(data: bytes, i: int, depth: int) -> tuple[Value, int]:
    if depth > MAX_DEPTH:
        raise BencodeError("bencode: nested too deeply")
    if i >= len(data):
        raise BencodeError("bencode: ends early")
    c = data[i]
    if c == ord("i"):
        end = data.find(b"e", i + 1)
        if end < 0:
            raise BencodeError("bencode: an integer without its end")
        return _integer(data[i + 1 : end]), end + 1
    if c == ord("l"):
        items: list[Value] = []
        i += 1
        while i < len(data) and data[i] != ord("e"):
            v, i = _decode(data, i, depth + 1)
            items.append(v)
        if i >= len(data):
            raise BencodeError("bencode: a list without its end")
        return items, i + 1
    if c == ord("d"):
        out: dict[bytes, Value] = {}
        last: bytes | None = None
        i += 1
        while i < len(data) and data[i] != ord("e"):
            k, i = _decode(data, i, depth + 1)
            if not isinstance(k, bytes):
                raise BencodeError("bencode: a dictionary key that is not a string")
            if last is not None and k <= last:
                raise BencodeError(f"bencode: dictionary key {k[:40]!r} out of order or repeated")
            out[k], i = _decode(data, i, depth + 1)
            last = k
        if i >= len(data):
            raise BencodeError("bencode: a dictionary without its end")
        return out, i + 1
    if ord("0") <= c <= ord("9"):
        colon = data.find(b":", i, i + 21)
        if colon < 0:
            raise BencodeError("bencode: a string without its length")
        n = _integer(data[i:colon])
        if n < 0 or colon + 1 + n > len(data):
            raise BencodeError("bencode: a string longer than what follows")
        return data[colon + 1 : colon + 1 + n], colon + 1 + n
    raise BencodeError(f"bencode: unexpected byte {bytes([c])!r} at {i}")


def _integer(text: bytes) -> int:
    digits = text[1:] if text.startswith(b"-") else text
    if not digits or not digits.isdigit() or len(digits) > 20:
        raise BencodeError(f"bencode: {text[:24]!r} is not an integer")
    if (digits.startswith(b"0") and len(digits) > 1) or text == b"-0":
        raise BencodeError(f"bencode: integer {text[:24]!r} is not canonical")
    return int(text)
