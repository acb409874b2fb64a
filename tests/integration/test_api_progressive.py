"""Levels arriving one by one on a real edge (download capped): 50 long-polling clients
each get every level, event streams report them in order, and each answer equals
``peerprog reconstruct`` at its level."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.numpy

from peerprog.api.client import AsyncClient
from peerprog.api.errors import LevelTimeout
from peerprog.api.wire import Event
from peerprog.formats import read_model
from peerprog.reference import digits
from tests.integration.cluster import Cluster, Daemon, run_cli, wait_until

NAME = digits.MODEL_NAME
RATE = 60_000  # bytes/s: over a second between levels (the smallest is ~70 KB)
CLIENTS = 50


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    with Cluster(tmp_path) as c:
        yield c


async def poll_every_level(socket: Path, last: int, raws: dict[int, bytes] | None) -> list[int]:
    """Long-poll ``best`` for each next level; the levels received."""
    got: list[int] = []
    async with AsyncClient(socket) as client:
        level = -1
        while level < last:
            model = await client.best(NAME, min_level=level + 1, wait=120)
            got.append(model.level)
            if raws is not None:
                raws[model.level] = bytes(model.raw)
            level = model.level
    return got


async def listen(socket: Path, leave_after: int | None = None) -> list[Event]:
    """Collect the event stream (to its end, or until ``leave_after`` events)."""
    events: list[Event] = []
    async with AsyncClient(socket) as client:
        async for event in client.events(NAME):
            events.append(event)
            if leave_after is not None and len(events) >= leave_after:
                break
    return events


def test_every_client_gets_every_level_in_order(cluster: Cluster, tmp_path: Path) -> None:
    doc = cluster.publish()
    last = len(doc["levels"]) - 1
    seed = cluster.start(cluster.seed())
    edge = cluster.start(cluster.node("edge", bootstrap=[seed], download_bytes_per_s=RATE))
    client = edge.client()
    client.want(NAME)  # wanted, not resolved yet: best and events wait for it
    with pytest.raises(LevelTimeout):
        client.best(NAME, min_level="max", wait=0.2)

    raws: dict[int, bytes] = {}

    async def run() -> tuple[list[list[int]], list[Event], list[list[Event]]]:
        pollers = [poll_every_level(edge.socket, last, raws if i == 0 else None)
                   for i in range(CLIENTS)]  # fmt: skip
        leavers = [listen(edge.socket, leave_after=1) for _ in range(5)]
        results = await asyncio.gather(
            asyncio.gather(*pollers), listen(edge.socket), asyncio.gather(*leavers)
        )
        return results[0], results[1], results[2]

    started = time.monotonic()
    levels, events, left_early = asyncio.run(run())
    assert time.monotonic() - started > 2  # the levels did arrive over time

    assert all(got == list(range(last + 1)) for got in levels), levels
    assert [e.event for e in events] == ["level"] * (last + 1) + ["complete"]
    assert [e.data["level"] for e in events[:-1]] == list(range(last + 1))
    assert all(e.data["model_id"] == doc["model_id"] for e in events)
    assert [e.id for e in events[:-1]] == [f"{doc['model_id']}.{lv}" for lv in range(last + 1)]
    assert events[-1].data["complete"] is True
    assert all(len(evs) == 1 and evs[0].data["level"] == 0 for evs in left_early)

    status: dict[str, Any] = wait_until(
        lambda: (s := client.node_status())["api"]["event_streams"] == 0 and s,
        10,
        "event streams to be cleaned up",
    )
    api = status["api"]
    assert api["snapshots_built"] == last + 1  # one build per level, shared by all clients
    assert api["best_answers"] >= CLIENTS * (last + 1) and api["best_in_flight"] == 0

    # every level as served equals what reconstruct writes for that level
    for level, raw in raws.items():
        out = tmp_path / f"level{level}.safetensors"
        run_cli("reconstruct", NAME, "--store", str(edge.data_dir), "--level", str(level),
                "--out", str(out))  # fmt: skip
        expect = read_model(out)
        loaded = safetensors.numpy.load(raw)
        assert loaded.keys() == expect.keys()
        for k, t in expect.items():
            assert np.array_equal(loaded[k], t.array), (level, k)


def test_watch_yields_each_level_then_stops(cluster: Cluster) -> None:
    doc = cluster.publish()
    last = len(doc["levels"]) - 1
    seed = cluster.start(cluster.seed())
    edge = cluster.start(
        cluster.node("edge", want=[NAME], bootstrap=[seed], download_bytes_per_s=RATE * 5)
    )
    seen = [(m.level, m.model_id) for m in edge.client().watch(NAME, wait=30)]
    assert [lv for lv, _ in seen] == sorted({lv for lv, _ in seen})  # increasing, no repeats
    assert seen[-1] == (last, doc["model_id"])


def test_restart_keeps_serving(cluster: Cluster) -> None:
    """A daemon killed mid-download leaves its socket behind; the restart replaces it,
    serves what is on disk at once, and goes on to the exact model."""
    cluster.publish()
    seed = cluster.start(cluster.seed())
    edge: Daemon = cluster.start(
        cluster.node("edge", want=[NAME], bootstrap=[seed], download_bytes_per_s=RATE * 5)
    )
    first = edge.client().best(NAME, min_level=1, wait=60)
    assert cluster.stop(edge, sig=9) == -9
    assert edge.socket.exists()
    cluster.start(edge)
    again = edge.client().best(NAME)
    assert again.level >= first.level and again.model_id == first.model_id
    assert edge.client().best(NAME, min_level="max", wait=60).exact
