"""The ``have`` stream of one model: which chunks a node verified, numbered, resumable.

A node numbers the chunks it holds 1, 2, 3, … in the order it verified them (those found
on disk at start first); a peer that has seen up to number ``seq`` asks for what came after
(``GET have?since=<epoch>:<seq>``, long-polled or streamed) and gets only the new indices,
so a reconnect resumes where it broke off, as Syncthing's ``/rest/events?since=``. The
*epoch* names one life of the log (a fresh random string at each start of the node): a
``since`` of another epoch, or ahead of the log, gets the whole bitfield instead.
Sans-IO: the shell does the HTTP; :func:`apply` hands a delta to a scheduler.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from peerprog.swarm.bitfield import Bitfield
from peerprog.swarm.scheduler import Scheduler

HAVE_PACE = 0.05
"""Least seconds between two answers with news to one asker's long-poll of a have stream:
news coming faster waits for the next answer (like a delayed ACK), so that a swarm trading
chunks many times a second sends a few have answers a second, each with many chunks,
instead of one per chunk; a first answer, or news after a quiet spell, goes at once. A
super-seeding origin's offers are not paced (its seeder batches them, and its upload
waits on them)."""


def paced_until(last: float | None, now: float) -> float:
    """When an answer with news may go to an asker that was last sent news at ``last``
    (None: never): ``now``, or :data:`HAVE_PACE` after ``last`` if that is later. The
    daemon's peer server and the simulator both pace by this."""
    return now if last is None else max(now, last + HAVE_PACE)


@dataclass(frozen=True)
class HaveDelta:
    """One answer of the have stream."""

    epoch: str
    seq: int
    """The number of the last chunk included: the next ``since``."""

    added: tuple[int, ...] = ()
    """Chunks verified after the asked ``since``, in order (when ``full`` is None)."""

    full: Bitfield | None = None
    """The whole bitfield, when the asked ``since`` could not be resumed."""


class HaveLog:
    """The server side: the verified chunks in order."""

    def __init__(self, n: int, have: Iterable[int] = (), *, epoch: str) -> None:
        self.epoch = epoch
        self._held = Bitfield(n)
        self._order: list[int] = []
        for i in have:
            self.add(i)

    @property
    def seq(self) -> int:
        """The number of the last chunk added (0: none)."""
        return len(self._order)

    def add(self, index: int) -> int | None:
        """Chunk ``index`` verified: its number, or ``None`` if it was held already."""
        if index in self._held:
            return None
        self._held.set(index)
        self._order.append(index)
        return len(self._order)

    def since(self, epoch: str, seq: int) -> HaveDelta:
        """What a peer that has seen ``epoch:seq`` is missing."""
        if epoch == self.epoch and 0 <= seq <= len(self._order):
            return HaveDelta(self.epoch, len(self._order), tuple(self._order[seq:]))
        return HaveDelta(self.epoch, len(self._order), full=self._held.copy())


def apply(scheduler: Scheduler, peer: str, delta: HaveDelta, now: float) -> None:
    """Hand one answer of ``peer``'s have stream to ``scheduler`` (a known peer)."""
    if delta.full is not None:
        scheduler.set_have(peer, delta.full, now)
    for index in delta.added:
        scheduler.add_have(peer, index, now)
