"""Publish a model: encode into levels, cut into chunks, sign the manifest, store it all.

Chunks are written first, then the manifest, then the name: a crash part-way leaves no
name pointing at an incomplete model.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from peerprog.codec import DEFAULT_CODEC, RawTensor, get_codec
from peerprog.codec.layout import ParamValue
from peerprog.errors import InputError
from peerprog.manifest import (
    DEFAULT_CHUNK_SIZE,
    Manifest,
    SignedManifest,
    chunk_data,
    cut_levels,
    seal,
    valid_name,
)
from peerprog.manifest.model import MAX_CHUNK_SIZE, MIN_CHUNK_SIZE
from peerprog.store.atomic import fsync_dir
from peerprog.store.disk import Store

Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class LevelSize:
    """A level's encoded size and the cumulative size up to it."""

    level: int
    bytes: int
    cumulative_bytes: int


@dataclass(frozen=True)
class PublishResult:
    """What :func:`publish_tensors` stored."""

    signed: SignedManifest
    source_bytes: int
    total_bytes: int
    levels: tuple[LevelSize, ...]

    def to_json(self) -> dict[str, object]:
        """The ``publish --json`` document of DESIGN.md."""
        m = self.signed.manifest
        return {
            "model_id": self.signed.model_id,
            "name": m.name,
            "version": m.version,
            "codec": m.codec,
            "source_bytes": self.source_bytes,
            "total_bytes": self.total_bytes,
            "levels": [
                {"level": s.level, "bytes": s.bytes, "cumulative_bytes": s.cumulative_bytes}
                for s in self.levels
            ],
        }


def next_version(store: Store, name: str) -> int:
    """One more than the version ``names/<name>`` points at (1 for a new name)."""
    current = store.resolve(name)
    if current is None or not store.has_manifest(current):
        return 1
    return store.load_manifest(current, None).manifest.version + 1


def publish_tensors(
    tensors: Mapping[str, RawTensor],
    *,
    name: str,
    key: Ed25519PrivateKey,
    store: Store,
    codec: str = DEFAULT_CODEC,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    params: Mapping[str, ParamValue] | None = None,
    metadata: Mapping[str, str] | None = None,
    quality: bool = True,
    progress: Progress | None = None,
) -> PublishResult:
    """Encode, chunk, sign and store ``tensors`` as the newest version of ``name``."""
    if not valid_name(name):
        raise InputError(f"{name!r} is not a valid model name (letters, digits, . _ -)")
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise InputError(f"chunk size must be between {MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE}")
    c = get_codec(codec)
    encoded = c.encode(tensors, params)
    level_quality: tuple[dict[str, int], ...] = encoded.level_quality
    if quality and not level_quality:
        from peerprog.codec.quality import level_errors

        level_quality = tuple(level_errors(tensors, encoded, c))
    levels, chunks = cut_levels(encoded.levels, chunk_size, level_quality)
    manifest = Manifest(
        name=name,
        version=next_version(store, name),
        codec=encoded.codec,
        codec_params=dict(encoded.params),
        chunk_size=chunk_size,
        tensors=encoded.tensors,
        levels=levels,
        chunks=chunks,
        source_bytes=sum(t.nbytes for t in tensors.values()),
        created=int(time.time()),
        metadata=dict(metadata or {}),
    )
    signed = seal(manifest, key)
    pieces = chunk_data(encoded.levels, chunk_size)
    store.make_model_dir(signed.model_id)
    for i, piece in enumerate(pieces):
        store.write_chunk(signed.model_id, i, piece)
        if progress:
            progress("store", i + 1, len(pieces))
    if pieces:  # the chunks' renames are durable before a manifest names them
        fsync_dir(store.model_dir(signed.model_id) / "chunks")
    store.put_manifest(signed)
    store.set_name(name, signed.model_id)
    sizes = []
    cum = 0
    for lv in levels:
        cum += lv.bytes
        sizes.append(LevelSize(lv.level, lv.bytes, cum))
    return PublishResult(signed, manifest.source_bytes, cum, tuple(sizes))


def publish_file(source: Path, **kwargs: object) -> PublishResult:
    """Read a model file (safetensors, .pt/.pth, .npz) and publish it."""
    from peerprog.formats import read_model

    tensors = read_model(Path(source))
    meta = {"source": Path(source).name}
    return publish_tensors(tensors, metadata=meta, **kwargs)  # type: ignore[arg-type]
