"""Swarm simulation: the real :class:`peerprog.swarm.Scheduler` in every simulated node.

One origin (the seed) and N edges fetch a published model's chunk and level layout over a
flow-level network (``bench/simnet.py``) on a discrete-event clock. Each edge runs the
real scheduler and the real peer table (``PeerTable``: a source is LOST after
``fetch_failures`` failures in a row and revived ``revive_after`` seconds later, at its
next ``have`` answer), driven as ``peerprog/node/fetcher.py`` drives them: the requests of
one ``next_requests(now)`` call are grouped by ``fetcher._runs`` into HTTP requests for runs
of consecutive chunks (at most ``fetcher.RUN_BYTES``); each is one flow from its sender,
each chunk lands (``on_chunk``) one latency after its last byte; ``on_progress`` while the
body arrives, ``on_failed`` and the peer table's judgement when a request fails,
``on_busy`` for a 503, ``handle_timer`` at ``next_deadline()``; with ``--advertise`` a
node's have stream also says when its upload places are all taken or one frees
(``UploadSlots.full``, ``set_full``). The seed runs the real ``SuperSeeder``
(``--superseed``). See ``bench/SIM_NOTES.md`` for the model, the capacity
distribution and the results.

    nice -n 10 .venv/bin/python -m bench.simulate --nodes 10,100,1000 --png sim.png

Prints JSON: per N, p50/p90/p99 time to level 0 and to exact (also over the lower bound),
the seed's upload as a multiple of the stream, the run time.
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
from peerprog.node.fetcher import RUN_BYTES, _runs
from peerprog.swarm import (
    Bitfield,
    PeerTable,
    PeerTableConfig,
    Request,
    Scheduler,
    SchedulerConfig,
    SourceState,
)
from peerprog.swarm.seeding import SeedingConfig, SuperSeeder
from peerprog.swarm.uploads import QUEUE, SERVE, UploadConfig, UploadSlots

MB = 1e6
MIB = 1 << 20
MODEL = "m"
PIECE = 64 * 1024
"""The shell reports progress per piece of a body this big (contract item d)."""

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
FULL, FREE = -1, -2
"""In place of a chunk index in a push: the sender's upload places are all taken / one is
free again (``--advertise``)."""


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


class Spans:
    """The fetcher's ``ChunkSink.span``: (level, offset in the level file, length)."""

    def __init__(self, levels: Sequence[range], sizes: Sequence[int]) -> None:
        self._span: list[tuple[int, int, int]] = []
        for level, r in enumerate(levels):
            offset = 0
            for i in r:
                self._span.append((level, offset, sizes[i]))
                offset += sizes[i]

    def span(self, index: int) -> tuple[int, int, int]:
        return self._span[index]

    def write_chunk(self, index: int, data: Sequence[Any]) -> None:  # pragma: no cover
        raise NotImplementedError


@dataclass(eq=False)
class Node:
    nid: int
    kind: str
    up: float
    down: float
    lat: float  # one-way access latency, s
    join: float
    leave: float = math.inf
    alive: bool = False
    sched: Scheduler | None = None
    table: PeerTable | None = None
    have: Bitfield | None = None  # verified chunks (the seed: None, it has all)
    neighbors: set[int] = field(default_factory=set)
    tasks: dict[tuple[int, int], Run] = field(default_factory=dict)  # fetcher._tasks
    runs: set[Run] = field(default_factory=set)  # its requests not ended
    serving: set[Run] = field(default_factory=set)  # the uploads it sends
    queue: deque[Run] = field(default_factory=deque)  # uploads waiting for a slot
    armed: float | None = None
    full_said: bool = False  # what it last told its peers of its upload places
    level_at: list[float] = field(default_factory=list)
    done_at: float | None = None
    timeouts: int = 0
    busy: int = 0
    requests: int = 0
    chunk_requests: int = 0
    lost: int = 0

    @property
    def name(self) -> str:
        return str(self.nid)


@dataclass(eq=False)
class Run:
    """One HTTP request of the fetcher: a run of consecutive chunks of one level from one
    peer (``fetcher._fetch``)."""

    e: Node  # the requester
    p: Node  # the sender
    chunks: list[int]
    live: int  # entries of e.tasks that point at it: cancelled when none is left
    state: int = SENT
    pos: int = 0  # the chunk being sent
    fid: int = -1


