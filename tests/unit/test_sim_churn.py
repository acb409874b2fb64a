"""The simulator's churn (edges that leave mid-download and come back as a restarted daemon),
its replayed joins, and its paced have answers."""

from __future__ import annotations

import argparse

from bench import simulate
from peerprog.swarm import Bitfield
from peerprog.swarm.havelog import HAVE_PACE, HaveDelta, HaveLog


def churn_args(*extra: str) -> argparse.Namespace:
    return simulate.parser().parse_args(
        ["--levels-mb", "0.5,0.75,1,1.5,2", "--chunk-mib", "0.0625", "--seed-up", "0.5",
         "--classes", '[["edge", 1.0, 1e6, 1e6]]', "--degree", "4", "--join-window", "0.5",
         "--lat-min", "0.0005", "--lat-max", "0.001", "--max-time", "300",
         "--churn", "1", "--churn-horizon", "1.5", *extra]
    )  # fmt: skip


class Recording(simulate.Sim):
    """Records, at each start of an edge's daemon, the chunks it had and its driver holds."""

    def __init__(self, args: argparse.Namespace, n: int) -> None:
        super().__init__(args, n)
        self.boots: list[tuple[int, int, int]] = []  # (edge, chunks it had, driver holds)

    def boot(self, e: simulate.Node) -> None:
        assert e.have is not None
        had = e.have.count()
        super().boot(e)
        assert e.driver is not None
        self.boots.append((e.nid, had, e.driver.sched.have.count()))


def test_edges_that_leave_come_back_with_what_they_had_verified_and_finish() -> None:
    sim = Recording(churn_args("--churn-away", "2"), 4)
    sim.run()
    res = sim.results()
    assert res["completed"] == 4
    assert res["left_early"] == 0
    assert res["returned"] == 4
    assert res["returned_exact_s"]["p99"] is not None
    returns = [b for b in sim.boots if b[1] > 0]
    assert returns, "every edge left before it had a chunk"
    for _, had, holds in sim.boots:
        assert holds == had  # a restarted daemon keeps the chunks it verified
    for e in sim.nodes[1:]:
        assert e.boots == 2
        assert e.downtime > 0
        assert e.log is not None and e.log.epoch == f"e{e.nid}.2"  # a new have stream


def test_without_churn_away_an_edge_that_leaves_stays_gone() -> None:
    sim = simulate.Sim(churn_args(), 4)
    sim.run()
    res = sim.results()
    assert res["returned"] == 0
    assert res["left_early"] + res["completed"] == 4
    assert res["left_early"] > 0


def test_joins_give_each_edge_its_join_time_and_first_request() -> None:
    args = simulate.parser().parse_args(
        ["--levels-mb", "0.5,1", "--chunk-mib", "0.25", "--seed-up", "1",
         "--classes", '[["edge", 1.0, 1e6, 1e6]]', "--degree", "4",
         "--lat-min", "0.001", "--lat-max", "0.001", "--joins", "0,0.5,2"]
    )  # fmt: skip
    sim = simulate.Sim(args, 3)
    sim.run()
    assert [e.join for e in sim.nodes[1:]] == [0.0, 0.5, 2.0]
    for e in sim.nodes[1:]:
        assert e.first_fetch is not None and e.join < e.first_fetch < e.join + 0.1
        assert e.done_at is not None and e.done_at > e.first_fetch


def test_news_to_one_asker_is_paced_as_the_daemon_paces_it() -> None:
    """A second answer with news within ``HAVE_PACE`` of the last waits, and then carries
    every chunk verified meanwhile."""
    sim = simulate.Sim(churn_args(), 2)
    x, y = sim.nodes[1], sim.nodes[2]
    y.alive = True
    y.have = Bitfield(sim.nchunks)
    y.log = HaveLog(sim.nchunks, [0], epoch="e2.1")
    x.asks[y.nid] = token = 7
    sim.heap.clear()
    sim.now = 1.0
    sim.news_to(x, y, token, ("e2.1", 0), 1.0, y.log.since("e2.1", 0))
    assert y.answered[x.nid] == 1.0
    ((when, _, fn, _),) = sim.heap
    assert fn == sim.have_answer and when == 1.0 + sim.lat(x, y)
    sim.heap.clear()
    y.log.add(1)
    sim.news_to(x, y, token, ("e2.1", 1), 1.01, y.log.since("e2.1", 1))
    ((when, _, fn, args),) = sim.heap
    assert fn == sim.paced and when == 1.0 + HAVE_PACE
    y.log.add(2)  # verified while the answer waits: it goes along
    sim.heap.clear()
    sim.now = when
    sim.paced(*args)
    ((_, _, fn, (_, _, _, delta)),) = sim.heap
    assert fn == sim.have_answer and delta.added == (1, 2)


def test_a_super_seeding_seeds_offers_are_not_paced() -> None:
    """As on the daemon's peer server, the origin's offers go at once, however often."""
    sim = simulate.Sim(churn_args(), 2)
    assert sim.seeder is not None  # super-seeding is the default
    x, seed = sim.nodes[1], sim.nodes[0]
    x.asks[seed.nid] = token = 7
    sim.heap.clear()
    for k, now in enumerate((1.0, 1.01)):
        sim.now = now
        sim.news_to(x, seed, token, ("s1", k), now, HaveDelta("s1", k + 1, added=(k,)))
        ((when, _, fn, _),) = sim.heap
        assert fn == sim.have_answer and when == now + sim.lat(x, seed)
        sim.heap.clear()
