"""Cut level streams into chunks, in level order: chunk index order is priority order."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

from peerprog.manifest.model import Chunk, Level

MIN_AUTO_CHUNK = 16 * 1024
MAX_AUTO_CHUNK = 4 * 1024 * 1024


def chunk_size_for(source_bytes: int) -> int:
    """The chunk size for a model of ``source_bytes``: about 1/512 of it as a power of two,
    16 KiB to 4 MiB — small models still arrive in several pieces per level, models of a
    GB and more in pieces large enough that the cost of a request vanishes."""
    size = MIN_AUTO_CHUNK
    while size < MAX_AUTO_CHUNK and size * 2 * 512 <= source_bytes:
        size *= 2
    return size


def cut_levels(
    levels: Sequence[bytes | memoryview],
    chunk_size: int,
    quality: Sequence[dict[str, int]] = (),
) -> tuple[tuple[Level, ...], tuple[Chunk, ...]]:
    """The level table and chunk list for ``levels`` cut into ``chunk_size`` pieces.

    Each level starts a new chunk, so a level is complete exactly when its chunks are.
    """
    out_levels: list[Level] = []
    chunks: list[Chunk] = []
    for n, data in enumerate(levels):
        view = memoryview(data)
        first = len(chunks)
        for start in range(0, len(view), chunk_size):
            piece = view[start : start + chunk_size]
            chunks.append(Chunk(len(piece), hashlib.sha256(piece).digest()))
        q = dict(quality[n]) if n < len(quality) else {}
        out_levels.append(Level(n, first, len(chunks) - first, len(view), q))
    return tuple(out_levels), tuple(chunks)


def chunk_data(levels: Sequence[bytes | memoryview], chunk_size: int) -> list[memoryview]:
    """The chunks' bytes, in index order (views into ``levels``)."""
    out: list[memoryview] = []
    for data in levels:
        view = memoryview(data)
        out.extend(view[s : s + chunk_size] for s in range(0, len(view), chunk_size))
    return out
