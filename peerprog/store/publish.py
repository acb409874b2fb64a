"""Publish a model: encode it tensor by tensor into level files, hash the chunks as the
bytes go by, sign the manifest, and move the model into the store whole.

Memory: a tensor is read (a view of the memory-mapped file), encoded, its pieces appended
to the level files and hashed, then its pages are released — one tensor or two (encoding
runs on two threads) in memory whatever the model's size. Crash safety: everything is
written into a locked staging folder, made durable, and renamed into ``models/<id>``; the
name is set last, so a crash part-way leaves no name pointing at an incomplete model, and
the staging folder is removed the next time the store is opened.
"""

from __future__ import annotations

import hashlib
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from peerprog.codec import DEFAULT_CODEC, Codec, EncodedTensor, RawTensor, get_codec
from peerprog.codec.dtypes import DTYPES
from peerprog.codec.layout import ParamValue, Segment, TensorLayout
from peerprog.codec.quality import QualityMeter
from peerprog.codec.sensitivity import Array
from peerprog.codec.sensitivity import check as check_sensitivity
from peerprog.errors import InputError
from peerprog.formats import ModelReader, open_model
from peerprog.manifest import Chunk, Level, Manifest, SignedManifest, seal, valid_name
from peerprog.manifest.canonical import pack
from peerprog.manifest.chunking import chunk_size_for
from peerprog.manifest.model import MAX_CHUNK_SIZE, MIN_CHUNK_SIZE
from peerprog.manifest.torrent import FileHasher, Torrent, build_torrent, piece_length_ok
from peerprog.manifest.tree import RepoFile
from peerprog.store.atomic import fsync_dir, write_atomic
from peerprog.store.disk import MANIFEST, PUBLISHED, TORRENT, Store
from peerprog.store.levels import LEVELS, RECORD_VERSION
from peerprog.swarm import Bitfield

Progress = Callable[[str, int, int], None]
"""``progress(stage, done, total)``: ``("encode", bytes done, source bytes)``."""

ENCODE_THREADS = 2
WRITE_BUFFER = 1 << 20
INLINE_BYTES = 1 << 13
"""Tensors smaller than this are encoded in the calling thread (a pool's hand-off cost
more than their encoding: measured inline faster at 4 KB, pooled at 10 KB)."""


class TreeSource(Protocol):
    """A repository's files around the tensors (:mod:`peerprog.store.publish_tree`)."""

    def write_blobs(self, append: Callable[[memoryview], None]) -> None:
        """Append every file's level-0 bytes (whole files, safetensors headers) in order."""

    def tensor_read(self, name: str, tensor: RawTensor) -> None:
        """The tensor ``name`` went by, in stream order (its file's hash takes it in)."""

    def files(self) -> tuple[RepoFile, ...]:
        """The manifest's file entries, once everything went by."""


@dataclass(frozen=True)
class LevelSize:
    """A level's encoded size and the cumulative size up to it."""

    level: int
    bytes: int
    cumulative_bytes: int


@dataclass(frozen=True)
class PublishResult:
    """What a publish stored."""

    signed: SignedManifest
    source_bytes: int
    total_bytes: int
    levels: tuple[LevelSize, ...]
    torrent: Torrent | None = None
    """Its BitTorrent v2 torrent (None if the chunk size is not a piece length)."""

    def to_json(self) -> dict[str, object]:
        """The ``publish --json`` document (with ``files`` for a repository)."""
        m = self.signed.manifest
        files = [{"path": f.path, "size": f.size, "coded": f.coded} for f in m.files]
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
            **({"files": files} if files else {}),  # a repository's
            **({"torrent": torrent_json(self.torrent)} if self.torrent is not None else {}),
        }


def torrent_json(torrent: Torrent) -> dict[str, object]:
    """A torrent's ``info_hash`` (v2, hex), ``magnet`` and ``web_seeds``."""
    return {
        "info_hash": torrent.info_hash.hex(),
        "magnet": torrent.magnet(),
        "web_seeds": list(torrent.web_seeds),
    }


