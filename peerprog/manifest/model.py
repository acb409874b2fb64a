"""The manifest: what a published model is made of, as frozen dataclasses.

The body is canonical msgpack (see :mod:`peerprog.manifest.canonical`); the model id is the
hex SHA-256 of the body. :func:`parse_body` validates every field, since a body arrives from
peers: a wrong type, an inconsistent chunk range or a segment outside its level is refused
with a message naming the field.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Any

from peerprog.codec.dtypes import DTYPES
from peerprog.codec.layout import ParamValue, Segment, TensorLayout
from peerprog.errors import VerificationError
from peerprog.manifest.canonical import pack, unpack
from peerprog.manifest.tree import RepoFile, parse_files

FORMAT_VERSION = 1
MAX_CHUNK_SIZE = 16 * 1024 * 1024
MIN_CHUNK_SIZE = 1024
MAX_CHUNKS = 1 << 20
MAX_TENSORS = 1 << 17
MAX_LEVELS = 64
NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
MODEL_ID_RE = re.compile(r"[0-9a-f]{64}")


def valid_name(name: str) -> bool:
    """A model name: 1–128 of ``[A-Za-z0-9._-]``, not starting with ``.``/``-``/``_``."""
    return isinstance(name, str) and bool(NAME_RE.fullmatch(name)) and ".." not in name


def valid_model_id(model_id: str) -> bool:
    """A model id: 64 lowercase hex digits."""
    return isinstance(model_id, str) and bool(MODEL_ID_RE.fullmatch(model_id))


@dataclass(frozen=True)
class Chunk:
    """One chunk: its length and SHA-256."""

    length: int
    sha256: bytes


@dataclass(frozen=True)
class Level:
    """One level: its chunk range, encoded byte size, and quality figures if known."""

    level: int
    first_chunk: int
    chunk_count: int
    bytes: int
    quality: dict[str, int] = field(default_factory=dict)

    @property
    def chunks(self) -> range:
        return range(self.first_chunk, self.first_chunk + self.chunk_count)


@dataclass(frozen=True)
class Manifest:
    """A published model (the signed body)."""

    name: str
    version: int
    codec: str
    codec_params: dict[str, ParamValue]
    chunk_size: int
    tensors: tuple[TensorLayout, ...]
    levels: tuple[Level, ...]
    chunks: tuple[Chunk, ...]
    source_bytes: int
    created: int = 0
    metadata: dict[str, str] = field(default_factory=dict)
    format: int = FORMAT_VERSION
    files: tuple[RepoFile, ...] = ()
    """A repository's files (:mod:`peerprog.manifest.tree`); empty for a single model file."""

    @property
    def is_repository(self) -> bool:
        """Published from a folder: apps get a directory, not one safetensors file."""
        return bool(self.files)

    def file(self, path: str) -> RepoFile | None:
        """The repository file at ``path``, if there is one."""
        index = self.__dict__.get("_files_by_path")
        if index is None:
            index = {f.path: f for f in self.files}
            object.__setattr__(self, "_files_by_path", index)
        found: RepoFile | None = index.get(path)
        return found

    @property
    def total_bytes(self) -> int:
        return sum(lv.bytes for lv in self.levels)

    @property
    def levels_total(self) -> int:
        return len(self.levels)

    def level_of_chunk(self, index: int) -> int:
        """The level that chunk ``index`` belongs to."""
        for lv in self.levels:
            if index < lv.first_chunk + lv.chunk_count:
                return lv.level
        raise IndexError(index)

    def to_body(self) -> bytes:
        """The canonical msgpack body (``files`` only for a repository, so a single file's
        body is as it always was)."""
        extra = {"files": [f.to_wire() for f in self.files]} if self.files else {}
        return pack(
            {
                **extra,
                "format": self.format,
                "name": self.name,
                "version": self.version,
                "created": self.created,
                "codec": self.codec,
                "codec_params": self.codec_params,
                "chunk_size": self.chunk_size,
                "source_bytes": self.source_bytes,
                "metadata": self.metadata,
                "tensors": [
                    {
                        "name": t.name,
                        "dtype": t.dtype,
                        "shape": list(t.shape),
                        "segments": [[s.offset, s.length] for s in t.segments],
                        "params": t.params,
                    }
                    for t in self.tensors
                ],
                "levels": [
                    {
                        "level": lv.level,
                        "first_chunk": lv.first_chunk,
                        "chunk_count": lv.chunk_count,
                        "bytes": lv.bytes,
                        "quality": lv.quality,
                    }
                    for lv in self.levels
                ],
                "chunks": [[c.length, c.sha256] for c in self.chunks],
            }
        )


