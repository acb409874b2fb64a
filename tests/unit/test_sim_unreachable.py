"""The simulator's edges behind a NAT (``--unreachable``): they cannot be dialled, serve the
peers that cannot dial them over a reverse channel, and two of them never exchange
anything; with none of them the simulation is what it was."""

from __future__ import annotations

import argparse
from typing import Any

from bench import simulate
from peerprog.swarm import ModelRef
from peerprog.swarm.havelog import HaveDelta


def small_args(*extra: str) -> argparse.Namespace:
    return simulate.parser().parse_args(
        ["--levels-mb", "0.5,0.75,1,1.5,2", "--chunk-mib", "0.0625", "--seed-up", "0.3",
         "--classes", '[["edge", 1.0, 2e6, 2e6]]', "--degree", "4", "--join-window", "0.5",
         "--lat-min", "0.0005", "--lat-max", "0.001", "--max-time", "600", *extra]
    )  # fmt: skip


class Watched(simulate.Sim):
    """Records every upload and every have answer between two edges that cannot be dialled,
    and who uploaded to whom."""

    def __init__(self, args: argparse.Namespace, n: int) -> None:
        super().__init__(args, n)
        self.between: list[tuple[str, int, int]] = []
        self.sent: set[tuple[int, int]] = set()  # (sender, receiver)

    def hidden(self, a: simulate.Node, b: simulate.Node) -> bool:
        return not a.dialable and not b.dialable

    def start_flow(self, run: simulate.Run) -> None:
        if self.hidden(run.e, run.p):
            self.between.append(("bytes", run.p.nid, run.e.nid))
        self.sent.add((run.p.nid, run.e.nid))
        super().start_flow(run)

    def have_answer(self, x: simulate.Node, y: simulate.Node, token: int, delta: HaveDelta) -> None:
        if self.hidden(x, y):
            self.between.append(("have", y.nid, x.nid))
        super().have_answer(x, y, token, delta)


def test_edges_behind_a_nat_all_get_exact_and_never_exchange_with_each_other() -> None:
    sim = Watched(small_args("--unreachable", "0.7"), 10)
    sim.run()
    res = sim.results()
    hidden = {x.nid for x in sim.nodes[1:] if not x.dialable}
    assert len(hidden) == 7 and res["unreachable_edges"] == 7 and res["unreachable"] == 0.7
    assert sim.nodes[0].dialable  # never the seed
    assert res["completed"] == 10
    assert res["by_reach"]["undialable"]["completed"] == 7
    assert sim.between == []
    assert res["unroutable_requests"] == 0  # the peer tables never offered such a source
    # They do upload: to the edges that can be dialled, over their channels.
    assert {s for s, r in sim.sent if s in hidden and r not in hidden}
    for x in sim.nodes[1:]:
        assert x.table is not None
        for nid in x.neighbors:
            assert x.dialable or sim.nodes[nid].dialable
        if x.nid not in hidden:
            continue
        assert x.channels and all(sim.nodes[nid].dialable for nid in x.channels)
        for peer in x.table.peers():
            assert peer.url == "0" or int(peer.url) not in hidden


def test_a_peer_it_cannot_dial_is_a_source_once_its_channel_is_open() -> None:
    """The table decides: heard from, it is not a source; its dial-back failing changes
    nothing; its channel open, it is one (and the driver is told to look)."""
    sim = simulate.Sim(small_args("--unreachable", "0.5"), 2)
    x, y = sorted(sim.nodes[1:], key=lambda n: not n.dialable)
    assert x.dialable and not y.dialable
    sim.heap.clear()
    for node in (x, y):
        sim.on_join(node)
    sim.heap.clear()
    sim.now = 1.0
    sim.connect(x, y)
    assert x.table is not None and y.table is not None
    assert [s.key for s in x.table.sources(simulate.MODEL)] == []
    assert [s.key for s in y.table.sources(simulate.MODEL)] == [x.name]
    events = sorted(sim.heap)
    assert [fn for _, _, fn, _ in events] == [sim.dial_failed, sim.channel_open]
    assert events[0][0] == 1.0 + sim.args.dial_timeout
    assert events[1][0] == 1.0 + sim.args.dial_timeout + 4 * sim.lat(x, y)
    for t, _, fn, a in events:
        sim.now = t
        fn(*a)
    assert x.nid in y.channels and sim.reach(x, y) and sim.reach(y, x)
    assert [s.key for s in x.table.sources(simulate.MODEL)] == [y.name]
    assert x.nid in sim.dirty
    sim.on_leave(y)
    assert not sim.reach(x, y)
    ((t, _, fn, a),) = [e for e in sim.heap if e[2] == sim.channel_closed]
    sim.now = t
    fn(*a)
    assert [s.key for s in x.table.sources(simulate.MODEL)] == []


class Oblivious(simulate.Sim):
    """The simulator's connect as it was before edges could be behind a NAT."""

    def connect(self, a: simulate.Node, b: simulate.Node) -> None:
        if not (a.alive and b.alive) or b.nid in a.neighbors:
            return
        a.neighbors.add(b.nid)
        b.neighbors.add(a.nid)
        for x, y in ((a, b), (b, a)):
            if not x.fetching:
                continue
            assert x.table is not None and x.driver is not None
            origin = y.nid == 0
            ref = ModelRef(simulate.MODEL, simulate.MODEL, 1, complete=origin, origin=origin)
            if x.table.heard_from(y.name, y.name, [ref], self.now) is not None:
                x.driver.peers_changed()
                self.dirty.add(x.nid)


def test_with_every_edge_diallable_the_run_is_the_same_as_before() -> None:
    def run(sim: simulate.Sim) -> dict[str, Any]:
        sim.run()
        res = sim.results()
        res["events"] = sim.events
        return res

    now = run(simulate.Sim(small_args("--unreachable", "0", "--samples"), 8))
    before = run(Oblivious(small_args("--samples"), 8))
    assert now["unreachable_edges"] == 0 and now["unroutable_requests"] == 0
    assert now == before