def next_version(store: Store, name: str) -> int:
    """One more than the version ``names/<name>`` points at (1 for a new name)."""
    current = store.resolve(name)
    if current is None or not store.has_manifest(current):
        return 1
    return store.load_manifest(current, None).manifest.version + 1


class _LevelWriter:
    """Appends one level's bytes to its file and hashes them chunk by chunk (and as a
    BitTorrent v2 file)."""

    def __init__(self, path: Path, chunk_size: int, *, padded: bool) -> None:
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        self._chunk_size = chunk_size
        ok = piece_length_ok(chunk_size)
        self.tree = FileHasher(chunk_size, padded=padded) if ok else None
        """The level file's BitTorrent v2 hashes (if the chunk size is a piece length)."""
        self._hash = hashlib.sha256()
        self._fill = 0
        self._buffer = bytearray()
        self.size = 0
        self.chunks: list[Chunk] = []

    def append(self, pieces: list[Any]) -> None:
        for piece in pieces:
            view = memoryview(piece).cast("B")
            if self.tree is not None:
                self.tree.update(view)
            pos = 0
            while pos < len(view):
                take = min(len(view) - pos, self._chunk_size - self._fill)
                self._hash.update(view[pos : pos + take])
                self._fill += take
                pos += take
                if self._fill == self._chunk_size:
                    self._cut()
            if len(view) < WRITE_BUFFER:  # small pieces (many small tensors) go together
                self._buffer += view
                if len(self._buffer) >= WRITE_BUFFER:
                    self._flush()
            else:
                self._flush()
                self._write(view)
            self.size += len(view)

    def _write(self, view: memoryview) -> None:
        done = 0
        while done < len(view):
            done += os.write(self._fd, view[done:])

    def _flush(self) -> None:
        with memoryview(self._buffer) as view:
            self._write(view)
        self._buffer.clear()

    def _cut(self) -> None:
        self.chunks.append(Chunk(self._fill, self._hash.digest()))
        self._hash = hashlib.sha256()
        self._fill = 0

    def finish(self) -> None:
        if self._fill:
            self._cut()
        self._flush()
        os.fsync(self._fd)
        os.close(self._fd)


def publish_file(
    source: Path,
    *,
    name: str,
    key: Ed25519PrivateKey,
    store: Store,
    codec: str = DEFAULT_CODEC,
    chunk_size: int | None = None,
    params: Mapping[str, ParamValue] | None = None,
    quality: bool = True,
    progress: Progress | None = None,
    sensitivity: Mapping[str, Array] | None = None,
    web_seeds: Sequence[str] = (),
) -> PublishResult:
    """Publish a model file (safetensors, .pt/.pth, .npz), streaming it tensor by tensor
    (arguments as for :func:`publish_model`)."""
    with open_model(Path(source)) as reader:
        return publish_model(
            reader,
            metadata={"peerprog.source": Path(source).name},
            name=name,
            key=key,
            store=store,
            codec=codec,
            chunk_size=chunk_size,
            params=params,
            quality=quality,
            progress=progress,
            sensitivity=sensitivity,
            web_seeds=web_seeds,
        )


def publish_tensors(tensors: Mapping[str, RawTensor], **kwargs: Any) -> PublishResult:
    """Publish tensors held in memory (small models, tests)."""
    return publish_model(_Tensors(tensors), **kwargs)


