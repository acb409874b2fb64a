"""Super-seeding (BEP 16's idea) for a complete holder: which chunks to show each edge.

A seed that shows every edge every chunk serves the same chunk to many edges before they
can trade it. Instead, the seed shows each edge (its ``have`` as that edge sees it: the
answer to ``GET have`` and the deltas it pushes) only the chunks it *offers* that edge, and
the rule of the offers is this file. Sans-IO: every method takes ``now``.

Words: a chunk's *copies* are the edges known to hold it (from their pushed ``have``) plus
the live offers of it (offered, not yet held, and either requested or offered less than
``offer_ttl`` ago). An edge is *interested* while it misses a chunk. Its *level* is the
lowest level in which it misses a chunk.

1. **Few at a time.** The seed has at most ``slots`` live offers in all that it has not
   sent yet (the transfers its upload is split among), and each edge at most ``depth``: a
   chunk leaves the seed at full speed and its first holder can pass it on at once, rather
   than every chunk leaving slowly together. An offer sent (:meth:`SuperSeeder.on_sent`)
   frees its place at once: it stays a copy until the edge's ``have`` says it arrived (or
   ``offer_ttl``), but the seed's upload does not wait for that round trip.
2. **First pass.** A free place goes to a chunk with no copy, of the edge's level or, if
   it has none left, of the next ``ahead`` levels (level order, then a random but seeded
   order): until every chunk has left the seed once, each goes to one edge only, and the
   seed's upload is never spent on a chunk that an edge could get from another edge.
3. **Alone.** An edge that is the only interested one is offered its missing chunks in
   level order, ``max(depth, slots)`` live at a time, whatever their copies: nobody can
   trade with it, so it has all the seed's slots and fetches as from any complete holder.
4. **Starving.** An edge whose ``have`` has not grown for ``starve_after`` seconds is
   offered, in free places (when rule 2 has nothing for it; rule 1 keeps these few),
   the missing chunks of its level that the seed has not shown it yet, fewest copies first:
   nobody stalls because its peers lack what it needs (they left, or never got it).
5. **Expiry and loss.** An offer not requested within ``offer_ttl`` seconds stops counting
   as a copy (the edge may still fetch it: a shown chunk is never taken back); an edge that
   goes away takes its copies with it. Either can give a chunk no copy again: rule 2 then
   offers it to another edge.
6. **Spreaders first.** Free places go to the edges in order of how fast they pass on what
   the seed sends them (BEP 16's idea, measured): when an upload of a chunk that no other
   edge holds ends (``on_sent``), the seed waits for the first *other* edge, not served
   that chunk by the seed, to announce it; the delay, smoothed per edge, is the edge's
   *spread delay*. An edge's rank is the larger of its spread delay (an edge not measured
   yet: the median of the measured ones, or 0 if none is) and the age of the oldest chunk
   it got from the seed and has not passed on yet; lowest rank first, then a random but
   seeded order. The seed's upload then goes to the edges whose uplinks carry a chunk
   on at once, and an edge that sits on its chunks gets no new one before the others.

The shell pushes the offers that :meth:`SuperSeeder.offers` returns (as ``have`` deltas of
the seed, to that edge), reports each edge's ``have`` (it must receive every edge's pushed
deltas, as any interested peer does), each request it serves (:meth:`on_request`) and
the end of each upload (:meth:`on_sent`), and
calls :meth:`offers` after each of those and at least every ``scan_interval`` seconds.
"""

from __future__ import annotations

import bisect
import random
from collections.abc import Sequence
from dataclasses import dataclass, field

from peerprog.swarm.bitfield import Bitfield
from peerprog.swarm.config import SchedulerConfig

DELAY_SMOOTHING = 0.5
"""EWMA weight of a new spread-delay sample (rule 6)."""


