"""Issue 20 in real daemons: nodes that cannot be dialled (an announced address no one
can reach) find that out, hold reverse channels to the peers that can be, and upload over
them (real processes on loopback)."""

from __future__ import annotations

import contextlib
import socket
import threading
from typing import Any

from tests.faults.harness import assert_bit_exact, hostile_peer, transfer, wait_complete
from tests.integration.cluster import (
    REFERENCE_NAME,
    Cluster,
    Daemon,
    free_port,
    run_cli,
    wait_until,
)

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
        table = run_cli("status", "--socket", str(hidden.socket))
        assert "not reachable at" in table and "reverse channel" in table, table
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


def test_a_hostile_node_behind_a_channel_gets_what_a_hostile_peer_gets(tmp_path: Any) -> None:
    """Corrupt or oversized answers over a reverse channel: banned (the channel is closed
    and refused from then on), the victim completes from the seed, bit for bit."""
    with Cluster(tmp_path) as c:
        mid = c.publish()["model_id"]
        seed = c.start(c.seed(upload_bytes_per_s=400_000))
        victim = c.node("victim", bootstrap=[seed], extra={"peers": dict(FAST)})
        with (
            hostile_peer(c, "corrupt", victim=victim, hidden=True) as corrupt,
            hostile_peer(c, "oversize", victim=victim, hidden=True) as oversize,
        ):
            c.start(victim)
            wait_until(
                lambda: all(b"CHANNEL open" in h.log.read_bytes() for h in (corrupt, oversize)),
                30,
                "both hostile nodes' channels",
            )
            victim.request("PUT", f"/v1/models/{NAME}")
            wait_complete(victim, NAME, timeout=120)
            assert_bit_exact(victim, NAME, mid)
            banned = set(transfer(victim, mid)["peers_banned"])
            assert {corrupt.url, oversize.url} <= banned, banned
            assert transfer(victim, mid)["bytes_by_peer"].get(oversize.url, 0) == 0
            for h in (corrupt, oversize):  # refused from then on
                wait_until(lambda h=h: b"CHANNEL 403" in h.log.read_bytes(), 30, "a refusal")
            urls = {p["url"] for p in status(victim)["peer_list"]}
            assert not urls & {corrupt.url, oversize.url}
        logs = c.logs(victim)
        assert "Traceback" not in logs and "task failed" not in logs, logs[-3000:]


def test_an_undiallable_node_survives_a_hostile_hub(tmp_path: Any) -> None:
    """A peer it opens its channel to sends malformed frames, an oversized message, a
    flood of junk streams and never reads: each channel is closed, the node goes on."""
    with Cluster(tmp_path) as c:
        mid = c.publish()["model_id"]
        seed = c.start(c.seed(upload_bytes_per_s=400_000))
        with hostile_peer(c, "hub") as hub:
            hidden = c.start(undiallable(c, "hidden", bootstrap=[hub.url, seed]))
            wait_until(
                lambda: hub.log.read_bytes().count(b"HUB ") >= 4, 60, "four channels to the hub"
            )
            hidden.request("PUT", f"/v1/models/{NAME}")
            wait_complete(hidden, NAME, timeout=120)
            assert_bit_exact(hidden, NAME, mid)
            assert hidden.running
        logs = c.logs(hidden)
        assert "Traceback" not in logs and "task failed" not in logs, logs[-3000:]


