"""The fetch loop against faults of its own side and of a source's, with a fake client and
store (no sockets): a full disk is not the peer's fault, a source lost after a bad spell is
asked again once it answers, and a cancelled fetch leaves no write behind."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import threading
import time
from collections.abc import AsyncIterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

from peerprog.manifest import Manifest, SignedManifest, chunk_data
from peerprog.node.diskguard import DiskGuard
from peerprog.node.fetcher import Fetcher, FetchSettings
from peerprog.node.peerclient import Refused, TransportError
from peerprog.node.state import ModelState
from peerprog.store.levels import chunk_offsets
from peerprog.swarm import Bitfield, PeerTable, PeerTableConfig, SchedulerConfig
from peerprog.swarm.driver import DriverConfig
from tests.unit.samples import KEY, make_manifest

PEER = "http://peer"
WORKERS = ThreadPoolExecutor(2)


class FakeBody:
    def __init__(self, data: bytes, start: int) -> None:
        self.data, self.start, self.length, self.whole = data, start, len(data), False

    async def pieces(self) -> AsyncIterator[bytes]:
        for k in range(0, len(self.data), 700):  # pieces that straddle chunk boundaries
            await asyncio.sleep(0)
            yield self.data[k : k + 700]


class FakeClient:
    """Serves every level of a model, failing the first ``fail_chunks`` requests."""

    def __init__(self, levels: list[bytes], fail_chunks: int = 0) -> None:
        self.levels = levels
        self.fail_chunks = fail_chunks
        self.requests = 0

    async def get_have(self, root: str, model_id: str, count: int) -> Bitfield:
        return Bitfield.full(count)

    async def get_have_since(
        self, root: str, model_id: str, count: int, since: tuple[str, int], wait: float
    ) -> Any:
        raise Refused("an older peer: no have stream")  # the fetcher polls get_have

    async def get_manifest(self, root: str, model_id: str) -> bytes:
        raise AssertionError("not a web seed")

    @contextlib.asynccontextmanager
    async def get_range(
        self,
        root: str,
        model_id: str,
        level: int,
        start: int,
        stop: int,
        level_size: int,
        timeout: float,
    ) -> AsyncIterator[FakeBody]:
        self.requests += 1
        await asyncio.sleep(0)
        if self.fail_chunks > 0:
            self.fail_chunks -= 1
            raise TransportError("connection reset")
        yield FakeBody(self.levels[level][start:stop], start)


class FakeStore:
    """Refuses the first ``full`` writes with ENOSPC."""

    def __init__(self, manifest: Manifest, full: int = 0) -> None:
        self.spans = chunk_offsets(manifest)
        self.manifest = manifest
        self.full = full
        self.written: dict[int, bytes] = {}

    def span(self, index: int) -> tuple[int, int, int]:
        level, offset = self.spans[index]
        return level, offset, self.manifest.chunks[index].length

    def write_chunk(self, index: int, data: Sequence[Any]) -> None:
        if self.full > 0:
            self.full -= 1
            raise OSError(errno.ENOSPC, "No space left on device")
        self.written[index] = b"".join(bytes(p) for p in data)

    def write_chunks(self, chunks: Sequence[tuple[int, Sequence[Any]]]) -> None:
        for index, data in chunks:
            self.write_chunk(index, data)


def fetcher(
    state: ModelState,
    client: FakeClient,
    store: FakeStore,
    *,
    revive_after: float,
    absent_recheck: float = 5.0,
) -> tuple[Fetcher, DiskGuard, PeerTable]:
    """A fetcher from one peer, with backoffs, pauses and the revive delay in ms."""
    table = PeerTable(
        PeerTableConfig(fetch_failures=3, revive_after=revive_after, absent_recheck=absent_recheck),
        bootstrap=[PEER],
        prefix="/p2p/v1",
    )
    disk = DiskGuard(0.005, lambda: 1 << 40)
    f = Fetcher(
        state,
        transport=client,
        sink=store,
        sources=table,
        disk=disk,
        on_stored=lambda s, i: s.add_chunk(i) and None,
        settings=FetchSettings(
            driver=DriverConfig(
                scheduler=SchedulerConfig(failure_backoff=0.001, failure_backoff_max=0.005),
                have_poll_interval=0.01,
            ),
            request_timeout=5.0,
            seed=1,
        ),
        workers=WORKERS,
    )
    return f, disk, table


def model() -> tuple[SignedManifest, list[bytes], list[bytes]]:
    """A signed manifest, its levels' bytes and its chunks' bytes."""
    from peerprog.manifest import seal

    m, levels = make_manifest()
    return seal(m, KEY), levels, [bytes(c) for c in chunk_data(levels, m.chunk_size)]


async def fetch(
    signed: SignedManifest, client: FakeClient, store: FakeStore, *, revive_after: float
) -> tuple[ModelState, Fetcher, DiskGuard]:
    state = ModelState(signed, Bitfield(len(signed.manifest.chunks)), origin=False)
    f, disk, _ = fetcher(state, client, store, revive_after=revive_after)
    await asyncio.wait_for(f.run(), 20)
    return state, f, disk


async def test_a_full_disk_is_not_the_peers_fault(caplog: pytest.LogCaptureFixture) -> None:
    signed, levels, chunks = model()
    store = FakeStore(signed.manifest, full=40)
    # were the failures held against the peer, it would be lost for good
    state, f, disk = await fetch(signed, FakeClient(levels), store, revive_after=1e9)
    assert state.complete
    assert store.written == dict(enumerate(chunks))
    assert "No space left on device; pausing downloads" in caplog.text
    assert disk.error is None  # cleared by a write that worked
    assert f.driver.sched.peer_stats(PEER).failures == 0  # never penalised


async def test_a_source_lost_after_a_bad_spell_is_asked_again() -> None:
    signed, levels, _ = model()
    client = FakeClient(levels, fail_chunks=30)
    state, _, _ = await fetch(signed, client, FakeStore(signed.manifest), revive_after=0.05)
    assert state.complete and client.requests > 30


async def test_a_write_under_way_when_the_fetch_is_cancelled_is_awaited() -> None:
    """Cancelling a fetch (its model dropped) waits for the write in progress: nothing
    lands on disk after the fetch has ended."""
    signed, levels, _ = model()

    class SlowStore(FakeStore):
        def write_chunk(self, index: int, data: Sequence[Any]) -> None:
            started.set()
            time.sleep(0.3)
            super().write_chunk(index, data)

    started = threading.Event()
    store = SlowStore(signed.manifest)
    state = ModelState(signed, Bitfield(len(signed.manifest.chunks)), origin=False)
    f, _, _ = fetcher(state, FakeClient(levels), store, revive_after=1.0)
    task = asyncio.create_task(f.run())
    await asyncio.to_thread(started.wait, 10)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    written = dict(store.written)
    await asyncio.sleep(0.5)
    assert store.written == written and written


async def test_a_chunk_that_fails_its_hash_bans_its_sender_and_is_not_written() -> None:
    signed, levels, chunks = model()
    bad = [bytearray(lv) for lv in levels]
    bad[1][10] ^= 1
    store = FakeStore(signed.manifest)
    state = ModelState(signed, Bitfield(len(signed.manifest.chunks)), origin=False)
    f, _, table = fetcher(state, FakeClient([bytes(b) for b in bad]), store, revive_after=1.0)
    task = asyncio.create_task(f.run())
    for _ in range(200):
        await asyncio.sleep(0.01)
        if table.is_banned(PEER):
            break
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    assert table.is_banned(PEER) and PEER in state.metrics.peers_banned
    first_of_level1 = signed.manifest.levels[1].first_chunk
    assert first_of_level1 not in store.written
    assert all(store.written[i] == chunks[i] for i in store.written)


async def test_chunks_that_complete_while_a_batch_is_written_land_together() -> None:
    """Group commit: while one batch of a body's chunks is verified and written, the chunks
    completing meanwhile queue up and land in the next batch (one worker job, one write)."""
    from peerprog.manifest import seal

    m, levels = make_manifest(chunk_size=128)
    signed = seal(m, KEY)
    chunks = [bytes(c) for c in chunk_data(levels, m.chunk_size)]

    batches: list[int] = []

    class SlowStore(FakeStore):
        def write_chunks(self, chunks: Sequence[tuple[int, Sequence[Any]]]) -> None:
            batches.append(len(chunks))
            time.sleep(0.02)
            super().write_chunks(chunks)

    store = SlowStore(signed.manifest)
    state, _, _ = await fetch(signed, FakeClient(levels), store, revive_after=1.0)
    assert state.complete and store.written == dict(enumerate(chunks))
    assert sum(batches) == len(chunks)
    assert max(batches) > 1 and len(batches) < len(chunks)


async def test_a_peer_without_the_model_yet_is_absent_not_an_older_peer() -> None:
    """A 404 on ``have?since=`` (the peer has not taken the model up yet) makes it absent
    until asked again; its have stream is then long-polled, never its plain ``have``
    (which a 400, an older peer, would mean)."""
    from peerprog.node.peerclient import NotFound
    from peerprog.swarm.havelog import HaveDelta

    signed, levels, _ = model()
    n = len(signed.manifest.chunks)

    class LateClient(FakeClient):
        plain = 0
        missing = 2

        async def get_have(self, root: str, model_id: str, count: int) -> Bitfield:
            self.plain += 1
            return await super().get_have(root, model_id, count)

        async def get_have_since(
            self, root: str, model_id: str, count: int, since: tuple[str, int], wait: float
        ) -> Any:
            if self.missing:
                self.missing -= 1
                raise NotFound("404")
            if since != ("", 0):
                await asyncio.sleep(wait)
                return HaveDelta("ep", n)
            return HaveDelta("ep", n, full=Bitfield.full(n))

    client = LateClient(levels)
    state = ModelState(signed, Bitfield(n), origin=False)
    f, _, _ = fetcher(
        state, client, FakeStore(signed.manifest), revive_after=1.0, absent_recheck=0.02
    )
    await asyncio.wait_for(f.run(), 20)
    assert state.complete
    assert client.missing == 0 and client.plain == 0