def model_id_of(body: bytes) -> str:
    """The model id: hex SHA-256 of the manifest body."""
    return hashlib.sha256(body).hexdigest()


# --- parsing untrusted bodies -------------------------------------------------------------


def _get(m: dict[str, Any], key: str, typ: type | tuple[type, ...], where: str) -> Any:
    if key not in m:
        raise VerificationError(f"manifest: {where}{key} is missing")
    v = m[key]
    if not isinstance(v, typ) or (isinstance(v, bool) and typ is int):
        raise VerificationError(f"manifest: {where}{key} has the wrong type")
    return v


def _nat(m: dict[str, Any], key: str, where: str, hi: int = 1 << 62) -> int:
    v: int = _get(m, key, int, where)
    if not 0 <= v <= hi:
        raise VerificationError(f"manifest: {where}{key} = {v} is out of range")
    return v


def parse_body(body: bytes) -> Manifest:
    """Parse and validate a manifest body; :class:`VerificationError` naming what is wrong."""
    m = unpack(body, "manifest body", canonical=True)
    if not isinstance(m, dict):
        raise VerificationError("manifest: body is not a map")
    fmt = _nat(m, "format", "")
    if fmt != FORMAT_VERSION:
        raise VerificationError(f"manifest: format {fmt} is not supported (want {FORMAT_VERSION})")
    name = _get(m, "name", str, "")
    if not valid_name(name):
        raise VerificationError(f"manifest: name {name!r:.80} is not a valid model name")
    chunk_size = _nat(m, "chunk_size", "", MAX_CHUNK_SIZE)
    if chunk_size < MIN_CHUNK_SIZE:
        raise VerificationError(f"manifest: chunk_size {chunk_size} is too small")
    metadata = _get(m, "metadata", dict, "")
    if not all(isinstance(v, str) for v in metadata.values()):
        raise VerificationError("manifest: metadata values must be strings")
    chunks = _parse_chunks(_get(m, "chunks", list, ""), chunk_size)
    levels = _parse_levels(_get(m, "levels", list, ""), chunks)
    tensors = _parse_tensors(_get(m, "tensors", list, ""), levels)
    files = parse_files(m["files"], levels[0].bytes, len(tensors)) if "files" in m else ()
    _check_sizes(files, tensors)
    return Manifest(
        name=name,
        version=_nat(m, "version", ""),
        codec=_get(m, "codec", str, ""),
        codec_params=_get(m, "codec_params", dict, ""),
        chunk_size=chunk_size,
        tensors=tensors,
        levels=levels,
        chunks=chunks,
        source_bytes=_nat(m, "source_bytes", ""),
        created=_nat(m, "created", ""),
        metadata=metadata,
        format=fmt,
        files=files,
    )


def _check_sizes(files: tuple[RepoFile, ...], tensors: tuple[TensorLayout, ...]) -> None:
    """A coded file is its header and its tensors' data, nothing else; its tensors are
    named after it."""
    for f in files:
        if not f.coded:
            continue
        data = 0
        prefix = f.path + "/"
        for i in f.tensors:
            t = tensors[i]
            if not t.name.startswith(prefix):
                raise VerificationError(f"manifest: tensor {t.name!r:.80} is not in {f.path!r}")
            data += t.numel * DTYPES[t.dtype].itemsize
        if f.blob.length + data != f.size:
            raise VerificationError(f"manifest: {f.path!r} size does not match its tensors")


