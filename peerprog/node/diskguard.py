"""Is the store taking writes? The last write errors, and the pause of downloads after one.

A write that fails (the disk is full, the folder read-only) records an error for what it
was writing — chunks, the record of verified chunks, a decoded level, a name, a manifest —
and the status shows the latest one still standing (:attr:`DiskGuard.error`). Each is
cleared by a write of the same kind that *began* after it (a chunk write already under way
when the disk filled up may still fit, which proves nothing). A failed chunk write also
pauses new chunk requests for ``pause`` seconds — and beyond, while the disk has no room
for a chunk: fetching chunks that cannot be stored wastes the peers' upload.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger("peerprog.node")
CHUNKS = "chunks"


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
        self._errors: dict[str, tuple[float, str]] = {}  # what failed → (when, message)
        self._until = float("-inf")

    @property
    def error(self) -> str | None:
        """The latest failure still standing, e.g. ``cannot store chunk 7 of m: No space
        left on device``; None when every kind of write works again."""
        if not self._errors:
            return None
        return max(self._errors.values())[1]

    @property
    def until(self) -> float:
        """When the current pause of new chunk requests ends (``paused`` looks again)."""
        return self._until

    def failed(self, what: str, message: str, now: float) -> None:
        """A write of kind ``what`` failed; a chunk write pauses new chunk requests."""
        self._errors[what] = (now, message)
        if what == CHUNKS:
            self._until = now + self._pause
            log.error("%s; pausing downloads", message)
        else:
            log.error("%s", message)

    def succeeded(self, what: str, began: float) -> None:
        """A write of kind ``what`` begun at ``began`` succeeded."""
        failure = self._errors.get(what)
        if failure is not None and began > failure[0]:
            del self._errors[what]

    def paused(self, now: float, need: int) -> bool:
        """Whether new requests (for chunks of up to ``need`` bytes) must wait now."""
        if now < self._until:
            return True
        if CHUNKS not in self._errors:
            return False
        try:
            full = self._room() < need
        except OSError:
            full = False  # cannot tell: let a write say
        if full:
            self._until = now + self._pause
        return full
