"""Swarm simulation: the daemon's own fetch driver in every simulated node.

One origin (the seed) and N edges fetch a published model's chunk and level layout over a
flow-level network (``bench/simnet.py``) on a discrete-event clock. Each edge runs the
very :class:`peerprog.swarm.driver.Driver` that ``peerprog/node/fetcher.py`` pumps, with
its own real peer table (:class:`~peerprog.swarm.PeerTable`), configured with the
daemon's defaults; this file is only the other pump: it does what the driver's actions
say over simulated links and reports what comes back, with the time it comes. It has no
policy of its own. Every node serves as the daemon's peer server does: its have stream
(a real :class:`~peerprog.swarm.havelog.HaveLog`, long-polled by each neighbour), its
upload slots (:class:`~peerprog.swarm.uploads.UploadSlots`: slots, a queue, then 503 with
``Retry-After``), and on the seed super-seeding (:class:`~peerprog.swarm.seeding.SuperSeeder`,
each edge's view its own have log of offers), as ``peerprog/node/haves.py`` does. An edge
that leaves (``--churn``) may come back (``--churn-away``) as a restarted daemon with the
chunks it had verified. A fraction of the edges can be behind a NAT (``--unreachable``):
they cannot be dialled, and serve the peers that cannot dial them over a reverse channel
they hold to each, as ``peerprog/node/channels.py`` does; two of them never exchange
anything. See ``bench/SIM_NOTES.md`` for the model, the capacity distribution and the
results.

    nice -n 10 .venv/bin/python -m bench.simulate --nodes 10,100,1000 --png sim.png

Prints JSON: per N, p50/p90/p99 time to level 0 and to exact (also over the lower bound),
the seed's upload as a multiple of the stream, the run time (and, for edges that left and
came back, their own percentiles; with ``--unreachable``, the figures of the edges that can
and cannot be dialled apart). Flags set only the scenario (sizes, capacities, latencies,
joins, churn, edges that cannot be dialled) and what a daemon's config can set too
(``[limits]`` upload slots, queue and requests in flight, ``[swarm] super_seeding``).
"""

from __future__ import annotations

import argparse
import heapq
import json
import math
import random
import sys
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench.simnet import FlowNetwork
from peerprog.node.peerclient import DIAL_TIMEOUT
from peerprog.swarm import Bitfield, ModelRef, PeerTable, PeerTableConfig, SchedulerConfig
from peerprog.swarm.driver import (
    Action,
    AskHave,
    Cancel,
    Driver,
    DriverConfig,
    Fetch,
    StopHave,
)
from peerprog.swarm.havelog import HaveDelta, HaveLog, paced_until
from peerprog.swarm.seeding import SuperSeeder
from peerprog.swarm.uploads import QUEUE, SERVE, UploadConfig, UploadSlots, slots_for

MB = 1e6
MIB = 1 << 20
MODEL = "m"
PIECE = 64 * 1024
"""The shell reports progress per piece of a body this big."""

# Edge classes: (name, share, upload bytes/s, download bytes/s).
CLASSES: tuple[tuple[str, float, float, float], ...] = (
    ("dc", 0.10, 125e6, 125e6),  # 1 Gbit/s symmetric (edge server in a data centre)
    ("fiber", 0.40, 12.5e6, 62.5e6),  # 100/500 Mbit/s
    ("cable", 0.40, 5e6, 25e6),  # 40/200 Mbit/s
    ("lte", 0.10, 2.5e6, 12.5e6),  # 20/100 Mbit/s
)
"""The default capacity distribution of the edges (``--classes`` replaces it)."""

DEFAULT_LEVELS_MB = "125,187.5,250,312.5,375,665"
"""Cumulative level sizes of a 1 GB bf16 model (500M weights): 2, 3, 4, 5, 6 bits/weight,
then the exact rest (66.5% of the bf16 bytes, as the bitplane codec measures)."""

SENT, QUEUED, FLOWING, ENDED, CANCELLED = range(5)


def layout(cumulative_mb: Sequence[float], chunk_size: int) -> tuple[list[range], list[int]]:
    """Level ranges and chunk sizes as ``peerprog.manifest.chunking.cut_levels`` cuts them:
    each level starts a new chunk, its last chunk is shorter."""
    ranges: list[range] = []
    sizes: list[int] = []
    prev = 0
    for cum in cumulative_mb:
        nbytes = round(cum * MB) - prev
        prev += nbytes
        first = len(sizes)
        sizes.extend(min(chunk_size, nbytes - s) for s in range(0, nbytes, chunk_size))
        ranges.append(range(first, len(sizes)))
    return ranges, sizes


@dataclass(eq=False)
class Node:
    nid: int
    kind: str
    up: float
    down: float
    lat: float  # one-way access latency, s
    join: float
    leave: float = math.inf
    away: float = math.inf  # after a churn leave, back this many seconds later
    alive: bool = False
    dialable: bool = True  # can peers open connections to it (False: behind a NAT)
    driver: Driver | None = None
    table: PeerTable | None = None
    have: Bitfield | None = None  # verified chunks (the seed: None, it has all)
    log: HaveLog | None = None  # its have stream
    neighbors: set[int] = field(default_factory=set)
    channels: set[int] = field(default_factory=set)  # undiallable: who it holds a channel to
    runs: dict[int, Run] = field(default_factory=dict)  # its range requests, by Fetch.id
    asks: dict[int, int] = field(default_factory=dict)  # its have requests: target -> token
    parked: dict[int, Park] = field(default_factory=dict)  # long-polls it holds, by asker
    answered: dict[int, float] = field(default_factory=dict)  # last news it sent, by asker
    serving: set[Run] = field(default_factory=set)  # the uploads it sends
    queue: deque[Run] = field(default_factory=deque)  # uploads waiting for a slot
    armed: float | None = None
    level_at: list[float] = field(default_factory=list)
    done_at: float | None = None
    first_fetch: float | None = None  # when it sent its first chunk request
    boots: int = 0  # daemon starts: 1 at its join, one more at each return
    downtime: float = 0.0  # seconds it was away (left and came back)
    cancelled: int = 0
    busy: int = 0
    requests: int = 0
    chunk_requests: int = 0
    unroutable: int = 0  # requests it sent to a peer with no way to it (they failed)
    routable_peers: int = 0  # of its peer table, when it got exact (or at the end)
    known_peers: int = 0

    @property
    def name(self) -> str:
        return str(self.nid)

    @property
    def fetching(self) -> bool:
        return self.alive and self.driver is not None and not self.driver.complete


