"""Decoded levels: a model at one level, written as a safetensors file tensor by tensor.

:func:`build_level` reads each tensor's pieces from the level files, decodes it (from an
earlier level's decoded file when there is one, every level since in one pass, so that
reaching level n costs about the size of the levels since), and writes it at its place in
the output, which is renamed into place when whole; it reports how much of the file is
final as it goes, so that the file can be sent while it is built. Two tensors are decoded at a time;
memory stays near a few times the largest tensor, whatever the model's size. Every chunk
read is verified first (see :meth:`~peerprog.store.levels.ModelFiles.usable`): nothing
unverified is decoded.
"""

from __future__ import annotations

import contextlib
import json
import mmap
import os
import struct
import threading
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, overload

import numpy as np

from peerprog.codec import exact_at, get_codec
from peerprog.codec.dtypes import DTYPES
from peerprog.codec.layout import TensorLayout
from peerprog.errors import FormatError, InputError
from peerprog.formats.reader import drop_pages
from peerprog.formats.safetensors import NAME_TO_ST
from peerprog.manifest import Manifest
from peerprog.store.atomic import TMP_PREFIX
from peerprog.store.levels import ModelFiles
from peerprog.swarm import Bitfield

DECODE_THREADS = 2
INLINE_BYTES = 1 << 16
"""Tensors smaller than this are decoded in the calling thread."""


class Cancelled(Exception):
    """A build was stopped before it ended (its partial file is removed)."""


class Unusable(InputError):
    """A level cannot be built: a chunk it needs is not held, or is damaged on disk."""


def level_metadata(manifest: Manifest, model_id: str, level: int) -> dict[str, str]:
    """The ``__metadata__`` of a decoded level: the source file's own keys, then the
    ``peerprog.*`` keys."""
    received = sum(lv.bytes for lv in manifest.levels[: level + 1])
    own = {k: v for k, v in manifest.metadata.items() if not k.startswith("peerprog.")}
    return {
        **own,
        "peerprog.model_id": model_id,
        "peerprog.name": manifest.name,
        "peerprog.version": str(manifest.version),
        "peerprog.codec": manifest.codec,
        "peerprog.level": str(level),
        "peerprog.levels_total": str(manifest.levels_total),
        "peerprog.bytes_received": str(received),
        "peerprog.bytes_total": str(manifest.total_bytes),
        "peerprog.exact": "true"
        if exact_at(manifest.codec, level, manifest.levels_total)
        else "false",
    }


@dataclass(frozen=True)
class Layout:
    """Where each tensor's bytes lie in a decoded safetensors file."""

    header: bytes
    offsets: dict[str, int]
    size: int


def file_layout(tensors: Sequence[TensorLayout], metadata: Mapping[str, str]) -> Layout:
    """The safetensors header of ``tensors`` (in order), and their data offsets."""
    header: dict[str, object] = {"__metadata__": dict(metadata)} if metadata else {}
    offset = 0
    spans = {}
    for t in tensors:
        if t.dtype not in NAME_TO_ST:
            raise FormatError(f"tensor {t.name!r}: dtype {t.dtype!r} cannot be stored")
        n = t.numel * DTYPES[t.dtype].itemsize
        header[t.name] = {
            "dtype": NAME_TO_ST[t.dtype],
            "shape": list(t.shape),
            "data_offsets": [offset, offset + n],
        }
        spans[t.name] = offset
        offset += n
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data section starts 8-aligned
    head = struct.pack("<Q", len(raw)) + raw
    return Layout(head, {k: len(head) + v for k, v in spans.items()}, len(head) + offset)