class Sim:
    """One run: a seed and ``n`` edges."""

    def __init__(self, args: argparse.Namespace, n: int) -> None:
        self.args = args
        self.rng = random.Random(args.seed * 1_000_003 + n)
        cum = [float(x) for x in args.levels_mb.split(",")]
        self.levels, self.sizes = layout(cum, round(args.chunk_mib * MIB))
        self.spans = Spans(self.levels, self.sizes)
        self.nchunks = len(self.sizes)
        self.total = float(sum(self.sizes))
        self.level0 = float(sum(self.sizes[i] for i in self.levels[0]))
        self.dt = args.tick
        self.push = args.have == "push"
        self.config = SchedulerConfig(
            max_in_flight_total=args.max_in_flight,
            lookahead_levels=args.lookahead,
            min_in_flight_per_peer=args.min_in_flight,
            min_queue_bytes=int(args.min_queue_mib * MIB),
            max_in_flight_per_peer=max(args.min_in_flight, 16),
        )
        self.table_config = PeerTableConfig()
        classes = json.loads(args.classes) if args.classes else CLASSES
        seed = Node(0, "seed", args.seed_up * MB, args.seed_up * MB, 0.005, 0.0)
        self.nodes: list[Node] = [seed]
        names, weights = [c[0] for c in classes], [c[1] for c in classes]
        caps = {c[0]: (c[2], c[3]) for c in classes}
        for i in range(1, n + 1):
            kind = self.rng.choices(names, weights)[0]
            up, down = caps[kind]
            join = self.rng.uniform(0.0, args.join_window)
            lat = self.rng.uniform(args.lat_min, args.lat_max)
            node = Node(i, kind, up, down, lat, join)
            if self.rng.random() < args.churn:
                node.leave = join + self.rng.uniform(0.0, args.churn_horizon)
            self.nodes.append(node)
        self.net = FlowNetwork(
            np.array([x.up for x in self.nodes]), np.array([x.down for x in self.nodes])
        )
        self.flows: dict[int, Run] = {}
        self.heap: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self.seq = 0
        self.pushes: dict[int, list[tuple[Node, Node, int]]] = {}
        self.dirty: set[int] = set()
        self.touched: set[int] = set()
        self.alive_edges: list[int] = []
        self.finished = 0  # edges exact, or gone without it
        self.seeder: SuperSeeder | None = None
        if args.superseed:
            self.seeder = SuperSeeder(
                self.levels,
                SeedingConfig(
                    depth=args.offer_depth,
                    slots=args.seed_slots,
                    ahead=args.lookahead,
                    starve_after=args.starve_after,
                ),
                seed=args.seed,
            )
        self.uploads: list[UploadSlots | None] = []
        for node in self.nodes:
            slots, queue = args.upload_slots, args.upload_queue
            if node.nid == 0 and args.seed_upload_slots is not None:
                slots = args.seed_upload_slots
            if node.nid == 0 and args.seed_upload_queue is not None:
                queue = args.seed_upload_queue
            if not args.busy:
                queue = 1 << 30  # requests wait, however many (the handler awaits a slot)
            self.uploads.append(UploadSlots(UploadConfig(slots, queue)) if slots else None)
        self.events = 0
        self.now = 0.0
        self.end = 0.0
        self.started = time.perf_counter()
        self.cut_short = False
        self.timeline: list[tuple[float, float, float, int, int, int]] = []
        """Per second: time, edges' upload MB/s, seed's upload MB/s, chunks that left the
        seed, edges with level 0, edges exact."""
        self.left_seed: set[int] = set()
        for node in self.nodes[1:]:
            self.at(node.join, self.on_join, node)
            if node.leave < math.inf:
                self.at(node.leave, self.on_leave, node)
        if args.seed_dies_at is not None:
            self.at(args.seed_dies_at, self.on_leave, seed)
        seed.alive = True

    # -- the clock ------------------------------------------------------------------------

    def at(self, t: float, fn: Callable[..., None], *a: Any) -> None:
        self.seq += 1
        heapq.heappush(self.heap, (t, self.seq, fn, a))

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
            while self.heap and self.heap[0][0] < t_end:
                te, _, fn, a = heapq.heappop(self.heap)
                self.now = max(te, t)
                self.events += 1
                fn(*a)
            for target, sender, index in self.pushes.pop(k, ()):
                self.now = t
                self.apply_push(target, sender, index)
            self.now = t_end
            if self.seeder is not None:
                self.seed_offers()
            for nid in self.dirty:
                self.pump(self.nodes[nid], t_end)
            self.dirty.clear()
            for nid in self.touched:
                self.arm(self.nodes[nid])
            self.touched.clear()
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
            if not self.net.flows and not self.pushes and not self.dirty and self.heap:
                k = max(k, int(self.heap[0][0] / dt))

    # -- joins, leaves, knowledge ---------------------------------------------------------

    def on_join(self, e: Node) -> None:
        if e.leave <= self.now:
            self.finished += 1
            return
        e.alive = True
        e.have = Bitfield(self.nchunks)
        e.sched = Scheduler(self.levels, self.sizes, (), self.config, seed=self.rng.getrandbits(32))
        e.table = PeerTable(self.table_config, self_url=e.name)
        e.level_at = [math.nan] * len(self.levels)
        k = min(self.args.degree, len(self.alive_edges))
        for nid in self.rng.sample(self.alive_edges, k):
            self.at(self.now + 2 * self.lat(e, self.nodes[nid]), self.connect, e, self.nodes[nid])
        self.alive_edges.append(e.nid)
        self.at(self.now + 2 * self.lat(e, self.nodes[0]), self.connect, e, self.nodes[0])

    def fetching(self, x: Node) -> bool:
        return x.alive and x.sched is not None and not x.sched.complete

    def connect(self, a: Node, b: Node) -> None:
        """``a`` and ``b`` learn of each other (announce, peer exchange) and start reading
        each other's ``have`` (the stream's first answer: the whole bitfield)."""
        if not (a.alive and b.alive) or b.nid in a.neighbors:
            return
        a.neighbors.add(b.nid)
        b.neighbors.add(a.nid)
        if b.nid == 0 and self.seeder is not None and a.have is not None:
            self.seeder.add_peer(a.name, a.have, self.now)
        for x, y in ((a, b), (b, a)):
            if not self.fetching(x):
                continue
            assert x.sched is not None
            x.sched.add_peer(y.name, self.have_of(y, x), self.now, origin=y.nid == 0)
            if y.full_said:
                x.sched.set_full(y.name, True, self.now)
            self.dirty.add(x.nid)
            if not self.push:
                self.at(self.now + self.args.poll + self.lat(x, y), self.poll_answer, x, y)

    def have_of(self, y: Node, asker: Node) -> Bitfield:
        """What ``asker`` is told ``y`` holds (a super-seeding seed: what it offers)."""
        if y.have is None:
            if self.seeder is not None:
                return self.seeder.view(asker.name)
            return Bitfield.full(self.nchunks)
        return y.have.copy()

    def seed_offers(self) -> None:
        """The seed pushes its new offers (have deltas) to the edges."""
        assert self.seeder is not None
        seed = self.nodes[0]
        if not seed.alive:
            return
        for peer, index in self.seeder.offers(self.now):
            e = self.nodes[int(peer)]
            tick = math.ceil((self.now + self.lat(seed, e)) / self.dt)
            self.pushes.setdefault(tick, []).append((e, seed, index))

    def poll_answer(self, x: Node, y: Node) -> None:
        """``y`` answers ``x``'s ``GET have`` (sent one latency ago); it arrives one latency
        later (``--have poll``)."""
        if not (self.fetching(x) and y.alive):
            return
        self.at(self.now + self.lat(x, y), self.poll_apply, x, y, self.have_of(y, x))

    def poll_apply(self, x: Node, y: Node, snap: Bitfield) -> None:
        """The fetcher's ``_poll`` step: the peer table says whether the source is active;
        ``set_have`` for a known peer, ``add_peer`` for one lost and now revived; then
        sleep ``--poll`` seconds and ask again."""
        if not self.fetching(x) or y.nid not in x.neighbors:
            return
        assert x.sched is not None and x.table is not None
        self.at(self.now + self.args.poll + self.lat(x, y), self.poll_answer, x, y)
        if x.table.source_answered(y.name, MODEL, self.now) is not SourceState.ACTIVE:
            return
        if y.name in x.sched.peers():
            x.sched.set_have(y.name, snap, self.now)
        else:
            x.sched.add_peer(y.name, snap, self.now, origin=y.nid == 0)
        self.dirty.add(x.nid)

    def revive(self, x: Node, y: Node) -> None:
        """With pushed haves: the first answer of ``y``'s have stream after ``y`` was lost
        and its time is up (the stream answers at once: it has news)."""
        if not self.fetching(x) or not y.alive or y.nid not in x.neighbors:
            return
        assert x.sched is not None and x.table is not None
        if x.table.source_answered(y.name, MODEL, self.now) is not SourceState.ACTIVE:
            return
        if y.name not in x.sched.peers():
            x.sched.add_peer(y.name, self.have_of(y, x), self.now, origin=y.nid == 0)
            self.dirty.add(x.nid)

    def announce(self, x: Node, index: int) -> None:
        """``x`` verified chunk ``index``: its have stream answers every neighbour that
        reads it (those still fetching, and a super-seeding seed)."""
        if not self.push:
            return
        dt = self.dt
        for nid in x.neighbors:
            y = self.nodes[nid]
            if nid == 0:
                if self.seeder is None:
                    continue
            elif y.sched is None or y.sched.complete:
                continue
            tick = math.ceil((self.now + self.lat(x, y)) / dt)
            self.pushes.setdefault(tick, []).append((y, x, index))

    def advertise(self, x: Node) -> None:
        """``--advertise``: ``x``'s have stream tells its neighbours still fetching when its
        upload places become all taken, or one frees again (uploads.py, rule 3)."""
        up = self.uploads[x.nid]
        if not self.args.advertise or up is None or up.full == x.full_said or not x.alive:
            return
        x.full_said = up.full
        msg = FULL if x.full_said else FREE
        dt = self.dt
        for nid in x.neighbors:
            y = self.nodes[nid]
            if nid == 0 or y.sched is None or y.sched.complete:
                continue
            tick = math.ceil((self.now + self.lat(x, y)) / dt)
            self.pushes.setdefault(tick, []).append((y, x, msg))

    def apply_push(self, y: Node, x: Node, index: int) -> None:
        if index < 0:
            if self.fetching(y) and x.nid in y.neighbors:
                assert y.sched is not None
                if y.sched.set_full(x.name, index == FULL, self.now):
                    self.dirty.add(y.nid)
            return
        if y.nid == 0:
            if y.alive and self.seeder is not None and x.nid in y.neighbors:
                self.seeder.add_have(x.name, index, self.now)
            return
        if not self.fetching(y) or x.nid not in y.neighbors:
            return
        assert y.sched is not None
        if y.sched.add_have(x.name, index, self.now):
            self.dirty.add(y.nid)

    def on_leave(self, x: Node) -> None:
        if not x.alive:
            return
        x.alive = False
        x.leave = self.now
        if x.nid != 0 and x.done_at is None:
            self.finished += 1
        if x.nid in self.alive_edges:
            self.alive_edges.remove(x.nid)
        for run in list(x.runs):
            self.stop(run)
        x.tasks.clear()
        for run in list(x.serving):  # its uploads break: the requesters see it a latency later
            self.net.remove(run.fid)
            del self.flows[run.fid]
            run.state = CANCELLED
            self.at(self.now + self.lat(run.e, x), self.run_failed, run)
        x.serving.clear()
        for run in x.queue:
            run.state = CANCELLED
            self.at(self.now + self.lat(run.e, x), self.run_failed, run)
        x.queue.clear()
        for nid in x.neighbors:
            y = self.nodes[nid]
            self.at(self.now + self.lat(x, y), self.gone, y, x)

    def gone(self, y: Node, x: Node) -> None:
        """``x``'s have stream to ``y`` broke: the source is absent, the peer removed."""
        y.neighbors.discard(x.nid)
        if y.nid == 0 and self.seeder is not None:
            self.seeder.remove_peer(x.name, self.now)
        if self.fetching(y):
            assert y.sched is not None and y.table is not None
            y.table.source_absent(x.name, MODEL, self.now)
            self.cancel(y, y.sched.remove_peer(x.name, self.now))
            self.dirty.add(y.nid)

    # -- the fetcher ----------------------------------------------------------------------

    def pump(self, e: Node, now: float) -> None:
        if not self.fetching(e):
            return
        assert e.sched is not None
        reqs = e.sched.next_requests(now)
        if not reqs:  # its deadlines are as they were, or later (a backoff ended)
            return
        self.touched.add(e.nid)
        for group in _runs(reqs, self.spans, RUN_BYTES):
            p = self.nodes[int(group[0].peer)]
            run = Run(e, p, [r.index for r in group], len(group))
            for r in group:
                e.tasks[(p.nid, r.index)] = run
            e.runs.add(run)
            e.requests += 1
            e.chunk_requests += len(group)
            self.at(now + self.lat(e, p), self.arrive, run)

    def arm(self, e: Node) -> None:
        if not self.fetching(e):
            return
        assert e.sched is not None
        d = e.sched.next_deadline()
        if d is not None and d != e.armed:
            e.armed = d
            self.at(d, self.timer, e, d)

    def timer(self, e: Node, d: float) -> None:
        if e.armed != d or not self.fetching(e):
            return
        assert e.sched is not None
        e.armed = None
        if self.args.progress:
            self.progress(e)
        expired = e.sched.handle_timer(self.now)
        e.timeouts += len(expired)
        self.cancel(e, expired)
        for peer in sorted({r.peer for r in expired}):
            self.judge(e, peer)
        self.dirty.add(e.nid)
        self.touched.add(e.nid)

    def progress(self, e: Node) -> None:
        """``on_progress`` as the shell reports it, per ``PIECE`` bytes of a body, for every
        chunk of that request not received yet. Reported lazily, when the timer fires: the
        deadlines it would have pushed back are then the same."""
        assert e.sched is not None
        for run in e.runs:
            if run.state != FLOWING:
                continue
            rate = float(self.net.rate[run.fid])
            if rate <= 0:
                continue
            got = self.sizes[run.chunks[run.pos]] - float(self.net.remaining[run.fid])
            last = self.now - (got % PIECE) / rate
            name = run.p.name
            for index in run.chunks[run.pos :]:
                e.sched.on_progress(name, index, last)

    def judge(self, e: Node, peer: str) -> None:
        """``fetcher._judge``: after a failure, the peer table says whether ``peer`` is LOST;
        then it gets no request until its have stream answers after ``revive_after``."""
        assert e.sched is not None and e.table is not None
        if e.table.fetch_failed(peer, MODEL, e.sched.failures(peer), self.now):
            e.lost += 1
            self.cancel(e, e.sched.remove_peer(peer, self.now))
            p = self.nodes[int(peer)]
            if self.push:
                when = self.now + self.table_config.revive_after + 2 * self.lat(e, p)
                self.at(when, self.revive, e, p)

    def cancel(self, e: Node, requests: list[Request]) -> None:
        """``fetcher._cancel``: a run's request is stopped once none of its chunks' entries
        is left (a chunk that landed keeps its entry until the run ends)."""
        for r in requests:
            run = e.tasks.pop((int(r.peer), r.index), None)
            if run is None:
                continue
            run.live -= 1
            if run.live == 0:
                self.stop(run)

    def stop(self, run: Run) -> None:
        """The requester gave up ``run`` (or left): its flow or place in a queue ends."""
        e, p = run.e, run.p
        e.runs.discard(run)
        if run.state == FLOWING:
            self.net.remove(run.fid)
            del self.flows[run.fid]
            p.serving.discard(run)
            self.upload_ended(p, run, cut=True)
        elif run.state == QUEUED:
            p.queue.remove(run)
            up = self.uploads[p.nid]
            if up is not None:
                up.end(run, self.now)
                self.advertise(p)
        run.state = CANCELLED

    def end_run(self, e: Node, run: Run) -> None:
        """The ``finally`` of ``fetcher._fetch``: the run's entries go."""
        e.runs.discard(run)
        for index in run.chunks:
            if e.tasks.get((run.p.nid, index)) is run:
                del e.tasks[(run.p.nid, index)]

    def arrive(self, run: Run) -> None:
        """The request reaches its sender: it starts sending, waits for a slot, or is
        declined (503 with Retry-After), or fails (the sender is gone or lacks a chunk)."""
        if run.state == CANCELLED:
            return
        e, p = run.e, run.p
        if not p.alive or (p.have is not None and any(i not in p.have for i in run.chunks)):
            run.state = CANCELLED
            self.at(self.now + self.lat(e, p), self.run_failed, run)
            return
        up = self.uploads[p.nid]
        if up is None:
            self.start_flow(run)
            return
        if up.serving >= up.config.slots:  # the shell's estimates, for a Retry-After
            for other in p.serving:
                left = self.time_left(other)
                if left > 0:
                    up.expect(other, self.now + left)
        verdict = up.request(run, self.now)
        if verdict == SERVE:
            self.start_flow(run)
            self.advertise(p)
        elif verdict == QUEUE:
            run.state = QUEUED
            p.queue.append(run)
            self.advertise(p)
        else:
            assert isinstance(verdict, float)
            run.state = CANCELLED
            self.at(self.now + self.lat(e, p), self.declined, run, verdict)

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
        up = self.uploads[p.nid]
        if up is not None and p.alive:
            nxt = up.end(run, self.now)
            if nxt is not None:
                assert isinstance(nxt, Run)
                p.queue.remove(nxt)
                self.start_flow(nxt)
            self.advertise(p)

    def segment_done(self, fid: int, tf: float, t_end: float) -> None:
        """The last byte of a chunk left its sender at ``tf``: it lands one latency later;
        the flow goes on with the run's next chunk, or ends."""
        run = self.flows[fid]
        e, p = run.e, run.p
        lat = self.lat(e, p)
        while True:
            index = run.chunks[run.pos]
            self.at(tf + lat, self.landed, run, index)
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

    def landed(self, run: Run, index: int) -> None:
        """``fetcher._land``: a chunk of the body is in and verified."""
        e = run.e
        if not self.fetching(e) or run not in e.runs:
            return
        assert e.sched is not None and e.have is not None
        if index in e.have:
            return
        self.cancel(e, e.sched.on_chunk(run.p.name, index, self.now))
        e.have.set(index)
        self.dirty.add(e.nid)
        self.touched.add(e.nid)
        best = e.sched.best_level
        for level in range(best + 1):
            if math.isnan(e.level_at[level]):
                e.level_at[level] = self.now
        self.announce(e, index)
        if e.sched.complete:
            e.done_at = self.now
            self.finished += 1
            for other in list(e.runs):  # the fetch ends: its requests are cancelled
                self.stop(other)
            e.tasks.clear()
            if self.args.linger < math.inf:
                self.at(self.now + self.args.linger, self.on_leave, e)

    def run_end(self, run: Run) -> None:
        """The body ended: every chunk of the run should be in."""
        e = run.e
        if not self.fetching(e) or run not in e.runs:
            return
        assert e.sched is not None and e.have is not None
        self.end_run(e, run)
        missing = [i for i in run.chunks if i not in e.have]
        if missing:  # fetcher: a TransportError
            for index in missing:
                e.sched.on_failed(run.p.name, index, self.now)
            self.judge(e, run.p.name)
        self.dirty.add(e.nid)
        self.touched.add(e.nid)

    def declined(self, run: Run, retry_after: float) -> None:
        """A 503: ``on_busy`` for the run's chunks, declined together."""
        e = run.e
        if not self.fetching(e) or run not in e.runs:
            return
        assert e.sched is not None
        self.end_run(e, run)
        e.sched.on_busy(run.p.name, run.chunks, self.now, retry_after)
        e.busy += 1
        self.dirty.add(e.nid)
        self.touched.add(e.nid)

    def run_failed(self, run: Run) -> None:
        """The request failed (connection refused or reset, 416): ``on_failed`` for the
        chunks not in, then the peer table's judgement."""
        e = run.e
        if not self.fetching(e) or run not in e.runs:
            return
        assert e.sched is not None and e.have is not None
        self.end_run(e, run)
        for index in run.chunks:
            if index not in e.have:
                e.sched.on_failed(run.p.name, index, self.now)
        self.judge(e, run.p.name)
        self.dirty.add(e.nid)
        self.touched.add(e.nid)

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
        return {
            "nodes": n,
            "completed": len(done),
            "left_early": sum(1 for x in edges if x.done_at is None and x.leave < math.inf),
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
                / sum(x.up * (min(x.leave, self.end) - x.join) for x in edges),
                3,
            ),
            "edge_upload_busy_by_class": {
                kind: round(
                    float(sum(self.net.uploaded[x.nid] for x in edges if x.kind == kind))
                    / max(
                        1e-9,
                        sum(
                            x.up * (min(x.leave, self.end) - x.join)
                            for x in edges
                            if x.kind == kind
                        ),
                    ),
                    3,
                )
                for kind in sorted({x.kind for x in edges})
            },
            "timeouts": sum(x.timeouts for x in edges),
            "declined_busy": sum(x.busy for x in edges),
            "requests": sum(x.requests for x in edges),
            "chunk_requests": sum(x.chunk_requests for x in edges),
            "lost": sum(x.lost for x in edges),
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


