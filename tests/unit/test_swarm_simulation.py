"""A random swarm in memory: simulated peers, a fake clock, and the scheduler's invariants.

Each example builds peers with random holdings, rates, latencies, transient failures, stalls
(requests never answered) and liars (bad chunks: banned), with churn (peers leave, come back,
gain chunks), and plays the shell's part until the model is complete. Every chunk has an
honest holder, so the scheduler must always get there.
"""

from __future__ import annotations

import heapq
import math
import random
from dataclasses import dataclass

from hypothesis import given, settings
from hypothesis import strategies as st

from peerprog.swarm import (
    Bitfield,
    PeerTable,
    PeerTableConfig,
    Request,
    Scheduler,
    SchedulerConfig,
)

MAX_STEPS = 20_000
MODEL = "m"


@dataclass
class SimPeer:
    name: str
    have: set[int] | None  # None: a seed
    rate: float  # bytes/s
    latency: float
    fail_p: float
    stall_p: float
    liar: bool
    busy_until: float = 0.0


class Swarm:
    """The shell's side: sends requests to simulated peers, reports outcomes, checks."""

    def __init__(
        self,
        rng: random.Random,
        s: Scheduler,
        levels: list[range],
        sizes: list[int],
        table: PeerTable,
    ) -> None:
        self.rng, self.s, self.levels, self.sizes = rng, s, levels, sizes
        self.table = table
        self.n = len(sizes)
        self.peers: dict[str, SimPeer] = {}
        self.told: dict[str, set[int] | None] = {}  # the have we last gave the scheduler
        self.gone: dict[str, float] = {}  # peers the scheduler does not know, since when
        self.live: set[Request] = set()
        self.events: list[tuple[float, int, Request, str]] = []
        self.seq = 0
        self.now = 0.0

    # -- the shell ----------------------------------------------------------------------

    def bitfield(self, have: set[int] | None) -> Bitfield | None:
        if have is None:
            return None
        bf = Bitfield(self.n)
        for i in have:
            bf.set(i)
        return bf

    def add(self, p: SimPeer) -> None:
        self.table.source_answered(p.name, MODEL, self.now)
        self.told[p.name] = None if p.have is None else set(p.have)
        self.s.add_peer(p.name, self.bitfield(p.have), self.now)
        self.gone.pop(p.name, None)

    def cancel(self, requests: list[Request]) -> None:
        for r in requests:
            assert r in self.live, f"cancelled {r} which is not in flight"
            self.live.remove(r)

    def send(self, r: Request) -> None:
        p = self.peers[r.peer]
        roll = self.rng.random()
        start = max(self.now + p.latency, p.busy_until)
        finish = start + self.sizes[r.index] / p.rate
        if p.liar and roll < 0.5:
            outcome, at = "bad", finish
        elif roll < p.fail_p:
            outcome, at = "fail", self.now + p.latency
        elif roll < p.fail_p + p.stall_p:
            return  # never answered: only the scheduler's timer ends it
        else:
            outcome, at = "ok", finish
        p.busy_until = max(p.busy_until, finish)
        self.seq += 1
        heapq.heappush(self.events, (at, self.seq, r, outcome))

    def deliver(self, r: Request, outcome: str) -> None:
        if r not in self.live:
            return  # cancelled meanwhile
        self.live.remove(r)
        if outcome == "ok":
            self.cancel(self.s.on_chunk(r.peer, r.index, self.now))
        elif outcome == "bad":
            self.cancel(self.s.on_bad_chunk(r.peer, r.index, self.now))
        else:
            self.s.on_failed(r.peer, r.index, self.now)
            self.judge(r.peer)

    def judge(self, peer: str) -> None:
        """As the fetcher does: the peer table says when a failing peer is let go."""
        if self.table.fetch_failed(peer, MODEL, self.s.failures(peer), self.now):
            self.cancel(self.s.remove_peer(peer, self.now))
            self.gone[peer] = self.now

    def churn(self) -> None:
        known = set(self.s.peers())
        for name, p in self.peers.items():
            if name in self.s.banned:
                continue
            if name not in known:
                since = self.gone.setdefault(name, self.now)
                if self.now - since >= 5.0:  # rediscovered: the shell adds it again
                    self.add(p)
            elif p.have is not None and len(p.have) < self.n and self.rng.random() < 0.3:
                p.have.add(self.rng.randrange(self.n))  # it fetched something elsewhere
                self.told[name] = set(p.have)
                bf = self.bitfield(p.have)
                assert bf is not None
                self.s.set_have(name, bf, self.now)
        if known and self.rng.random() < 0.1:
            name = self.rng.choice(sorted(known))
            self.cancel(self.s.remove_peer(name, self.now))
            self.gone[name] = self.now

    # -- the invariants -------------------------------------------------------------------

    def active_level(self) -> int | None:
        """Rule 1 from scratch: the lowest level with a missing chunk a known peer holds."""
        held = self.s.have
        haves = [self.told[p] for p in self.s.peers()]
        for level, span in enumerate(self.levels):
            for i in span:
                if i not in held and any(h is None or i in h for h in haves):
                    return level
        return None

    def check_new(self, new: list[Request], level: int | None) -> None:
        held, known = self.s.have, set(self.s.peers())
        asked = {(r.peer, r.index) for r in self.live}
        for r in new:
            assert r.peer not in self.s.banned, f"request to banned peer: {r}"
            assert r.peer in known, f"request to unknown peer: {r}"
            assert r.index not in held, f"request for a held chunk: {r}"
            assert (r.peer, r.index) not in asked, f"same chunk twice from one peer: {r}"
            have = self.told[r.peer]
            assert have is None or r.index in have, f"request for a chunk the peer lacks: {r}"
            assert level is not None and r.index in self.levels[level], f"level order: {r}"
            asked.add((r.peer, r.index))

    def check_state(self) -> None:
        config = self.s.config
        flying = self.s.in_flight()
        assert set(flying) == self.live and len(flying) == len(self.live)
        assert len(flying) <= config.max_in_flight_total
        held, banned = self.s.have, self.s.banned
        per_peer: dict[str, int] = {}
        per_chunk: dict[int, int] = {}
        for r in flying:
            assert r.index not in held and r.peer not in banned
            per_peer[r.peer] = per_peer.get(r.peer, 0) + 1
            per_chunk[r.index] = per_chunk.get(r.index, 0) + 1
        assert all(k <= config.max_in_flight_per_peer for k in per_peer.values())
        assert all(k <= 2 for k in per_chunk.values())

    def check_progress(self, level: int | None) -> None:
        """Nothing in flight though a known peer holds a chunk we may fetch: only right if
        we are waiting for a peer's backoff to end."""
        if self.live or level is None:
            return
        waiting = []
        for p in self.s.peers():
            until = self.s.peer_stats(p).backoff_until
            waiting.append(until is not None and until > self.now)
        assert any(waiting), f"idle at {self.now} with level {level} fetchable"

    # -- the clock ------------------------------------------------------------------------

    def run(self) -> None:
        next_churn = 1.0
        for _ in range(MAX_STEPS):
            level = self.active_level()
            new = self.s.next_requests(self.now)
            self.check_new(new, level)
            for r in new:
                self.live.add(r)
                self.send(r)
            self.check_state()
            self.check_progress(level)
            if self.s.complete:
                assert not self.live
                return
            timer = self.s.next_deadline()
            t_timer = math.inf if timer is None else timer
            t_event = self.events[0][0] if self.events else math.inf
            self.now = max(self.now, min(t_timer, t_event, next_churn))
            if t_timer <= self.now:
                expired = self.s.handle_timer(self.now)
                self.cancel(expired)
                for peer in sorted({r.peer for r in expired}):
                    self.judge(peer)
            while self.events and self.events[0][0] <= self.now:
                _, _, r, outcome = heapq.heappop(self.events)
                self.deliver(r, outcome)
            if next_churn <= self.now:
                self.churn()
                next_churn = self.now + self.rng.expovariate(1 / 3.0)
        raise AssertionError(f"not complete after {MAX_STEPS} steps: {self.s.have!r}")