@dataclass(frozen=True)
class SeedingConfig:
    """Settings of a :class:`SuperSeeder`."""

    depth: int = 4
    """Live offers per edge: enough to keep one edge's link to the seed busy."""

    slots: int = 8
    """Live offers in all (rule 1), except to a lone edge."""

    ahead: int = SchedulerConfig.lookahead_levels
    """Levels above an edge's level that rule 2 may offer it: the edges' soft barrier
    (``SchedulerConfig.lookahead_levels``), so that the origin offers what they ask for."""

    offer_ttl: float = 5.0
    """Seconds an offer counts as a copy before the edge asks for it."""

    starve_after: float = 5.0
    """An edge whose ``have`` has not grown for this long is starving (rule 3)."""

    scan_interval: float = 1.0
    """How often :meth:`SuperSeeder.offers` looks at every edge (expiry, starving)."""

    spreaders_first: bool = True
    """Rule 6; ``False``: the edges are served in a random but seeded order."""

    def __post_init__(self) -> None:
        if self.ahead < 0:
            raise ValueError("ahead must be >= 0")
        if self.slots < 1:
            raise ValueError("slots must be >= 1")
        if self.depth < 1:
            raise ValueError("depth must be >= 1")
        if self.offer_ttl <= 0 or self.starve_after <= 0 or self.scan_interval <= 0:
            raise ValueError("offer_ttl, starve_after and scan_interval must be > 0")


@dataclass
class _Edge:
    have: Bitfield
    shown: Bitfield
    missing: list[int]  # per level
    progress_at: float
    live: dict[int, float] = field(default_factory=dict)  # offered chunk -> offered at
    requested: set[int] = field(default_factory=set)  # live offers it asked for
    sent: set[int] = field(default_factory=set)  # live offers sent: copies, not places

    def places(self) -> int:
        """Places of rule 1 it takes: its live offers not sent yet."""
        return len(self.live) - len(self.sent)

    key: int = 0  # random but seeded tie-break (rule 6)
    delay: float | None = None  # spread delay (rule 6)
    unpassed: dict[int, float] = field(default_factory=dict)  # first copies sent -> sent at

    def level(self) -> int | None:
        for level, count in enumerate(self.missing):
            if count:
                return level
        return None


