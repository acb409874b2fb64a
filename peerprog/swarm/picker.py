"""Which chunk next, and from whom. Every rule of that choice lives in this file (what a
super-seeding seed shows each edge, and so lets it ask for, is its side: ``seeding.py``).

Words: a peer is *known* once added, until it is removed or banned (the shell removes
the peers its peer table judges unhealthy). A known peer *holds* a chunk if its ``have``
has it (``have=None``: a seed or web seed, holds every chunk). A chunk is *fetchable* if
we miss it and some known peer holds it — whether that peer is free, busy, backing off
after a failure or has failed this very chunk. A peer is *free* if it is known, not backing
off and takes more requests: it has none in flight, or its free places hold
``refill_bytes`` (at most half its budget; ``peers.takes_more``); it is then given requests
up to its budget, so a fast peer gets runs of adjacent small chunks. The end game (rule 4)
may use any peer with room in its budget.

1. **Level order.** The *active level* is the lowest level with a fetchable chunk. Chunks
   are requested from the active level first. Hence:

   - no chunk of level n+1 is requested while a chunk of level n is missing, fetchable and
     not yet requested, even if all its holders are busy, backing off or failed it: waiting
     is right, they will be asked again;
   - missing chunks that NO known peer holds do not hold the node back: the active level
     moves past them to the first level with a fetchable chunk, so the node keeps making
     progress and can serve what it gets. As soon as a peer holding a lower-level chunk is
     known, the active level drops back to it (requests already in flight for the higher
     level run to completion).

   **Soft barrier.** The pipe must not drain while the last chunks of the active level
   arrive, nor idle while the active level waits for busy holders: a free peer that is left
   with nothing of the active level to give (we hold, or have in flight, every
   active-level chunk it holds) and has *no* request of the active level in flight gets
   requests of the next ``lookahead_levels`` levels, in order, rarest first as in rule 2.
   A link that carries an active-level chunk is never shared with a later level, so the
   active level arrives no later than with a strict barrier; when the active level is all
   in flight, this starts the next level's rarest chunks (``lookahead_levels = 0``: a
   strict barrier, level n+1 starts only when level n has no fetchable missing chunk).

2. **Rarest first.** Inside the active level, chunks not in flight are taken in increasing
   order of *rarity* (how many known peers hold it; a seed counts for every chunk), ties
   broken by a random key per run of consecutive chunks (up to 8, and at least 16 runs per
   level) drawn from the scheduler's ``seed``, then by place in the run: deterministic for a
   given seed, different from node to node so that nodes fetch different chunks first and
   can trade them, and in runs of adjacent chunks that the shell can ask of a peer in one
   request.

3. **Whom to ask.** Each chunk, in that order, goes to a free peer that holds it: first
   to other peers (fetching or finished), and only when none of them is free to a *last
   resort*: the origin (the publisher's seed) or a web seed — so the origin's upload goes
   to chunks nobody else has, and each model leaves the server about once, while a peer
   that finished keeps passing the model on as any other. Among those, the
   lowest load after the request, ``(in flight + 1) / budget``, wins; ties go to the faster
   measured rate, then to the peer name. A peer's budget grows with its measured rate
   (``peers.py``), so fast peers get more requests. The walk stops when no peer is free or
   ``max_in_flight_total`` is reached. A chunk that no free peer can take is skipped (it
   waits for a holder to become free).

4. **End game.** When no fetchable chunk of the active level is left unrequested and at most
   ``endgame_chunks`` of its chunks are in flight, each of them may be requested from one
   more, different, free holder (at most two requests per chunk), fewest copies first, then
   the one waiting longest. Whichever copy arrives first wins; ``on_chunk`` returns the
   other for cancelling.

5. **Don't ask twice.** A peer whose request for a chunk failed or timed out is not asked
   for that chunk again while another known holder has not failed it. When every known
   holder has failed it, the memory of that chunk is cleared and all may be asked again.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass

from peerprog.swarm.bitfield import Bitfield
from peerprog.swarm.chunks import ChunkTable
from peerprog.swarm.request import Request

MAX_COPIES = 2
"""Most requests in flight for one chunk (rule 4: one more in the end game)."""


@dataclass
class Slot:
    """A free peer as the picker sees it (the picker updates ``in_flight`` as it assigns)."""

    peer: str
    have: Bitfield | None
    in_flight: int
    budget: int
    rate: float

    complete: bool = False

    refill: bool = True
    """It takes more requests now (``peers.takes_more``); else only end-game copies."""

    mask: int = -1
    """``have`` as an integer (``Bitfield.mask``; -1: every chunk); the picker sets it from
    ``have`` unless ``masked``."""

    masked: bool = False
    """The caller set ``mask`` already."""

    top: int = 0
    """The bit of chunk 0 in ``mask``."""

    def holds(self, index: int) -> bool:
        return bool((self.mask >> (self.top - index)) & 1)

    def load_key(self) -> tuple[bool, float, float, str]:
        return (self.complete, (self.in_flight + 1) / self.budget, -self.rate, self.peer)


class Picker:
    """Applies the rules above to a :class:`ChunkTable`; caches the rarest-first order."""

    def __init__(self, table: ChunkTable, endgame_chunks: int, lookahead_levels: int = 0) -> None:
        self._table = table
        self._endgame_chunks = endgame_chunks
        self._lookahead = lookahead_levels
        self._orders: dict[int, tuple[int, list[int], int]] = {}
        """Per level: (availability version, rarest-first order, cursor past held chunks)."""

    def active_level(self) -> int | None:
        """Rule 1: the lowest level with a fetchable chunk; ``None`` if there is none."""
        for level in range(len(self._table.levels)):
            if self._table.level_fetchable(level):
                return level
        return None

    def pick(
        self,
        slots: list[Slot],
        flying: Mapping[int, Mapping[str, Request]],
        holders: Callable[[int], Iterable[str]],
        room: int,
    ) -> list[tuple[str, int]]:
        """Choose up to ``room`` new (peer, chunk) requests.

        ``slots`` are the free peers, ``flying`` the requests in flight by chunk and peer,
        ``holders(i)`` the known peers that hold chunk ``i``.
        """
        picks: list[tuple[str, int]] = []
        level = self.active_level()
        roomy = [s for s in slots if s.in_flight < s.budget]
        free = [s for s in roomy if s.refill]
        if level is None or room <= 0 or not roomy:
            return picks
        if not free:  # only end-game copies: every fetchable chunk of the level in flight?
            span, held = self._table.levels[level], self._table.is_held
            in_flight = sum(1 for i in flying if i in span and not held[i])
            if in_flight < self._table.fetchable_missing[level]:
                return picks
        top = 8 * ((self._table.n + 7) >> 3) - 1
        union = 0
        for roomy_slot in roomy:
            if not roomy_slot.masked:
                have = roomy_slot.have
                roomy_slot.mask = -1 if have is None else have.mask()
            roomy_slot.top = top
            if roomy_slot.refill:
                union |= roomy_slot.mask
        fresh: dict[int, set[str]] = {}
        pool_left = False
        for index in self._rarest_first(level):
            if index in flying:
                continue
            if not (union >> (top - index)) & 1:  # no free peer holds it: skip at once
                pool_left = True
                continue
            slot = self._choose(index, free, holders, exclude=frozenset())
            if slot is None:
                pool_left = True
                continue
            picks.append((slot.peer, index))
            fresh[index] = {slot.peer}
            room -= 1
            if room == 0 or not free:
                return picks
        if not pool_left:
            roomy = [s for s in roomy if s.in_flight < s.budget]
            room = self._end_game(level, roomy, flying, fresh, holders, room, picks)
            free = [s for s in free if s.in_flight < s.budget]
        if room > 0 and free and self._lookahead:
            self._look_ahead(level, free, flying, holders, room, picks)
        return picks

    # -- rule 1, soft barrier --------------------------------------------------------------

    def _look_ahead(
        self,
        level: int,
        free: list[Slot],
        flying: Mapping[int, Mapping[str, Request]],
        holders: Callable[[int], Iterable[str]],
        room: int,
        picks: list[tuple[str, int]],
    ) -> None:
        """The next levels' rarest chunks, from free peers idle for the active level."""
        span = self._table.levels[level]
        busy = {peer for i, by_peer in flying.items() if i in span for peer in by_peer}
        busy.update(peer for peer, i in picks if i in span)
        idle = [s for s in free if s.peer not in busy]
        union = 0
        for idle_slot in idle:
            union |= idle_slot.mask
        top = 8 * ((self._table.n + 7) >> 3) - 1
        last = min(len(self._table.levels), level + 1 + self._lookahead)
        for ahead in range(level + 1, last):
            if not idle:
                return
            for index in self._rarest_first(ahead):
                if index in flying or not (union >> (top - index)) & 1:
                    continue  # in flight, or no idle peer holds it
                slot = self._choose(index, idle, holders, exclude=frozenset())
                if slot is None:
                    continue
                if slot.in_flight >= slot.budget and slot in free:
                    free.remove(slot)
                picks.append((slot.peer, index))
                room -= 1
                if room == 0 or not idle:
                    return

    # -- rule 2 ----------------------------------------------------------------------------

    def _rarest_first(self, level: int) -> Iterator[int]:
        """The missing, fetchable chunks of ``level``, rarest first (rule 2)."""
        table = self._table
        version, order, cursor = self._orders.get(level, (-1, [], 0))
        if version != table.version[level]:
            avail, held, tiebreak = table.avail, table.is_held, table.tiebreak
            fetchable = (lambda i: True) if table.seeds else avail.__getitem__
            order = [i for i in table.levels[level] if not held[i] and fetchable(i)]
            # Seeds add the same count to every chunk: sorting by ``avail`` is by rarity.
            order.sort(key=lambda i: (avail[i], tiebreak[i]))
            version, cursor = table.version[level], 0
        held = table.is_held
        while cursor < len(order) and held[order[cursor]]:
            cursor += 1
        self._orders[level] = (version, order, cursor)
        for pos in range(cursor, len(order)):
            index = order[pos]
            if not held[index]:
                yield index

    # -- rules 3 and 5 ---------------------------------------------------------------------

    def _choose(
        self,
        index: int,
        free: list[Slot],
        holders: Callable[[int], Iterable[str]],
        exclude: frozenset[str] | set[str],
    ) -> Slot | None:
        """The free peer to ask for ``index`` (rule 3, skipping peers that failed it: rule 5);
        ``None`` if none can. Counts the request against the chosen slot."""
        failed = self._table.failed_by.get(index)
        if failed and all(peer in failed for peer in holders(index)):
            del self._table.failed_by[index]
            failed = None
        best: Slot | None = None
        best_key: tuple[bool, float, float, str] | None = None
        for slot in free:
            if not (slot.mask >> (slot.top - index)) & 1:  # slot.holds(index), inlined
                continue
            if slot.peer in exclude or (failed and slot.peer in failed):
                continue
            key = slot.load_key()
            if best_key is None or key < best_key:
                best, best_key = slot, key
        if best is not None:
            best.in_flight += 1
            if best.in_flight >= best.budget:
                free.remove(best)
        return best

    # -- rule 4 ----------------------------------------------------------------------------

    def _end_game(
        self,
        level: int,
        free: list[Slot],
        flying: Mapping[int, Mapping[str, Request]],
        fresh: dict[int, set[str]],
        holders: Callable[[int], Iterable[str]],
        room: int,
        picks: list[tuple[str, int]],
    ) -> int:
        """Rule 4; returns the room left."""
        table = self._table
        span = table.levels[level]
        asked: dict[int, set[str]] = {
            i: set(by_peer) for i, by_peer in flying.items() if i in span and not table.is_held[i]
        }
        for i, peers in fresh.items():
            asked.setdefault(i, set()).update(peers)
        if not asked or len(asked) > self._endgame_chunks:
            return room

        def first_sent(i: int) -> float:
            by_peer = flying.get(i)
            return min(r.sent_at for r in by_peer.values()) if by_peer else math.inf

        order = sorted(asked, key=lambda i: (len(asked[i]), first_sent(i), table.tiebreak[i]))
        for index in order:
            if len(asked[index]) >= MAX_COPIES:
                continue
            slot = self._choose(index, free, holders, exclude=asked[index])
            if slot is None:
                continue
            picks.append((slot.peer, index))
            room -= 1
            if room == 0 or not free:
                return room
        return room