def publish_model(
    reader: ModelReader,
    *,
    name: str,
    key: Ed25519PrivateKey,
    store: Store,
    codec: str = DEFAULT_CODEC,
    chunk_size: int | None = None,
    params: Mapping[str, ParamValue] | None = None,
    metadata: Mapping[str, str] | None = None,
    quality: bool = True,
    progress: Progress | None = None,
    tree: TreeSource | None = None,
    sensitivity: Mapping[str, Array] | None = None,
    web_seeds: Sequence[str] = (),
) -> PublishResult:
    """Encode, chunk, sign and store the tensors of ``reader`` as the newest version of
    ``name``. The manifest's metadata is the source file's own (less ``peerprog.*`` keys)
    with ``metadata`` over it. With ``tree`` (a repository), its files' level-0 bytes lead
    level 0 and its file entries go into the manifest. ``sensitivity`` (tensor name →
    weights, :mod:`peerprog.codec.sensitivity`) steers the codec's rate allocation;
    InputError if it does not fit the model. Where the chunk size is a BitTorrent v2 piece
    length (a power of two, as the automatic sizes are), the model's torrent is written
    beside its manifest, its info-hash signed by ``key``, with ``web_seeds`` as its
    ``url-list``; ``web_seeds`` with any other chunk size is an InputError."""
    if not valid_name(name):
        raise InputError(f"{name!r} is not a valid model name (letters, digits, . _ -)")
    infos = reader.infos()
    source_bytes = sum(i.nbytes for i in infos)
    if chunk_size is None:
        chunk_size = chunk_size_for(source_bytes)
    if not MIN_CHUNK_SIZE <= chunk_size <= MAX_CHUNK_SIZE:
        raise InputError(f"chunk size must be between {MIN_CHUNK_SIZE} and {MAX_CHUNK_SIZE}")
    if web_seeds and not piece_length_ok(chunk_size):
        raise InputError(
            f"--web-seed needs a torrent, and chunk size {chunk_size} is not a BitTorrent v2 "
            "piece length (a power of two from 16384)"
        )
    for url in web_seeds:
        if not url.startswith(("http://", "https://")):
            raise InputError(f"web seed {url[:80]!r} is not an http:// or https:// URL")
    c = get_codec(codec)
    merged = c.check_params(params)
    plans: dict[str, dict[str, ParamValue]] = {}
    checked = None
    if sensitivity is not None:
        checked = check_sensitivity(sensitivity, {i.name: i.shape for i in infos})
    planner = c.planner(merged, checked)
    if planner is not None:  # a first, cheap pass: the codec allocates its rate
        for tname, tensor in reader.tensors():
            planner.add(tname, tensor)
            if progress:
                progress("plan", 0, source_bytes)
        merged, plans = planner.finish()
    nlevels = c.levels(merged)
    meta = {k: v for k, v in reader.metadata.items() if not k.startswith("peerprog.")}
    meta.update(metadata or {})
    version = next_version(store, name)
    floats = sum(i.nbytes // DTYPES[i.dtype].itemsize for i in infos if DTYPES[i.dtype].is_float)
    meter = QualityMeter(nlevels, total=floats) if quality else None
    with store.staging() as staged:
        (staged / LEVELS).mkdir()
        writers = [
            _LevelWriter(staged / LEVELS / str(n), chunk_size, padded=nlevels > 1)
            for n in range(nlevels)
        ]
        layouts = []
        done = 0
        if tree is not None:
            tree.write_blobs(lambda piece: writers[0].append([piece]))
        for tname, tensor, enc in _encoded(reader, c, merged, plans):
            if tree is not None:
                tree.tensor_read(tname, tensor)
            segments = []
            for w, pieces, size in zip(writers, enc.pieces, enc.sizes(), strict=True):
                segments.append(Segment(w.size, size))
                w.append(list(pieces))
            shape = tuple(tensor.array.shape)
            layout = TensorLayout(tname, tensor.dtype, shape, tuple(segments), enc.params)
            layouts.append(layout)
            if meter is not None:
                meter.add(c, merged, layout, tensor, enc)
            reader.release(tensor)
            done += tensor.nbytes
            if progress:
                progress("encode", done, source_bytes)
        levels = []
        chunks: list[Chunk] = []
        for n, w in enumerate(writers):
            w.finish()
            q = meter.level(n) if meter is not None else {}
            levels.append(Level(n, len(chunks), len(w.chunks), w.size, q))
            chunks += w.chunks
        fsync_dir(staged / LEVELS)
        manifest = Manifest(
            name=name,
            version=version,
            codec=c.name,
            codec_params=merged,
            chunk_size=chunk_size,
            tensors=tuple(layouts),
            levels=tuple(levels),
            chunks=tuple(chunks),
            source_bytes=source_bytes,
            created=int(time.time()),
            metadata=meta,
            files=tree.files() if tree is not None else (),
        )
        signed = seal(manifest, key)
        torrent = None
        if piece_length_ok(chunk_size):
            hashes = [w.tree.finish() for w in writers if w.tree is not None]
            torrent = build_torrent(manifest, signed.model_id, hashes, web_seeds).signed(key)
            write_atomic(staged / TORRENT, torrent.to_bytes())
        _write_record(staged, manifest)
        write_atomic(staged / PUBLISHED, b"")
        write_atomic(staged / MANIFEST, signed.envelope)
        store.commit(staged, signed.model_id)
    store.set_name(name, signed.model_id)
    sizes, cum = [], 0
    for lv in levels:
        cum += lv.bytes
        sizes.append(LevelSize(lv.level, lv.bytes, cum))
    return PublishResult(signed, source_bytes, cum, tuple(sizes), torrent)


def _encoded(
    reader: ModelReader,
    c: Codec,
    params: Mapping[str, ParamValue],
    plans: Mapping[str, Mapping[str, ParamValue]],
) -> Iterator[tuple[str, RawTensor, EncodedTensor]]:
    """Every tensor with its encoding, in the file's order; up to ``ENCODE_THREADS``
    tensors are encoded at once (numpy and zstd release the GIL)."""
    names = [i.name for i in reader.infos()]
    with ThreadPoolExecutor(ENCODE_THREADS, thread_name_prefix="encode") as pool:
        pending: list[tuple[str, RawTensor, Future[EncodedTensor]]] = []
        for name in names:
            tensor = reader.read(name)
            plan = plans.get(name)
            if tensor.nbytes < INLINE_BYTES:
                fut: Future[EncodedTensor] = Future()
                try:
                    fut.set_result(c.encode_tensor(params, name, tensor, plan))
                except Exception as e:
                    fut.set_exception(e)
            else:
                fut = pool.submit(c.encode_tensor, params, name, tensor, plan)
            pending.append((name, tensor, fut))
            if len(pending) >= ENCODE_THREADS:
                n, t, fut = pending.pop(0)
                yield n, t, fut.result()
        for n, t, fut in pending:
            yield n, t, fut.result()


def _write_record(folder: Path, manifest: Manifest) -> None:
    """The verified record of a just-published model: every chunk (its level files were
    fsynced when finished)."""
    stats = []
    for lv in manifest.levels:
        st = os.stat(folder / LEVELS / str(lv.level))
        stats.append([st.st_size, st.st_mtime_ns])
    doc = {
        "version": RECORD_VERSION,
        "chunks": Bitfield.full(len(manifest.chunks)).to_bytes(),
        "levels": stats,
    }
    write_atomic(folder / "verified", pack(doc))


class _Tensors(ModelReader):
    """Tensors held in memory, read as a model file would be."""

    def __init__(self, tensors: Mapping[str, RawTensor]) -> None:
        super().__init__(Path("<memory>"))
        from peerprog.formats.reader import TensorInfo

        self._tensors = dict(tensors)
        self._infos = [
            TensorInfo(n, t.dtype, tuple(t.array.shape)) for n, t in self._tensors.items()
        ]

    def read(self, name: str) -> RawTensor:
        return self._tensors[name]

    def release(self, tensor: RawTensor) -> None:
        """The caller's own arrays: nothing to release."""
