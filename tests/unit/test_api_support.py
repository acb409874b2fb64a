"""Helpers for the API's unit tests: a published model in a store, and a fake node that
holds real :class:`~peerprog.node.state.ModelState`s and decodes them as a node does
(chunks are "received" by calling :meth:`FakeNode.receive`; they are all on disk)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from peerprog.codec import RawTensor
from peerprog.config import Config
from peerprog.manifest import SignedManifest
from peerprog.node.bittorrent import BitTorrentReport
from peerprog.node.channels import ChannelsReport
from peerprog.node.decoded import Built, DecodedLevels
from peerprog.node.diskguard import DiskGuard
from peerprog.node.state import ModelState
from peerprog.node.tasks import TaskScope
from peerprog.store import Store, publish_tensors
from peerprog.swarm import Bitfield
from peerprog.swarm.versions import served
from tests.unit.samples import KEY


def sample_tensors(seed: int = 0) -> dict[str, RawTensor]:
    rng = np.random.default_rng(seed)
    return {
        "w": RawTensor("float32", (rng.standard_normal((64, 48)) * 0.05).astype(np.float32)),
        "h": RawTensor("float16", rng.standard_normal(3001).astype(np.float16)),
        "b": RawTensor("float32", rng.standard_normal(7).astype(np.float32)),
        "step": RawTensor("int64", np.array([12345], dtype=np.int64)),
    }


def publish_sample(root: Path, name: str = "tiny", seed: int = 0) -> tuple[Store, SignedManifest]:
    """A model of a few levels published into a store at ``root``."""
    store = Store(root)
    result = publish_tensors(
        sample_tensors(seed), name=name, key=KEY, store=store, chunk_size=1024, quality=False
    )
    return store, result.signed


def node_with_sample(root: Path) -> FakeNode:
    """A fake node holding level 0 of the sample model, published into a store at ``root``."""
    store, signed = publish_sample(root)
    node = FakeNode(store)
    node.add(signed, levels=1)
    return node


class FakeNode:
    """Just what the API reads of a node; levels complete when the test says so."""

    def __init__(self, store: Store, want: tuple[str, ...] = ()) -> None:
        self.config = Config()
        self.models: dict[str, ModelState] = {}
        self.wanted: set[str] = set(want)
        self.peers: dict[str, Any] = {}
        self.store = store
        self.url = "http://127.0.0.1:1"
        self.started_at = 1_700_000_000.0
        self.bytes_uploaded = 0
        self.store_error: str | None = None
        self.reachable: bool | None = None
        self.channels = ChannelsReport(0, 0, 0, 0)
        self.bittorrent_report: BitTorrentReport | None = None
        self.level_listeners: list[Callable[[Any], None]] = []
        self.scope = TaskScope("fake node")
        self.decoders: dict[str, DecodedLevels] = {}

    def add(self, signed: SignedManifest, *, levels: int = 0) -> ModelState:
        """Take up ``signed`` holding its first ``levels`` levels."""
        state = ModelState(signed, Bitfield(len(signed.manifest.chunks)), origin=False)
        self.models[signed.model_id] = state
        files = self.store.open_files(signed)
        folder = self.store.decoded_dir(signed.model_id)
        disk = DiskGuard(1.0, lambda: 1 << 40)
        self.decoders[signed.model_id] = DecodedLevels(
            state, files, folder, self.scope, disk, ahead=False
        )
        for lv in signed.manifest.levels[:levels]:
            for i in lv.chunks:
                state.add_chunk(i)
        state.mark_durable(state.have)
        return state

    def receive(self, state: ModelState, level: int) -> None:
        """Complete ``level`` of ``state`` and tell the listeners, as the daemon does."""
        for i in state.manifest.levels[level].chunks:
            if state.add_chunk(i):
                state.mark_durable(state.have)  # recorded at once, as the catalog does
                for listener in list(self.level_listeners):
                    listener(state)

    def versions(self, name: str) -> list[ModelState]:
        found = [s for s in self.models.values() if s.manifest.name == name]
        return sorted(found, key=lambda s: s.manifest.version, reverse=True)

    def newest_served(self, name: str) -> ModelState | None:
        return served(self.versions(name))

    def want(self, name: str) -> None:
        self.wanted.add(name)

    async def decoded(self, state: ModelState, *, growing: bool = False) -> Built:
        return await self.decoders[state.model_id].get(growing=growing)

    def decoded_at(self, model_id: str, level: int) -> Built | None:
        decoder = self.decoders.get(model_id)
        return decoder.serving(level) if decoder is not None else None

    def decoded_builds(self) -> int:
        return sum(d.builds for d in self.decoders.values())

    def unwant(self, name: str) -> bool:
        if name not in self.wanted:
            return False
        self.wanted.discard(name)
        return True

    async def remove(self, name: str) -> list[str]:
        self.unwant(name)
        ids = [s.model_id for s in self.versions(name)]
        for mid in ids:
            del self.models[mid]
        return ids

    async def rescan(self) -> list[str]:
        return []

    def problem(self, name: str) -> str | None:
        return None
