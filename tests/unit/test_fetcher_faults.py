"""The fetch loop against faults of its own side and of a source's, with a fake node and
client (no sockets): a full disk is not the peer's fault, and a source dropped after a bad
spell is asked again once it answers."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import functools
from pathlib import Path

import pytest

from peerprog.manifest import SignedManifest, chunk_data
from peerprog.node import fetcher as fetcher_module
from peerprog.node.config import Config, PeersSection
from peerprog.node.fetcher import Fetcher, Source
from peerprog.node.peerclient import TransportError
from peerprog.node.state import ModelState
from peerprog.store import Store
from peerprog.swarm import Bitfield, SchedulerConfig
from tests.unit.samples import KEY, make_manifest

PEER = Source("http://peer", "http://peer/p2p/v1", "peer")


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


class FakeNode:
    def __init__(self, client: FakeClient, store: FakeStore) -> None:
        self.config = dataclasses.replace(Config(), peers=PeersSection(have_poll_interval=0.01))
        self.client = client
        self.store = store
        self.url = "http://me"
        self.store_error: str | None = None

    def sources_for(self, state: ModelState) -> list[Source]:
        return [PEER]

    def on_chunk_stored(self, state: ModelState, index: int) -> None:
        state.add_chunk(index)


@pytest.fixture
def fast(monkeypatch: pytest.MonkeyPatch) -> None:
    """Backoffs, pauses and the revive delay in milliseconds."""
    config = functools.partial(
        SchedulerConfig, failure_backoff=0.001, failure_backoff_max=0.005, max_failures=3
    )
    monkeypatch.setattr(fetcher_module, "SchedulerConfig", config)
    monkeypatch.setattr(fetcher_module, "DISK_FULL_PAUSE", 0.005)
    monkeypatch.setattr(fetcher_module, "REVIVE_AFTER", 0.05)


def model(tmp_path: Path) -> tuple[SignedManifest, list[bytes]]:
    from peerprog.manifest import seal

    m, levels = make_manifest()
    Store(tmp_path)  # a real store is not needed; the manifest is
    return seal(m, KEY), chunk_data(levels, m.chunk_size)


async def fetch(node: FakeNode, signed: SignedManifest) -> tuple[ModelState, Fetcher]:
    state = ModelState(signed, Bitfield(len(signed.manifest.chunks)), origin=False)
    f = Fetcher(node, state)  # type: ignore[arg-type]
    await asyncio.wait_for(f.run(), 20)
    return state, f


async def test_a_full_disk_is_not_the_peers_fault(
    tmp_path: Path, fast: None, caplog: pytest.LogCaptureFixture
) -> None:
    fetcher_module.REVIVE_AFTER = 1e9  # (monkeypatched) a dropped peer would stay dropped
    signed, chunks = model(tmp_path)
    node = FakeNode(FakeClient(chunks), FakeStore(full=40))
    state, f = await fetch(node, signed)
    assert state.complete
    assert node.store.written == dict(enumerate(chunks))
    assert "No space left on device; pausing downloads" in caplog.text
    assert node.store_error is None  # cleared by the first write that worked
    stats = f.sched.peer_stats(PEER.key)  # never penalised: no failure, no drop
    assert stats.failures == 0 and not stats.dropped


async def test_a_source_dropped_after_a_bad_spell_is_asked_again(
    tmp_path: Path, fast: None
) -> None:
    signed, chunks = model(tmp_path)
    node = FakeNode(FakeClient(chunks, fail_chunks=30), FakeStore())
    state, _ = await fetch(node, signed)
    assert state.complete and node.client.requests > 30
