"""Publish a repository: every tensor of every ``.safetensors`` file coded as one model (the
levels span the whole tree), every other file carried whole at the head of level 0.

A safetensors file's header (its 8-byte length and JSON, byte for byte) is carried whole too,
and its tensors follow in the order of their data, so each file is rebuilt at any level as
header + tensors, and at the last level byte for byte (:mod:`peerprog.manifest.tree`). The
files' SHA-256 are taken as the bytes go by: a coded file's bytes are its header and its
tensors' data in order, which the encoder reads anyway.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from peerprog.codec.base import RawTensor
from peerprog.codec.layout import Segment
from peerprog.errors import InputError
from peerprog.manifest.tree import SAFETENSORS, WHOLE, RepoFile
from peerprog.store.publish import PublishResult, publish_model
from peerprog.store.scan import RepoReader, RepoScan, scan_repo

BLOCK = 4 << 20
"""Bytes read at a time from a file carried whole."""


class _Tree:
    """The :class:`~peerprog.store.publish.TreeSource` of a scanned repository."""

    def __init__(self, reader: RepoReader) -> None:
        self._reader = reader
        self._segments: dict[str, Segment] = {}
        self._hashes: dict[str, Any] = {}
        self._whole_sha: dict[str, bytes] = {}
        self._owner: dict[str, str] = {}
        self._ranges: dict[str, tuple[int, int]] = {}
        first = 0
        for f, shard in reader.shards:
            n = len(shard.data_order)
            self._ranges[f.path] = (first, n)
            first += n

    def write_blobs(self, append: Callable[[memoryview], None]) -> None:
        offset = 0
        shards = {f.path: r for f, r in self._reader.shards}
        for f in self._reader.scan.files:
            if f.coded:
                header = shards[f.path].header
                append(memoryview(header))
                self._segments[f.path] = Segment(offset, len(header))
                self._hashes[f.path] = hashlib.sha256(header)
                offset += len(header)
                continue
            sha = hashlib.sha256()
            got = 0
            try:
                with open(f.source, "rb") as src:
                    while block := src.read(BLOCK):
                        sha.update(block)
                        append(memoryview(block))
                        got += len(block)
            except OSError as e:
                raise InputError(f"{f.source}: {e.strerror or e}") from None
            if got != f.size:
                raise InputError(f"{self._reader.scan.root / f.path}: changed while it was read")
            self._segments[f.path] = Segment(offset, got)
            self._whole_sha[f.path] = sha.digest()
            offset += got

    def tensor_read(self, name: str, tensor: RawTensor) -> None:
        path = name[: name.rindex("/", 0, len(name))]  # quick guess; checked below
        sha = self._hashes.get(path)
        if sha is None:  # the tensor's own name holds a "/": find its file by prefix
            path = next(p for p in self._hashes if name.startswith(p + "/"))
            sha = self._hashes[path]
        arr = tensor.array
        if arr.size:
            sha.update(arr.reshape(-1).view("u1").data)

    def files(self) -> tuple[RepoFile, ...]:
        out = []
        for f in self._reader.scan.files:
            seg = self._segments[f.path]
            if f.coded:
                first, count = self._ranges[f.path]
                digest = self._hashes[f.path].digest()
                out.append(RepoFile(f.path, SAFETENSORS, f.size, digest, seg, first, count))
            else:
                out.append(RepoFile(f.path, WHOLE, f.size, self._whole_sha[f.path], seg))
        return tuple(out)


def publish_repo(
    root: Path,
    *,
    include: Sequence[str] = (),
    exclude: Sequence[str] = (),
    scan: RepoScan | None = None,
    **kwargs: Any,
) -> PublishResult:
    """Publish the folder ``root`` as one model (keyword arguments as for
    :func:`~peerprog.store.publish.publish_model`); ``scan``: its :func:`scan_repo`, if the
    caller has it already."""
    scan = scan if scan is not None else scan_repo(Path(root), include, exclude)
    if not scan.coded:
        raise InputError(
            f"{scan.root}: holds no .safetensors file, so there is nothing to send "
            "progressively (publish a .safetensors, .pt or .npz file on its own instead)"
        )
    reader = RepoReader(scan)
    with reader:
        return publish_model(
            reader,
            metadata={"peerprog.source": Path(root).resolve().name},
            tree=_Tree(reader),
            **kwargs,
        )
