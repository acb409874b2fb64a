"""Put a new folder in the place of an old one so that a reader sees one or the other whole.

Linux has ``renameat2(RENAME_EXCHANGE)``, which swaps two paths in one step; :func:`swap_dir`
uses it, and elsewhere moves the old folder aside and the new one in (two renames: for an
instant the path is missing, never half-written). Shared by the store's decoded levels and
the clients that hand apps a directory.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import shutil
from pathlib import Path
from typing import Any

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_libc: Any = None


def _exchange(a: Path, b: Path) -> bool:
    """Swap the paths ``a`` and ``b`` atomically; False where the system cannot."""
    global _libc
    if _libc is None:
        try:
            _libc = ctypes.CDLL(None, use_errno=True)
        except OSError:
            _libc = False
    fn = getattr(_libc, "renameat2", None) if _libc else None
    if fn is None:
        return False
    rc = fn(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (22, 38, 95):  # EINVAL, ENOSYS, EOPNOTSUPP: not on this file system or kernel
        return False
    raise OSError(err, os.strerror(err), str(b))


def swap_dir(new: Path, dest: Path) -> None:
    """Move the folder ``new`` to ``dest``, replacing the folder there if there is one (the
    old folder is removed afterwards; files a reader holds open stay readable)."""
    if not os.path.lexists(dest):
        os.rename(new, dest)
        return
    if dest.is_symlink() or not dest.is_dir():
        raise FileExistsError(f"{dest} exists and is not a folder")
    if _exchange(new, dest):
        shutil.rmtree(new, ignore_errors=True)
        return
    aside = dest.with_name(f".{dest.name}.old.{os.getpid()}")
    shutil.rmtree(aside, ignore_errors=True)
    os.rename(dest, aside)
    try:
        os.rename(new, dest)
    except BaseException:
        with contextlib.suppress(OSError):
            os.rename(aside, dest)
        raise
    shutil.rmtree(aside, ignore_errors=True)
