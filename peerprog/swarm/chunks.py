"""The chunk table: what we hold, how many peers hold each chunk, level by level.

Pure bookkeeping kept up to date incrementally, so that the picker (``picker.py``, where
the policy lives) can answer "which level now, which chunks first" without scanning every
peer's bitfield on every call.
"""

from __future__ import annotations

import bisect
import random
import struct
from collections.abc import Iterable, Sequence

from peerprog.swarm.bitfield import Bitfield

RUN = 8
"""Most consecutive chunks that share a tie-break key (see :attr:`ChunkTable.tiebreak`)."""


class ChunkTable:
    """Held chunks, levels, availability (holder counts), per-chunk failure memory."""

    def __init__(
        self,
        level_ranges: Sequence[range],
        chunk_sizes: Sequence[int],
        have: Iterable[int],
        seed: int | None,
    ) -> None:
        n = len(chunk_sizes)
        levels = tuple(level_ranges)
        stop = 0
        for level, r in enumerate(levels):
            if r.step != 1 or r.start != stop or r.stop < r.start:
                raise ValueError(f"level {level} range {r!r} does not follow on at {stop}")
            stop = r.stop
        if stop != n:
            raise ValueError(f"levels cover {stop} chunks but there are {n} chunk sizes")
        if any(s < 0 for s in chunk_sizes):
            raise ValueError("chunk sizes must be >= 0")
        self.n = n
        self.sizes = tuple(chunk_sizes)
        self.levels = levels
        self.mean_size = max(1.0, sum(self.sizes) / n) if n else 1.0
        self._starts = [r.start for r in levels]
        self.held = Bitfield(n)
        self.is_held = [False] * n
        """``held`` as a list, for the picker's hot loops."""
        self.missing = [len(r) for r in levels]
        """Per level: chunks we do not hold."""
        self.missing_total = sum(self.missing)
        """Chunks we do not hold."""
        self.avail = [0] * n
        """Per chunk: known usable peers with a bitfield that have it (seeds not included)."""
        self.seeds = 0
        """Known usable peers that have every chunk (``have=None``)."""
        self.fetchable_missing = [0] * len(levels)
        """Per level: missing chunks with ``avail > 0``."""
        self.version = [0] * len(levels)
        """Per level: bumped whenever the availability of one of its chunks changes."""
        self.failed_by: dict[int, set[str]] = {}
        """Per chunk: peers whose request for it failed (see the picker's rule 5)."""
        # A random but seeded key per run of consecutive chunks, then the chunk's place in
        # its run: rarity ties are broken differently on each node, while chunks of equal
        # rarity come in runs that one request can fetch (see picker.py, rule 2). A level
        # has runs of up to RUN chunks, and at least 16 runs, so nodes still start apart.
        rng = random.Random(seed)
        width = struct.calcsize("I")
        keys = memoryview(rng.randbytes(width * n)).cast("I") if n else memoryview(b"")
        self.tiebreak = [0] * n
        for r in levels:
            run = max(1, min(RUN, len(r) // 16))
            for i in r:
                start = r.start + (i - r.start) // run * run
                self.tiebreak[i] = (keys[start] >> 3) * RUN + (i - start)
        for i in have:
            if not 0 <= i < n:
                raise ValueError(f"held chunk {i} out of range for {n} chunks")
            self.mark_held(i)

    # -- queries ---------------------------------------------------------------------------

    def level_of(self, index: int) -> int:
        return bisect.bisect_right(self._starts, index) - 1

    def rarity(self, index: int) -> int:
        """How many known usable peers hold chunk ``index`` (a seed holds every chunk)."""
        return self.avail[index] + self.seeds

    def level_fetchable(self, level: int) -> bool:
        """Does ``level`` miss a chunk that some known usable peer holds?"""
        if self.seeds:
            return self.missing[level] > 0
        return self.fetchable_missing[level] > 0

    # -- updates ---------------------------------------------------------------------------

    def mark_held(self, index: int) -> bool:
        """We hold chunk ``index`` now; False if we already did."""
        if index in self.held:
            return False
        self.held.set(index)
        self.is_held[index] = True
        level = self.level_of(index)
        self.missing[level] -= 1
        self.missing_total -= 1
        if self.avail[index]:
            self.fetchable_missing[level] -= 1
        self.failed_by.pop(index, None)
        return True

    def add_holder(self, have: Bitfield | None) -> None:
        """A peer with this ``have`` became usable."""
        if have is None:
            self._seeds_changed(+1)
        else:
            self._bump(have.indices(), +1)

    def remove_holder(self, have: Bitfield | None) -> None:
        """A peer with this ``have`` stopped being usable (removed or banned)."""
        if have is None:
            self._seeds_changed(-1)
        else:
            self._bump(have.indices(), -1)

    def add_chunk_holder(self, index: int) -> None:
        """A usable peer with a bitfield announced one more chunk."""
        self._bump([index], +1)

    def replace_holder(self, old: Bitfield | None, new: Bitfield | None) -> None:
        """A usable peer's ``have`` changed from ``old`` to ``new``."""
        if old is None or new is None:
            self.remove_holder(old)
            self.add_holder(new)
            return
        changed = old.changed(new)
        self._bump([i for i in changed if i in new], +1)
        self._bump([i for i in changed if i not in new], -1)

    def _seeds_changed(self, delta: int) -> None:
        self.seeds += delta
        assert self.seeds >= 0
        for level in range(len(self.levels)):
            self.version[level] += 1

    def _bump(self, indices: list[int], delta: int) -> None:
        avail, held = self.avail, self.is_held
        level, current = -1, range(0)
        for i in indices:
            if i not in current:
                level = self.level_of(i)
                current = self.levels[level]
                self.version[level] += 1
            before = avail[i]
            avail[i] = before + delta
            assert avail[i] >= 0, f"availability of chunk {i} below zero"
            if not held[i] and (before == 0) != (avail[i] == 0):
                self.fetchable_missing[level] += 1 if before == 0 else -1
