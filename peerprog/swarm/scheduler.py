"""The swarm scheduler: which chunk to ask of which peer, and when. Sans-IO.

Like aioquic's connection, it never touches a socket, a clock or an event loop: every call
takes ``now``. Its one caller is the fetch driver (``driver.py``), which the shells pump;
the driver turns its requests into range requests, reports each outcome, cancels the
requests a call returns, and wakes at :meth:`Scheduler.next_deadline`::

    for request in scheduler.next_requests(now):
        ...                         # grouped into runs, sent as range requests
    # while a body arrives: on_progress (a moving transfer does not time out)
    # when a request ends: on_chunk (verified) / on_bad_chunk (hash mismatch) / on_busy (503:
    # the peer's upload slots are taken) / on_failed (the peer's fault) / release (ours,
    # e.g. the disk is full)
    # at the deadline: handle_timer(now) returns the requests it timed out, to cancel
    # a peer's have: add_peer / set_have (a whole bitfield), add_have (one new chunk;
    # havelog.apply hands over one answer of its resumable have stream)

The choice of chunks is in ``picker.py`` (one file, the whole rule); per-peer rate,
budget, timeout and backoff are in ``peers.py``; holder counts in ``chunks.py``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Sequence

from peerprog.swarm.bitfield import Bitfield
from peerprog.swarm.chunks import ChunkTable
from peerprog.swarm.config import SchedulerConfig
from peerprog.swarm.peers import Flight, PeerState, PeerStats, min_budget, takes_more
from peerprog.swarm.picker import Picker, Slot
from peerprog.swarm.request import Request


class Scheduler:
    """Schedules the chunk requests of one model across a changing set of peers.

    Peers are named by strings of the shell's choice (e.g. base URLs). A peer is *known*
    from :meth:`add_peer` until :meth:`remove_peer` or a ban (:meth:`on_bad_chunk`). Its
    consecutive failures (:meth:`failures`) are for the shell's peer table to judge.
    """

    def __init__(
        self,
        level_ranges: Sequence[range],
        chunk_sizes: Sequence[int],
        have: Iterable[int] = (),
        config: SchedulerConfig | None = None,
        *,
        seed: int | None = None,
    ) -> None:
        """``level_ranges[n]`` is the range of chunk indices of level ``n`` (contiguous,
        in order, covering ``range(len(chunk_sizes))``); ``have`` the chunks already held
        (e.g. found on disk). ``seed`` fixes the random tie-break between equally rare
        chunks (``None``: a fresh one, so that different nodes start on different chunks).
        """
        self._config = config if config is not None else SchedulerConfig()
        self._table = ChunkTable(level_ranges, chunk_sizes, have, seed)
        self._picker = Picker(
            self._table, self._config.endgame_chunks, self._config.lookahead_levels
        )
        self._peers: dict[str, PeerState] = {}
        self._banned: set[str] = set()
        self._flying: dict[int, dict[str, Request]] = {}
        self._total = 0
        self._top = 8 * ((self._table.n + 7) >> 3) - 1  # the bit of chunk 0 in a mask
        self._quiet_until: float | None = None
        """When :meth:`next_requests` last answered nothing: it answers nothing again before
        this time (the end of the first backoff) unless the state changed since. A cache,
        never a decision: every change that could make it answer otherwise drops it."""
        self._quiet_level: int | None = None
        """The active level when it was set."""

    # -- queries ---------------------------------------------------------------------------

    @property
    def config(self) -> SchedulerConfig:
        """The settings."""
        return self._config

    @property
    def have(self) -> Bitfield:
        """The chunks we hold (a copy)."""
        return self._table.held.copy()

    @property
    def complete(self) -> bool:
        """Do we hold every chunk?"""
        return self._table.missing_total == 0

    @property
    def best_level(self) -> int:
        """The highest ``n`` such that levels ``0..n`` are all held; -1 if level 0 is not."""
        best = -1
        for missing in self._table.missing:
            if missing:
                break
            best += 1
        return best

    def level_complete(self, level: int) -> bool:
        """Do we hold every chunk of ``level``?"""
        return self._table.missing[level] == 0

    @property
    def active_level(self) -> int | None:
        """The level chunks are being requested from now (see ``picker.py``, rule 1)."""
        return self._picker.active_level()

    @property
    def banned(self) -> frozenset[str]:
        """Peers that sent a bad chunk: never asked again."""
        return frozenset(self._banned)

    def peers(self) -> list[str]:
        """The known peers (not removed or banned), sorted."""
        return sorted(self._peers)

    def in_flight(self, peer: str | None = None) -> list[Request]:
        """Requests in flight (to ``peer`` only, if given), oldest first."""
        if peer is None:
            found = [f.request for st in self._peers.values() for f in st.in_flight.values()]
        else:
            st = self._peers.get(peer)
            found = [f.request for f in st.in_flight.values()] if st else []
        return sorted(found, key=lambda r: (r.sent_at, r.peer, r.index))

    def peer_stats(self, peer: str) -> PeerStats:
        """A snapshot of a peer's bookkeeping. ``KeyError`` if it is not known."""
        return self._peers[peer].stats(self._config, self._table.mean_size)

    def next_deadline(self) -> float | None:
        """When :meth:`handle_timer` has something to do: the earliest request deadline or
        end of a peer's backoff; ``None`` if nothing is pending. May be in the past."""
        times = [f.deadline for st in self._peers.values() for f in st.in_flight.values()]
        times.extend(st.backoff_until for st in self._peers.values() if st.backoff_until)
        return min(times, default=None)

    # -- peers -----------------------------------------------------------------------------

    def add_peer(
        self, peer: str, have: Bitfield | None, now: float, *, origin: bool = False
    ) -> None:
        """A peer that may be asked for chunks; ``have=None``: it holds every chunk (a seed
        or web seed). ``origin``: it is the model's origin (the publisher's seed, whatever
        its ``have`` shows): with web seeds, the picker's last resort (rule 3). Adding a
        known peer updates its ``have``; adding a banned one is ignored."""
        self._quiet_until = None
        if peer in self._banned:
            return
        have = self._checked(have)
        st = self._peers.get(peer)
        if st is None:
            st = self._peers[peer] = PeerState(peer, have)
            self._table.add_holder(have)
        else:
            self._table.replace_holder(st.have, have)
            st.have = have
        st.origin = origin
        st.mask = -1 if have is None else have.mask()

    def set_have(self, peer: str, have: Bitfield, now: float) -> None:
        """A known peer announced what it holds now. Ignored for unknown or banned peers."""
        self._quiet_until = None
        st = self._peers.get(peer)
        if st is None:
            return
        new = self._checked(have)
        self._table.replace_holder(st.have, new)
        st.have = new
        st.mask = -1 if new is None else new.mask()

    def add_have(self, peer: str, index: int, now: float) -> bool:
        """A known peer told us (a pushed ``have`` delta) that it now holds chunk ``index``.
        Ignored for unknown or banned peers, for a peer that holds every chunk,
        and if we knew it already.

        Returns whether the news may change what :meth:`next_requests` answers: we miss the
        chunk and the peer may be asked now (not backing off, room in its budget
        and in ``max_in_flight_total``), or it now holds every chunk. When it returns False the
        shell need not call :meth:`next_requests` for it (the other peers' options are
        unchanged)."""
        st = self._peers.get(peer)
        if st is None or st.have is None:
            return False
        if not 0 <= index < self._table.n:
            raise ValueError(f"chunk {index} out of range for {self._table.n} chunks")
        if index in st.have:
            return False
        st.have.set(index)
        st.mask |= 1 << (self._top - index)
        self._table.add_chunk_holder(index)
        if self._table.is_held[index] or self._total >= self._config.max_in_flight_total:
            return False
        if self._quiet_until is not None and self._may_pick(st, index, now):
            self._quiet_until = None
        if st.have.count() == self._table.n:
            return True
        return st.usable(now) and len(st.in_flight) < st.budget(self._config, self._table.mean_size)

    def remove_peer(self, peer: str, now: float) -> list[Request]:
        """Forget a peer (gone, disconnected). Returns its requests in flight, for the shell
        to cancel; their chunks go back to the pool."""
        self._quiet_until = None
        st = self._peers.pop(peer, None)
        if st is None:
            return []
        self._table.remove_holder(st.have)
        return [self._release(st, flight) for flight in list(st.in_flight.values())]

    def _checked(self, have: Bitfield | None) -> Bitfield | None:
        if have is None:
            return None
        if len(have) != self._table.n:
            raise ValueError(f"have bitfield of {len(have)} chunks, the model has {self._table.n}")
        return have.copy()

    # -- requests --------------------------------------------------------------------------

    def next_requests(self, now: float) -> list[Request]:
        """New requests to send now; they are recorded as in flight."""
        if self._quiet_until is not None:
            if now < self._quiet_until:
                return []
            self._quiet_until = None
        room = self._config.max_in_flight_total - self._total
        config, mean = self._config, self._table.mean_size
        usable: list[tuple[PeerState, bool]] = []
        swarm = False
        for st in self._peers.values():
            until = st.backoff_until
            if until is not None:
                if until > now:
                    continue
                st.backoff_until = None
            last = st.have is None or st.origin  # a last resort (picker, rule 3)
            swarm = swarm or not last
            usable.append((st, last))
        if room <= 0:
            return self._quiet()
        # In a swarm, the origin (or a web seed) gets a shallow queue: it then serves chunks
        # nobody else has yet instead of chunks the peers will soon trade.
        floor = min_budget(config, mean)
        slots: list[Slot] = []
        for st, last in usable:
            budget = st.budget(config, mean)
            if swarm and last:
                budget = min(budget, floor)
            if len(st.in_flight) < budget:
                slot = Slot(st.name, st.have, len(st.in_flight), budget, st.rate or 0.0, last)
                slot.refill = takes_more(len(st.in_flight), budget, config, mean)
                slot.mask, slot.masked = st.mask, True
                slots.append(slot)
        if not slots:
            return self._quiet()
        picks = self._picker.pick(slots, self._flying, self._holders, room)
        if not picks:
            return self._quiet()
        requests = []
        for peer, index in picks:
            request = self._peers[peer].send(index, self._table.sizes[index], now, self._config)
            self._flying.setdefault(index, {})[peer] = request
            self._total += 1
            requests.append(request)
        return requests

    def _quiet(self) -> list[Request]:
        """:meth:`next_requests` answers nothing: remember it until the first backoff ends
        (every backoff still running ends after ``now``)."""
        self._quiet_until = min(
            (st.backoff_until for st in self._peers.values() if st.backoff_until is not None),
            default=math.inf,
        )
        self._quiet_level = self._picker.active_level()
        return []

    def _may_pick(self, st: PeerState, index: int, now: float) -> bool:
        """Could ``st`` newly holding ``index`` (missing, room left in the total) change an
        answer of nothing from :meth:`next_requests`? Not if the chunk's level is past the
        look-ahead of an unchanged active level, nor if ``st`` cannot take a request now
        (then only the rarity order changes, and a pass that picks nothing does not depend
        on it), nor, past the active level, if the chunk is in flight (no end game there)
        or ``st`` is not free and idle for the active level (picker rule 1)."""
        active = self._quiet_level
        level = self._table.level_of(index)
        if active is None or level < active:
            return True  # the active level may change
        if level > active + self._config.lookahead_levels:
            return False
        if st.origin or (st.have is not None and st.have.count() == self._table.n):
            return True
        budget = st.budget(self._config, self._table.mean_size)
        if not st.usable(now) or len(st.in_flight) >= budget:
            return False  # not a slot of the picker
        if level == active:
            return True
        # Past the active level only a free peer idle for the active level is given
        # chunks (the soft barrier), and never one in flight.
        refill = takes_more(len(st.in_flight), budget, self._config, self._table.mean_size)
        if index in self._flying or not refill:
            return False
        span = self._table.levels[active]
        return not any(i in span for i in st.in_flight)

    def on_chunk(self, peer: str, index: int, now: float) -> list[Request]:
        """``peer`` delivered chunk ``index`` and it verified. Returns the other requests
        for that chunk (end game), now redundant, for the shell to cancel.

        Credits the peer and updates its rate estimate if we had asked it for the chunk.
        A chunk we already hold is ignored; a verified chunk we did not ask this peer for
        (e.g. after its request timed out) is still taken."""
        self._quiet_until = None
        if index in self._table.held:
            return []
        st = self._peers.get(peer)
        flight = st.finish(index) if st is not None else None
        if st is not None and flight is not None:
            self._forget(flight)
            st.delivered(flight, now)
        return self.mark_have(index, now)

    def on_progress(self, peer: str, index: int, now: float) -> None:
        """Bytes of chunk ``index`` arrived from ``peer`` just now (the shell calls it as it
        reads the body, e.g. every 64 KiB): the request stalls only ``stall_timeout`` after
        the last progress, whatever its first deadline was."""
        st = self._peers.get(peer)
        flight = st.in_flight.get(index) if st is not None else None
        if flight is not None:
            flight.deadline = max(flight.deadline, now + self._config.stall_timeout)

    def mark_have(self, index: int, now: float) -> list[Request]:
        """We hold chunk ``index`` now (e.g. found on disk). Returns the requests in flight
        for it, for the shell to cancel."""
        self._quiet_until = None
        if not self._table.mark_held(index):
            return []
        redundant = []
        for name in list(self._flying.get(index, {})):
            st = self._peers[name]
            flight = st.in_flight[index]
            redundant.append(self._release(st, flight))
        return redundant

    def on_bad_chunk(self, peer: str, index: int, now: float) -> list[Request]:
        """``peer`` sent a chunk that failed its hash: it is banned for good. Returns its
        other requests in flight, for the shell to cancel; all its chunks go back to the
        pool."""
        self._quiet_until = None
        self._banned.add(peer)
        st = self._peers.pop(peer, None)
        if st is None:
            return []
        self._table.remove_holder(st.have)
        flight = st.finish(index)
        if flight is not None:
            self._forget(flight)
        return [self._release(st, f) for f in list(st.in_flight.values())]

    def on_failed(self, peer: str, index: int, now: float) -> None:
        """The request for chunk ``index`` to ``peer`` failed (connection error, 404,
        malformed response). The chunk goes back to the pool and the peer backs off (see
        :meth:`failures`)."""
        self._quiet_until = None
        st = self._peers.get(peer)
        flight = st.finish(index) if st is not None else None
        if st is None or flight is None:
            return
        self._forget(flight)
        self._fail(st, flight, now, timed_out=False)

    def failures(self, peer: str) -> int:
        """``peer``'s failures in a row (those of one bad spell count once); 0 if unknown."""
        st = self._peers.get(peer)
        return st.failures if st is not None else 0

    def on_busy(
        self,
        peer: str,
        index: int | Iterable[int],
        now: float,
        retry_after: float | None = None,
    ) -> None:
        """``peer`` declined the request for chunk ``index`` because its upload slots are
        taken (``503``, maybe with ``Retry-After``); ``index`` may be the chunks of one
        request for a run of chunks, declined together. The chunks go back to the pool for
        another holder; the peer is not judged. If other requests of ours are still in
        flight there, the peer takes no more than those at once from now on (one more after
        each chunk it delivers); if none is, it gets no request for ``busy_backoff``
        seconds, or ``retry_after``, whichever is longer."""
        self._quiet_until = None
        st = self._peers.get(peer)
        if st is None:
            return
        declined = 0
        for i in [index] if isinstance(index, int) else list(index):
            flight = st.finish(i)
            if flight is not None:
                self._forget(flight)
                declined += 1
        if not declined:
            return
        if st.in_flight:
            st.slot_cap = len(st.in_flight)
        else:
            st.slot_cap = 1
            until = now + max(self._config.busy_backoff, retry_after or 0.0)
            st.backoff_until = max(st.backoff_until or until, until)

    def release(self, peer: str, index: int, now: float) -> None:
        """The shell gave up the request for chunk ``index`` to ``peer`` for a reason of its
        own (e.g. it could not store the chunk): the chunk goes back to the pool and the
        peer is not judged."""
        self._quiet_until = None
        st = self._peers.get(peer)
        flight = st.in_flight.get(index) if st is not None else None
        if st is not None and flight is not None:
            self._release(st, flight)

    def handle_timer(self, now: float) -> list[Request]:
        """Time out the requests whose deadline has passed. Returns them, for the shell to
        cancel; their chunks go back to the pool and each peer is penalised (a failure, and
        its rate estimate lowered)."""
        self._quiet_until = None
        self._end_backoffs(now)
        due = [
            (f.deadline, st, f)
            for st in self._peers.values()
            for f in st.in_flight.values()
            if f.deadline <= now
        ]
        due.sort(key=lambda item: (item[0], item[2].request.sent_at, item[1].name))
        for _, st, flight in due:
            st.finish(flight.request.index)
            self._forget(flight)
            self._fail(st, flight, now, timed_out=True)
        return [flight.request for _, _, flight in due]

    # -- internals -------------------------------------------------------------------------

    def _holders(self, index: int) -> Iterator[str]:
        for name, st in self._peers.items():
            if st.has(index):
                yield name

    def _end_backoffs(self, now: float) -> None:
        for st in self._peers.values():
            if st.backoff_until is not None and st.backoff_until <= now:
                st.backoff_until = None

    def _forget(self, flight: Flight) -> None:
        """Remove a request the peer already let go of from the per-chunk index."""
        request = flight.request
        by_peer = self._flying[request.index]
        del by_peer[request.peer]
        if not by_peer:
            del self._flying[request.index]
        self._total -= 1

    def _release(self, st: PeerState, flight: Flight) -> Request:
        """Take a request out of flight without judging the peer (cancelled)."""
        st.finish(flight.request.index)
        self._forget(flight)
        return flight.request

    def _fail(self, st: PeerState, flight: Flight, now: float, *, timed_out: bool) -> None:
        self._table.failed_by.setdefault(flight.request.index, set()).add(st.name)
        st.penalise(flight, now, self._config, timed_out=timed_out)
