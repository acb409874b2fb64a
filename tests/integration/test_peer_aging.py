"""Dead peers age out (real daemons): a stopped edge leaves every table and is not passed on
again by peer exchange."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from tests.integration.cluster import Cluster, Daemon, wait_until

AGING = {"peers": {"max_failures": 2, "pex_fresh": 5.0, "forget_for": 600.0}}


def peer_names(node: Daemon) -> set[str]:
    doc: dict[str, Any] = node.request("GET", "/v1/status").json()
    return {p["node"] for p in doc["peer_list"]}


def test_a_stopped_edge_leaves_every_table_and_is_not_passed_on(tmp_path: Path) -> None:
    with Cluster(tmp_path) as c:
        c.publish()
        seed = c.start(c.seed(extra=AGING))
        edges = [c.start(c.node(f"edge-{i}", bootstrap=[seed], extra=AGING)) for i in range(3)]
        everyone = [seed, *edges]
        for node in everyone:
            others = {n.name for n in everyone if n is not node}
            wait_until(lambda n=node, o=others: peer_names(n) >= o, 30, f"{node.name}'s peers")
        gone = edges[2]
        c.stop(gone)
        alive = [seed, *edges[:2]]
        for node in alive:
            wait_until(lambda n=node: gone.name not in peer_names(n), 60, "edge-2 to age out")
        stopped_at = {n.name: len(c.logs(n)) for n in alive}
        time.sleep(8)  # four announce rounds: peer exchange would have brought it back
        for node in alive:
            assert gone.name not in peer_names(node), c.logs(node)
            assert f"({gone.name})" not in c.logs(node)[stopped_at[node.name] :]
        doc = seed.request("GET", "/v1/status").json()
        assert doc["peers"] == 2
        assert {p["state"] for p in doc["peer_list"]} == {"known"}


def test_nodes_started_together_know_each_other_well_before_the_next_round(
    tmp_path: Path,
) -> None:
    """A peer passed on by the seed is announced to at once, so the edge that started first
    learns of a later one without waiting ``announce_interval`` (60 s here)."""
    slow = {"peers": {"announce_interval": 60.0}}
    with Cluster(tmp_path) as c:
        c.publish()
        seed = c.start(c.seed(extra=slow))
        first = c.start(c.node("edge-0", bootstrap=[seed], extra=slow))
        wait_until(lambda: peer_names(first) == {"seed"}, 15, "edge-0 to know the seed")
        later = c.start(c.node("edge-1", bootstrap=[seed], extra=slow))
        for node, other in ((later, "edge-0"), (first, "edge-1")):
            wait_until(lambda n=node, o=other: o in peer_names(n), 15, f"{node.name}'s peers")
