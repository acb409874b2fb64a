"""Is the store taking writes? The last write error, and the pause of downloads after it.

A write that fails (the disk is full, the folder read-only) sets :attr:`DiskGuard.error`,
which the status shows, and pauses new chunk requests for ``pause`` seconds — and beyond,
while the disk has no room for a chunk: fetching chunks that cannot be stored wastes the
peers' upload. The error is cleared by a write that *began* after it (a write already under
way when the disk filled up may still fit, which proves nothing).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("peerprog.node")


def free_bytes(path: Path) -> int:
    """Bytes an unprivileged writer may still use on ``path``'s file system."""
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


class DiskGuard:
    """Write health of one store; times come from the caller (``loop.time()``)."""

    def __init__(self, pause: float, room: Callable[[], int]) -> None:
        """``room()`` says how many bytes can still be written."""
        self._pause = pause
        self._room = room
        self.error: str | None = None
        """The last failure to write the store, e.g. ``cannot store chunk 7 of m: No space
        left on device``; None once a write begun after it succeeded."""
        self._failed_at = float("-inf")
        self._until = float("-inf")

    def failed(self, message: str, now: float, *, pause: bool = True) -> None:
        """A write failed; with ``pause``, new chunk requests wait."""
        self.error = message
        self._failed_at = now
        if pause:
            self._until = now + self._pause
            log.error("%s; pausing downloads", message)
        else:
            log.error("%s", message)

    def succeeded(self, began: float) -> None:
        """A write begun at ``began`` succeeded."""
        if began > self._failed_at:
            self.error = None

    def paused(self, now: float, need: int) -> bool:
        """Whether new requests (for chunks of up to ``need`` bytes) must wait now."""
        if now < self._until:
            return True
        if self.error is None or self._until == float("-inf"):
            return False
        try:
            full = self._room() < need
        except OSError:
            full = False  # cannot tell: let a write say
        if full:
            self._until = now + self._pause
        return full
