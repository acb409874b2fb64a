"""A fixed-size set of chunk indices, as held by us or announced by a peer (``GET /have``).

The wire form is BitTorrent's: one bit per chunk, the most significant bit of byte 0 is
chunk 0, and the last byte is padded with zero bits. :meth:`Bitfield.from_bytes` refuses a
wrong length or set padding bits with :class:`~peerprog.errors.PeerFault`: the bytes come
from a peer, so a malformed bitfield is the peer's fault.
"""

from __future__ import annotations

from peerprog.errors import PeerFault

# _OFFSETS[b] = the positions (0 = most significant) of the set bits of byte b.
_OFFSETS: tuple[tuple[int, ...], ...] = tuple(
    tuple(k for k in range(8) if b & (0x80 >> k)) for b in range(256)
)


def _set_bits(data: bytes | bytearray) -> list[int]:
    """The indices of the set bits of ``data`` (MSB-first), in increasing order."""
    out: list[int] = []
    for j, byte in enumerate(data):
        if byte:
            base = j << 3
            out.extend(base + k for k in _OFFSETS[byte])
    return out


class Bitfield:
    """A set of indices in ``range(n)``, one bit each (``bytearray`` backed).

    ``n`` is fixed at creation. Indices outside ``range(n)`` are never members;
    :meth:`set` and :meth:`clear` raise ``IndexError`` for them.
    """

    __slots__ = ("_bits", "_n")

    def __init__(self, n: int) -> None:
        """An empty bitfield of ``n`` chunks."""
        if n < 0:
            raise ValueError(f"bitfield size must be >= 0, got {n}")
        self._n = n
        self._bits = bytearray((n + 7) >> 3)

    @classmethod
    def full(cls, n: int) -> Bitfield:
        """A bitfield of ``n`` chunks with every chunk set."""
        bf = cls(n)
        if n:
            bf._bits[:] = b"\xff" * len(bf._bits)
            pad = (-n) % 8
            bf._bits[-1] &= (0xFF << pad) & 0xFF
        return bf

    @classmethod
    def from_bytes(cls, n: int, data: bytes | bytearray | memoryview) -> Bitfield:
        """Parse the wire form of a bitfield of ``n`` chunks.

        Raises :class:`~peerprog.errors.PeerFault` if ``data`` is not exactly
        ``ceil(n / 8)`` bytes or if a padding bit is set.
        """
        raw = bytes(data)
        expected = (n + 7) >> 3
        if len(raw) != expected:
            raise PeerFault(
                f"have bitfield is {len(raw)} bytes, expected {expected} for {n} chunks"
            )
        pad = (-n) % 8
        if pad and raw[-1] & ((1 << pad) - 1):
            raise PeerFault(f"have bitfield for {n} chunks has padding bits set")
        bf = cls(n)
        bf._bits[:] = raw
        return bf

    def _check(self, i: int) -> None:
        if not 0 <= i < self._n:
            raise IndexError(f"chunk index {i} out of range for {self._n} chunks")

    def set(self, i: int) -> None:
        """Add index ``i``."""
        self._check(i)
        self._bits[i >> 3] |= 0x80 >> (i & 7)

    def clear(self, i: int) -> None:
        """Remove index ``i``."""
        self._check(i)
        self._bits[i >> 3] &= ~(0x80 >> (i & 7)) & 0xFF

    def __contains__(self, i: object) -> bool:
        if not isinstance(i, int) or not 0 <= i < self._n:
            return False
        return bool(self._bits[i >> 3] & (0x80 >> (i & 7)))

    def __len__(self) -> int:
        """The fixed size ``n`` (not the number of set indices: see :meth:`count`)."""
        return self._n

    def count(self) -> int:
        """How many indices are set."""
        return int.from_bytes(self._bits, "big").bit_count()

    def indices(self) -> list[int]:
        """The set indices, in increasing order."""
        return _set_bits(self._bits)

    def changed(self, other: Bitfield) -> list[int]:
        """The indices set in exactly one of ``self`` and ``other`` (same size required)."""
        if other._n != self._n:
            raise ValueError(f"bitfield sizes differ: {self._n} and {other._n}")
        if self._bits == other._bits:
            return []
        x = int.from_bytes(self._bits, "big") ^ int.from_bytes(other._bits, "big")
        return _set_bits(x.to_bytes(len(self._bits), "big"))

    def mask(self) -> int:
        """The set as one integer: chunk ``i`` is bit ``8 * ceil(n / 8) - 1 - i`` (the wire
        form read big-endian), for fast membership tests of many indices at once."""
        return int.from_bytes(self._bits, "big")

    def to_bytes(self) -> bytes:
        """The wire form: ``ceil(n / 8)`` bytes, MSB of byte 0 is index 0, zero padding."""
        return bytes(self._bits)

    def copy(self) -> Bitfield:
        """An independent copy."""
        bf = Bitfield(self._n)
        bf._bits[:] = self._bits
        return bf

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Bitfield):
            return NotImplemented
        return self._n == other._n and self._bits == other._bits

    def __repr__(self) -> str:
        return f"<Bitfield {self.count()}/{self._n}>"
