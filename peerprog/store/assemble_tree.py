"""A repository at one level, written as a folder tree.

:func:`build_tree` writes every file of a repository manifest (:mod:`peerprog.manifest.tree`)
into a new folder and renames the folder into place when whole, so no reader ever sees half a
level. A file carried whole is copied out of level 0 (or hard-linked from the folder of the
level before); a safetensors file is its header followed by its tensors decoded at the level,
each refined from the level before's file when there is one. Memory stays near a few times
the largest tensor, whatever the repository's size. Paths were checked when the manifest was
parsed; files are created with ``O_EXCL | O_NOFOLLOW`` inside folders this function made, so
nothing is ever written through a symlink.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shutil
import stat
import struct
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from peerprog.codec import exact_at
from peerprog.codec.layout import TensorLayout
from peerprog.dirswap import swap_dir
from peerprog.errors import FormatError
from peerprog.formats.safetensors import check_entry
from peerprog.manifest import Manifest
from peerprog.manifest.tree import MARKER, RepoFile
from peerprog.store.assemble import (
    DecodedFile,
    Prior,
    Unusable,
    decode_into,
    prior_level_for,
    required_chunks,
)
from peerprog.store.atomic import TMP_PREFIX, fsync_dir
from peerprog.store.levels import ModelFiles
from peerprog.swarm import Bitfield

COPY_BLOCK = 4 << 20
CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


def tree_doc(manifest: Manifest, model_id: str, level: int) -> dict[str, Any]:
    """What a repository's folder at ``level`` holds: the model, the level, and every file
    (path, size, the source's SHA-256 in hex, whether it is coded). It is the answer of
    ``GET /v1/models/<name>/tree`` and the folder's :data:`~peerprog.manifest.tree.MARKER`."""
    received = sum(lv.bytes for lv in manifest.levels[: level + 1])
    return {
        "name": manifest.name,
        "model_id": model_id,
        "version": manifest.version,
        "codec": manifest.codec,
        "level": level,
        "levels_total": manifest.levels_total,
        "exact": exact_at(manifest.codec, level, manifest.levels_total),
        "bytes_received": received,
        "bytes_total": manifest.total_bytes,
        "files": [
            {"path": f.path, "size": f.size, "sha256": f.sha256.hex(), "coded": f.coded}
            for f in manifest.files
        ],
    }


def header_offsets(f: RepoFile, manifest: Manifest, header: bytes) -> dict[int, int]:
    """Where each tensor of the coded file ``f`` starts in the file, from its header bytes
    as carried in level 0; :class:`Unusable` if the header does not describe the manifest's
    tensors."""
    where = f"{manifest.name}: {f.path}"
    try:
        (hlen,) = struct.unpack("<Q", header[:8])
        if 8 + hlen != len(header):
            raise ValueError("its length field does not match")
        doc = json.loads(header[8:])
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
    except (ValueError, struct.error, UnicodeDecodeError) as e:
        raise Unusable(f"{where}: the header carried is not a safetensors header ({e})") from None
    body = f.size - len(header)
    out: dict[int, int] = {}
    prefix = len(f.path) + 1
    for i in f.tensors:
        t = manifest.tensors[i]
        inner = t.name[prefix:]
        try:
            dname, shape, start, _ = check_entry(inner, doc.get(inner), body)
        except FormatError as e:
            raise Unusable(f"{where}: {e}") from None
        if dname != t.dtype or shape != t.shape:
            raise Unusable(f"{where}: tensor {inner!r:.80} differs from the manifest's")
        out[i] = len(header) + start
    if len(doc) - ("__metadata__" in doc) != f.tensor_count:
        raise Unusable(f"{where}: the header lists other tensors than the manifest")
    return out


def _open_new(folder: Path, path: str) -> int:
    """A new file at ``path`` under ``folder`` (parents made here; never through a link)."""
    target = folder / path
    target.parent.mkdir(parents=True, exist_ok=True)
    return os.open(target, CREATE, 0o644)


def _write_whole(folder: Path, path: str, durable: bool, fill: Callable[[int], None]) -> None:
    """Create ``path`` under ``folder``, ``fill`` it, make it durable if asked, close it."""
    fd = _open_new(folder, path)
    try:
        fill(fd)
        if durable:
            os.fsync(fd)
    finally:
        os.close(fd)


def _copy_bytes(data: bytes, fd: int) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def _copy_out(files: ModelFiles, f: RepoFile, fd: int) -> None:
    """A whole file's bytes, out of level 0 a block at a time."""
    pos = 0
    while pos < f.blob.length:
        n = min(COPY_BLOCK, f.blob.length - pos)
        data = files.read(0, f.blob.offset + pos, n)
        if len(data) != n:
            raise Unusable(f"{f.path}: level 0 is shorter than the manifest says")
        _copy_bytes(data, fd)
        pos += n


def build_tree(
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
    durable: bool = False,
) -> int:
    """Write the repository ``manifest`` at ``level`` as the folder ``out`` (renamed into place
    when whole; an existing ``out`` is replaced). ``prior``: its folder of level
    ``prior_level`` (default ``level - 1``; any earlier level), if there is one.
    ``durable``: fsync the files and folders before the rename. The folder gets its
    :data:`~peerprog.manifest.tree.MARKER` (:func:`tree_doc`). Returns the bytes of the
    repository's files. :class:`Unusable` if a chunk it needs is missing or damaged,
    :class:`~peerprog.store.assemble.Cancelled` if ``cancel`` is set. Blocking."""
    if not manifest.is_repository:
        raise ValueError("build_tree takes a repository manifest")
    plevel = None if prior is None else prior_level_for(level, prior_level)
    needed = required_chunks(manifest, files, held, level)
    tmp = out.parent / f"{TMP_PREFIX}{out.name}.{os.getpid()}.{threading.get_ident()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    total = 0
    fds: list[int] = []
    priors: list[DecodedFile] = []
    try:
        jobs: list[tuple[TensorLayout, int, int, Prior]] = []
        for f in manifest.files:
            total += f.size
            if not f.coded and _link_prior(prior, tmp, f):
                continue
            if not f.coded:  # copied and closed at once: a tree may hold many such files
                _write_whole(tmp, f.path, durable, functools.partial(_copy_out, files, f))
                continue
            fd = _open_new(tmp, f.path)
            fds.append(fd)
            header = files.read(0, f.blob.offset, f.blob.length)
            offsets = header_offsets(f, manifest, header)
            os.ftruncate(fd, f.size)
            os.pwrite(fd, header, 0)
            previous = _prior_file(prior, f, priors)
            jobs += [(manifest.tensors[i], fd, offsets[i], previous) for i in f.tensors]
        decode_into(manifest, files, level, jobs, cancel, plevel)
        doc = json.dumps(tree_doc(manifest, model_id, level), indent=1).encode()
        _write_whole(tmp, MARKER, durable, functools.partial(_copy_bytes, doc))
        if not files.usable(needed, held):  # changed on disk while we read it
            raise Unusable(f"model {manifest.name}: level {level} changed on disk while decoded")
        if durable:
            for fd in fds:
                os.fsync(fd)
            for folder in _folders(tmp):
                fsync_dir(folder)
        swap_dir(tmp, out)
        if durable:
            fsync_dir(out.parent)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        for fd in fds:
            os.close(fd)
        for p in priors:
            p.close()
    return total


def _link_prior(prior: Path | None, tmp: Path, f: RepoFile) -> bool:
    """Hard-link a whole file from the level before's folder (same bytes at every level)."""
    if prior is None:
        return False
    src = prior / f.path
    try:
        st = os.lstat(src)
        if not stat.S_ISREG(st.st_mode) or st.st_size != f.size:
            return False
        (tmp / f.path).parent.mkdir(parents=True, exist_ok=True)
        os.link(src, tmp / f.path, follow_symlinks=False)
    except OSError:
        return False
    return True


def _prior_file(prior: Path | None, f: RepoFile, opened: list[DecodedFile]) -> Prior:
    """The arrays of ``f`` at the level before, where its folder holds the file."""
    old: DecodedFile | None = None
    if prior is not None:
        with contextlib.suppress(OSError, ValueError, struct.error):
            old = DecodedFile(prior / f.path)
            opened.append(old)
    prefix = len(f.path) + 1

    def previous(t: TensorLayout) -> np.ndarray[Any, Any] | None:
        return old.array(t, t.name[prefix:]) if old is not None else None

    return previous


def _folders(root: Path) -> Iterator[Path]:
    for dirpath, _, _ in os.walk(root):
        yield Path(dirpath)
