"""A level file sent while it is being built: :func:`build_level`'s progress, the node's
:class:`~peerprog.node.decoded.Growing` record, and ``best`` answers over HTTP that start
before the build ends (a real aiohttp server on loopback, a fake node that decodes as a
node does)."""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from aiohttp.test_utils import TestClient, TestServer

import peerprog.api.routes
import peerprog.node.decoded
from peerprog.api.context import ApiContext
from peerprog.api.query import BestQuery
from peerprog.api.routes import open_best
from peerprog.api.server import build_app
from peerprog.store import Unusable, build_level
from tests.unit.test_api_support import FakeNode, node_with_sample


@pytest.fixture
def node(tmp_path: Path) -> FakeNode:
    return node_with_sample(tmp_path / "store")


def test_build_level_reports_the_final_prefix_and_withholds_the_last_byte(
    node: FakeNode, tmp_path: Path
) -> None:
    (state,) = node.models.values()
    files = node.store.open_files(state.signed)
    seen: list[tuple[int, bytes]] = []

    def progress(tmp: Path, n: int, size: int) -> None:
        assert tmp.exists() and tmp.stat().st_size == size
        with open(tmp, "rb") as f:
            seen.append((n, f.read(n)))

    out = tmp_path / "0.safetensors"
    size = build_level(state.manifest, state.model_id, files, state.have, 0, out, progress=progress)
    files.close()
    final = out.read_bytes()
    ends = [n for n, _ in seen]
    assert ends == sorted(ends) and len(ends) == len(state.manifest.tensors) + 1
    assert ends[-1] == size - 1  # the last byte is final only once the build returns
    assert all(prefix == final[:n] for n, prefix in seen)


def hold_builds(
    monkeypatch: pytest.MonkeyPatch, gate: threading.Event, *, fail: bool = False
) -> threading.Event:
    """Make the node's builds stop after their first tensor until ``gate`` is set (then
    fail, with ``fail``); the event returned is set once a build is held."""
    held = threading.Event()
    real = build_level

    def build(*args: Any, progress: Callable[[Path, int, int], None], **kw: Any) -> int:
        calls = 0

        def slow(tmp: Path, n: int, size: int) -> None:
            nonlocal calls
            progress(tmp, n, size)
            calls += 1
            if calls == 2:
                held.set()
                gate.wait(10)
                if fail:
                    raise Unusable("a chunk was damaged under the build (test)")

        return real(*args, progress=slow, **kw)

    monkeypatch.setattr(peerprog.node.decoded, "build_level", build)
    return held


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    event = threading.Event()
    yield event
    event.set()  # never leave a worker thread waiting


async def test_a_request_gets_the_file_as_it_grows(
    node: FakeNode, monkeypatch: pytest.MonkeyPatch, gate: threading.Event
) -> None:
    held = hold_builds(monkeypatch, gate)
    (state,) = node.models.values()
    whole = asyncio.create_task(node.decoded(state))
    await asyncio.to_thread(held.wait, 10)
    growing = await node.decoded(state, growing=True)
    g = growing.growing
    assert g is not None and growing.level == 0 and not whole.done()
    assert 0 < g.ready < growing.size and g.ended is None
    fd = os.open(growing.path, os.O_RDONLY)  # the temporary file, renamed when whole
    try:
        gate.set()
        assert await asyncio.wait_for(g.until(growing.size), 10)
        built = await whole
        assert built.growing is None and built.path != growing.path
        assert os.pread(fd, growing.size + 1, 0) == built.path.read_bytes()
    finally:
        os.close(fd)
    assert not growing.path.exists() and node.decoded_builds() == 1


async def test_a_failed_build_ends_its_growing_file_short(
    node: FakeNode, monkeypatch: pytest.MonkeyPatch, gate: threading.Event
) -> None:
    held = hold_builds(monkeypatch, gate, fail=True)
    ctx = ApiContext(node)
    asked = asyncio.create_task(ctx.resolve_best("tiny", BestQuery(), growing=True))
    await asyncio.to_thread(held.wait, 10)
    best, _ = await asyncio.wait_for(asked, 10)
    assert best.growing is not None
    gate.set()
    assert not await asyncio.wait_for(best.growing.until(best.size), 10)
    assert not best.path.exists()  # the partial file is removed
    # without growing, the request waits for the whole file: the error, not a part
    with pytest.raises(Exception, match="damaged under the build"):
        await ctx.resolve_best("tiny", BestQuery())


async def served(node: FakeNode) -> TestClient[Any, Any]:
    return TestClient(TestServer(build_app(ApiContext(node)), host="127.0.0.1"))


async def test_best_over_http_starts_before_the_build_ends(
    node: FakeNode, monkeypatch: pytest.MonkeyPatch, gate: threading.Event
) -> None:
    held = hold_builds(monkeypatch, gate)
    monkeypatch.setattr(peerprog.api.routes, "GROWING_PIECE", 64)  # the sample is tiny
    (state,) = node.models.values()
    async with await served(node) as client:
        resp = await client.get("/v1/models/tiny/best")
        assert resp.status == 200  # the headers came while the build is under way
        await asyncio.to_thread(held.wait, 10)
        assert node.decoded_builds() == 0
        assert resp.headers["Peerprog-Level"] == "0"
        first = await resp.content.readexactly(8)
        gate.set()
        body = first + await resp.read()
        built = await node.decoded(state)
        assert body == built.path.read_bytes() and len(body) == resp.content_length
        again = await client.get("/v1/models/tiny/best")  # from the whole file now
        assert await again.read() == body


async def test_best_over_http_is_cut_short_when_the_build_fails(
    node: FakeNode, monkeypatch: pytest.MonkeyPatch, gate: threading.Event
) -> None:
    hold_builds(monkeypatch, gate, fail=True)
    async with await served(node) as client:
        resp = await client.get("/v1/models/tiny/best")
        assert resp.status == 200
        gate.set()
        with pytest.raises(aiohttp.ClientPayloadError):  # never a whole answer
            await resp.read()
        again = await client.get("/v1/models/tiny/best")
        assert again.status == 503 and "damaged under the build" in await again.text()


async def test_a_file_renamed_into_place_meanwhile_is_opened_there(
    node: FakeNode, monkeypatch: pytest.MonkeyPatch, gate: threading.Event
) -> None:
    held = hold_builds(monkeypatch, gate)
    (state,) = node.models.values()
    ctx = ApiContext(node)
    asked = asyncio.create_task(ctx.resolve_best("tiny", BestQuery(), growing=True))
    await asyncio.to_thread(held.wait, 10)
    best, _ = await asyncio.wait_for(asked, 10)
    gate.set()
    built = await node.decoded(state)  # whole: the temporary name is gone
    assert best.growing is not None and not best.path.exists()
    f = open_best(best)
    assert f is not None
    with f:
        assert f.read() == built.path.read_bytes()
    built.path.unlink()  # replaced by a newer level meanwhile: nothing to open
    assert open_best(best) is None
