"""One model's level files (store layout version 2) and its record of verified chunks.

```
<model>/levels/<n>     level n's encoded bytes; chunk k at its offset in its level
<model>/verified       which chunks are verified (node-private, never served)
```

Level files are created at their full size (their blocks reserved where the file system
can); a chunk is written at its offset only after the caller verified it. The record is
made durable *after* the data it names: :meth:`ModelFiles.record` first fsyncs the level
files written since the last record, then replaces the record atomically. A chunk not in
the record is fetched again; a chunk in it was on disk when the record was written.

The record also keeps each level file's size and modification time as they were then. A
level file found changed (a write that was not ours, while the node ran or was down) has
its chunks hashed again before any is trusted: :meth:`ModelFiles.recorded` at open, and
:meth:`ModelFiles.unchanged` / :meth:`ModelFiles.recheck` before serving or decoding.
Chunks that fail are *damaged*: never served or decoded, and left out of the next record.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import logging
import os
import threading
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from peerprog.errors import FormatError, PeerFault
from peerprog.manifest import Manifest
from peerprog.manifest.canonical import pack, unpack
from peerprog.store.atomic import fsync_dir, write_atomic
from peerprog.swarm import Bitfield

log = logging.getLogger("peerprog.store")
RECORD = "verified"
LEVELS = "levels"
RECORD_VERSION = 2


def chunk_offsets(manifest: Manifest) -> list[tuple[int, int]]:
    """Per chunk: (its level, its offset in that level's file)."""
    out = []
    for lv in manifest.levels:
        offset = 0
        for i in lv.chunks:
            out.append((lv.level, offset))
            offset += manifest.chunks[i].length
    return out


class ModelFiles:
    """The level files of one model, opened for reading and writing. Thread-safe: chunk
    writes and reads may run in worker threads at once."""

    def __init__(self, folder: Path, manifest: Manifest) -> None:
        self.folder = folder
        self.manifest = manifest
        self._spans = chunk_offsets(manifest)
        self._lock = threading.Lock()
        self._fds: list[int] = []
        self._dirty: set[int] = set()
        self._known: list[tuple[int, int] | None] = []
        self.damaged: set[int] = set()
        """Chunks found damaged since open: never served or decoded."""
        (folder / LEVELS).mkdir(parents=True, exist_ok=True)
        try:
            for lv in manifest.levels:
                path = self.level_path(lv.level)
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
                self._fds.append(fd)
                st = os.fstat(fd)
                if st.st_size != lv.bytes:
                    _allocate(fd, lv.bytes, path)
                    st = os.fstat(fd)
                self._known.append((st.st_size, st.st_mtime_ns))
        except BaseException:
            self.close()
            raise

    def level_path(self, level: int) -> Path:
        return self.folder / LEVELS / str(level)

    def span(self, index: int) -> tuple[int, int, int]:
        """Chunk ``index``'s (level, offset, length)."""
        level, offset = self._spans[index]
        return level, offset, self.manifest.chunks[index].length

    def close(self) -> None:
        for fd in self._fds:
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = []

    def __enter__(self) -> ModelFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- chunks ----------------------------------------------------------------------------

    def write_chunk(self, index: int, data: Sequence[Any] | bytes | memoryview) -> None:
        """Write a verified chunk at its offset (``data``: its bytes, or pieces of them).
        :class:`FileNotFoundError` if the files were closed (the model was removed)."""
        level, offset, length = self.span(index)
        pieces = [data] if isinstance(data, bytes | bytearray | memoryview) else list(data)
        if sum(memoryview(p).nbytes for p in pieces) != length:
            raise ValueError(f"chunk {index}: data is not {length} bytes")
        fd = self._fd(level)
        done = 0
        while done < length:  # pwritev may write less than asked
            views = _skip(pieces, done)
            done += os.pwritev(fd, views, offset + done)
        st = os.fstat(fd)
        with self._lock:
            self._dirty.add(level)
            self._known[level] = max(self._known[level] or (0, 0), (st.st_size, st.st_mtime_ns))
        self.damaged.discard(index)

    def read_chunk(self, index: int) -> bytes:
        level, offset, length = self.span(index)
        return self.read(level, offset, length)

    def read(self, level: int, offset: int, length: int) -> bytes:
        """``length`` bytes of level ``level`` from ``offset`` (short only past the end)."""
        fd = self._fd(level)
        parts = []
        while length > 0:
            got = os.pread(fd, length, offset)
            if not got:
                break
            parts.append(got)
            offset += len(got)
            length -= len(got)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def verify_chunk(self, index: int) -> bool:
        """Whether the stored bytes of chunk ``index`` match the manifest."""
        data = self.read_chunk(index)
        return hashlib.sha256(data).digest() == self.manifest.chunks[index].sha256

    def _fd(self, level: int) -> int:
        try:
            return self._fds[level]
        except IndexError:
            raise FileNotFoundError(f"{self.folder}: level files are closed") from None

    # --- what is verified ------------------------------------------------------------------

    def unchanged(self, level: int) -> bool:
        """Whether level ``level``'s file is as this node last wrote or checked it."""
        st = os.fstat(self._fd(level))
        with self._lock:
            return self._known[level] == (st.st_size, st.st_mtime_ns)

    def recheck(self, level: int, held: Iterable[int]) -> list[int]:
        """Hash again the ``held`` chunks of a level whose file changed; returns the ones
        that fail (now :attr:`damaged`). The file's state counts as known afterwards."""
        st = os.fstat(self._fd(level))
        bad = [i for i in held if self.span(i)[0] == level and not self.verify_chunk(i)]
        with self._lock:
            self._known[level] = (st.st_size, st.st_mtime_ns)
        if bad:
            self.damaged.update(bad)
            log.error(
                "%s: level %d changed on disk; chunks %s are damaged",
                self.folder.name[:12],
                level,
                bad[:8],
            )
        return bad

    def usable(self, indices: Iterable[int], held: Bitfield) -> bool:
        """Whether every chunk of ``indices`` is held, undamaged, in an unchanged file (a
        changed file is re-hashed first: call it in a worker thread)."""
        levels = set()
        for i in indices:
            if i not in held or i in self.damaged:
                return False
            levels.add(self.span(i)[0])
        for level in levels:
            if not self.unchanged(level):
                self.recheck(level, held.indices())
        return not any(i in self.damaged for i in indices)

    def recorded(self) -> Bitfield:
        """The chunks the record names, less those of level files changed since it was
        written that no longer verify (blocking)."""
        n = len(self.manifest.chunks)
        try:
            doc = unpack((self.folder / RECORD).read_bytes(), "verified record")
            if not isinstance(doc, dict) or doc.get("version") != RECORD_VERSION:
                raise FormatError("not a version 2 record")
            have = Bitfield.from_bytes(n, doc["chunks"])
            stats = doc["levels"]
            if not isinstance(stats, list) or len(stats) != len(self.manifest.levels):
                raise FormatError("the record's levels do not match the manifest")
        except FileNotFoundError:
            return Bitfield(n)
        except (FormatError, PeerFault, KeyError, TypeError) as e:
            log.warning("%s: ignoring the verified record (%s)", self.folder.name[:12], e)
            return Bitfield(n)
        for level, stat in enumerate(stats):
            st = os.fstat(self._fd(level))
            if stat == [st.st_size, st.st_mtime_ns]:
                with self._lock:
                    self._known[level] = (st.st_size, st.st_mtime_ns)
                continue
            mine = [i for i in have.indices() if self.span(i)[0] == level]
            for i in self.recheck(level, mine):
                have.clear(i)
        return have

    def record(self, have: Bitfield) -> Bitfield:
        """Make the chunks of ``have`` (less the damaged) the durable record: the level
        files written since the last record are fsynced first (blocking). Returns the
        chunks recorded."""
        with self._lock:
            dirty, self._dirty = self._dirty, set()
        try:
            for level in sorted(dirty):
                os.fdatasync(self._fd(level))
        except BaseException:
            with self._lock:
                self._dirty |= dirty
            raise
        keep = have.copy()
        for i in self.damaged:
            if i in keep:
                keep.clear(i)
        stats = []
        for level in range(len(self.manifest.levels)):
            st = os.fstat(self._fd(level))
            stats.append([st.st_size, st.st_mtime_ns])
        doc = {"version": RECORD_VERSION, "chunks": keep.to_bytes(), "levels": stats}
        write_atomic(self.folder / RECORD, pack(doc), sync_dir=False)
        return keep

    def sync_created(self) -> None:
        """Make the level files' creation durable (after a model folder is made)."""
        fsync_dir(self.folder / LEVELS)


def _allocate(fd: int, size: int, path: Path) -> None:
    """Give a level file its full size, with its blocks reserved where the file system can
    (writes into reserved blocks are several times faster than into a sparse file); a
    disk without the room gets a sparse file, so what fits is still fetched and served."""
    try:
        os.posix_fallocate(fd, 0, size)
        return
    except OSError as e:
        if e.errno == errno.ENOSPC:
            log.warning("%s: no room to reserve %d bytes; the file stays sparse", path, size)
        elif e.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
            raise
    os.ftruncate(fd, size)


def _skip(pieces: Sequence[Any], n: int) -> list[memoryview]:
    """The buffers of ``pieces`` after their first ``n`` bytes."""
    out = []
    for p in pieces:
        v = memoryview(p).cast("B")
        if n >= len(v):
            n -= len(v)
            continue
        out.append(v[n:])
        n = 0
    return out