@settings(max_examples=60, deadline=None)
@given(
    counts=st.lists(st.integers(0, 12), min_size=1, max_size=4),
    n_honest=st.integers(1, 4),
    n_liars=st.integers(0, 2),
    min_per_peer=st.integers(1, 3),
    extra_per_peer=st.integers(0, 4),
    max_total=st.integers(1, 10),
    endgame=st.integers(0, 4),
    max_failures=st.integers(1, 4),
    have_some=st.booleans(),
    seed=st.integers(0, 2**32 - 1),
)
def test_random_swarm_completes(
    counts: list[int],
    n_honest: int,
    n_liars: int,
    min_per_peer: int,
    extra_per_peer: int,
    max_total: int,
    endgame: int,
    max_failures: int,
    have_some: bool,
    seed: int,
) -> None:
    rng = random.Random(seed)
    levels, start = [], 0
    for count in counts:
        levels.append(range(start, start + count))
        start += count
    n = start
    sizes = [rng.randrange(100, 10_000) for _ in range(n)]
    peers: list[SimPeer] = []
    for k in range(n_honest + n_liars):
        liar = k >= n_honest
        seedlike = rng.random() < 0.25
        have = None if seedlike else {i for i in range(n) if rng.random() < 0.5}
        peers.append(
            SimPeer(
                name=f"{'liar' if liar else 'peer'}{k}",
                have=have,
                rate=rng.choice([2e3, 2e4, 2e5, 2e6]),
                latency=rng.uniform(0.005, 0.3),
                fail_p=rng.choice([0.0, 0.05, 0.3]),
                stall_p=rng.choice([0.0, 0.05, 0.2]),
                liar=liar,
            )
        )
    honest = peers[:n_honest]
    for i in range(n):  # every chunk has an honest holder
        if not any(p.have is None or i in p.have for p in honest):
            holder = rng.choice(honest).have
            assert holder is not None
            holder.add(i)
    config = SchedulerConfig(
        min_in_flight_per_peer=min_per_peer,
        max_in_flight_per_peer=min_per_peer + extra_per_peer,
        max_in_flight_total=max_total,
        endgame_chunks=endgame,
        lookahead_levels=0,  # the level-order check below is the strict barrier's
    )
    held = [i for i in range(n) if have_some and rng.random() < 0.2]
    s = Scheduler(levels, sizes, held, config, seed=seed)
    table = PeerTable(PeerTableConfig(fetch_failures=max_failures, revive_after=5.0))
    swarm = Swarm(rng, s, levels, sizes, table)
    for p in peers:
        swarm.peers[p.name] = p
        if rng.random() < 0.8:
            swarm.add(p)
        else:
            swarm.gone[p.name] = 0.0  # discovered later
    swarm.run()
    assert s.complete and s.best_level == len(levels) - 1
    assert all(name.startswith("liar") for name in s.banned)