class SuperSeeder:
    """The offers of one complete holder to the edges fetching one model (see above)."""

    def __init__(
        self,
        level_ranges: Sequence[range],
        config: SeedingConfig | None = None,
        *,
        seed: int | None = None,
    ) -> None:
        self._config = config if config is not None else SeedingConfig()
        self._levels = tuple(level_ranges)
        self._starts = [r.start for r in self._levels]
        self._n = self._levels[-1].stop if self._levels else 0
        self._copies = [0] * self._n
        rng = random.Random(seed)
        order = list(range(self._n))
        rng.shuffle(order)
        self._key = [0] * self._n
        for pos, i in enumerate(order):
            self._key[i] = pos
        self._uncopied: list[set[int]] = [set(r) for r in self._levels]
        """Per level: chunks with no copy."""
        self._rng = random.Random(rng.getrandbits(64))
        self._served: dict[int, set[str]] = {}
        """Per chunk: the edges the seed has served it to (rule 6)."""
        self._unpassed: dict[int, set[str]] = {}
        """Per chunk: edges that got it from the seed as its first copy, not passed on yet."""
        self._delays: list[float] = []  # measured spread delays, for the median (rule 6)
        self._edges: dict[str, _Edge] = {}
        self._interested = 0
        self._live = 0  # live offers in all
        self._dirty: set[str] = set()
        self._waiting: set[str] = set()  # edges with room, refused for want of a slot
        self._next_scan = -float("inf")

    # -- queries ---------------------------------------------------------------------------

    @property
    def config(self) -> SeedingConfig:
        return self._config

    def view(self, peer: str) -> Bitfield:
        """What the seed shows ``peer`` (a copy): every chunk ever offered to it."""
        return self._edges[peer].shown.copy()

    def copies(self, index: int) -> int:
        """Rule 1's count for chunk ``index``."""
        return self._copies[index]

    def left_once(self) -> bool:
        """Has every chunk a copy (the first pass is over)?"""
        return not any(self._uncopied)

    # -- events ----------------------------------------------------------------------------

    def add_peer(self, peer: str, have: Bitfield, now: float) -> None:
        """An edge fetching the model connected (its ``have`` as it announced it)."""
        if peer in self._edges:
            self.remove_peer(peer, now)
        edge = _Edge(have.copy(), Bitfield(self._n), [len(r) for r in self._levels], now)
        edge.key = self._rng.getrandbits(32)
        self._edges[peer] = edge
        for i in have.indices():
            edge.missing[self._level_of(i)] -= 1
            self._count(i, +1)
        self._dirty.add(peer)
        if edge.level() is not None:
            self._interest(+1)

    def remove_peer(self, peer: str, now: float) -> None:
        """An edge went away: its copies and live offers no longer count."""
        edge = self._edges.pop(peer, None)
        self._waiting.discard(peer)
        if edge is None:
            return
        for i in edge.have.indices():
            self._count(i, -1)
        for i in edge.live:
            self._count(i, -1)
        self._live -= edge.places()
        for i in edge.unpassed:
            self._unpassed[i].discard(peer)
        self._set_delay(edge, None)
        self._dirty.update(self._waiting)
        if edge.level() is not None:
            self._interest(-1)

    def add_have(self, peer: str, index: int, now: float) -> None:
        """An edge verified chunk ``index`` (its pushed ``have`` delta)."""
        edge = self._edges.get(peer)
        if edge is None or index in edge.have:
            return
        edge.have.set(index)
        edge.missing[self._level_of(index)] -= 1
        edge.progress_at = now
        self._passed_on(peer, index, now)
        if edge.live.pop(index, None) is not None:
            edge.requested.discard(index)  # the offer became a copy: the count stays
            if index in edge.sent:
                edge.sent.discard(index)
            else:
                self._live -= 1
                self._dirty.update(self._waiting)  # a slot is free
        else:
            self._count(index, +1)
        self._dirty.add(peer)
        if edge.level() is None:
            self._interest(-1)

    def on_request(self, peer: str, index: int, now: float) -> None:
        """The seed is serving chunk ``index`` to ``peer``: a live offer stays live (no
        expiry); a request for a chunk that is not (or no longer) a live offer counts as a
        copy until it arrives."""
        edge = self._edges.get(peer)
        if edge is None or index in edge.have:
            return
        if index not in edge.live:
            edge.live[index] = now
            self._live += 1
            self._count(index, +1)
        elif index in edge.sent:  # asked again (it did not arrive): a transfer again
            edge.sent.discard(index)
            self._live += 1
        edge.requested.add(index)
        self._served.setdefault(index, set()).add(peer)

    def on_sent(self, peer: str, index: int, now: float) -> None:
        """The seed's upload of chunk ``index`` to ``peer`` ended (sent, or cut off): the
        offer frees its place of rule 1 and stays a copy ``offer_ttl`` more, for the edge's
        ``have`` to say it arrived."""
        edge = self._edges.get(peer)
        if edge is not None and index in edge.live:
            edge.requested.discard(index)
            edge.live[index] = now
            if index not in edge.sent:  # its place is free (rule 1)
                edge.sent.add(index)
                self._live -= 1
                self._dirty.update(self._waiting)
                self._dirty.add(peer)
            others = self._copies[index] - 1  # its own live offer is one
            if others == 0 and index not in edge.have:  # the first copy: time its spread
                edge.unpassed[index] = now
                self._unpassed.setdefault(index, set()).add(peer)

    def offers(self, now: float) -> list[tuple[str, int]]:
        """New offers, as (edge, chunk): the shell pushes each to its edge as a ``have``
        delta of the seed."""
        if now >= self._next_scan:
            self._next_scan = now + self._config.scan_interval
            self._expire(now)
            self._dirty.update(self._edges)
        if not self._dirty:
            return []
        out: list[tuple[str, int]] = []
        prior = 0.0
        if self._delays:
            ranked = sorted(self._delays)
            prior = ranked[(len(ranked) - 1) // 2]
        for peer in sorted(self._dirty, key=lambda p: self._rank(p, now, prior)):
            edge = self._edges.get(peer)
            if edge is None:
                continue
            for index in self._fill(edge, peer, now, alone=self._interested == 1):
                out.append((peer, index))
        self._dirty.clear()
        return out

    # -- internals -------------------------------------------------------------------------

    def _rank(self, peer: str, now: float, prior: float) -> tuple[float, int]:
        """Rule 6: the order in which edges get free places (``prior``: the rank of an edge
        not measured yet)."""
        edge = self._edges.get(peer)
        if edge is None:
            return (0.0, 0)
        if not self._config.spreaders_first:
            return (0.0, edge.key)
        rank = prior if edge.delay is None else edge.delay
        if edge.unpassed:
            rank = max(rank, now - min(edge.unpassed.values()))
        return (rank, edge.key)

    def _passed_on(self, peer: str, index: int, now: float) -> None:
        """``peer`` announced ``index``: if it got it from another edge that had it first
        from the seed, that edge passed it on (rule 6)."""
        firsts = self._unpassed.get(index)
        if not firsts or peer in self._served.get(index, ()):
            return
        for first in firsts:
            edge = self._edges[first]
            sample = now - edge.unpassed.pop(index)
            new = (
                sample
                if edge.delay is None
                else edge.delay + DELAY_SMOOTHING * (sample - edge.delay)
            )
            self._set_delay(edge, new)
        del self._unpassed[index]

    def _set_delay(self, edge: _Edge, delay: float | None) -> None:
        if edge.delay is not None:
            self._delays.remove(edge.delay)
        edge.delay = delay
        if delay is not None:
            self._delays.append(delay)

    def _level_of(self, index: int) -> int:
        return bisect.bisect_right(self._starts, index) - 1

    def _interest(self, delta: int) -> None:
        self._interested += delta
        if self._interested <= 2:  # an edge may have become, or stopped being, alone (rule 2)
            self._dirty.update(self._edges)

    def _count(self, index: int, delta: int) -> None:
        before = self._copies[index]
        self._copies[index] = before + delta
        assert self._copies[index] >= 0, f"copies of chunk {index} below zero"
        if (before == 0) != (self._copies[index] == 0):
            bucket = self._uncopied[self._level_of(index)]
            if before == 0:
                bucket.discard(index)
            else:
                bucket.add(index)

    def _expire(self, now: float) -> None:
        ttl = self._config.offer_ttl
        for edge in self._edges.values():
            for i, at in list(edge.live.items()):
                if i not in edge.requested and now - at >= ttl:
                    del edge.live[i]
                    if i in edge.sent:
                        edge.sent.discard(i)
                    else:
                        self._live -= 1
                    self._count(i, -1)

    def _offer(self, edge: _Edge, index: int, now: float) -> None:
        edge.shown.set(index)
        edge.live[index] = now
        self._live += 1
        self._count(index, +1)

    def _fill(self, edge: _Edge, peer: str, now: float, *, alone: bool) -> list[int]:
        level = edge.level()
        if level is None:
            return []
        room = self._config.depth - edge.places()
        if alone:  # rule 3
            room = max(self._config.depth, self._config.slots) - edge.places()
            new = []
            for i in range(self._levels[level].start, self._n):
                if room <= 0:
                    break
                if i not in edge.have and i not in edge.shown:
                    self._offer(edge, i, now)
                    new.append(i)
                    room -= 1
            return new
        room = min(room, self._config.slots - self._live)  # rule 1
        if room <= 0:
            if edge.places() < self._config.depth:
                self._waiting.add(peer)
            return []
        self._waiting.discard(peer)
        new = []
        last = min(len(self._levels), level + 1 + self._config.ahead)
        for lv in range(level, last):  # rule 2
            if room <= 0:
                break
            pool = [i for i in self._uncopied[lv] if i not in edge.have and i not in edge.shown]
            pool.sort(key=self._key.__getitem__)
            for i in pool[:room]:
                self._offer(edge, i, now)
                new.append(i)
            room -= min(room, len(pool))
        if new:
            return new
        if room > 0 and now - edge.progress_at >= self._config.starve_after:  # rule 4
            pool = [i for i in self._levels[level] if i not in edge.have and i not in edge.shown]
            pool.sort(key=lambda i: (self._copies[i], self._key[i]))
            for i in pool[:room]:
                self._offer(edge, i, now)
                new.append(i)
            if pool:
                edge.progress_at = now  # give the offers time before starving again
        return new
