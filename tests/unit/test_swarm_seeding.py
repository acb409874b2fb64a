"""Super-seeding (``peerprog/swarm/seeding.py``) with a fake clock: one edge, many edges,
and a seed that dies, with real schedulers as the edges."""

from __future__ import annotations

from collections import Counter
from typing import Any

from peerprog.swarm import Bitfield, Scheduler, SchedulerConfig
from peerprog.swarm.seeding import SeedingConfig, SuperSeeder

LEVELS = [range(0, 4), range(4, 8), range(8, 12)]
N = 12


def seeder(**config: Any) -> SuperSeeder:
    return SuperSeeder(LEVELS, SeedingConfig(**config), seed=7)


def empty() -> Bitfield:
    return Bitfield(N)


def by_edge(offers: list[tuple[str, int]]) -> dict[str, list[int]]:
    out: dict[str, list[int]] = {}
    for peer, index in offers:
        out.setdefault(peer, []).append(index)
    return out


def test_a_lone_edge_never_waits() -> None:
    s = seeder(depth=2, slots=1, offer_ttl=100.0, starve_after=100.0)
    s.add_peer("e1", empty(), 0.0)
    got: list[int] = []
    now = 0.0
    while True:
        new = [i for _, i in s.offers(now)]
        if not new:
            break
        assert len(new) <= 2  # depth at a time, beyond the slots: rule 3
        got += new
        for i in new:
            now += 0.1
            s.on_request("e1", i, now)
            s.add_have("e1", i, now)
    assert got == list(range(N))  # every chunk, in level order
    assert s.view("e1") == Bitfield.full(N)


def test_many_edges_get_distinct_chunks_until_each_left_once() -> None:
    s = seeder(depth=2, slots=16, ahead=2, offer_ttl=100.0, starve_after=100.0)
    for k in range(8):
        s.add_peer(f"e{k}", empty(), 0.0)
    offers = s.offers(0.0)
    counts = Counter(i for _, i in offers)
    assert set(counts.values()) == {1}, "a chunk offered twice in the first pass"
    assert all(len(v) <= 2 for v in by_edge(offers).values())
    assert len(counts) == N and s.left_once()  # 8 edges x 2 places cover the 12 chunks
    # level order: each edge's first offers come from the lowest level with a free chunk
    first_level = sorted(min(v) for v in by_edge(offers).values())
    assert first_level[:2] == sorted(first_level[:2]) and min(first_level) < 4
    # edges fetch and push their haves: no new offer, every chunk has a copy
    for peer, index in offers:
        s.on_request(peer, index, 1.0)
        s.add_have(peer, index, 2.0)
    assert s.offers(2.0) == []


def test_slots_bound_the_live_offers() -> None:
    s = seeder(depth=2, slots=3, ahead=2, offer_ttl=100.0, starve_after=100.0)
    for k in range(8):
        s.add_peer(f"e{k}", empty(), 0.0)
    first = s.offers(0.0)
    assert len(first) == 3 and s.offers(0.5) == []
    peer, index = first[0]
    s.on_request(peer, index, 1.0)
    s.add_have(peer, index, 1.5)  # one arrived: one slot free
    again = s.offers(1.5)
    assert len(again) == 1 and again[0][1] not in {i for _, i in first}


def test_first_pass_follows_the_edges_level() -> None:
    s = seeder(depth=2, ahead=0, offer_ttl=100.0, starve_after=100.0)
    s.add_peer("a", empty(), 0.0)
    s.add_peer("b", empty(), 0.0)
    got = by_edge(s.offers(0.0))
    assert sorted(got["a"] + got["b"]) == [0, 1, 2, 3]  # level 0 only, once each
    have = empty()
    for i in range(4):
        have.set(i)
    s.add_peer("c", have, 1.0)  # c holds level 0 already: it is offered level 1
    later = s.offers(1.0)
    assert {p for p, _ in later} == {"c"} and all(4 <= i < 8 for _, i in later)
    assert len(later) == 2


def test_unrequested_offer_expires_and_goes_elsewhere() -> None:
    s = seeder(depth=1, ahead=0, offer_ttl=5.0, starve_after=100.0, scan_interval=1.0)
    for k in range(5):
        s.add_peer(f"e{k}", empty(), 0.0)
    offers = dict(s.offers(0.0))
    assert len(offers) == 4  # level 0 has four chunks; the fifth edge waits
    lazy, lazy_chunk = next(iter(offers.items()))
    for peer, index in offers.items():
        if peer != lazy:
            s.on_request(peer, index, 1.0)
    assert s.offers(4.0) == []
    late = s.offers(6.0)  # the lazy edge's offer expired: another edge gets that chunk
    assert [i for _, i in late] == [lazy_chunk] and late[0][0] != lazy
    assert lazy_chunk in s.view(lazy)  # a shown chunk is never taken back


def test_a_sent_offer_frees_its_place_at_once_and_its_copy_after_the_ttl() -> None:
    """Rule 1 counts transfers: an offer sent (or cut off) frees its place for the next
    offer at once, and stays a copy until the edge's have says it arrived, or the ttl."""
    s = seeder(depth=1, slots=1, ahead=0, offer_ttl=5.0, starve_after=100.0)
    s.add_peer("a", empty(), 0.0)
    s.add_peer("b", empty(), 0.0)
    ((peer, index),) = s.offers(0.0)
    s.on_request(peer, index, 0.5)
    assert s.offers(10.0) == []  # requested: no expiry while the upload runs
    s.on_sent(peer, index, 11.0)  # cut off: the edge never says it has it
    ((_, other),) = s.offers(11.0)  # the place is free at once, for another chunk
    assert other != index and s.copies(index) == 1
    again = s.offers(16.5)  # five seconds after: the unconfirmed copy is gone, and the
    assert (peer, index) not in again and index in {i for _, i in again}  # chunk goes on


