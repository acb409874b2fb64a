"""The best approximation of each model, as a safetensors file built once per level.

One :class:`~peerprog.store.Assembler` per model id is advanced as levels complete (the
decode runs in a thread), and the decoded tensors are encoded once into a
:class:`Snapshot`: the safetensors header plus the arrays' own buffers. Every request for
that model and level is answered from the same snapshot, written to its socket in pieces,
so a client costs no copy of the model. Once the last level is decoded the assembler is
dropped; the snapshot alone remains.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from peerprog.api.view import ChunkSource, ModelView
from peerprog.codec import exact_at
from peerprog.formats import encode_safetensors
from peerprog.manifest import Manifest
from peerprog.store import Assembler

PIECE = 256 * 1024
"""Bytes handed to the socket at a time: what one slow client may hold buffered."""


@dataclass(frozen=True)
class Snapshot:
    """One model at one level, encoded as a safetensors file (a list of buffers)."""

    model_id: str
    name: str
    version: int
    codec: str
    level: int
    levels_total: int
    bytes_received: int
    """Bytes of the levels decoded (0..level), as published."""
    bytes_total: int
    buffers: tuple[memoryview, ...] = field(repr=False)
    size: int

    @property
    def etag(self) -> str:
        """The strong entity tag: one per model id and level."""
        return etag_of(self.model_id, self.level)

    @property
    def last(self) -> bool:
        """Whether this is the model's last level (nothing better will come)."""
        return self.level == self.levels_total - 1

    @property
    def exact(self) -> bool:
        """Bit for bit the published model (the ``paper`` codec never is)."""
        return exact_at(self.codec, self.level, self.levels_total)

    def headers(self) -> dict[str, str]:
        """The ``Peerprog-*`` headers of DESIGN.md, and ``ETag``."""
        return {
            "ETag": self.etag,
            "Peerprog-Model-Id": self.model_id,
            "Peerprog-Level": str(self.level),
            "Peerprog-Levels-Total": str(self.levels_total),
            "Peerprog-Bytes-Received": str(self.bytes_received),
            "Peerprog-Bytes-Total": str(self.bytes_total),
        }

    def pieces(self, size: int = PIECE) -> Iterator[memoryview]:
        """The file's bytes as views of at most ``size`` bytes, in order (no copies)."""
        for buf in self.buffers:
            for start in range(0, len(buf), size):
                yield buf[start : start + size]


def etag_of(model_id: str, level: int) -> str:
    """The ``ETag`` of a model id at a level."""
    return f'"{model_id}.{level}"'


def snapshot_metadata(
    manifest: Manifest, model_id: str, level: int, bytes_received: int
) -> dict[str, str]:
    """The ``__metadata__`` of a snapshot: the ``peerprog.*`` keys."""
    return {
        "peerprog.model_id": model_id,
        "peerprog.name": manifest.name,
        "peerprog.version": str(manifest.version),
        "peerprog.codec": manifest.codec,
        "peerprog.level": str(level),
        "peerprog.levels_total": str(manifest.levels_total),
        "peerprog.bytes_received": str(bytes_received),
        "peerprog.bytes_total": str(manifest.total_bytes),
        "peerprog.exact": "true"
        if exact_at(manifest.codec, level, manifest.levels_total)
        else "false",
    }


def build_snapshot(manifest: Manifest, model_id: str, assembler: Assembler) -> Snapshot:
    """Encode the assembler's current approximation (blocking: run it in a thread)."""
    level = assembler.level
    received = sum(lv.bytes for lv in manifest.levels[: level + 1])
    meta = snapshot_metadata(manifest, model_id, level, received)
    # At the last level nothing more will be decoded: take the decoder's arrays instead of
    # copying them, so the daemon never holds two copies of an exact model.
    last = level == manifest.levels_total - 1
    tensors = assembler.take_tensors() if last else assembler.tensors()
    buffers = tuple(memoryview(b) for b in encode_safetensors(tensors, meta))
    return Snapshot(
        model_id=model_id,
        name=manifest.name,
        version=manifest.version,
        codec=manifest.codec,
        level=level,
        levels_total=manifest.levels_total,
        bytes_received=received,
        bytes_total=manifest.total_bytes,
        buffers=buffers,
        size=sum(b.nbytes for b in buffers),
    )


