"""The decoded level files and the rule of what ``best`` answers, on a fake node that
decodes as a node does (no sockets)."""

from __future__ import annotations

import asyncio
import json
import logging
import shutil
import struct
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import safetensors.numpy

from peerprog.api.context import ApiContext, etag_matches
from peerprog.api.errors import ApiError, BadRequest, LevelTimeout, UnknownModel
from peerprog.api.events import parse_event_id, pending_events
from peerprog.api.query import BestQuery
from peerprog.codec import get_codec
from tests.unit.test_api_support import FakeNode, node_with_sample, publish_sample, sample_tensors


@pytest.fixture
def node(tmp_path: Path) -> FakeNode:
    return node_with_sample(tmp_path / "store")


def metadata_of(data: bytes) -> dict[str, str]:
    (n,) = struct.unpack("<Q", data[:8])
    meta: dict[str, str] = json.loads(data[8 : 8 + n])["__metadata__"]
    return meta


def whole_model_decode(node: FakeNode, model_id: str, level: int) -> dict[str, np.ndarray]:
    """The model at ``level`` by the codec's whole-model decoder (another code path)."""
    state = node.models[model_id]
    m = state.manifest
    dec = get_codec(m.codec).decoder(m.codec_params, m.tensors)
    files = node.store.open_files(state.signed)
    for n in range(level + 1):
        dec.add_level(n, files.read(n, 0, m.levels[n].bytes))
    files.close()
    return {k: t.array for k, t in dec.tensors().items()}


async def test_each_level_decodes_to_safetensors_equal_to_a_whole_model_decode(
    node: FakeNode,
) -> None:
    (state,) = node.models.values()
    ctx = ApiContext(node)
    previous = None
    for level in range(state.manifest.levels_total):
        if level:
            node.receive(state, level)
        best, _ = await ctx.resolve_best("tiny", BestQuery())
        assert best.level == level and best.etag == f'"{state.model_id}.{level}"'
        data = best.path.read_bytes()
        assert len(data) == best.size
        loaded = safetensors.numpy.load(data)
        expect = whole_model_decode(node, state.model_id, level)
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
        assert best.headers()["Peerprog-Level"] == str(level)
        assert best.headers()["Peerprog-Bytes-Received"] == meta["peerprog.bytes_received"]
        if previous is not None:  # the older file is removed once a newer one is in place
            assert not previous.exists()
        previous = best.path
    assert node.decoded_builds() == state.manifest.levels_total
    assert best.exact and best.last
    original = sample_tensors()
    for k, t in original.items():
        assert np.array_equal(loaded[k].view(np.uint8), t.array.view(np.uint8))


async def test_concurrent_requests_share_one_build(node: FakeNode) -> None:
    (state,) = node.models.values()
    built = await asyncio.gather(*(node.decoded(state) for _ in range(20)))
    assert node.decoded_builds() == 1 and all(b is built[0] for b in built)
    assert await node.decoded(state) is built[0] and node.decoded_builds() == 1
    node.receive(state, 1)
    node.receive(state, 2)
    built = await asyncio.gather(*(node.decoded(state) for _ in range(20)))
    assert node.decoded_builds() == 2 and {b.level for b in built} == {2}


async def test_a_decoded_file_removed_from_the_store_is_built_again(node: FakeNode) -> None:
    (state,) = node.models.values()
    first = await node.decoded(state)
    data = first.path.read_bytes()
    shutil.rmtree(first.path.parent)  # an operator cleaning up derived data
    again = await node.decoded(state)
    assert again.path.read_bytes() == data and node.decoded_builds() == 2


async def test_a_cancelled_request_does_not_cancel_the_build(node: FakeNode) -> None:
    (state,) = node.models.values()
    first = asyncio.create_task(node.decoded(state))
    second = asyncio.create_task(node.decoded(state))
    await asyncio.sleep(0)
    first.cancel()
    built = await second
    assert built.level == 0 and node.decoded_builds() == 1


async def test_a_build_stopped_at_shutdown_is_no_failure(
    node: FakeNode, caplog: pytest.LogCaptureFixture
) -> None:
    """The model is dropped (or the node stops) while its level is being decoded: the build
    ends at its next tensor, nothing is logged as a failed task, and a request waiting for
    that build is told the model is gone (``KeyError``, as for any model no longer held)."""
    (state,) = node.models.values()
    decoder = node.decoders[state.model_id]
    building, stopped = threading.Event(), threading.Event()
    build_one = decoder._build_one

    def held_up(*args: Any) -> int:
        building.set()
        stopped.wait(10)
        return build_one(*args)

    decoder._build_one = held_up  # type: ignore[method-assign]
    waiting = asyncio.create_task(node.decoded(state))
    await asyncio.to_thread(building.wait, 10)
    decoder.stop()
    stopped.set()
    with caplog.at_level(logging.DEBUG, "peerprog"), pytest.raises(KeyError):
        await asyncio.wait_for(waiting, 10)
    await node.scope.aclose()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    assert decoder.built is None and node.decoded_builds() == 0


async def test_a_damaged_chunk_is_reported_not_decoded(node: FakeNode) -> None:
    (state,) = node.models.values()
    ctx = ApiContext(node)
    await ctx.resolve_best("tiny", BestQuery())
    files = node.store.open_files(state.signed)
    level, offset, _ = files.span(state.manifest.levels[1].chunks[0])
    files.close()
    path = node.store.level_path(state.model_id, level)
    data = bytearray(path.read_bytes())
    data[offset] ^= 0xFF
    path.write_bytes(bytes(data))
    node.receive(state, 1)
    with pytest.raises(ApiError, match="cannot decode") as e:
        await ctx.resolve_best("tiny", BestQuery(min_level=1))
    assert e.value.status == 503


# --- what best answers ---------------------------------------------------------------------


async def test_unknown_and_unresolved_names(node: FakeNode) -> None:
    ctx = ApiContext(node)
    with pytest.raises(UnknownModel):
        await ctx.resolve_best("nope", BestQuery(wait=5))
    node.want("later")
    with pytest.raises(LevelTimeout, match="no level"):
        await ctx.resolve_best("later", BestQuery(wait=0.05))


async def test_min_level_waits_for_the_level(node: FakeNode) -> None:
    (state,) = node.models.values()
    ctx = ApiContext(node)
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
    ctx = ApiContext(node)
    node.level_listeners.append(ctx.on_level)
    snap, _ = await ctx.resolve_best("tiny", BestQuery())
    same, not_modified = await ctx.resolve_best("tiny", BestQuery(), snap.etag)
    assert not_modified and same == snap
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
    ctx = ApiContext(node)
    node.level_listeners.append(ctx.on_level)
    new = node.add(signed2)
    snap, _ = await ctx.resolve_best("tiny", BestQuery())
    assert snap.model_id == old.model_id
    node.receive(new, 0)
    snap, _ = await ctx.resolve_best("tiny", BestQuery())
    assert snap.model_id == new.model_id


async def test_closing_ends_waits(node: FakeNode) -> None:
    ctx = ApiContext(node)
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
    # a client that saw "complete" of this version is owed nothing, ever
    seen = parse_event_id(f"{state.model_id}.complete")
    assert seen == (state.model_id, None)
    assert pending_events(state, seen) == []
    assert [e[0] for e in decode(pending_events(state, ("older-version", None)))] == [
        "level",
        "complete",
    ]
    assert parse_event_id(".complete") is None and parse_event_id("x.3x") is None
