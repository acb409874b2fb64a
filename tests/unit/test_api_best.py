"""The snapshot cache and the rule of what ``best`` answers, on a fake node (no sockets)."""

from __future__ import annotations

import asyncio
import json
import struct
from pathlib import Path

import numpy as np
import pytest
import safetensors.numpy

from peerprog.api.best import BestCache, Snapshot, SnapshotLagError
from peerprog.api.context import ApiContext, etag_matches
from peerprog.api.errors import BadRequest, LevelTimeout, UnknownModel
from peerprog.api.events import parse_event_id, pending_events
from peerprog.api.query import BestQuery
from peerprog.store import Assembler
from tests.unit.test_api_support import FakeNode, publish_sample


@pytest.fixture
def node(tmp_path: Path) -> FakeNode:
    store, signed = publish_sample(tmp_path / "store")
    node = FakeNode(store)
    node.add(signed, levels=1)
    return node


def file_of(snap: Snapshot) -> bytes:
    return b"".join(bytes(p) for p in snap.pieces(1000))


def metadata_of(data: bytes) -> dict[str, str]:
    (n,) = struct.unpack("<Q", data[:8])
    meta: dict[str, str] = json.loads(data[8 : 8 + n])["__metadata__"]
    return meta


def reconstruct(node: FakeNode, model_id: str, level: int) -> dict[str, np.ndarray]:
    state = node.models[model_id]
    asm = Assembler(state.manifest, lambda i: node.store.read_chunk(model_id, i))
    assert asm.advance(level) == level
    return {k: t.array for k, t in asm.tensors().items()}


async def test_snapshot_is_safetensors_equal_to_reconstruct(node: FakeNode) -> None:
    (state,) = node.models.values()
    cache = BestCache(node.store)
    for level in range(state.manifest.levels_total):
        if level:
            node.receive(state, level)
        snap = await cache.get(state)
        assert snap.level == level and snap.etag == f'"{state.model_id}.{level}"'
        data = file_of(snap)
        assert len(data) == snap.size
        loaded = safetensors.numpy.load(data)
        expect = reconstruct(node, state.model_id, level)
        assert loaded.keys() == expect.keys()
        for k, arr in expect.items():
            assert loaded[k].dtype == arr.dtype and np.array_equal(loaded[k], arr, equal_nan=True)
        meta = metadata_of(data)
        m = state.manifest
        assert meta == {
            "peerprog.model_id": state.model_id,
            "peerprog.name": "tiny",
            "peerprog.version": "1",
            "peerprog.codec": m.codec,
            "peerprog.level": str(level),
            "peerprog.levels_total": str(m.levels_total),
            "peerprog.bytes_received": str(sum(lv.bytes for lv in m.levels[: level + 1])),
            "peerprog.bytes_total": str(m.total_bytes),
            "peerprog.exact": "true" if level == m.levels_total - 1 else "false",
        }
        assert snap.headers()["Peerprog-Level"] == str(level)
        assert snap.headers()["Peerprog-Bytes-Received"] == meta["peerprog.bytes_received"]
    assert cache.builds == state.manifest.levels_total
    assert snap.exact and snap.last


async def test_concurrent_requests_share_one_build(node: FakeNode) -> None:
    (state,) = node.models.values()
    cache = BestCache(node.store)
    snaps = await asyncio.gather(*(cache.get(state) for _ in range(20)))
    assert cache.builds == 1 and all(s is snaps[0] for s in snaps)
    assert await cache.get(state) is snaps[0] and cache.builds == 1
    node.receive(state, 1)
    node.receive(state, 2)
    snaps = await asyncio.gather(*(cache.get(state) for _ in range(20)))
    assert cache.builds == 2 and {s.level for s in snaps} == {2}


async def test_a_cancelled_request_does_not_cancel_the_build(node: FakeNode) -> None:
    (state,) = node.models.values()
    cache = BestCache(node.store)
    first = asyncio.create_task(cache.get(state))
    second = asyncio.create_task(cache.get(state))
    await asyncio.sleep(0)
    first.cancel()
    snap = await second
    assert snap.level == 0 and cache.builds == 1


async def test_retain_forgets_other_models(node: FakeNode) -> None:
    (state,) = node.models.values()
    cache = BestCache(node.store)
    await cache.get(state)
    cache.retain(lambda mid: mid != state.model_id)
    assert state.model_id not in cache and cache.current(state.model_id) is None


# --- what best answers ---------------------------------------------------------------------


async def test_unknown_and_unresolved_names(node: FakeNode) -> None:
    ctx = ApiContext.for_node(node)
    with pytest.raises(UnknownModel):
        await ctx.resolve_best("nope", BestQuery(wait=5))
    node.want("later")
    with pytest.raises(LevelTimeout, match="no level"):
        await ctx.resolve_best("later", BestQuery(wait=0.05))


