"""One daemon per ``data_dir``: a lock file that names its holder.

``<data_dir>/daemon.pid`` is held with ``flock`` for the daemon's life and holds its pid,
so a second daemon on the same folder is refused with a message naming the first; the
kernel drops the lock when the holder dies however it dies, so a stale file never blocks.
The file is never removed (removing a lock file races with a process about to take it).
A start that fails removes the folder again if it made it.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from pathlib import Path

from peerprog.errors import InputError

LOCK_FILE = "daemon.pid"


class DataDirLock:
    """The claim of one daemon on its ``data_dir``."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self._created = False

    def acquire(self) -> None:
        """Take the folder (creating it if missing), or raise :class:`InputError` naming
        the daemon that holds it."""
        self._created = not self.path.exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as e:
            raise InputError(
                f"node.data_dir {str(self.path)!r}: cannot use it ({e.strerror or e})"
            ) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode("ascii", "replace").strip() or "unknown"
            os.close(fd)
            raise InputError(
                f"node.data_dir {str(self.path)!r} is in use by another peerprog daemon "
                f"(pid {holder}); stop it or choose another node.data_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        self._fd = fd

    def release(self, *, failed: bool = False) -> None:
        """Let the folder go; after a failed start, remove it if :meth:`acquire` made it."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.ftruncate(self._fd, 0)
        if failed and self._created:
            shutil.rmtree(self.path, ignore_errors=True)
        os.close(self._fd)
        self._fd = None
