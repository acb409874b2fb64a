"""One model's level files (store layout version 2) and its record of verified chunks.

```
<model>/levels/<n>     level n's encoded bytes; chunk k at its offset in its level
<model>/verified       which chunks are verified (node-private, never served)
```

Level files are created at their full size (their blocks reserved where the file system
can); a chunk is written at its offset only after the caller verified it. The record is
made durable *after* the data it names: :meth:`ModelFiles.record` first fsyncs the level
files written since the last record, then replaces the record atomically. A chunk in the
record was on disk when the record was written.

A chunk written but not yet recorded when the node stopped (killed between the write and
the next record, a few hundred milliseconds) is not lost: when the node opens the model
again (:meth:`ModelFiles.resume`), the chunks the record does not name are hashed where
their bytes are on disk, as a BitTorrent client rechecks pieces it has no resume data for,
and those that verify against the manifest are recorded; the others are fetched again.

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
PIECE = 1 << 20
"""Bytes read at a time when a chunk is hashed from disk (memory stays at this, whatever
the chunk size)."""


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
        self._fresh: set[int] = set()
        """Levels whose file was empty at open and not written since: nothing to recover."""
        self.damaged: set[int] = set()
        """Chunks found damaged since open: never served or decoded."""
        (folder / LEVELS).mkdir(parents=True, exist_ok=True)
        try:
            for lv in manifest.levels:
                path = self.level_path(lv.level)
                fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
                self._fds.append(fd)
                st = os.fstat(fd)
                if st.st_size == 0:
                    self._fresh.add(lv.level)
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
        self.write_chunks([(index, data)])

    def write_chunks(
        self, chunks: Sequence[tuple[int, Sequence[Any] | bytes | memoryview]]
    ) -> None:
        """Write verified chunks, each ``(index, data)`` as for :meth:`write_chunk`: a run of
        adjacent chunks of one level in one ``pwritev`` (the fetch lands a request's chunks
        in batches). :class:`FileNotFoundError` if the files were closed."""
        batch: list[tuple[int, int, list[Any]]] = []  # (level, offset, pieces) per write
        for index, data in chunks:
            level, offset, length = self.span(index)
            pieces = [data] if isinstance(data, bytes | bytearray | memoryview) else list(data)
            if sum(memoryview(p).nbytes for p in pieces) != length:
                raise ValueError(f"chunk {index}: data is not {length} bytes")
            last = batch[-1] if batch else None
            if last is not None and last[0] == level and last[1] + _size(last[2]) == offset:
                last[2].extend(pieces)
            else:
                batch.append((level, offset, pieces))
        for level, offset, pieces in batch:
            fd = self._fd(level)
            length, done = _size(pieces), 0
            while done < length:  # pwritev may write less than asked
                views = _skip(pieces, done)[:IOV_MAX]
                done += os.pwritev(fd, views, offset + done)
            st = os.fstat(fd)
            with self._lock:
                self._dirty.add(level)
                self._fresh.discard(level)
                known = self._known[level] or (0, 0)
                self._known[level] = max(known, (st.st_size, st.st_mtime_ns))
        for index, _ in chunks:
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
        """Whether the stored bytes of chunk ``index`` match the manifest (read and hashed
        :data:`PIECE` bytes at a time)."""
        level, offset, length = self.span(index)
        fd = self._fd(level)
        h = hashlib.sha256()
        end = offset + length
        while offset < end:
            got = os.pread(fd, min(PIECE, end - offset), offset)
            if not got:
                return False  # the file is shorter than the manifest says
            h.update(got)
            offset += len(got)
        return h.digest() == self.manifest.chunks[index].sha256

    def _holds_data(self, index: int) -> bool:
        """Whether anything was ever written in chunk ``index``'s span: False only where
        the file system tells it is a hole (sparse, or reserved and never written), in
        which case there is nothing to read (``SEEK_DATA``; a file system that cannot tell
        says True)."""
        level, offset, length = self.span(index)
        try:
            return os.lseek(self._fd(level), offset, os.SEEK_DATA) < offset + length
        except OSError as e:
            if e.errno == errno.ENXIO:  # nothing but a hole from offset to the end
                return False
            if e.errno in (errno.EINVAL, errno.EOPNOTSUPP):
                return True
            raise

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
        indices = list(indices)
        for level in self._levels_of(indices, held) or ():
            if not self.unchanged(level):
                self.recheck(level, held.indices())
        return all(i in held and i not in self.damaged for i in indices)

    def usable_unless_changed(self, indices: Iterable[int], held: Bitfield) -> bool | None:
        """:meth:`usable` without blocking (an ``fstat`` per level): None if a level file
        changed, so that :meth:`usable` must re-hash it (in a worker thread)."""
        levels = self._levels_of(indices, held)
        if levels is None:
            return False
        return True if all(self.unchanged(level) for level in levels) else None

    def _levels_of(self, indices: Iterable[int], held: Bitfield) -> set[int] | None:
        """The levels of ``indices``; None if one of them is not held or is damaged."""
        levels = set()
        for i in indices:
            if i not in held or i in self.damaged:
                return None
            levels.add(self.span(i)[0])
        return levels

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

    def recover(self, have: Bitfield) -> list[int]:
        """The chunks not in ``have`` (the record) whose bytes are on disk and verify
        against the manifest: written before the node stopped, but not recorded. They are
        added to ``have``, and their level files count as written since the last record
        (:meth:`record` fsyncs them before it names them). Only chunks not in ``have`` are
        read, one at a time; a level file that was empty at open, or a span the file system
        reports as a hole, is not read at all; a span of zeros (a file whose blocks are
        reserved) simply fails its hash. Blocking."""
        found = []
        for i in range(len(self.manifest.chunks)):
            level = self.span(i)[0]
            if i in have or level in self._fresh or not self._holds_data(i):
                continue
            if self.verify_chunk(i):
                have.set(i)
                found.append(i)
                self.damaged.discard(i)
                with self._lock:
                    self._dirty.add(level)
        return found

    def resume(self) -> Bitfield:
        """The chunks held when a node opens the model again: :meth:`recorded`, and the
        chunks it wrote but had not recorded when it stopped that still verify
        (:meth:`recover`), recorded at once; if that record cannot be written, those are
        left out (and fetched again). Blocking."""
        have = self.recorded()
        found = self.recover(have)
        if not found:
            return have
        try:
            have = self.record(have)
        except OSError as e:
            log.warning(
                "%s: cannot record %d chunks found on disk (%s); they are fetched again",
                self.folder.name[:12],
                len(found),
                e.strerror or e,
            )
            for i in found:
                have.clear(i)
            return have
        log.info(
            "%s: %d chunks written but not recorded before the node stopped verify: recorded",
            self.folder.name[:12],
            len(found),
        )
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


IOV_MAX = 1024
"""Most buffers one ``pwritev`` takes (Linux)."""


def _size(pieces: Sequence[Any]) -> int:
    return sum(memoryview(p).nbytes for p in pieces)


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
