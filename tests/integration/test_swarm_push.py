"""Issue 12 in the real daemons: the have long-poll, origin super-seeding and upload slots
(real processes on loopback)."""

from __future__ import annotations

import http.client
import time
import urllib.parse
from typing import Any

import msgpack

from peerprog.swarm import Bitfield
from tests.faults.harness import assert_bit_exact, transfer, wait_complete
from tests.integration.cluster import REFERENCE_NAME, Cluster, Daemon

NAME = REFERENCE_NAME
NO_SUPER_SEEDING = {"swarm": {"super_seeding": False}}


def peer_get(node: Daemon, path: str, timeout: float = 60) -> tuple[int, bytes]:
    """One GET on ``node``'s peer port: (status, body)."""
    url = urllib.parse.urlsplit(node.url)
    conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=timeout)
    try:
        conn.request("GET", "/p2p/v1" + path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


def have(node: Daemon, model_id: str, query: str = "") -> dict[str, Any]:
    status, body = peer_get(node, f"/models/{model_id}/have{query}")
    assert status == 200, body
    doc: dict[str, Any] = msgpack.unpackb(body)
    return doc


def test_have_long_poll_of_a_real_daemon(tmp_path: Any) -> None:
    with Cluster(tmp_path) as c:
        pub = c.publish()
        mid = pub["model_id"]
        seed = c.start(c.seed(extra=NO_SUPER_SEEDING))
        plain = have(seed, mid)
        assert set(plain) == {"count", "bitfield"}  # older peers' answer, unchanged
        n = plain["count"]

        full = have(seed, mid, "?since=:0&wait=20")  # no epoch yet: the whole bitfield
        epoch, seq = full["epoch"], full["seq"]
        assert seq == n and full["count"] == n
        assert Bitfield.from_bytes(n, full["bitfield"]).count() == n

        began = time.monotonic()
        empty = have(seed, mid, f"?since={epoch}:{n}&wait=1")  # nothing new: held, then empty
        assert time.monotonic() - began >= 0.9
        assert empty == {"epoch": epoch, "seq": n, "added": []}

        resumed = have(seed, mid, f"?since={epoch}:{n - 3}&wait=20")
        assert resumed["seq"] == n and len(resumed["added"]) == 3
        assert set(resumed["added"]) <= set(range(n))

        for since in (f"other:{n}", f"{epoch}:{n + 5}"):  # another epoch, or ahead: full
            doc = have(seed, mid, f"?since={since}&wait=20")
            assert doc["epoch"] == epoch and doc["seq"] == n and "bitfield" in doc

        for query, word in (
            ("?since=garbage", b"since"),
            ("?since=e:x", b"since"),
            ("?since=e:-1", b"since"),
            ("?since=a/b:1", b"since"),
            (f"?since={epoch}:0&wait=soon", b"wait"),
            (f"?since={epoch}:0&wait=-1", b"wait"),
            (f"?since={epoch}:0&wait=nan", b"wait"),
        ):
            status, body = peer_get(seed, f"/models/{mid}/have{query}")
            assert status == 400 and word in body, (query, status, body)

        # a node that is fetching: the long-poll answers with the chunks it verifies
        edge = c.start(c.node("edge", want=[NAME], bootstrap=[seed], download_bytes_per_s=150_000))
        status, body = 404, b""
        deadline = time.monotonic() + 30
        while status != 200 and time.monotonic() < deadline:
            status, body = peer_get(edge, f"/models/{mid}/have?since=:0")
            time.sleep(0.05)
        first = msgpack.unpackb(body)
        held = Bitfield.from_bytes(n, first["bitfield"])
        news = have(edge, mid, f"?since={first['epoch']}:{first['seq']}&wait=25")
        assert news["epoch"] == first["epoch"] and news["added"], news
        assert news["seq"] == first["seq"] + len(news["added"])
        assert not any(i in held for i in news["added"])
        wait_complete(edge, NAME, timeout=60)
        assert_bit_exact(edge, NAME, mid)


def test_super_seeding_origin_serves_a_swarm_that_ends_exact(tmp_path: Any) -> None:
    """Correctness only: every edge ends bit-exact, no chunk failed, nobody banned. How much
    the origin uploads is an efficiency figure, a timing assertion on real processes: it is
    asserted on the pure driver with a fake clock (``tests/unit/test_swarm_driver.py``)."""
    with Cluster(tmp_path) as c:
        pub = c.publish()
        mid = pub["model_id"]
        seed = c.start(c.seed(upload_bytes_per_s=300_000))
        edges = [c.node(f"edge{i}", want=[NAME], bootstrap=[seed]) for i in range(4)]
        for e in edges:
            c.start(e, wait=False)
        for e in edges:
            c.wait_ready(e)
        for e in edges:
            wait_complete(e, NAME, timeout=120)
        for e in edges:
            assert_bit_exact(e, NAME, mid)
            t = transfer(e, mid)
            assert t["peers_banned"] == [] and t["chunks_failed"] == 0
        uploaded = seed.request("GET", "/v1/status").json()["bytes_uploaded"]
        print(f"seed uploaded {uploaded} bytes for a {pub['total_bytes']}-byte model, 4 edges")
        assert uploaded >= pub["total_bytes"]  # every chunk left the origin at least once


def test_a_full_upload_slot_is_busy_not_a_fault(tmp_path: Any) -> None:
    with Cluster(tmp_path) as c:
        pub = c.publish()
        mid = pub["model_id"]
        limits = {"upload_slots": 1, "upload_queue": 0}
        seed = c.start(
            c.seed(upload_bytes_per_s=400_000, extra={**NO_SUPER_SEEDING, "limits": limits})
        )
        edges = [c.node(f"edge{i}", want=[NAME], bootstrap=[seed]) for i in range(2)]
        for e in edges:
            c.start(e, wait=False)
        for e in edges:
            c.wait_ready(e)
        for e in edges:
            wait_complete(e, NAME, timeout=120)
        declined = 0
        for e in edges:
            assert_bit_exact(e, NAME, mid)
            t = transfer(e, mid)
            assert t["peers_banned"] == [] and t["chunks_failed"] == 0, t
            declined += t["requests_declined"]
        seed_side = transfer(seed, mid)["uploads_declined"]
        assert seed_side > 0 and declined > 0, (seed_side, declined)
        for e in edges:  # a banned peer leaves the table
            urls = [p["url"] for p in e.request("GET", "/v1/status").json()["peer_list"]]
            assert seed.url in urls, urls