async def test_min_level_waits_for_the_level(node: FakeNode) -> None:
    (state,) = node.models.values()
    ctx = ApiContext.for_node(node)
    node.level_listeners.append(ctx.on_level)
    task = asyncio.create_task(ctx.resolve_best("tiny", BestQuery(min_level=2, wait=10)))
    await asyncio.sleep(0.05)
    node.receive(state, 1)
    await asyncio.sleep(0.05)
    assert not task.done()
    node.receive(state, 2)
    snap, not_modified = await asyncio.wait_for(task, 10)
    assert snap.level == 2 and not not_modified
    with pytest.raises(LevelTimeout, match="last level not reached"):
        await ctx.resolve_best("tiny", BestQuery(max_level=True, wait=0.05))
    with pytest.raises(BadRequest):
        await ctx.resolve_best("tiny", BestQuery(min_level=99))


async def test_if_none_match_waits_for_something_newer(node: FakeNode) -> None:
    (state,) = node.models.values()
    ctx = ApiContext.for_node(node)
    node.level_listeners.append(ctx.on_level)
    snap, _ = await ctx.resolve_best("tiny", BestQuery())
    same, not_modified = await ctx.resolve_best("tiny", BestQuery(), snap.etag)
    assert not_modified and same is snap
    _, not_modified = await ctx.resolve_best("tiny", BestQuery(wait=0.05), snap.etag)
    assert not_modified
    task = asyncio.create_task(ctx.resolve_best("tiny", BestQuery(wait=10), snap.etag))
    await asyncio.sleep(0.05)
    node.receive(state, 1)
    newer, not_modified = await asyncio.wait_for(task, 10)
    assert newer.level == 1 and not not_modified


async def test_a_new_version_is_served_once_it_has_a_level(tmp_path: Path, node: FakeNode) -> None:
    (old,) = node.models.values()
    _, signed2 = publish_sample(tmp_path / "store", seed=1)
    assert signed2.manifest.version == 2
    ctx = ApiContext.for_node(node)
    node.level_listeners.append(ctx.on_level)
    new = node.add(signed2)
    snap, _ = await ctx.resolve_best("tiny", BestQuery())
    assert snap.model_id == old.model_id
    node.receive(new, 0)
    snap, _ = await ctx.resolve_best("tiny", BestQuery())
    assert snap.model_id == new.model_id and old.model_id not in ctx.cache


async def test_closing_ends_waits(node: FakeNode) -> None:
    ctx = ApiContext.for_node(node)
    task = asyncio.create_task(ctx.resolve_best("tiny", BestQuery(max_level=True, wait=30)))
    await asyncio.sleep(0.05)
    ctx.notifier.close()
    with pytest.raises(LevelTimeout, match="shutting down"):
        await asyncio.wait_for(task, 5)


def test_etag_matching() -> None:
    assert etag_matches('"a.1"', '"a.1"')
    assert etag_matches('"a.1"', '"x.0", W/"a.1"')
    assert etag_matches('"a.1"', "*")
    assert not etag_matches('"a.1"', '"a.2"') and not etag_matches('"a.1"', None)


# --- event streams -------------------------------------------------------------------------


def test_pending_events(node: FakeNode) -> None:
    (state,) = node.models.values()
    last_level = state.manifest.levels_total - 1

    def decode(raw: list[bytes]) -> list[tuple[str, int, str]]:
        out = []
        for ev in raw:
            lines = dict(line.split(": ", 1) for line in ev.decode().strip().split("\n"))
            out.append((lines["event"], json.loads(lines["data"])["level"], lines["id"]))
        return out

    first = decode(pending_events(state, None))
    assert first == [("level", 0, f"{state.model_id}.0")]
    assert pending_events(state, (state.model_id, 0)) == []
    node.receive(state, 1)
    node.receive(state, 2)
    assert [e[1] for e in decode(pending_events(state, (state.model_id, 0)))] == [1, 2]
    assert [e[1] for e in decode(pending_events(state, ("other", 5)))] == [2]
    for lv in range(3, last_level + 1):
        node.receive(state, lv)
    tail = decode(pending_events(state, parse_event_id(f"{state.model_id}.2")))
    assert [e[0] for e in tail] == ["level"] * (last_level - 2) + ["complete"]
    assert decode(pending_events(state, (state.model_id, last_level)))[0][0] == "complete"


async def test_missing_chunks_are_reported_not_looped_on(node: FakeNode) -> None:
    (state,) = node.models.values()
    cache = BestCache(node.store)
    await cache.get(state)
    first = state.manifest.levels[1].chunks[0]
    node.store.chunk_path(state.model_id, first).unlink()
    node.receive(state, 1)
    with pytest.raises(SnapshotLagError, match="only level 0"):
        await cache.get(state)
    assert cache.current(state.model_id) is not None  # level 0 is still served