class _Pieces(Sequence[bytes]):
    """A tensor's segments of levels 0..n, read from the level files when asked for."""

    def __init__(self, files: ModelFiles, layout: TensorLayout, upto: int) -> None:
        self._files, self._layout, self._n = files, layout, upto + 1

    def __len__(self) -> int:
        return self._n

    @overload
    def __getitem__(self, i: int) -> bytes: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[bytes]: ...
    def __getitem__(self, i: int | slice) -> bytes | Sequence[bytes]:
        if isinstance(i, slice):
            return [self[k] for k in range(*i.indices(self._n))]
        if not -self._n <= i < self._n:
            raise IndexError(i)
        seg = self._layout.segments[i % self._n]
        return self._files.read(i % self._n, seg.offset, seg.length)


class DecodedFile:
    """A decoded level file, open for reading its tensors (views of a map)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._file = open(path, "rb")  # noqa: SIM115 - closed in close()
        try:
            (hlen,) = struct.unpack("<Q", self._file.read(8))
            self._header = json.loads(self._file.read(hlen))
            self._base = 8 + hlen
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        except BaseException:
            self._file.close()
            raise

    def array(self, layout: TensorLayout, key: str | None = None) -> np.ndarray[Any, Any] | None:
        """The tensor ``layout`` describes, found under ``key`` (default: its name); None if
        the file does not hold it as described."""
        info = self._header.get(layout.name if key is None else key)
        dt = DTYPES[layout.dtype]
        if not isinstance(info, dict) or info.get("shape") != list(layout.shape):
            return None
        start, end = info["data_offsets"]
        if end - start != layout.numel * dt.itemsize:
            return None
        arr = np.frombuffer(self._map, dt.storage, layout.numel, self._base + start)
        return arr.reshape(layout.shape)

    def close(self) -> None:
        with contextlib.suppress(BufferError):
            self._map.close()
        self._file.close()


Prior = Callable[[TensorLayout], "np.ndarray[Any, Any] | None"]
"""A tensor's array at an earlier level, if there is one to refine."""


def decode_into(
    manifest: Manifest,
    files: ModelFiles,
    level: int,
    jobs: Iterable[tuple[TensorLayout, int, int, Prior]],
    cancel: threading.Event | None = None,
    prior_level: int | None = None,
    progress: Callable[[int], None] | None = None,
) -> None:
    """Decode each job's tensor at ``level`` and write it into file descriptor ``fd`` at
    ``offset``: ``(layout, fd, offset, prior)``, ``prior`` giving arrays of level
    ``prior_level`` (default: the level before). :data:`DECODE_THREADS` tensors at a time;
    :class:`Cancelled` if ``cancel`` is set meanwhile. ``progress(end)`` is called (in
    this thread) as each job is written, and every job before it, with the offset where
    its tensor ends. Blocking."""
    codec = get_codec(manifest.codec)
    params = manifest.codec_params
    stop = threading.Event()

    def one(t: TensorLayout, fd: int, offset: int, prior: Prior) -> None:
        if stop.is_set() or (cancel is not None and cancel.is_set()):
            raise Cancelled()
        before = prior(t)
        try:
            arr = codec.decode_tensor(params, t, _Pieces(files, t, level), before, prior_level)
        except FormatError as e:
            raise FormatError(f"model {manifest.name}: level {level}: {e}") from None
        if before is not None:  # a view of the level before's file: its pages leave our RSS
            drop_pages(before)
        data = np.ascontiguousarray(arr).reshape(-1).view(np.uint8).data
        done = 0
        while done < len(data):
            done += os.pwrite(fd, data[done:], offset + done)

    # jobs in order: the future of each one handed to the pool (None: written inline),
    # and where its tensor ends
    pending: deque[tuple[Future[None] | None, int]] = deque()
    in_pool = 0

    def retire() -> None:  # the oldest job: wait for it, then report it
        nonlocal in_pool
        fut, end = pending.popleft()
        if fut is not None:
            in_pool -= 1
            fut.result()
        if progress is not None:
            progress(end)

    # the pool is left (its workers done) before the caller closes or removes its files
    with ThreadPoolExecutor(DECODE_THREADS, thread_name_prefix="decode") as pool:
        try:
            for job in jobs:
                t, _, offset, _ = job
                nbytes = t.numel * DTYPES[t.dtype].itemsize
                if nbytes < INLINE_BYTES:
                    one(*job)  # a pool's hand-off costs more than a small tensor's decode
                    pending.append((None, offset + nbytes))
                else:
                    pending.append((pool.submit(one, *job), offset + nbytes))
                    in_pool += 1
                while pending and (
                    in_pool > DECODE_THREADS or pending[0][0] is None or pending[0][0].done()
                ):
                    retire()
            while pending:
                retire()
        except BaseException:
            stop.set()
            raise


