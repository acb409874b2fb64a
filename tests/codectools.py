"""Helpers of the codec tests: a groupplane piece cut into its ``[u32 length][part]`` parts
and put back together."""

from __future__ import annotations

import struct
from collections.abc import Sequence


def split_parts(piece: bytes) -> list[bytes]:
    """The parts of a piece, as they were framed."""
    out, i = [], 0
    while i < len(piece):
        (n,) = struct.unpack_from("<I", piece, i)
        out.append(piece[i + 4 : i + 4 + n])
        i += 4 + n
    return out


def join_parts(parts: Sequence[bytes]) -> bytes:
    """A piece of ``parts``, each framed by its u32 length."""
    return b"".join(struct.pack("<I", len(p)) + p for p in parts)
