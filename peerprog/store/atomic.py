"""Crash-safe file writes: temporary file in the same folder, fsync, rename, fsync folder.

A reader never sees a half-written file under its final name; a crash leaves at most a
``.tmp-*`` file, which :func:`clean_temporaries` removes at start.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from collections.abc import Iterable
from pathlib import Path

TMP_PREFIX = ".tmp-"


def write_atomic(
    path: Path,
    data: bytes | memoryview | Iterable[bytes | memoryview],
    *,
    sync_dir: bool = True,
) -> None:
    """Write ``data`` (bytes or a sequence of buffers) to ``path`` atomically and durably.

    Without ``sync_dir`` the rename itself may be lost on power failure (the file then is
    simply absent, never partial): fit for chunks, which are verified on load anyway.
    """
    tmp = path.parent / f"{TMP_PREFIX}{path.name}.{secrets.token_hex(4)}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        with os.fdopen(fd, "wb") as f:
            if isinstance(data, bytes | memoryview):
                f.write(data)
            else:
                for buf in data:
                    f.write(buf)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    if sync_dir:
        fsync_dir(path.parent)


def fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def clean_temporaries(folder: Path) -> int:
    """Remove ``.tmp-*`` leftovers of interrupted writes in ``folder``; returns how many."""
    n = 0
    with contextlib.suppress(FileNotFoundError):
        for p in folder.iterdir():
            if p.name.startswith(TMP_PREFIX):
                with contextlib.suppress(OSError):
                    if p.is_dir() and not p.is_symlink():
                        shutil.rmtree(p)  # a decoded repository level, half-written
                    else:
                        p.unlink()
                    n += 1
    return n
