"""The fetch loop against faults of its own side and of a source's, with a fake client and
store (no sockets): a full disk is not the peer's fault, a source lost after a bad spell is
asked again once it answers, and a cancelled fetch leaves no write behind."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import threading
import time

import pytest

from peerprog.manifest import SignedManifest, chunk_data
from peerprog.node.diskguard import DiskGuard
from peerprog.node.fetcher import Fetcher, FetchSettings
from peerprog.node.peerclient import TransportError
from peerprog.node.state import ModelState
from peerprog.swarm import Bitfield, PeerTable, PeerTableConfig, SchedulerConfig
from tests.unit.samples import KEY, make_manifest

PEER = "http://peer"


class FakeClient:
    """Serves every chunk of a model, failing the first ``fail_chunks`` requests."""

    def __init__(self, chunks: list[bytes], fail_chunks: int = 0) -> None:
        self.chunks = chunks
        self.fail_chunks = fail_chunks
        self.requests = 0

    async def get_have(self, root: str, model_id: str, count: int) -> Bitfield:
        return Bitfield.full(count)

    async def get_chunk(
        self, root: str, model_id: str, index: int, length: int, timeout: float
    ) -> bytes:
        self.requests += 1
        await asyncio.sleep(0)
        if self.fail_chunks > 0:
            self.fail_chunks -= 1
            raise TransportError("connection reset")
        return self.chunks[index]


class FakeStore:
    """Refuses the first ``full`` writes with ENOSPC."""

    def __init__(self, full: int = 0) -> None:
        self.full = full
        self.written: dict[int, bytes] = {}

    def write_chunk(self, model_id: str, index: int, data: bytes) -> None:
        if self.full > 0:
            self.full -= 1
            raise OSError(errno.ENOSPC, "No space left on device")
        self.written[index] = data


def fetcher(
    state: ModelState, client: FakeClient, store: FakeStore, *, revive_after: float
) -> tuple[Fetcher, DiskGuard, PeerTable]:
    """A fetcher from one peer, with backoffs, pauses and the revive delay in ms."""
    table = PeerTable(
        PeerTableConfig(fetch_failures=3, revive_after=revive_after),
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
            scheduler=SchedulerConfig(failure_backoff=0.001, failure_backoff_max=0.005),
            have_poll_interval=0.01,
            request_timeout=5.0,
            seed=1,
        ),
    )
    return f, disk, table


def model() -> tuple[SignedManifest, list[bytes]]:
    from peerprog.manifest import seal

    m, levels = make_manifest()
    return seal(m, KEY), chunk_data(levels, m.chunk_size)


async def fetch(
    signed: SignedManifest, client: FakeClient, store: FakeStore, *, revive_after: float
) -> tuple[ModelState, Fetcher, DiskGuard]:
    state = ModelState(signed, Bitfield(len(signed.manifest.chunks)), origin=False)
    f, disk, _ = fetcher(state, client, store, revive_after=revive_after)
    await asyncio.wait_for(f.run(), 20)
    return state, f, disk


async def test_a_full_disk_is_not_the_peers_fault(caplog: pytest.LogCaptureFixture) -> None:
    signed, chunks = model()
    store = FakeStore(full=40)
    # were the failures held against the peer, it would be lost for good
    state, f, disk = await fetch(signed, FakeClient(chunks), store, revive_after=1e9)
    assert state.complete
    assert store.written == dict(enumerate(chunks))
    assert "No space left on device; pausing downloads" in caplog.text
    assert disk.error is None  # cleared by a write that worked
    assert f.sched.peer_stats(PEER).failures == 0  # never penalised


async def test_a_source_lost_after_a_bad_spell_is_asked_again() -> None:
    signed, chunks = model()
    client = FakeClient(chunks, fail_chunks=30)
    state, _, _ = await fetch(signed, client, FakeStore(), revive_after=0.05)
    assert state.complete and client.requests > 30


async def test_a_write_under_way_when_the_fetch_is_cancelled_is_awaited() -> None:
    """Cancelling a fetch (its model dropped) waits for the write in progress: nothing
    lands on disk after the fetch has ended."""
    signed, chunks = model()

    class SlowStore(FakeStore):
        def write_chunk(self, model_id: str, index: int, data: bytes) -> None:
            started.set()
            time.sleep(0.3)
            super().write_chunk(model_id, index, data)

    started = threading.Event()
    store = SlowStore()
    state = ModelState(signed, Bitfield(len(signed.manifest.chunks)), origin=False)
    f, _, _ = fetcher(state, FakeClient(chunks), store, revive_after=1.0)
    task = asyncio.create_task(f.run())
    await asyncio.to_thread(started.wait, 10)
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
    written = dict(store.written)
    await asyncio.sleep(0.5)
    assert store.written == written and written