def _parse_chunks(raw: list[Any], chunk_size: int) -> tuple[Chunk, ...]:
    if len(raw) > MAX_CHUNKS:
        raise VerificationError(f"manifest: {len(raw)} chunks is more than {MAX_CHUNKS}")
    out = []
    for i, c in enumerate(raw):
        if (
            not isinstance(c, list)
            or len(c) != 2
            or not isinstance(c[0], int)
            or isinstance(c[0], bool)
            or not isinstance(c[1], bytes)
            or len(c[1]) != 32
        ):
            raise VerificationError(f"manifest: chunks[{i}] is not [length, sha256]")
        if not 0 < c[0] <= chunk_size:
            raise VerificationError(f"manifest: chunks[{i}] length {c[0]} is out of range")
        out.append(Chunk(c[0], c[1]))
    return tuple(out)


def _parse_levels(raw: list[Any], chunks: tuple[Chunk, ...]) -> tuple[Level, ...]:
    if not 0 < len(raw) <= MAX_LEVELS:
        raise VerificationError(f"manifest: {len(raw)} levels is out of range")
    out = []
    next_chunk = 0
    for i, lv in enumerate(raw):
        where = f"levels[{i}]."
        if not isinstance(lv, dict):
            raise VerificationError(f"manifest: levels[{i}] is not a map")
        level = Level(
            level=_nat(lv, "level", where),
            first_chunk=_nat(lv, "first_chunk", where),
            chunk_count=_nat(lv, "chunk_count", where),
            bytes=_nat(lv, "bytes", where),
            quality=_get(lv, "quality", dict, where),
        )
        if level.level != i or level.first_chunk != next_chunk:
            raise VerificationError(f"manifest: {where[:-1]} is out of order")
        if level.first_chunk + level.chunk_count > len(chunks):
            raise VerificationError(f"manifest: {where[:-1]} chunk range is out of range")
        if sum(chunks[j].length for j in level.chunks) != level.bytes:
            raise VerificationError(f"manifest: {where[:-1]} bytes do not match its chunks")
        if not all(isinstance(v, int) and not isinstance(v, bool) for v in level.quality.values()):
            raise VerificationError(f"manifest: {where}quality values must be integers")
        next_chunk += level.chunk_count
        out.append(level)
    if next_chunk != len(chunks):
        raise VerificationError("manifest: levels do not cover every chunk")
    return tuple(out)


def _parse_tensors(raw: list[Any], levels: tuple[Level, ...]) -> tuple[TensorLayout, ...]:
    if len(raw) > MAX_TENSORS:
        raise VerificationError(f"manifest: {len(raw)} tensors is more than {MAX_TENSORS}")
    out = []
    seen: set[str] = set()
    for i, t in enumerate(raw):
        where = f"tensors[{i}]."
        if not isinstance(t, dict):
            raise VerificationError(f"manifest: tensors[{i}] is not a map")
        name = _get(t, "name", str, where)
        if name in seen or not name:
            raise VerificationError(f"manifest: tensor name {name!r:.80} is empty or repeated")
        seen.add(name)
        dtype = _get(t, "dtype", str, where)
        if dtype not in DTYPES:
            raise VerificationError(
                f"manifest: tensor {name!r:.80} has unknown dtype {dtype!r:.20}"
            )
        shape = _get(t, "shape", list, where)
        if len(shape) > 16 or not all(
            isinstance(d, int) and not isinstance(d, bool) and 0 <= d < 1 << 40 for d in shape
        ):
            raise VerificationError(f"manifest: tensor {name!r:.80} has a bad shape")
        segs = _get(t, "segments", list, where)
        if len(segs) != len(levels):
            raise VerificationError(f"manifest: tensor {name!r:.80} needs one segment per level")
        segments = []
        for lv, s in zip(levels, segs, strict=True):
            if (
                not isinstance(s, list)
                or len(s) != 2
                or type(s[0]) is not int  # (msgpack gives exact ints; bool is not int)
                or type(s[1]) is not int
                or s[0] < 0
                or s[1] < 0
                or s[0] + s[1] > lv.bytes
            ):
                raise VerificationError(
                    f"manifest: tensor {name!r:.80} segment of level {lv.level} is out of range"
                )
            segments.append(Segment(s[0], s[1]))
        params = _get(t, "params", dict, where)
        out.append(TensorLayout(name, dtype, tuple(shape), tuple(segments), params))
    return tuple(out)