class Forwarder:
    """A TCP port forwarder on loopback (``listen`` → ``target``), as a NAT's port mapping
    that an operator opens later."""

    def __init__(self, listen: int, target: int) -> None:
        self._server = socket.create_server(("127.0.0.1", listen))
        self._target = target
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self._target))
            for a, b in ((conn, upstream), (upstream, conn)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        with contextlib.suppress(OSError):
            while data := src.recv(65536):
                dst.sendall(data)
        with contextlib.suppress(OSError):
            dst.shutdown(socket.SHUT_WR)

    def close(self) -> None:
        self._server.close()


def test_a_node_whose_address_starts_to_answer_is_found_reachable(tmp_path: Any) -> None:
    with Cluster(tmp_path) as c:
        c.publish()
        seed = c.start(c.seed(extra={"peers": dict(FAST)}))
        hidden = c.start(undiallable(c, "hidden", bootstrap=[seed]))
        wait_until(lambda: status(hidden)["channels"]["to_peers"] == 1, 30, "its channel")
        url = status(hidden)["url"]
        assert peer_entry(seed, url)["channel"] is True  # type: ignore[index]
        forwarder = Forwarder(int(url.rsplit(":", 1)[1]), hidden.port)
        try:
            wait_until(lambda: status(hidden)["reachable"] is True, 30, "it to be found reachable")
            wait_until(lambda: status(hidden)["channels"]["to_peers"] == 0, 30, "channel closed")
            seen = peer_entry(seed, url)
            assert seen is not None and seen["dialable"] is True and seen["channel"] is False
        finally:
            forwarder.close()


def test_the_reverse_channel_comes_back_after_the_peer_restarts(tmp_path: Any) -> None:
    with Cluster(tmp_path) as c:
        mid = c.publish()["model_id"]
        seed = c.start(c.seed(upload_bytes_per_s=200_000, extra={"peers": dict(FAST)}))
        hidden = c.start(undiallable(c, "hidden", want=[NAME], bootstrap=[seed]))
        wait_complete(hidden, NAME)
        url = status(hidden)["url"]
        c.stop(seed)
        c.start(seed)
        wait_until(
            lambda: (p := peer_entry(seed, url)) is not None and p["channel"],
            60,
            "the channel to the restarted seed",
        )
        # and it carries requests: an edge that knows only the seed (its upload held to
        # 200 kB/s) gets chunks from the hidden node too
        edge = c.start(c.node("edge", want=[NAME], bootstrap=[seed], extra={"peers": dict(FAST)}))
        wait_complete(edge, NAME, timeout=120)
        assert_bit_exact(edge, NAME, mid)
        assert transfer(edge, mid)["bytes_by_peer"].get(url, 0) > 0


def test_eight_edges_six_of_them_undiallable_all_reach_exact(tmp_path: Any) -> None:
    """The issue's swarm: the undiallable edges fetch and upload (bytes they sent over
    their channels, bytes the others got from them); nothing is asserted of its speed."""
    with Cluster(tmp_path) as c:
        mid = c.publish()["model_id"]
        seed = c.start(c.seed(upload_bytes_per_s=500_000, extra={"peers": dict(FAST)}))
        open_ = [
            c.node(f"open{i}", want=[NAME], bootstrap=[seed], extra={"peers": dict(FAST)})
            for i in range(2)
        ]
        hidden = [undiallable(c, f"hidden{i}", want=[NAME], bootstrap=[seed]) for i in range(6)]
        for node in [*open_, *hidden]:
            c.start(node, wait=False)
        for node in [*open_, *hidden]:
            c.wait_ready(node)
        for node in [*open_, *hidden]:
            wait_complete(node, NAME, timeout=180)
            assert_bit_exact(node, NAME, mid)
        hidden_urls = {status(h)["url"] for h in hidden}
        assert all(status(h)["reachable"] is False for h in hidden)
        assert all(status(o)["reachable"] is not False for o in open_)
        sent = sum(status(h)["channels"]["bytes_sent"] for h in hidden)
        from_hidden = sum(
            n
            for node in [*open_, *hidden]
            for url, n in transfer(node, mid)["bytes_by_peer"].items()
            if url in hidden_urls
        )
        assert from_hidden > 0 and sent >= from_hidden, (sent, from_hidden)
        for node in [seed, *open_, *hidden]:
            logs = c.logs(node)
            assert "Traceback" not in logs and "task failed" not in logs, logs[-3000:]