def required_chunks(manifest: Manifest, files: ModelFiles, held: Bitfield, level: int) -> list[int]:
    """The chunks of levels 0..``level``; :class:`Unusable` unless each is held and intact."""
    needed = [i for lv in manifest.levels[: level + 1] for i in lv.chunks]
    if not files.usable(needed, held):
        raise Unusable(f"model {manifest.name}: level {level} is not held whole and intact")
    return needed


def build_level(
    manifest: Manifest,
    model_id: str,
    files: ModelFiles,
    held: Bitfield,
    level: int,
    out: Path,
    *,
    prior: Path | None = None,
    prior_level: int | None = None,
    cancel: threading.Event | None = None,
    progress: Callable[[Path, int, int], None] | None = None,
) -> int:
    """Write ``manifest`` decoded at ``level`` to ``out`` (atomically); ``prior`` is its
    decoded file of level ``prior_level`` (default ``level - 1``; any earlier level: the
    levels since are decoded in one pass), if there is one. Returns the file's size.
    :class:`Unusable` if a chunk it needs is missing or damaged, :class:`Cancelled` if
    ``cancel`` is set meanwhile. Blocking. (A repository is built as a folder:
    :func:`peerprog.store.assemble_tree.build_tree`.)

    The file is written in order, so it can be read while it is built:
    ``progress(path, n, size)`` is called as its first ``n`` bytes become final,
    ``path`` being the temporary file they are in until it is renamed to ``out``. ``n`` stays
    below the size until the build has passed its last check: the last byte is final
    only once the function returns."""
    plevel = None if prior is None else prior_level_for(level, prior_level)
    needed = required_chunks(manifest, files, held, level)
    lay = file_layout(manifest.tensors, level_metadata(manifest, model_id, level))
    tmp = out.parent / f"{TMP_PREFIX}{out.name}.{os.getpid()}.{threading.get_ident()}"
    prior_file = None
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        os.ftruncate(fd, lay.size)
        os.pwrite(fd, lay.header, 0)
        written = None if progress is None else _final_upto(progress, tmp, lay.size)
        if written is not None:
            written(len(lay.header))
        if prior is not None:
            with contextlib.suppress(OSError, ValueError, struct.error):
                prior_file = DecodedFile(prior)
        before = prior_file

        def previous(t: TensorLayout) -> np.ndarray[Any, Any] | None:
            return before.array(t) if before is not None else None

        jobs = ((t, fd, lay.offsets[t.name], previous) for t in manifest.tensors)
        decode_into(manifest, files, level, jobs, cancel, plevel, written)
        if not files.usable(needed, held):  # changed on disk while we read it
            raise Unusable(f"model {manifest.name}: level {level} changed on disk while decoded")
        os.replace(tmp, out)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    finally:
        os.close(fd)
        if prior_file is not None:
            prior_file.close()
    return lay.size


def _final_upto(
    progress: Callable[[Path, int, int], None], tmp: Path, size: int
) -> Callable[[int], None]:
    """``progress`` of the file at ``tmp`` as bytes are written, all but its last byte."""

    def written(end: int) -> None:
        progress(tmp, min(end, size - 1), size)

    return written


def prior_level_for(level: int, prior_level: int | None) -> int:
    """The level of a prior given for ``level`` (ValueError unless an earlier one)."""
    m = level - 1 if prior_level is None else prior_level
    if not 0 <= m < level:
        raise ValueError(f"a prior of level {m} for level {level}")
    return m