def main(argv: Sequence[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--nodes", default="10,100,1000", help="edge counts, comma separated")
    ap.add_argument("--levels-mb", default=DEFAULT_LEVELS_MB, help="cumulative level sizes, MB")
    ap.add_argument("--chunk-mib", type=float, default=4, help="chunk size, MiB")
    ap.add_argument("--seed-up", type=float, default=20.0, help="seed upload, MB/s")
    ap.add_argument("--classes", default="", help="JSON [[name, share, up B/s, down B/s], ...]")
    ap.add_argument("--degree", type=int, default=16, help="edges each joining edge connects to")
    ap.add_argument("--have", choices=("poll", "push"), default="poll", help="have knowledge")
    ap.add_argument("--poll", type=float, default=1.0, help="have poll interval, s")
    ap.add_argument("--join-window", type=float, default=5.0, help="joins uniform in [0, W] s")
    ap.add_argument("--churn", type=float, default=0.0, help="fraction of edges that leave")
    ap.add_argument("--churn-horizon", type=float, default=120.0, help="leave within H s of join")
    ap.add_argument("--linger", type=float, default=math.inf, help="stay S s after exact")
    ap.add_argument("--seed-dies-at", type=float, default=None, help="the seed leaves at T s")
    ap.add_argument("--lat-min", type=float, default=0.005, help="one-way access latency, s")
    ap.add_argument("--lat-max", type=float, default=0.05)
    ap.add_argument("--max-in-flight", type=int, default=64, help="limits.max_in_flight")
    ap.add_argument("--min-in-flight", type=int, default=2, help="min_in_flight_per_peer")
    ap.add_argument(
        "--min-queue-mib", type=float, default=2.0, help="min_queue_bytes (8: as before it)"
    )
    ap.add_argument("--lookahead", type=int, default=0, help="lookahead_levels (soft barrier)")
    ap.add_argument("--progress", action="store_true", help="the shell calls on_progress")
    ap.add_argument(
        "--upload-slots", type=int, default=0, help="uploads a node serves at once (0: all)"
    )
    ap.add_argument("--busy", action="store_true", help="full upload slots answer 503")
    ap.add_argument(
        "--upload-queue", type=int, default=0, help="with --busy: requests that may wait"
    )
    ap.add_argument(
        "--seed-upload-slots", type=int, default=None, help="the seed's (default: as edges)"
    )
    ap.add_argument(
        "--seed-upload-queue", type=int, default=None, help="the seed's (default: as edges)"
    )
    ap.add_argument("--advertise", action="store_true", help="nodes push full / free upload places")
    ap.add_argument("--superseed", action="store_true", help="the seed super-seeds")
    ap.add_argument("--offer-depth", type=int, default=4, help="SeedingConfig.depth")
    ap.add_argument("--seed-slots", type=int, default=8, help="SeedingConfig.slots")
    ap.add_argument("--starve-after", type=float, default=5.0, help="SeedingConfig.starve_after")
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
    args = ap.parse_args(argv)
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
    if opts["linger"] == math.inf:
        opts["linger"] = "inf"
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