def test_starving_edge_gets_copied_chunks() -> None:
    s = seeder(depth=2, ahead=0, offer_ttl=100.0, starve_after=3.0)
    s.add_peer("a", empty(), 0.0)
    s.add_peer("b", empty(), 0.0)
    first = by_edge(s.offers(0.0))
    for peer, chunks in first.items():
        for i in chunks:
            s.add_have(peer, i, 0.5)
    # Every chunk of level 0 has a copy; a and b should trade. If a makes no progress
    # for starve_after, the seed offers it the level-0 chunks it lacks.
    assert s.offers(1.0) == []
    s.add_have("b", first["a"][0], 1.5)  # b progresses, a does not
    starving = s.offers(3.6)
    assert {p for p, _ in starving} == {"a"}
    assert sorted(i for _, i in starving) == sorted(first["b"])


def test_an_edge_that_leaves_takes_its_copies() -> None:
    s = seeder(depth=2, ahead=0, offer_ttl=100.0, starve_after=100.0)
    s.add_peer("a", empty(), 0.0)
    s.add_peer("b", empty(), 0.0)
    s.add_peer("c", empty(), 0.0)
    got = by_edge(s.offers(0.0))
    assert len(got) == 2  # level 0's four chunks went to two edges, two each
    (idle,) = {"a", "b", "c"} - set(got)
    leaver = min(got)
    for i in got[leaver]:
        s.add_have(leaver, i, 1.0)
    s.remove_peer(leaver, 2.0)
    again = s.offers(2.0)
    assert {p for p, _ in again} == {idle}  # to the third edge, now
    assert sorted(i for _, i in again) == sorted(got[leaver])


# -- real schedulers as the edges; the seed dies -------------------------------------------


class MiniSwarm:
    """Edges with real schedulers, a super-seeding seed; every request takes 0.1 s and the
    pushes (edge to edge, edge to seed, seed to edge) arrive at once."""

    def __init__(self, edges: int) -> None:
        self.seeder = seeder(depth=2, ahead=1, offer_ttl=5.0, starve_after=2.0)
        config = SchedulerConfig(
            min_in_flight_per_peer=1, max_in_flight_per_peer=1, lookahead_levels=1
        )
        sizes = [1000] * N
        self.edges = {f"e{k}": Scheduler(LEVELS, sizes, (), config, seed=k) for k in range(edges)}
        self.seed_alive = True
        self.served: Counter[int] = Counter()
        self.now = 0.0
        for name, sched in self.edges.items():
            self.seeder.add_peer(name, empty(), 0.0)
            sched.add_peer("seed", self.seeder.view(name), 0.0)
            for other in self.edges:
                if other != name:
                    sched.add_peer(other, empty(), 0.0)

    def step(self) -> None:
        if self.seed_alive:
            for peer, index in self.seeder.offers(self.now):
                self.edges[peer].add_have("seed", index, self.now)
        sent = []
        for name, sched in self.edges.items():
            for r in sched.next_requests(self.now):
                if r.peer == "seed":
                    assert index_shown(self.seeder, name, r.index)
                    self.seeder.on_request(name, r.index, self.now)
                    self.served[r.index] += 1
                sent.append((name, r))
        self.now += 0.1
        for name, r in sent:
            sched = self.edges[name]
            if r.peer == "seed" and not self.seed_alive:
                sched.on_failed(r.peer, r.index, self.now)
                continue
            gained = r.index not in sched.have
            sched.on_chunk(r.peer, r.index, self.now)
            if gained:
                self.seeder.add_have(name, r.index, self.now)
                for other, osched in self.edges.items():
                    if other != name:
                        osched.add_have(name, r.index, self.now)
        for sched in self.edges.values():
            sched.handle_timer(self.now)

    def kill_seed(self) -> None:
        self.seed_alive = False
        for sched in self.edges.values():
            sched.remove_peer("seed", self.now)


def index_shown(s: SuperSeeder, peer: str, index: int) -> bool:
    return index in s.view(peer)


def test_super_seeding_with_one_edge_is_a_plain_download() -> None:
    swarm = MiniSwarm(1)
    for _ in range(40):
        swarm.step()
    (sched,) = swarm.edges.values()
    assert sched.complete and set(swarm.served.values()) == {1}


def test_super_seeding_with_many_edges_serves_each_chunk_about_once() -> None:
    swarm = MiniSwarm(6)
    for _ in range(200):
        swarm.step()
        if all(s.complete for s in swarm.edges.values()):
            break
    assert all(s.complete for s in swarm.edges.values())
    assert set(swarm.served) == set(range(N))
    assert sum(swarm.served.values()) <= N * 1.5, swarm.served


def test_super_seeding_with_a_seed_that_dies() -> None:
    swarm = MiniSwarm(4)
    while not swarm.seeder.left_once() or any(swarm.seeder.copies(i) == 0 for i in range(N)):
        swarm.step()
    for _ in range(3):
        swarm.step()  # the last offers become copies at some edge
    held_somewhere = set().union(*(set(s.have.indices()) for s in swarm.edges.values()))
    swarm.kill_seed()
    for _ in range(200):
        swarm.step()
    # Whatever left the seed before it died reaches every edge, from the other edges.
    for sched in swarm.edges.values():
        assert held_somewhere <= set(sched.have.indices())
        assert "seed" not in sched.peers()
