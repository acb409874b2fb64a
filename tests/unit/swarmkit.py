"""Builders shared by the scheduler's pure tests: levels, schedulers, bitfields."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from peerprog.swarm import Bitfield, Request, Scheduler, SchedulerConfig

KIB = 1024
MIB = 1024 * KIB


def levels_of(*counts: int) -> list[range]:
    """Consecutive chunk ranges of ``counts`` chunks each."""
    ranges, start = [], 0
    for count in counts:
        ranges.append(range(start, start + count))
        start += count
    return ranges


def make(
    counts: Sequence[int],
    size: int = 256 * KIB,
    have: Sequence[int] = (),
    seed: int = 1,
    **config: Any,
) -> Scheduler:
    """A scheduler for levels of ``counts`` chunks of ``size`` bytes."""
    sizes = [size] * sum(counts)
    return Scheduler(levels_of(*counts), sizes, have, SchedulerConfig(**config), seed=seed)


def bits(n: int, members: Sequence[int]) -> Bitfield:
    """A bitfield of ``n`` chunks holding ``members``."""
    bf = Bitfield(n)
    for i in members:
        bf.set(i)
    return bf


def pairs(requests: Sequence[Request]) -> set[tuple[str, int]]:
    """The (peer, chunk) of each request."""
    return {(r.peer, r.index) for r in requests}
