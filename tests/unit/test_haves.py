"""The have answers a node serves (``node/haves.py``), on a real event loop: long-polls of
a model's have stream and their pacing."""

from __future__ import annotations

import asyncio

import pytest

from peerprog.manifest import seal
from peerprog.node.haves import Haves
from peerprog.node.state import ModelState
from peerprog.node.tasks import TaskScope
from peerprog.swarm import Bitfield, havelog
from peerprog.swarm.havelog import HaveDelta
from tests.unit.samples import KEY, make_manifest


class NoClient:
    async def get_have_since(
        self, root: str, model_id: str, count: int, since: tuple[str, int], wait: float
    ) -> HaveDelta:
        raise AssertionError("not an origin: edges' streams are not read")


async def test_news_to_one_peer_is_paced_and_batched(monkeypatch: pytest.MonkeyPatch) -> None:
    """A first answer goes at once; news coming faster than ``HAVE_PACE`` waits for the
    next answer and goes along with what came meanwhile; another peer is not held back by
    the first one's pace; news after a quiet spell goes at once. (A pace of 0.4 s, so that
    a loaded machine's scheduling delays stay well inside the margins.)"""
    HAVE_PACE = 0.4
    monkeypatch.setattr(havelog, "HAVE_PACE", HAVE_PACE)
    loop = asyncio.get_running_loop()
    m, _ = make_manifest()
    state = ModelState(seal(m, KEY), Bitfield(len(m.chunks)), origin=False)
    haves = Haves(
        super_seeding=True, client=NoClient(), root_of=lambda url: None,
        scope=TaskScope("test"), clock=loop.time,
    )  # fmt: skip
    epoch = state.havelog.epoch
    state.add_chunk(0)
    t0 = loop.time()
    first = await haves.since(state, "a", epoch, 0, wait=5.0)
    assert list(first.added) == [0] and loop.time() - t0 < HAVE_PACE / 2
    state.add_chunk(1)
    later = asyncio.ensure_future(haves.since(state, "a", epoch, first.seq, wait=5.0))
    await asyncio.sleep(HAVE_PACE / 4)
    state.add_chunk(2)  # comes during the pause: rides along
    other = await haves.since(state, "b", epoch, first.seq, wait=5.0)
    assert list(other.added) == [1, 2] and not later.done()  # b is not paced by a's answers
    second = await later
    assert list(second.added) == [1, 2] and loop.time() - t0 >= HAVE_PACE * 0.9
    third = asyncio.ensure_future(haves.since(state, "a", epoch, second.seq, wait=5.0))
    await asyncio.sleep(HAVE_PACE * 1.5)  # a quiet spell longer than the pace
    state.add_chunk(3)
    news = loop.time()
    assert list((await third).added) == [3] and loop.time() - news < HAVE_PACE / 2


async def test_the_pacing_record_stays_bounded(monkeypatch: pytest.MonkeyPatch) -> None:
    """Askers that come and go leave no growing record: entries past the pace are pruned."""
    from peerprog.node import haves as haves_module

    monkeypatch.setattr(haves_module, "ANSWERED_MAX", 8)
    monkeypatch.setattr(havelog, "HAVE_PACE", 0.0)
    m, _ = make_manifest()
    state = ModelState(seal(m, KEY), Bitfield(len(m.chunks)), origin=False)
    haves = Haves(
        super_seeding=True, client=NoClient(), root_of=lambda url: None,
        scope=TaskScope("test"), clock=asyncio.get_running_loop().time,
    )  # fmt: skip
    state.add_chunk(0)
    for k in range(100):
        await haves.since(state, f"peer{k}", state.havelog.epoch, 0, wait=1.0)
    assert len(haves._answered) <= 8
