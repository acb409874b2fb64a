"""What tests read and damage in a node's store (layout 2), through the store's own API."""

from __future__ import annotations

import hashlib
from pathlib import Path

from peerprog.manifest import SignedManifest
from peerprog.store import Store
from peerprog.store.disk import MANIFEST
from peerprog.store.levels import LEVELS, chunk_offsets


def signed_of(data_dir: Path, model_id: str) -> SignedManifest:
    return Store(data_dir, create=False).load_manifest(model_id, None)


def held(data_dir: Path, model_id: str) -> set[int]:
    """The chunks a stopped node's store records as verified."""
    store = Store(data_dir, create=False)
    return set(store.held(store.load_manifest(model_id, None)).indices())


def on_disk(data_dir: Path, model_id: str) -> set[int]:
    """The chunks whose bytes in a stopped node's level files match the manifest, recorded
    or not (written before a kill): what the node holds when it starts again (none before
    its manifest is stored)."""
    if not (data_dir / "models" / model_id / MANIFEST).is_file():
        return set()
    m = signed_of(data_dir, model_id).manifest
    folder = data_dir / "models" / model_id / LEVELS
    out = set()
    for i, (level, offset) in enumerate(chunk_offsets(m)):
        try:
            with open(folder / str(level), "rb") as f:
                f.seek(offset)
                data = f.read(m.chunks[i].length)
        except FileNotFoundError:
            continue
        if hashlib.sha256(data).digest() == m.chunks[i].sha256:
            out.add(i)
    return out


def chunk_bytes(data_dir: Path, model_id: str, index: int) -> bytes:
    store = Store(data_dir, create=False)
    with store.open_files(store.load_manifest(model_id, None)) as files:
        return files.read_chunk(index)


def chunk_length(data_dir: Path, model_id: str, index: int) -> int:
    return signed_of(data_dir, model_id).manifest.chunks[index].length


def damage_chunk(data_dir: Path, model_id: str, index: int, at: int = 7, mask: int = 1) -> None:
    """Flip bits of one byte of a stored chunk, in place in its level file."""
    store = Store(data_dir, create=False)
    with store.open_files(store.load_manifest(model_id, None)) as files:
        level, offset, _ = files.span(index)
    path = store.level_path(model_id, level)
    data = bytearray(path.read_bytes())
    length = signed_of(data_dir, model_id).manifest.chunks[index].length
    data[offset + at % length] ^= mask
    path.write_bytes(bytes(data))


def chunk_range(data_dir: Path, model_id: str, index: int) -> tuple[str, dict[str, str]]:
    """The peer-protocol path and headers that ask for one chunk."""
    store = Store(data_dir, create=False)
    with store.open_files(store.load_manifest(model_id, None)) as files:
        level, offset, length = files.span(index)
    headers = {"Range": f"bytes={offset}-{offset + length - 1}"}
    return f"/models/{model_id}/levels/{level}", headers