class _Entry:
    """The assembler and latest snapshot of one model id."""

    def __init__(self, assembler: Assembler) -> None:
        self.assembler: Assembler | None = assembler
        self.snapshot: Snapshot | None = None
        self.building: asyncio.Future[Snapshot] | None = None


class SnapshotLagError(RuntimeError):
    """The assembler could not reach a level the node reported complete (chunks gone)."""


class BestCache:
    """Snapshots of the models apps ask for, decoded on demand and shared by requests."""

    def __init__(self, chunks: ChunkSource) -> None:
        self._chunks = chunks
        self._entries: dict[str, _Entry] = {}
        self.builds = 0
        """Snapshots built so far (one per model and level asked for)."""

    def __contains__(self, model_id: str) -> bool:
        return model_id in self._entries

    def current(self, model_id: str) -> Snapshot | None:
        """The latest snapshot built for ``model_id``, if any."""
        entry = self._entries.get(model_id)
        return entry.snapshot if entry else None

    async def get(self, state: ModelView) -> Snapshot:
        """A snapshot of ``state`` at the level it has now (at least 0).

        Requests arriving while a build runs share it; a build that a client stops
        waiting for still completes for the others.
        """
        want = state.best_level
        if want < 0:
            raise ValueError(f"model {state.model_id[:12]}… has no complete level")
        entry = self._entries.get(state.model_id)
        if entry is None:
            read = self._chunks.read_chunk
            mid = state.model_id
            # verify: a chunk damaged on disk since it was stored never reaches an app
            entry = _Entry(Assembler(state.manifest, lambda i: read(mid, i), verify=True))
            self._entries[state.model_id] = entry
        while entry.snapshot is None or entry.snapshot.level < want:
            if entry.building is None:
                entry.building = asyncio.ensure_future(self._build(entry, state, want))
                entry.building.add_done_callback(_consume)
            await asyncio.shield(entry.building)
        return entry.snapshot

    async def _build(self, entry: _Entry, state: ModelView, upto: int) -> Snapshot:
        try:
            assembler = entry.assembler
            if assembler is None:  # pragma: no cover - the last level was built already
                raise SnapshotLagError(f"model {state.model_id[:12]}… has no level {upto}")
            # Writers still sending the old snapshot hold their own reference to it;
            # dropping ours keeps the peak at the decoder's state plus one new copy.
            entry.snapshot = None
            snap = await asyncio.to_thread(
                _advance_and_build, state.manifest, state.model_id, assembler, upto
            )
            entry.snapshot = snap
            if snap.level < upto:
                raise SnapshotLagError(
                    f"model {state.model_id[:12]}…: level {upto} is reported complete but "
                    f"only level {snap.level} could be read from the store"
                )
            self.builds += 1
            if snap.last:
                entry.assembler = None
            return snap
        finally:
            entry.building = None

    def retain(self, keep: Callable[[str], bool]) -> None:
        """Forget the models for which ``keep(model_id)`` is false (when not building)."""
        for model_id, entry in list(self._entries.items()):
            if entry.building is None and not keep(model_id):
                del self._entries[model_id]


def _consume(future: asyncio.Future[Snapshot]) -> None:
    """Mark a build's error as seen: the requests that waited for it raised it already."""
    if not future.cancelled():
        future.exception()


def _advance_and_build(
    manifest: Manifest, model_id: str, assembler: Assembler, upto: int
) -> Snapshot:
    assembler.advance(upto)
    return build_snapshot(manifest, model_id, assembler)
