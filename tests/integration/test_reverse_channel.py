"""Issue 20 in real daemons: nodes that cannot be dialled (an announced address no one
can reach) find that out, hold reverse channels to the peers that can be, and upload over
them (real processes on loopback)."""

from __future__ import annotations

from typing import Any

from tests.faults.harness import assert_bit_exact, transfer, wait_complete
from tests.integration.cluster import REFERENCE_NAME, Cluster, Daemon, free_port, wait_until

NAME = REFERENCE_NAME
FAST = {"announce_interval": 1.0, "reach_recheck": 1.0}


def undiallable(c: Cluster, name: str, **kwargs: Any) -> Daemon:
    """A node that announces an address nothing listens on (as one behind a NAT would)."""
    extra: dict[str, dict[str, object]] = {
        "node": {"public_url": f"http://127.0.0.1:{free_port()}"},
        "peers": dict(FAST),
    }
    return c.node(name, extra=extra, **kwargs)


def status(node: Daemon) -> dict[str, Any]:
    doc: dict[str, Any] = node.request("GET", "/v1/status").json()
    return doc


def peer_entry(node: Daemon, url: str) -> dict[str, Any] | None:
    return next((p for p in status(node)["peer_list"] if p["url"] == url), None)


def test_an_undiallable_node_finds_out_and_serves_over_its_reverse_channel(tmp_path: Any) -> None:
    with Cluster(tmp_path) as c:
        mid = c.publish()["model_id"]
        seed = c.start(c.seed(extra={"peers": dict(FAST)}))
        hidden = c.start(undiallable(c, "hidden", want=[NAME], bootstrap=[seed]))
        wait_complete(hidden, NAME)
        wait_until(lambda: status(hidden)["reachable"] is False, 30, "hidden to find out")
        assert status(seed)["reachable"] is None or status(seed)["reachable"] is True
        # a reachable edge learns of the hidden node from the seed, and the hidden node
        # opens a reverse channel to it; the seed then leaves: the edge's only source
        # is the hidden node, over that channel
        edge = c.start(c.node("edge", bootstrap=[seed], extra={"peers": dict(FAST)}))
        hidden_url = status(hidden)["url"]
        wait_until(
            lambda: (p := peer_entry(edge, hidden_url)) is not None and p["channel"],
            30,
            "the hidden node's channel to the edge",
        )
        assert peer_entry(edge, hidden_url)["dialable"] is False  # type: ignore[index]
        assert status(hidden)["channels"]["to_peers"] >= 2
        c.stop(seed)
        edge.request("PUT", f"/v1/models/{NAME}")
        wait_complete(edge, NAME)
        assert_bit_exact(edge, NAME, mid)
        got = transfer(edge, mid)
        assert got["bytes_by_peer"].get(hidden_url, 0) > 0, got
        assert status(hidden)["channels"]["bytes_sent"] > 0
