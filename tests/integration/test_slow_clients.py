"""Slow and greedy clients cannot hold a daemon's listeners: many connections that each
send half a request header and then a line now and then are cut, one address's excess
connections are refused, and an honest request is still answered all along."""

from __future__ import annotations

import contextlib
import socket
import time
import urllib.request
from pathlib import Path

import pytest

from tests.integration.cluster import TOKEN, Cluster, wait_until

SLOW = 60
CAP = 40


def half_sent(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    s.sendall(b"GET /p2p/v1/names/x HTTP/1.1\r\nHost: 127.0.0.1\r\n")
    s.setblocking(False)
    return s


def closed(s: socket.socket) -> bool:
    """Whether the server closed ``s`` (what it sent before is read and dropped)."""
    try:
        while True:
            data = s.recv(4096)
            if not data:
                return True
    except BlockingIOError:
        return False
    except OSError:
        return True


def dribble(socks: list[socket.socket]) -> None:
    """One more header line on every connection still open (a slowloris client)."""
    for s in socks:
        with contextlib.suppress(OSError):
            s.send(b"X-Slow: 1\r\n")


@pytest.mark.parametrize("listener", ["peer", "api"])
def test_half_sent_requests_are_cut_while_honest_ones_are_answered(
    tmp_path: Path, listener: str
) -> None:
    with Cluster(tmp_path) as c:
        c.publish()
        limits = {"header_timeout": 2.0, "max_connections_per_address": CAP}
        seed = c.start(c.seed(api_tcp=True, extra={"limits": limits}))
        port = seed.port if listener == "peer" else seed.tcp_port
        assert port is not None
        honest = (
            f"{seed.url}/p2p/v1/names/digits-cnn"
            if listener == "peer"
            else f"{seed.tcp_url}/v1/status"
        )
        socks = [half_sent(port) for _ in range(SLOW)]
        try:
            time.sleep(0.3)
            refused = sum(closed(s) for s in socks)
            # one address may hold CAP connections; the rest were answered 503 and closed
            assert refused >= SLOW - CAP, refused
            req = urllib.request.Request(honest, headers={"Authorization": f"Bearer {TOKEN}"})

            def answered() -> bool:
                dribble(socks)
                with urllib.request.urlopen(req, timeout=5) as r:
                    return bool(r.status == 200)

            # the cap leaves no room for an honest request from this same address until the
            # header deadline has cut the slow ones: then it is answered
            def all_cut() -> bool:
                dribble(socks)
                return all(closed(s) for s in socks)

            wait_until(all_cut, 30, "the slow connections to be cut", every=0.5)
            assert answered()
            assert seed.running
        finally:
            for s in socks:
                s.close()


def test_an_address_over_its_cap_does_not_lock_out_another(tmp_path: Path) -> None:
    with Cluster(tmp_path) as c:
        c.publish()
        limits = {"header_timeout": 30.0, "max_connections_per_address": CAP}
        seed = c.start(c.seed(extra={"limits": limits}))
        socks = [half_sent(seed.port) for _ in range(CAP)]
        try:
            time.sleep(0.3)
            assert not any(closed(s) for s in socks)  # within the cap, not yet late
            extra = half_sent(seed.port)
            wait_until(lambda: closed(extra), 5, "the connection over the cap to be closed")
            extra.close()
            # all of 127/8 is loopback on Linux: another address of the same host
            with socket.create_connection(
                ("127.0.0.1", seed.port), timeout=10, source_address=("127.0.0.2", 0)
            ) as s:
                s.sendall(b"GET /p2p/v1/names/digits-cnn HTTP/1.1\r\nHost: x\r\n\r\n")
                assert s.recv(100).startswith(b"HTTP/1.1 200")
        finally:
            for s in socks:
                s.close()
