"""One victim edge, one honest seed, one hostile peer of each kind (real processes).

For every hostile behaviour: the victim completes the model bit for bit from the honest
seed, takes no byte from the hostile peer (it is banned, or dropped, or simply never
useful), logs no traceback, keeps its peer table bounded, and its memory grows by less than
twice the model plus 100 MB. The long profile also runs every hostile peer at once.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.faults.harness import (
    Hostile,
    RssSampler,
    assert_bit_exact,
    check_store,
    hostile_peer,
    transfer,
    wait_complete,
)
from tests.integration.cluster import REFERENCE_NAME, Cluster, Daemon

NAME = REFERENCE_NAME
SEED_UPLOAD = 400_000  # bytes/s: the download lasts a few seconds, so hostiles get asked


@dataclass
class Swarm:
    cluster: Cluster
    seed: Daemon
    publish: dict[str, Any]
    runs: int = 0

    @property
    def model_id(self) -> str:
        return str(self.publish["model_id"])

    def victim(self, bootstrap: list[str], **kw: Any) -> Daemon:
        self.runs += 1
        node = self.cluster.node(f"victim{self.runs}", want=[NAME], bootstrap=bootstrap, **kw)
        return self.cluster.start(node)


@pytest.fixture(scope="module")
def swarm(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Swarm]:
    with Cluster(tmp_path_factory.mktemp("hostile")) as c:
        doc = c.publish()
        seed = c.start(c.seed(upload_bytes_per_s=SEED_UPLOAD))
        yield Swarm(c, seed, doc)


def run_victim(swarm: Swarm, bad: list[Hostile], *, seed_first: bool = False) -> dict[str, Any]:
    """Start a victim that knows the hostile peers and the seed; check everything the
    issue promises; return its transfer metrics."""
    c = swarm.cluster
    urls = [b.url for b in bad]
    boot = [swarm.seed.url, *urls] if seed_first else [*urls, swarm.seed.url]
    victim = swarm.victim(boot)
    with RssSampler(victim.pid) as rss:
        wait_complete(victim, NAME, timeout=120)
    assert_bit_exact(victim, NAME, swarm.model_id)
    t = transfer(victim, swarm.model_id)
    for b in bad:
        assert t["bytes_by_peer"].get(b.url, 0) == 0, (b.mode, t["bytes_by_peer"])
    assert t["bytes_by_source"]["seed"] == swarm.publish["total_bytes"]
    rss.assert_bounded(swarm.publish["total_bytes"])
    status = victim.request("GET", "/v1/status").json()
    assert status["peers"] <= 64
    logs = c.logs(victim)
    assert "Traceback" not in logs and "task failed" not in logs, logs[-3000:]
    check_store(victim.data_dir, {c.public_key})
    c.stop(victim)
    outside = {p.name for p in victim.root.iterdir()} - {victim.data_dir.name}
    assert outside == {"node.toml", "daemon.log"}, outside  # nothing written elsewhere
    return t


def test_corrupt_peer_is_banned(swarm: Swarm) -> None:
    with hostile_peer(swarm.cluster, "corrupt") as bad:
        t = run_victim(swarm, [bad])
        assert any("/chunks/" in r for r in bad.served())
    assert t["peers_banned"] == [bad.url] and t["chunks_failed"] >= 1


def test_oversize_peer_is_banned(swarm: Swarm) -> None:
    with hostile_peer(swarm.cluster, "oversize") as bad:
        t = run_victim(swarm, [bad])
        assert any("/chunks/" in r for r in bad.served())
    assert t["peers_banned"] == [bad.url] and t["chunks_failed"] >= 1


def test_drip_peer_does_not_hold_chunks_back(swarm: Swarm) -> None:
    with hostile_peer(swarm.cluster, "drip") as bad:
        run_victim(swarm, [bad])
        assert any("/chunks/" in r for r in bad.served())


def test_silent_peer_is_waited_for_no_longer_than_a_timeout(swarm: Swarm) -> None:
    with hostile_peer(swarm.cluster, "silent") as bad:
        run_victim(swarm, [bad])
        assert bad.served()


def test_lying_have_is_not_believed_for_long(swarm: Swarm) -> None:
    with hostile_peer(swarm.cluster, "liar") as bad:
        run_victim(swarm, [bad])
        assert any("/chunks/" in r for r in bad.served())


def test_garbage_messages_are_refused(swarm: Swarm) -> None:
    with hostile_peer(swarm.cluster, "garbage") as bad:
        run_victim(swarm, [bad])
        served = bad.served()
        assert any("/have" in r for r in served) and any("announce" in r for r in served)


def test_announce_flood_is_bounded(swarm: Swarm) -> None:
    with hostile_peer(swarm.cluster, "flood") as bad:
        run_victim(swarm, [bad])
        assert any("announce" in r for r in bad.served())


def test_flood_pushed_at_a_downloading_victim(swarm: Swarm) -> None:
    c = swarm.cluster
    victim = swarm.victim([swarm.seed.url])
    with (
        RssSampler(victim.pid) as rss,
        hostile_peer(c, "flood", victim=victim, args=["--rounds", "30"]),
    ):
        doc = wait_complete(victim, NAME, timeout=120)
    assert doc["model_id"] == swarm.model_id
    assert_bit_exact(victim, NAME, swarm.model_id)
    rss.assert_bounded(swarm.publish["total_bytes"])
    assert victim.request("GET", "/v1/status").json()["peers"] <= 64
    assert "Traceback" not in c.logs(victim)
    c.stop(victim)


@pytest.mark.slow
def test_every_hostile_peer_at_once(swarm: Swarm, tmp_path: Path) -> None:
    modes = ["corrupt", "oversize", "drip", "silent", "liar", "garbage", "flood"]
    with contextlib.ExitStack() as stack:
        bad = [stack.enter_context(hostile_peer(swarm.cluster, m)) for m in modes]
        t = run_victim(swarm, bad)
    assert sorted(t["peers_banned"]) == sorted(
        b.url for b in bad if b.mode in ("corrupt", "oversize")
    )
