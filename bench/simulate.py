"""Swarm simulation: the real :class:`peerprog.swarm.Scheduler` in every simulated node.

One origin (the seed) and N edges fetch a published model's chunk and level layout over a
flow-level network (``bench/simnet.py``) on a discrete-event clock. Each edge runs the
real scheduler and is driven exactly as ``peerprog/node/fetcher.py`` drives it:
``next_requests(now)``, ``on_chunk``, ``on_failed``, ``handle_timer`` at ``next_deadline()``,
``add_peer`` / ``set_have`` / ``remove_peer`` — with ``now`` the simulated time. See
``bench/SIM_NOTES.md`` for the model, the capacity distribution and the results.

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
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from bench.simnet import FlowNetwork
from peerprog.swarm import Bitfield, Request, Scheduler, SchedulerConfig
from peerprog.swarm.seeding import SeedingConfig, SuperSeeder

MB = 1e6
MIB = 1 << 20
REVIVE_AFTER = 30.0  # peerprog.node.fetcher.REVIVE_AFTER

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


def layout(cumulative_mb: Sequence[float], chunk_size: int) -> tuple[list[range], list[int]]:
    """Level ranges and chunk sizes as ``peerprog.manifest.chunking.cut_levels`` cuts them:
    each level starts a new chunk, its last chunk is shorter."""
    ranges, sizes, prev = [], [], 0
    for cum in cumulative_mb:
        nbytes = round(cum * MB) - prev
        prev += nbytes
        first = len(sizes)
        sizes.extend(min(chunk_size, nbytes - s) for s in range(0, nbytes, chunk_size))
        ranges.append(range(first, len(sizes)))
    return ranges, sizes


@dataclass
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
    have: Bitfield | None = None  # verified chunks (the seed: None, it has all)
    neighbors: set[int] = field(default_factory=set)
    live: dict[tuple[int, int], list[Any]] = field(default_factory=dict)  # [Request, fid]
    serving: set[int] = field(default_factory=set)  # fids it sends
    queue: deque[tuple[Node, Request]] = field(default_factory=deque)  # waiting for a slot
    armed: float | None = None
    told: dict[int, int] = field(default_factory=dict)  # peer -> have mask last polled
    dropped: dict[int, float] = field(default_factory=dict)  # peer -> seen dropped since
    level_at: list[float] = field(default_factory=list)
    done_at: float | None = None
    from_seed: float = 0.0
    timeouts: int = 0
    busy: int = 0
    requests: int = 0

    @property
    def name(self) -> str:
        return str(self.nid)


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
        self.push = args.have == "push"
        self.config = SchedulerConfig(
            max_in_flight_total=args.max_in_flight,
            lookahead_levels=args.lookahead,
            min_in_flight_per_peer=args.min_in_flight,
            min_queue_bytes=int(args.min_queue_mib * MIB),
            max_in_flight_per_peer=max(args.min_in_flight, 16),
        )
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
        self.owner: dict[int, tuple[Node, Node, Request]] = {}
        self.heap: list[tuple[float, int, Callable[..., None], tuple[Any, ...]]] = []
        self.seq = 0
        self.pushes: dict[int, list[tuple[Node, Node, int]]] = {}
        self.dirty: set[int] = set()
        self.refill: set[int] = set()  # nodes with a free upload slot and a queue
        self.touched: set[int] = set()
        self.alive_edges: list[int] = []
        self.seeder: SuperSeeder | None = None
        self.seed_dirty = False
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
        self.events = 0
        self.now = 0.0
        self.started = time.perf_counter()
        self.cut_short = False
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
        while True:
            t = k * dt
            t_end = t + dt
            for fid, tf in self.net.step(t, dt):
                self.flow_ended(fid, tf)
            for nid in self.refill:
                self.next_in_queue(self.nodes[nid])
            self.refill.clear()
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
            if k % 1000 == 0 and time.perf_counter() - self.started > self.args.wall_limit:
                self.end = t_end
                self.cut_short = True
                return
            if t_end > self.args.max_time or all(
                x.done_at is not None or (not x.alive and x.join <= t_end) for x in edges
            ):
                self.end = t_end
                return
            if not self.net.flows and not self.pushes and self.heap:
                k = max(k, int(self.heap[0][0] / dt))

    # -- joins, leaves, knowledge ---------------------------------------------------------

    def on_join(self, e: Node) -> None:
        if e.leave <= self.now:
            return
        e.alive = True
        e.have = Bitfield(self.nchunks)
        e.sched = Scheduler(self.levels, self.sizes, (), self.config, seed=self.rng.getrandbits(32))
        e.level_at = [math.nan] * len(self.levels)
        k = min(self.args.degree, len(self.alive_edges))
        for nid in self.rng.sample(self.alive_edges, k):
            self.at(self.now + 2 * self.lat(e, self.nodes[nid]), self.connect, e, self.nodes[nid])
        self.alive_edges.append(e.nid)
        self.at(self.now + 2 * self.lat(e, self.nodes[0]), self.connect, e, self.nodes[0])

    def connect(self, a: Node, b: Node) -> None:
        """``a`` and ``b`` learn of each other (announce, peer exchange) and start watching
        each other's ``have``."""
        if not (a.alive and b.alive) or b.nid in a.neighbors:
            return
        a.neighbors.add(b.nid)
        b.neighbors.add(a.nid)
        if b.nid == 0 and self.seeder is not None and a.have is not None:
            self.seeder.add_peer(a.name, a.have, self.now)
            self.seed_offers()
        for x, y in ((a, b), (b, a)):
            if x.sched is None or x.sched.complete:
                continue
            snap = self.have_of(y, x)
            x.sched.add_peer(y.name, snap, self.now)
            x.told[y.nid] = snap.mask()
            self.dirty.add(x.nid)
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
        later, then ``x`` sleeps ``--poll`` seconds and asks again (as the fetcher does). With
        pushed haves the same cycle stands for the stream's keep-alive: it only revives."""
        if not (x.alive and y.alive) or x.sched is None or x.sched.complete:
            return
        snap = None if self.push else self.have_of(y, x)
        self.at(self.now + self.lat(x, y), self.poll_apply, x, y, snap)

    def poll_apply(self, x: Node, y: Node, snap: Bitfield | None) -> None:
        """The fetcher's ``_poll`` step: ``set_have`` for a known peer; a peer dropped after
        failures that still answers is added again after ``REVIVE_AFTER`` seconds."""
        if not x.alive or x.sched is None or x.sched.complete or y.nid not in x.neighbors:
            return
        self.at(self.now + self.args.poll + self.lat(x, y), self.poll_answer, x, y)
        if y.name not in x.sched.peers():
            since = x.dropped.setdefault(y.nid, self.now)
            if self.now - since >= REVIVE_AFTER:
                fresh = snap if snap is not None else self.have_of(y, x)
                x.sched.add_peer(y.name, fresh, self.now)
                x.told[y.nid] = fresh.mask()
                del x.dropped[y.nid]
                self.dirty.add(x.nid)
            return
        x.dropped.pop(y.nid, None)
        if snap is None:
            return
        x.sched.set_have(y.name, snap, self.now)
        assert x.have is not None
        new, old = snap.mask(), x.told.get(y.nid, 0)
        x.told[y.nid] = new
        if new & ~old & ~x.have.mask():  # news of a chunk we miss (else the picks are the same)
            self.dirty.add(x.nid)

    def announce(self, x: Node, index: int) -> None:
        """``x`` verified chunk ``index``: push it to its interested neighbours."""
        if not self.push:
            return
        dt = self.dt
        for nid in x.neighbors:
            y = self.nodes[nid]
            if (y.sched is None or y.sched.complete) and not (nid == 0 and self.seeder):
                continue
            tick = math.ceil((self.now + self.lat(x, y)) / dt)
            self.pushes.setdefault(tick, []).append((y, x, index))

    def apply_push(self, y: Node, x: Node, index: int) -> None:
        if y.nid == 0:
            if y.alive and self.seeder is not None and x.nid in y.neighbors:
                self.seeder.add_have(x.name, index, self.now)
            return
        if not y.alive or y.sched is None or y.sched.complete or x.nid not in y.neighbors:
            return
        y.sched.add_have(x.name, index, self.now)
        assert y.have is not None
        if index not in y.have:
            self.dirty.add(y.nid)

    def on_leave(self, x: Node) -> None:
        if not x.alive:
            return
        x.alive = False
        x.leave = self.now
        if x.nid in self.alive_edges:
            self.alive_edges.remove(x.nid)
        for entry in x.live.values():
            if entry[1] >= 0:
                self.drop_flow(entry[1])
        x.live.clear()
        for fid in list(x.serving):
            e, p, r = self.owner[fid]
            self.drop_flow(fid)
            self.at(self.now + self.lat(e, p), self.failed, e, p, r)
        for e, r in x.queue:
            self.at(self.now + self.lat(e, x), self.failed, e, x, r)
        x.queue.clear()
        for nid in x.neighbors:
            y = self.nodes[nid]
            self.at(self.now + self.lat(x, y), self.gone, y, x)

    def gone(self, y: Node, x: Node) -> None:
        y.neighbors.discard(x.nid)
        if y.nid == 0 and self.seeder is not None:
            self.seeder.remove_peer(x.name, self.now)
        if y.alive and y.sched is not None and not y.sched.complete:
            self.cancel(y, y.sched.remove_peer(x.name, self.now))
            self.dirty.add(y.nid)

    # -- requests -------------------------------------------------------------------------

    def pump(self, e: Node, now: float) -> None:
        if not e.alive or e.sched is None or e.sched.complete:
            return
        for r in e.sched.next_requests(now):
            p = self.nodes[int(r.peer)]
            e.live[(p.nid, r.index)] = [r, -1]
            e.requests += 1
            self.at(now + self.lat(e, p), self.arrive, e, p, r)
        self.touched.add(e.nid)

    def arm(self, e: Node) -> None:
        if not e.alive or e.sched is None or e.sched.complete:
            return
        d = e.sched.next_deadline()
        if d is not None and d != e.armed:
            e.armed = d
            self.at(d, self.timer, e, d)

    def timer(self, e: Node, d: float) -> None:
        if e.armed != d or not e.alive or e.sched is None or e.sched.complete:
            return
        e.armed = None
        if self.args.progress:  # the shell reports bytes as they arrive
            for (pid, index), (_, fid) in e.live.items():
                if fid >= 0 and self.net.rate[fid] > 0:
                    e.sched.on_progress(str(pid), index, self.now)
        expired = e.sched.handle_timer(self.now)
        e.timeouts += len(expired)
        self.cancel(e, expired)
        self.dirty.add(e.nid)
        self.touched.add(e.nid)

    def cancel(self, e: Node, requests: list[Request]) -> None:
        for r in requests:
            entry = e.live.pop((int(r.peer), r.index), None)
            if entry is not None and entry[1] >= 0:
                self.drop_flow(entry[1])

    def drop_flow(self, fid: int) -> None:
        e, p, r = self.owner.pop(fid)
        p.serving.discard(fid)
        self.net.remove(fid)
        self.upload_ended(e, p, r)

    def current(self, e: Node, p: Node, r: Request) -> list[Any] | None:
        entry = e.live.get((p.nid, r.index))
        return entry if entry is not None and entry[0] is r else None

    def arrive(self, e: Node, p: Node, r: Request) -> None:
        """The request reaches ``p``: it starts sending, or fails it."""
        entry = self.current(e, p, r)
        if entry is None or not e.alive:
            return
        if not p.alive or (p.have is not None and r.index not in p.have):
            self.at(self.now + self.lat(e, p), self.failed, e, p, r)
            return
        if p.nid == 0 and self.seeder is not None:
            self.seeder.on_request(e.name, r.index, self.now)
        slots = self.args.upload_slots
        if slots and len(p.serving) >= slots:
            if self.args.busy and len(p.queue) >= self.args.upload_queue:  # 503 at once
                # Retry-After: when its first upload in progress should end
                after = min(
                    (
                        self.net.remaining[f] / self.net.rate[f]
                        for f in p.serving
                        if self.net.rate[f] > 0
                    ),
                    default=0.0,
                )
                self.at(self.now + self.lat(e, p), self.declined, e, p, r, after)
                return
            p.queue.append((e, r))  # served in turn (HTTP: the handler waits for a slot)
            return
        self.start_flow(e, p, r, entry)

    def start_flow(self, e: Node, p: Node, r: Request, entry: list[Any]) -> None:
        fid = self.net.add(p.nid, e.nid, self.sizes[r.index])
        self.owner[fid] = (e, p, r)
        p.serving.add(fid)
        entry[1] = fid

    def next_in_queue(self, p: Node) -> None:
        slots = self.args.upload_slots
        while p.alive and p.queue and len(p.serving) < slots:
            e, r = p.queue.popleft()
            entry = self.current(e, p, r)
            if entry is not None and e.alive:
                self.start_flow(e, p, r, entry)

    def upload_ended(self, e: Node, p: Node, r: Request) -> None:
        if p.nid == 0 and self.seeder is not None:
            self.seeder.on_sent(e.name, r.index, self.now)
        if p.queue:
            self.refill.add(p.nid)

    def flow_ended(self, fid: int, tf: float) -> None:
        e, p, r = self.owner.pop(fid)
        p.serving.discard(fid)
        self.upload_ended(e, p, r)
        entry = self.current(e, p, r)
        if entry is not None:
            entry[1] = -1
            self.at(tf + self.lat(e, p), self.delivered, e, p, r)

    def delivered(self, e: Node, p: Node, r: Request) -> None:
        if self.current(e, p, r) is None or e.sched is None:
            return
        del e.live[(p.nid, r.index)]
        self.cancel(e, e.sched.on_chunk(p.name, r.index, self.now))
        assert e.have is not None
        self.dirty.add(e.nid)
        self.touched.add(e.nid)
        if r.index in e.have:
            return
        e.have.set(r.index)
        if p.nid == 0:
            e.from_seed += self.sizes[r.index]
        best = e.sched.best_level
        for level in range(best + 1):
            if math.isnan(e.level_at[level]):
                e.level_at[level] = self.now
        self.announce(e, r.index)
        if e.sched.complete:
            e.done_at = self.now
            for req in e.sched.in_flight():
                self.cancel(e, [req])
            if self.args.linger < math.inf:
                self.at(self.now + self.args.linger, self.on_leave, e)

    def declined(self, e: Node, p: Node, r: Request, retry_after: float) -> None:
        if self.current(e, p, r) is None or e.sched is None:
            return
        del e.live[(p.nid, r.index)]
        e.sched.on_busy(p.name, r.index, self.now, retry_after)
        e.busy += 1
        self.dirty.add(e.nid)
        self.touched.add(e.nid)

    def failed(self, e: Node, p: Node, r: Request) -> None:
        if self.current(e, p, r) is None or e.sched is None:
            return
        del e.live[(p.nid, r.index)]
        e.sched.on_failed(p.name, r.index, self.now)
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
            "timeouts": sum(x.timeouts for x in edges),
            "declined_busy": sum(x.busy for x in edges),
            "requests": sum(x.requests for x in edges),
            "events": self.events,
            "samples": {
                "level0_s": sorted(round(v, 3) for v in lvl0 if v < math.inf),
                "exact_s": sorted(round(v, 3) for v in exact if v < math.inf),
                "edges": len(stayed),
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
    ap.add_argument("--samples", action="store_true", help="keep per-edge samples in the JSON")
    args = ap.parse_args(argv)
    runs = []
    for n in (int(x) for x in args.nodes.split(",")):
        t0 = time.perf_counter()
        sim = Sim(args, n)
        sim.run()
        res = sim.results()
        res["run_seconds"] = round(time.perf_counter() - t0, 1)
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