@dataclass(eq=False)
class Run:
    """One range request (a :class:`Fetch`) from ``e`` to ``p``."""

    e: Node  # the requester
    p: Node  # the sender
    fetch: Fetch
    state: int = SENT
    pos: int = 0  # the chunk being sent
    fid: int = -1

    @property
    def chunks(self) -> tuple[int, ...]:
        return self.fetch.chunks


@dataclass
class Park:
    """A have long-poll held by its target until news or ``wait`` seconds."""

    token: int
    since: tuple[str, int]
    arrive: float
    """When the request reaches its target (it is held from then on)."""


class Sim:
    """One run: a seed and ``n`` edges."""

    def __init__(self, args: argparse.Namespace, n: int) -> None:
        self.args = args
        self.rng = random.Random(args.seed * 1_000_003 + n)
        cum = [float(x) for x in args.levels_mb.split(",")]
        self.levels, self.sizes = layout(cum, round(args.chunk_mib * MIB))
        self.nchunks = len(self.sizes)
        self.total = float(sum(self.sizes))
        self.level0 = float(sum(self.sizes[i] for i in self.levels[0]))
        self.dt = args.tick
        self.config = DriverConfig(
            scheduler=SchedulerConfig(max_in_flight_total=args.max_in_flight)
        )
        self.table_config = PeerTableConfig()
        classes = json.loads(args.classes) if args.classes else CLASSES
        seed = Node(0, "seed", args.seed_up * MB, args.seed_up * MB, 0.005, 0.0)
        self.nodes: list[Node] = [seed]
        names, weights = [c[0] for c in classes], [c[1] for c in classes]
        joins = [float(x) for x in args.joins.split(",")] if args.joins else []
        caps = {c[0]: (c[2], c[3]) for c in classes}
        for i in range(1, n + 1):
            kind = self.rng.choices(names, weights)[0]
            up, down = caps[kind]
            join = self.rng.uniform(0.0, args.join_window)
            if joins:
                join = joins[i - 1]
            lat = self.rng.uniform(args.lat_min, args.lat_max)
            node = Node(i, kind, up, down, lat, join)
            if self.rng.random() < args.churn:
                node.leave = join + self.rng.uniform(0.0, args.churn_horizon)
                if args.churn_away < math.inf:
                    node.away = self.rng.uniform(0.5, 1.5) * args.churn_away
            self.nodes.append(node)
        if args.unreachable > 0:
            # Drawn apart from the scenario's stream: the rest of the draw stays as it is.
            draw = random.Random(f"unreachable {args.seed} {n}")
            for i in draw.sample(range(1, n + 1), round(args.unreachable * n)):
                self.nodes[i].dialable = False
        self.net = FlowNetwork(
            np.array([x.up for x in self.nodes]), np.array([x.down for x in self.nodes])
        )
        self.flows: dict[int, Run] = {}
        self.heap: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self.seq = 0
        self.dirty: set[int] = set()
        self.alive_edges: list[int] = []
        self.alive_dialable: list[int] = []  # the edges among them that can be dialled
        self.routes: dict[tuple[str, str], int] = {}
        """Bytes of whole chunks sent, by (sender, receiver) group: seed, dialable or
        undialable (what cancelled transfers sent is not in it)."""
        self.finished = 0  # edges exact, or gone without it
        self.seeder: SuperSeeder | None = None
        self.seed_logs: dict[int, HaveLog] = {}  # each edge's view of a super-seeding seed
        if not args.no_super_seeding:
            self.seeder = SuperSeeder(self.levels, seed=args.seed)
        self.uploads = [self.upload_slots(x) for x in self.nodes]
        self.events = 0
        self.now = 0.0
        self.end = 0.0
        self.started = time.perf_counter()
        self.cut_short = False
        self.timeline: list[tuple[float, float, float, int, int, int]] = []
        """Per second: time, edges' upload MB/s, seed's upload MB/s, chunks that left the
        seed, edges with level 0, edges exact."""
        self.left_seed: set[int] = set()
        self.polls: deque[tuple[float, int, int, int]] = deque()
        """Held long-polls by the time they are up (when they came, plus ``long_poll``):
        (time, asker, target, token); in the order they were asked, so one may be answered
        up to a latency late."""
        for node in self.nodes[1:]:
            self.at(node.join, self.on_join, node)
            if node.leave < math.inf:
                self.at(node.leave, self.on_churn, node)
        if args.seed_dies_at is not None:
            self.at(args.seed_dies_at, self.on_leave, seed)
        seed.alive = True

    # -- the clock ------------------------------------------------------------------------

    def at(self, t: float, fn: Callable[..., None], *a: Any) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, fn, a))

    def upload_slots(self, x: Node) -> UploadSlots:
        """``x``'s peer server's upload slots (``[limits]``), empty."""
        args = self.args
        slots = slots_for(x.up if args.upload_cap else 0, args.upload_slots)
        return UploadSlots(UploadConfig(slots, args.upload_queue))

    def lat(self, a: Node, b: Node) -> float:
        return a.lat + b.lat

    def run(self) -> None:
        dt, k = self.dt, 0
        edges = self.nodes[1:]
        last_sample, up_before, seed_before = 0.0, 0.0, 0.0
        while True:
            t = k * dt
            t_end = t + dt
            for fid, tf in self.net.step(t, dt):
                self.segment_done(fid, tf, t_end)
            polls = self.polls
            while polls and polls[0][0] < t_end:
                tp, asker, target, token = polls.popleft()
                self.now = max(tp, t)
                self.have_timeout(self.nodes[asker], self.nodes[target], token)
            while self.heap and self.heap[0][0] < t_end:
                te, _, fn, a = heapq.heappop(self.heap)
                self.now = max(te, t)
                self.events += 1
                fn(*a)
            self.now = t_end
            if self.seeder is not None:
                self.seed_offers()
            for nid in sorted(self.dirty):
                self.pump(self.nodes[nid])
            self.dirty.clear()
            k += 1
            if t_end - last_sample >= 1.0 - 1e-9:
                up_now, seed_now = float(self.net.uploaded[1:].sum()), float(self.net.uploaded[0])
                span = t_end - last_sample
                self.timeline.append(
                    (
                        round(t_end, 2),
                        round((up_now - up_before) / span / MB, 1),
                        round((seed_now - seed_before) / span / MB, 1),
                        len(self.left_seed),
                        sum(1 for x in edges if x.level_at and not math.isnan(x.level_at[0])),
                        sum(1 for x in edges if x.done_at is not None),
                    )
                )
                last_sample, up_before, seed_before = t_end, up_now, seed_now
                if self.args.verbose and round(t_end) % 10 == 0:
                    print(
                        f"t={t_end:.0f}s wall={time.perf_counter() - self.started:.0f}s"
                        f" level0={self.timeline[-1][4]} exact={self.timeline[-1][5]}",
                        file=sys.stderr,
                        flush=True,
                    )
            if k % 100 == 0 and time.perf_counter() - self.started > self.args.wall_limit:
                self.end = t_end
                self.cut_short = True
                return
            if t_end > self.args.max_time or self.finished == len(edges):
                self.end = t_end
                return
            if not self.net.flows and not self.dirty and self.heap:
                k = max(k, int(self.heap[0][0] / dt))

    # -- joins, leaves, knowledge ---------------------------------------------------------

    def on_join(self, e: Node) -> None:
        if e.leave <= self.now:
            self.finished += 1
            return
        e.have = Bitfield(self.nchunks)
        e.level_at = [math.nan] * len(self.levels)
        self.boot(e)

    def boot(self, e: Node) -> None:
        """``e``'s daemon starts (at its join, or back after a churn leave): a fresh peer
        table and driver that hold what ``e`` had verified (as a restarted daemon finds its
        chunks on disk), a have stream of a new epoch, free upload slots; it learns of
        ``--degree`` random edges present and of the seed after a round trip."""
        assert e.have is not None
        e.alive = True
        e.boots += 1
        held = e.have.indices()
        e.log = HaveLog(self.nchunks, held, epoch=f"e{e.nid}.{e.boots}")
        e.table = PeerTable(self.table_config, self_url=e.name)
        e.driver = Driver(
            MODEL,
            self.levels,
            self.sizes,
            e.table,
            have=held,
            config=self.config,
            seed=self.rng.getrandbits(32),
        )
        e.neighbors, e.asks, e.armed, e.answered = set(), {}, None, {}
        self.uploads[e.nid] = self.upload_slots(e)
        # An edge that cannot be dialled keeps only peers it can reach (peer exchange offers
        # far more than ``--degree``): it draws among the edges that can be dialled.
        pool = self.alive_edges if e.dialable else self.alive_dialable
        k = min(self.args.degree, len(pool))
        for nid in self.rng.sample(pool, k):
            self.at(self.now + 2 * self.lat(e, self.nodes[nid]), self.connect, e, self.nodes[nid])
        self.alive_edges.append(e.nid)
        if e.dialable:
            self.alive_dialable.append(e.nid)
        self.at(self.now + 2 * self.lat(e, self.nodes[0]), self.connect, e, self.nodes[0])

    def on_churn(self, e: Node) -> None:
        """``e`` leaves (its daemon stops); with ``--churn-away`` it comes back later with
        what it had verified."""
        if not e.alive:
            return
        returns = e.away < math.inf and (e.done_at is None or self.args.linger == math.inf)
        self.on_leave(e, returns=returns)
        if returns:
            self.at(self.now + e.away, self.on_return, e)

    def on_return(self, e: Node) -> None:
        e.downtime += self.now - e.leave
        e.leave = math.inf
        self.boot(e)

    def connect(self, a: Node, b: Node) -> None:
        """``a`` and ``b`` learn of each other (announce, peer exchange): each puts the
        other in its peer table, with what the other says of its reachability, and its
        driver looks for sources. Of an edge that cannot be dialled, the other's dial-back
        fails (after ``--dial-timeout``: the announce's answer waits for it, as
        ``node/discovery.py``'s does) and the edge then opens a reverse channel to it
        (:meth:`channel_open`). Two edges that cannot be dialled never meet."""
        if not (a.alive and b.alive) or b.nid in a.neighbors:
            return
        if not (a.dialable or b.dialable):
            return
        a.neighbors.add(b.nid)
        b.neighbors.add(a.nid)
        for x, y in ((a, b), (b, a)):
            if not x.fetching:
                continue
            assert x.table is not None and x.driver is not None
            origin = y.nid == 0
            ref = ModelRef(MODEL, MODEL, 1, complete=origin, origin=origin)
            if (
                x.table.heard_from(y.name, y.name, [ref], self.now, reachable=y.dialable)
                is not None
            ):
                x.driver.peers_changed()
                self.dirty.add(x.nid)
            if not y.dialable:
                wait = self.args.dial_timeout if x.table.dial_due(y.name, self.now) else 0.0
                self.at(self.now + wait, self.dial_failed, x, y)
                self.at(self.now + wait + 4 * self.lat(x, y), self.channel_open, x, y)

    def dial_failed(self, x: Node, y: Node) -> None:
        """``x``'s dial-back of ``y``'s URL found nothing (``y`` is behind a NAT)."""
        if x.fetching and y.alive:
            assert x.table is not None and x.driver is not None
            if x.table.dialled(y.name, False, self.now):
                x.driver.peers_changed()
                self.dirty.add(x.nid)

    def channel_open(self, x: Node, y: Node) -> None:
        """``y``, which ``x`` cannot dial, opened its reverse channel to ``x``: the answer
        to its announce said ``x`` could not dial it (one latency), then a WebSocket's
        TCP handshake and upgrade (three more). Only if ``x`` keeps ``y`` in its table (its
        answer says nothing of a peer it refused: ``max_peers``). ``x``'s requests and
        long-polls to ``y`` go over it, with the latency and bandwidth of a direct
        connection."""
        if not (x.alive and y.alive) or x.nid not in y.neighbors:
            return
        if x.table is None or x.table.get(y.name) is None:
            return
        y.channels.add(x.nid)
        if x.fetching and x.table.channel_changed(y.name, True):
            assert x.driver is not None
            x.driver.peers_changed()
            self.dirty.add(x.nid)

    def channel_closed(self, x: Node, y: Node) -> None:
        """``x`` sees the channel ``y`` held to it close (``y`` left)."""
        if x.fetching:
            assert x.table is not None and x.driver is not None
            if x.table.channel_changed(y.name, False):
                x.driver.peers_changed()
                self.dirty.add(x.nid)

    @staticmethod
    def reach_group(x: Node) -> str:
        return "seed" if x.nid == 0 else "dialable" if x.dialable else "undialable"

    def reach(self, x: Node, y: Node) -> bool:
        """Can ``x`` send ``y`` a request: ``y`` can be dialled, or holds a channel to
        ``x``."""
        return y.dialable or x.nid in y.channels

    def on_leave(self, x: Node, *, returns: bool = False) -> None:
        """``x`` stops: its uploads break and the long-polls it holds fail (each requester
        sees it one latency later); its own requests end. ``returns``: it will come back
        (it does not count as finished meanwhile)."""
        if not x.alive:
            return
        x.alive = False
        x.leave = self.now
        if x.nid != 0 and x.done_at is None and not returns:
            self.finished += 1
        if x.nid in self.alive_edges:
            self.alive_edges.remove(x.nid)
        if x.nid in self.alive_dialable:
            self.alive_dialable.remove(x.nid)
        for nid in x.channels:  # its channels close; each peer sees it one latency later
            self.at(
                self.now + self.lat(x, self.nodes[nid]), self.channel_closed, self.nodes[nid], x
            )
        x.channels.clear()
        for nid in x.neighbors:  # the channels held to it break
            self.nodes[nid].channels.discard(x.nid)
        for run in list(x.runs.values()):
            self.stop(run)
        x.runs.clear()
        x.asks.clear()
        for run in list(x.serving):
            self.net.remove(run.fid)
            del self.flows[run.fid]
            run.state = CANCELLED
            self.at(self.now + self.lat(run.e, x), self.run_failed, run)
        x.serving.clear()
        for run in x.queue:
            run.state = CANCELLED
            self.at(self.now + self.lat(run.e, x), self.run_failed, run)
        x.queue.clear()
        for asker, park in x.parked.items():
            self.at(
                max(self.now, park.arrive) + self.lat(x, self.nodes[asker]),
                self.have_failed,
                self.nodes[asker],
                x,
                park.token,
            )
        x.parked.clear()
        if self.seeder is not None and x.nid != 0 and x.nid in self.seed_logs:
            self.seeder.remove_peer(x.name, self.now)
            del self.seed_logs[x.nid]

    # -- the have streams (the peer server's side, as node/haves.py) -----------------------

    def log_for(self, y: Node, asker: Node) -> HaveLog:
        """The have stream ``y`` serves ``asker``: its own, or on a super-seeding seed the
        log of its offers to that edge (the seeder learns the edge on its first request)."""
        if y.nid != 0:
            assert y.log is not None
            return y.log
        log = self.seed_logs.get(asker.nid)
        if log is None:
            log = self.seed_logs[asker.nid] = HaveLog(self.nchunks, epoch=f"s{asker.nid}")
            if self.seeder is None:
                for i in range(self.nchunks):
                    log.add(i)
            else:
                assert asker.have is not None
                self.seeder.add_peer(asker.name, asker.have.copy(), self.now)
        return log

    def ask_have(self, x: Node, y: Node, token: int, since: tuple[str, int] | None) -> None:
        """``x`` asks ``y`` for its have; the request reaches ``y`` one latency later and is
        answered then if there is news (computed as the request leaves), else held (a
        long-poll) from its arrival until there is or its ``wait`` is up; answers and
        failures arrive one more latency later. A held request costs no event. News to one
        asker goes at most every ``HAVE_PACE`` seconds (``havelog.paced_until``, as the
        daemon's ``node/haves.py`` paces it)."""
        lat = self.lat(x, y)
        arrive = self.now + lat
        if y.alive and not self.reach(x, y):
            x.unroutable += 1
        if not y.alive or not self.reach(x, y):
            self.at(arrive + lat, self.have_failed, x, y, token)
            return
        log = self.log_for(y, x)
        if since is None:
            full = log.since("", -1).full
            self.at(arrive + lat, self.have_answer, x, y, token, HaveDelta("", 0, full=full))
            return
        delta = log.since(*since)
        if delta.full is not None or delta.added:
            self.news_to(x, y, token, since, arrive, delta)
            return
        y.parked[x.nid] = Park(token, since, arrive)
        self.polls.append((arrive + self.config.long_poll, x.nid, y.nid, token))

    def have_timeout(self, x: Node, y: Node, token: int) -> None:
        park = y.parked.get(x.nid)
        if park is not None and park.token == token and y.alive:
            del y.parked[x.nid]
            self.reply(x, y, park, self.log_for(y, x).since(*park.since))

    def news(self, y: Node, asker: int | None = None) -> None:
        """``y``'s have stream grew: the long-polls it holds answer (only ``asker``'s)."""
        if asker is not None:
            park = y.parked.pop(asker, None)
            if park is not None:
                x = self.nodes[asker]
                delta = self.log_for(y, x).since(*park.since)
                self.news_to(x, y, park.token, park.since, max(self.now, park.arrive), delta)
            return
        parked, y.parked = y.parked, {}
        log = y.log
        assert log is not None
        for a, park in parked.items():
            delta = log.since(*park.since)
            self.news_to(
                self.nodes[a], y, park.token, park.since, max(self.now, park.arrive), delta
            )

    def news_to(
        self,
        x: Node,
        y: Node,
        token: int,
        since: tuple[str, int],
        ready: float,
        delta: HaveDelta,
    ) -> None:
        """``y`` answers ``x``'s long-poll with news (``delta``) at ``ready``, or, if it sent
        ``x`` news less than ``HAVE_PACE`` seconds before, once that much time has passed,
        with all the news by then (``havelog.paced_until``, as the daemon paces); a
        super-seeding seed's offers are not paced, as the daemon's are not."""
        offers = y.nid == 0 and self.seeder is not None
        due = ready if offers else paced_until(y.answered.get(x.nid), ready)
        if due <= ready:
            y.answered[x.nid] = ready
            self.at(ready + self.lat(x, y), self.have_answer, x, y, token, delta)
        else:
            self.at(due, self.paced, x, y, token, since)

    def paced(self, x: Node, y: Node, token: int, since: tuple[str, int]) -> None:
        """A paced answer goes now, with the news up to now."""
        if not y.alive:
            self.at(self.now + self.lat(x, y), self.have_failed, x, y, token)
            return
        y.answered[x.nid] = self.now
        delta = self.log_for(y, x).since(*since)
        self.at(self.now + self.lat(x, y), self.have_answer, x, y, token, delta)

    def reply(self, x: Node, y: Node, park: Park, delta: HaveDelta) -> None:
        """Answer a held long-poll now (or when it arrives, if it is still on its way), not
        paced (its wait is up)."""
        self.at(
            max(self.now, park.arrive) + self.lat(x, y), self.have_answer, x, y, park.token, delta
        )

    def have_answer(self, x: Node, y: Node, token: int, delta: HaveDelta) -> None:
        if x.asks.get(y.nid) != token or not x.fetching:
            return
        del x.asks[y.nid]
        assert x.driver is not None
        x.driver.on_have(y.name, delta, self.now)
        self.dirty.add(x.nid)

    def have_failed(self, x: Node, y: Node, token: int) -> None:
        if x.asks.get(y.nid) != token or not x.fetching:
            return
        del x.asks[y.nid]
        assert x.driver is not None
        x.driver.on_have_failed(y.name, self.now)
        self.dirty.add(x.nid)

    def seed_offers(self) -> None:
        """The seeder's new offers go into the edges' logs; their long-polls answer."""
        assert self.seeder is not None
        seed = self.nodes[0]
        if not seed.alive:
            return
        for peer, index in self.seeder.offers(self.now):
            nid = int(peer)
            log = self.seed_logs.get(nid)
            if log is not None and log.add(index) is not None:
                self.news(seed, nid)

    def seed_learns(self, e: Node, index: int) -> None:
        """The seed's read of edge ``e``'s have stream brings chunk ``index``."""
        if self.seeder is not None and self.nodes[0].alive and e.nid in self.seed_logs:
            self.seeder.add_have(e.name, index, self.now)

    # -- the fetcher's pump -----------------------------------------------------------------

    def pump(self, e: Node) -> None:
        """``driver.step(now)``, then do its actions and arm its timer (``fetcher.run``)."""
        if not e.fetching:
            return
        assert e.driver is not None
        wake = e.driver.next_wakeup()
        if wake is not None and wake <= self.now:
            self.progress(e)
        for action in e.driver.step(self.now):
            self.do(e, action)
        wake = e.driver.next_wakeup()
        if wake is not None and wake != e.armed:
            e.armed = wake
            self.at(max(wake, self.now), self.timer, e, wake)

    def do(self, e: Node, action: Action) -> None:
        if isinstance(action, Fetch):
            p = self.nodes[int(action.source.key)]
            run = Run(e, p, action)
            e.runs[action.id] = run
            e.requests += 1
            if e.first_fetch is None:
                e.first_fetch = self.now
            e.chunk_requests += len(action.chunks)
            self.at(self.now + self.lat(e, p), self.arrive, run)
        elif isinstance(action, Cancel):
            e.cancelled += 1
            cancelled = e.runs.pop(action.id, None)
            if cancelled is not None:
                self.stop(cancelled)
        elif isinstance(action, AskHave):
            y = self.nodes[int(action.source.key)]
            self.seq += 1
            e.asks[y.nid] = self.seq
            self.ask_have(e, y, self.seq, action.since)
        elif isinstance(action, StopHave):
            nid = int(action.key)
            token = e.asks.pop(nid, None)
            park = self.nodes[nid].parked.get(e.nid)
            if park is not None and park.token == token:
                del self.nodes[nid].parked[e.nid]
        # CheckManifest (no web seeds here), SourceUsed, Banned (no liars): nothing to do

    def timer(self, e: Node, wake: float) -> None:
        if e.armed == wake:
            e.armed = None
            self.dirty.add(e.nid)

    def progress(self, e: Node) -> None:
        """``on_progress`` as the fetcher reports it, per ``PIECE`` bytes of a body; reported
        lazily, before a step that is due: the deadlines it pushed back are then the same."""
        assert e.driver is not None
        for run in e.runs.values():
            if run.state != FLOWING:
                continue
            rate = float(self.net.rate[run.fid])
            if rate <= 0:
                continue
            got = self.sizes[run.chunks[run.pos]] - float(self.net.remaining[run.fid])
            e.driver.on_progress(run.fetch, self.now - (got % PIECE) / rate)

    # -- the peer server's uploads ----------------------------------------------------------

    def stop(self, run: Run) -> None:
        """The requester gave up ``run`` (or left): its flow or place in a queue ends."""
        p = run.p
        if run.state == FLOWING:
            self.net.remove(run.fid)
            del self.flows[run.fid]
            p.serving.discard(run)
            self.upload_ended(p, run, cut=True)
        elif run.state == QUEUED:
            p.queue.remove(run)
            self.uploads[p.nid].end(run, self.now)
        run.state = CANCELLED

    def arrive(self, run: Run) -> None:
        """The request reaches its sender: it starts sending, waits for a slot, or is
        declined (503 with Retry-After), or fails (the sender is gone or lacks a chunk)."""
        if run.state == CANCELLED:
            return
        e, p = run.e, run.p
        if p.alive and not self.reach(e, p):
            e.unroutable += 1
        if (
            not p.alive
            or not self.reach(e, p)
            or (p.have is not None and any(i not in p.have for i in run.chunks))
        ):
            run.state = CANCELLED
            self.at(self.now + self.lat(e, p), self.run_failed, run)
            return
        up = self.uploads[p.nid]
        if up.serving >= up.config.slots:  # the shell's estimates, for a Retry-After
            for other in p.serving:
                left = self.time_left(other)
                if left > 0:
                    up.expect(other, self.now + left)
        verdict = up.request(run, self.now)
        if verdict == SERVE:
            self.start_flow(run)
        elif verdict == QUEUE:
            run.state = QUEUED
            p.queue.append(run)
        else:
            assert isinstance(verdict, float)
            run.state = CANCELLED
            self.at(self.now + self.lat(e, p), self.declined, run, math.ceil(max(verdict, 1)))

    def time_left(self, run: Run) -> float:
        """Seconds until the sender expects ``run``'s upload to end, from the bytes left and
        its rate (0: it cannot say, the flow has no rate yet)."""
        rate = float(self.net.rate[run.fid])
        if rate <= 0:
            return 0.0
        rest = sum(self.sizes[i] for i in run.chunks[run.pos + 1 :])
        return (float(self.net.remaining[run.fid]) + rest) / rate

    def start_flow(self, run: Run) -> None:
        e, p = run.e, run.p
        run.fid = self.net.add(p.nid, e.nid, self.sizes[run.chunks[0]])
        run.state = FLOWING
        self.flows[run.fid] = run
        p.serving.add(run)
        if p.nid == 0:
            self.left_seed.update(run.chunks)
            if self.seeder is not None:
                for index in run.chunks:
                    self.seeder.on_request(e.name, index, self.now)

    def upload_ended(self, p: Node, run: Run, *, cut: bool) -> None:
        if p.nid == 0 and self.seeder is not None:
            for index in run.chunks[run.pos :] if cut else run.chunks[-1:]:
                self.seeder.on_sent(run.e.name, index, self.now)
        if p.alive:
            nxt = self.uploads[p.nid].end(run, self.now)
            if nxt is not None:
                assert isinstance(nxt, Run)
                p.queue.remove(nxt)
                self.start_flow(nxt)

    def segment_done(self, fid: int, tf: float, t_end: float) -> None:
        """The last byte of a chunk left its sender at ``tf``: it lands one latency later;
        the flow goes on with the run's next chunk, or ends."""
        run = self.flows[fid]
        e, p = run.e, run.p
        lat = self.lat(e, p)
        route = (self.reach_group(p), self.reach_group(e))
        while True:
            index = run.chunks[run.pos]
            self.at(tf + lat, self.landed, run, index)
            self.routes[route] = self.routes.get(route, 0) + self.sizes[index]
            if run.pos + 1 == len(run.chunks):
                break
            if p.nid == 0 and self.seeder is not None:
                self.seeder.on_sent(e.name, index, tf)
            run.pos += 1
            more = self.net.cont(fid, self.sizes[run.chunks[run.pos]], tf, t_end)
            if more is None:
                return
            tf = more
        self.net.remove(fid)
        del self.flows[fid]
        p.serving.discard(run)
        run.state = ENDED
        saved, self.now = self.now, tf
        self.upload_ended(p, run, cut=False)
        self.now = saved
        self.at(tf + lat, self.run_end, run)

    # -- what comes back to the requester ---------------------------------------------------

    def mine(self, run: Run) -> bool:
        """Is ``run`` still a request of a fetching edge (not cancelled)?"""
        return run.e.fetching and run.e.runs.get(run.fetch.id) is run

    def landed(self, run: Run, index: int) -> None:
        """``fetcher._land``: a chunk of the body is in and verified."""
        e = run.e
        if not self.mine(run):
            return
        assert e.driver is not None and e.have is not None and e.log is not None
        if index in e.have:
            return
        e.have.set(index)
        e.log.add(index)
        self.news(e)
        if self.seeder is not None:
            self.at(self.now + self.lat(e, self.nodes[0]), self.seed_learns, e, index)
        e.driver.on_chunk(run.fetch, index, self.now)
        self.dirty.add(e.nid)
        best = e.driver.sched.best_level
        for level in range(best + 1):
            if math.isnan(e.level_at[level]):
                e.level_at[level] = self.now
        if e.driver.complete:
            e.done_at = self.now
            self.count_peers(e)
            self.finished += 1
            for other in list(e.runs.values()):  # the fetch ends: its requests stop
                self.stop(other)
            e.runs.clear()
            if self.args.linger < math.inf:
                self.at(self.now + self.args.linger, self.on_leave, e)

    def count_peers(self, e: Node) -> None:
        """What ``e``'s peer table holds now: peers, and those it can send requests to."""
        if e.table is not None:
            e.known_peers, e.routable_peers = len(e.table), len(e.table.routable())

    def run_end(self, run: Run) -> None:
        """The body ended."""
        if self.mine(run):
            del run.e.runs[run.fetch.id]
            assert run.e.driver is not None
            run.e.driver.on_end(run.fetch, self.now)
            self.dirty.add(run.e.nid)

    def declined(self, run: Run, retry_after: float) -> None:
        """A 503 with ``Retry-After``."""
        if self.mine(run):
            del run.e.runs[run.fetch.id]
            assert run.e.driver is not None
            run.e.driver.on_busy(run.fetch, retry_after, self.now)
            run.e.busy += 1
            self.dirty.add(run.e.nid)

    def run_failed(self, run: Run) -> None:
        """The request failed (connection refused or reset, 416)."""
        if self.mine(run):
            del run.e.runs[run.fetch.id]
            assert run.e.driver is not None
            run.e.driver.on_failed(run.fetch, self.now)
            self.dirty.add(run.e.nid)

    # -- results --------------------------------------------------------------------------

    def results(self) -> dict[str, Any]:
        edges = self.nodes[1:]
        n = len(edges)
        u_s = self.nodes[0].up
        sum_up = sum(x.up for x in edges)
        d_min = min(x.down for x in edges)

        def bound(nbytes: float, down: float) -> float:
            return max(nbytes / u_s, nbytes / down, n * nbytes / (u_s + sum_up))

        done = [x for x in edges if x.done_at is not None]
        # Edges that stayed to the end; one not done by then counts as infinitely late.
        stayed = [x for x in edges if x.done_at is not None or x.leave == math.inf]

        def since_join(t: float | None, join: float) -> float:
            return math.inf if t is None or math.isnan(t) else t - join

        exact, lvl0, per_node, per_node0 = [], [], [], []
        for x in stayed:
            tx = since_join(x.done_at, x.join)
            t0 = since_join(x.level_at[0] if x.level_at else None, x.join)
            exact.append(tx)
            lvl0.append(t0)
            per_node.append(tx / bound(self.total, x.down))
            per_node0.append(t0 / bound(self.level0, x.down))
        lb, lb0 = bound(self.total, d_min), bound(self.level0, d_min)
        # An edge that cannot be dialled gets its bytes from the seed and the edges that
        # can be: all of them together need at least n_u * F / (u_s + their uplinks).
        n_u = sum(1 for x in edges if not x.dialable)
        u_d = u_s + sum(x.up for x in edges if x.dialable)
        lb_reach, lb0_reach = max(lb, n_u * self.total / u_d), max(lb0, n_u * self.level0 / u_d)

        def pct(a: list[float], scale: float = 1.0) -> dict[str, float | None]:
            """Nearest-rank percentiles; ``None`` where that edge never got there."""
            out: dict[str, float | None] = {}
            ranked = sorted(a)
            for q in (50, 90, 99):
                if not ranked:
                    out[f"p{q}"] = None
                    continue
                v = ranked[max(0, math.ceil(q / 100 * len(ranked)) - 1)]
                out[f"p{q}"] = None if v == math.inf else round(v / scale, 3)
            return out

        def median(a: list[float]) -> float:
            return sorted(a)[(len(a) - 1) // 2] if a else math.inf

        seed_up = float(self.net.uploaded[0])
        for x in edges:
            if x.done_at is None:
                self.count_peers(x)

        def group(dialable: bool) -> dict[str, Any]:
            """The figures of the edges that can be dialled, or of those that cannot."""
            mine = [x for x in stayed if x.dialable == dialable]
            routable = sorted(x.routable_peers for x in mine)
            up_time = sum(x.up * (min(x.leave, self.end) - x.join - x.downtime) for x in mine)
            return {
                "edges": len(mine),
                "completed": sum(1 for x in mine if x.done_at is not None),
                "level0_s": pct(
                    [since_join(x.level_at[0] if x.level_at else None, x.join) for x in mine]
                ),
                "exact_s": pct([since_join(x.done_at, x.join) for x in mine]),
                "exact_over_lb": pct([since_join(x.done_at, x.join) for x in mine], lb),
                "peers_p50": median([float(x.known_peers) for x in mine]) if mine else None,
                "routable_peers_min": routable[0] if routable else None,
                "routable_peers_p50": median([float(r) for r in routable]) if mine else None,
                "upload_busy": round(
                    float(sum(self.net.uploaded[x.nid] for x in mine)) / max(1e-9, up_time), 3
                ),
            }

        return {
            "nodes": n,
            "unreachable": self.args.unreachable,
            "unreachable_edges": n_u,
            "completed": len(done),
            "left_early": sum(1 for x in edges if x.done_at is None and x.leave < math.inf),
            "returned": sum(1 for x in edges if x.boots > 1),
            "returned_exact_s": pct([since_join(x.done_at, x.join) for x in stayed if x.boots > 1]),
            "sim_seconds": round(self.end, 2),
            "stopped_by_wall_limit": self.cut_short,
            "lower_bound_s": round(lb, 2),
            "lower_bound_level0_s": round(lb0, 2),
            "level0_s": pct(lvl0),
            "exact_s": pct(exact),
            "level0_over_lb": pct(lvl0, lb0),
            "exact_over_lb": pct(exact, lb),
            "level0_over_node_lb": pct(per_node0),
            "exact_over_node_lb": pct(per_node),
            "lower_bound_reach_s": round(lb_reach, 2),
            "lower_bound_level0_reach_s": round(lb0_reach, 2),
            "level0_over_reach_lb": pct(lvl0, lb0_reach),
            "exact_over_reach_lb": pct(exact, lb_reach),
            "by_reach": {"dialable": group(True), "undialable": group(False)},
            "chunks_sent_by_reach": {
                f"{a} to {b}": round(v / self.total, 3) for (a, b), v in sorted(self.routes.items())
            },
            "level0_p50_over_exact_p50": (
                round(median(lvl0) / median(exact), 3) if median(exact) < math.inf else None
            ),
            "seed_upload_over_stream": round(seed_up / self.total, 3),
            "uploaded_over_needed": (
                round(float(self.net.uploaded.sum()) / (self.total * len(done)), 3)
                if done
                else None
            ),
            "edge_upload_busy": round(
                float(self.net.uploaded[1:].sum())
                / sum(x.up * (min(x.leave, self.end) - x.join - x.downtime) for x in edges),
                3,
            ),
            "edge_upload_busy_by_class": {
                kind: round(
                    float(sum(self.net.uploaded[x.nid] for x in edges if x.kind == kind))
                    / max(
                        1e-9,
                        sum(
                            x.up * (min(x.leave, self.end) - x.join - x.downtime)
                            for x in edges
                            if x.kind == kind
                        ),
                    ),
                    3,
                )
                for kind in sorted({x.kind for x in edges})
            },
            "cancelled": sum(x.cancelled for x in edges),
            "unroutable_requests": sum(x.unroutable for x in edges),
            "declined_busy": sum(x.busy for x in edges),
            "requests": sum(x.requests for x in edges),
            "chunk_requests": sum(x.chunk_requests for x in edges),
            "events": self.events,
            "samples": {
                "level0_s": sorted(round(v, 3) for v in lvl0 if v < math.inf),
                "exact_s": sorted(round(v, 3) for v in exact if v < math.inf),
                "edges": len(stayed),
                "timeline": self.timeline,
            },
        }


def plot(runs: list[dict[str, Any]], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(runs), figsize=(5 * len(runs), 4), squeeze=False)
    for ax, run in zip(axes[0], runs, strict=True):
        for key, label, lb in (
            ("level0_s", "level 0", run["lower_bound_level0_s"]),
            ("exact_s", "exact", run["lower_bound_s"]),
        ):
            xs = run["samples"][key]
            if xs:
                ys = np.arange(1, len(xs) + 1) / run["samples"]["edges"]
                line = ax.step(xs, ys, where="post", label=label)[0]
                ax.axvline(lb, ls="--", color=line.get_color(), lw=1, label=f"{label} bound")
        ax.set_title(
            f"N = {run['nodes']}: seed upload {run['seed_upload_over_stream']:.2f}× stream"
        )
        ax.set_xlabel("seconds since join")
        ax.set_ylabel("fraction of edges")
        ax.grid(alpha=0.3)
        ax.legend(loc="lower right", fontsize=8)
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def parser() -> argparse.ArgumentParser:
    """The simulator's flags, with the daemon's defaults (tests build their scenarios from
    it)."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--nodes", default="10,100,1000", help="edge counts, comma separated")
    ap.add_argument("--levels-mb", default=DEFAULT_LEVELS_MB, help="cumulative level sizes, MB")
    ap.add_argument("--chunk-mib", type=float, default=4, help="chunk size, MiB")
    ap.add_argument("--seed-up", type=float, default=20.0, help="seed upload, MB/s")
    ap.add_argument("--classes", default="", help="JSON [[name, share, up B/s, down B/s], ...]")
    ap.add_argument("--degree", type=int, default=16, help="edges each joining edge connects to")
    ap.add_argument("--join-window", type=float, default=5.0, help="joins uniform in [0, W] s")
    ap.add_argument(
        "--joins", default="", help="join times of the edges, s, comma separated (not uniform)"
    )
    ap.add_argument("--churn", type=float, default=0.0, help="fraction of edges that leave")
    ap.add_argument("--churn-horizon", type=float, default=120.0, help="leave within H s of join")
    ap.add_argument(
        "--churn-away",
        type=float,
        default=math.inf,
        help="an edge that left comes back after uniform [S/2, 3S/2] s with what it had"
        " verified (default: never)",
    )
    ap.add_argument(
        "--unreachable",
        type=float,
        default=0.0,
        help="fraction of the edges that cannot be dialled (behind a NAT; never the seed)",
    )
    ap.add_argument(
        "--dial-timeout",
        type=float,
        default=DIAL_TIMEOUT,
        help="seconds a dial-back of an edge that cannot be dialled takes to fail",
    )
    ap.add_argument("--linger", type=float, default=math.inf, help="stay S s after exact")
    ap.add_argument("--seed-dies-at", type=float, default=None, help="the seed leaves at T s")
    ap.add_argument("--lat-min", type=float, default=0.005, help="one-way access latency, s")
    ap.add_argument("--lat-max", type=float, default=0.05)
    limits = UploadConfig()
    ap.add_argument(
        "--max-in-flight",
        type=int,
        default=SchedulerConfig().max_in_flight_total,
        help="[limits] max_in_flight",
    )
    ap.add_argument("--upload-slots", type=int, default=limits.slots, help="[limits] upload_slots")
    ap.add_argument("--upload-queue", type=int, default=limits.queue, help="[limits] upload_queue")
    ap.add_argument(
        "--upload-cap",
        action="store_true",
        help="[limits] upload_bytes_per_s = each node's uplink (its upload slots follow it)",
    )
    ap.add_argument("--no-super-seeding", action="store_true", help="[swarm] super_seeding = false")
    ap.add_argument("--tick", type=float, default=0.01, help="network and shell quantum, s")
    ap.add_argument("--max-time", type=float, default=3600.0, help="stop at this simulated time")
    ap.add_argument(
        "--wall-limit", type=float, default=math.inf, help="stop after this many real seconds"
    )
    ap.add_argument("--seed", type=int, default=1, help="random seed")
    ap.add_argument("--label", default="", help="name of this variant in the output")
    ap.add_argument("--png", default="", help="write the CDFs here")
    ap.add_argument("--json", default="", help="also write the JSON here")
    ap.add_argument("--verbose", action="store_true", help="progress on stderr every 10 s")
    ap.add_argument("--samples", action="store_true", help="keep per-edge samples in the JSON")
    return ap


def main(argv: Sequence[str] | None = None) -> None:
    args = parser().parse_args(argv)
    if not 0.0 <= args.unreachable <= 1.0:
        raise SystemExit("--unreachable must be within [0, 1]")
    runs = []
    for n in (int(x) for x in args.nodes.split(",")):
        t0, cpu0 = time.perf_counter(), time.process_time()
        sim = Sim(args, n)
        sim.run()
        res = sim.results()
        res["run_seconds"] = round(time.perf_counter() - t0, 1)
        res["cpu_seconds"] = round(time.process_time() - cpu0, 1)
        runs.append(res)
    opts = {k: v for k, v in vars(args).items() if k not in ("png", "json", "samples")}
    for key in ("linger", "churn_away", "wall_limit"):
        if opts[key] == math.inf:
            opts[key] = "inf"
    doc = {"label": args.label, "options": opts, "runs": runs}
    if args.png:
        plot(runs, args.png, args.label or "peerprog swarm simulation")
    if not args.samples:
        for run in runs:
            run.pop("samples")
    text = json.dumps(doc, indent=1)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
