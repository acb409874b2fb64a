"""A node's uploads of one model's chunks: how many it serves at once, how many wait, and
when it tells the others to come back. Sans-IO: every call takes ``now``; the shell (the
peer server) does the HTTP. Every rule of it lives in this file.

Words: an *upload* is the answer to one chunk request (a byte range: one chunk or a run of
consecutive chunks). A *place* is a slot or a place in the queue.

1. **Slots.** At most ``slots`` uploads are sent at once (:func:`slots_for`: more on a
   fast uplink whose cap is known); up to ``queue`` more requests wait, and start in
   arrival order as uploads end (sent, or cut off by the requester).
2. **Busy.** Any further request is declined at once (HTTP 503) with a ``Retry-After``:
   when a place should be free *for that requester*. The node counts the requesters it
   declined whose time has not come yet (its *promises*) and gives the next one the
   expected end of the next upload after those: the ``k``-th upload in progress to end
   for the ``k``-th promise (an upload's expected end: the shell's estimate,
   :meth:`UploadSlots.expect`, else its start plus the mean duration of the uploads so
   far), and one mean duration more for each round of ``slots`` beyond them. Each upload
   that ends frees one place (the first waiting request takes its slot, which frees a
   place in the queue), so the declined requesters come back spread over the places as
   they free, one each, instead of all of them at the first end.
3. **Patient requesters.** A requester that cannot take a 503 waits in the queue past its
   limit instead, in arrival order: a BitTorrent client using the node as a web seed
   (libtorrent 2.1.1 stops asking a web seed for a file after one answer that is not 2xx,
   for as long as the torrent is loaded). The shell says who is patient.

The requester's side of a 503 is the fetch driver's (``driver.py``, ``Driver.on_busy``: the
chunks go to other holders, and that peer gets no request before its ``Retry-After``).

Not a rule: telling the peers, in the have stream, when every place is taken and when one
frees. Simulated at 1,000 edges it did not end the 503s (every peer that hears of a free
place races for it) and made the origin upload more (``bench/SIM_NOTES.md``).
"""

from __future__ import annotations

import bisect
import math
from collections import deque
from collections.abc import Hashable
from dataclasses import dataclass

DURATION_SMOOTHING = 0.2
"""EWMA weight of a new upload duration."""

SLOT_BYTES_PER_S = 6_250_000
"""Uplink per upload slot (50 Mbit/s): see :func:`slots_for`."""


def slots_for(upload_bytes_per_s: float, least: int) -> int:
    """Upload slots of a node whose uplink (its upload cap) is ``upload_bytes_per_s`` (0:
    not known): one per :data:`SLOT_BYTES_PER_S` of it, and at least ``least``. A fast
    uplink then serves more requesters at once, each at about the share one of them can
    take, instead of idling behind ``least`` of them (rule 1)."""
    if upload_bytes_per_s <= 0:
        return least
    return max(least, math.ceil(upload_bytes_per_s / SLOT_BYTES_PER_S))


@dataclass(frozen=True)
class UploadConfig:
    """Settings of :class:`UploadSlots`."""

    slots: int = 4
    """Uploads sent at once."""

    queue: int = 2
    """Requests that may wait for a slot (a link never idles a round trip between two
    uploads)."""

    def __post_init__(self) -> None:
        if self.slots < 1 or self.queue < 0:
            raise ValueError("need slots >= 1 and queue >= 0")


SERVE = "serve"
QUEUE = "queue"


class UploadSlots:
    """The uploads of one node (for all models, or per model: the shell's choice). Requests
    are named by hashable keys of the shell's choice."""

    def __init__(self, config: UploadConfig | None = None) -> None:
        self._config = config if config is not None else UploadConfig()
        self._serving: dict[Hashable, tuple[float, float | None]] = {}
        """Upload -> (started at, expected end or None)."""
        self._waiting: deque[Hashable] = deque()
        self._promises: list[float] = []  # sorted times told to declined requesters
        self._mean: float | None = None  # mean upload duration

    @property
    def config(self) -> UploadConfig:
        return self._config

    @property
    def serving(self) -> int:
        return len(self._serving)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def request(self, key: Hashable, now: float, *, patient: bool = False) -> str | float:
        """A request arrived: :data:`SERVE` (start sending now), :data:`QUEUE` (wait for
        :meth:`end` to start it) or the ``Retry-After`` of a 503, in seconds (rule 2); a
        ``patient`` one is never declined (rule 3)."""
        if key in self._serving or key in self._waiting:
            raise ValueError(f"request {key!r} is already here")
        if len(self._serving) < self._config.slots:
            self._serving[key] = (now, None)
            return SERVE
        if patient or len(self._waiting) < self._config.queue:
            self._waiting.append(key)
            return QUEUE
        return self._decline(now)

    def expect(self, key: Hashable, end_at: float) -> None:
        """The shell's estimate of when upload ``key`` will end (bytes left / its rate)."""
        entry = self._serving.get(key)
        if entry is not None:
            self._serving[key] = (entry[0], end_at)

    def end(self, key: Hashable, now: float) -> Hashable | None:
        """Upload ``key`` ended (sent, or cut off), or a waiting request went away.
        Returns the waiting request that starts now, if one does."""
        entry = self._serving.pop(key, None)
        if entry is None:
            if key in self._waiting:
                self._waiting.remove(key)
            return None
        duration = now - entry[0]
        if self._mean is None:
            self._mean = duration
        else:
            self._mean += DURATION_SMOOTHING * (duration - self._mean)
        if not self._waiting:
            return None
        started = self._waiting.popleft()
        self._serving[started] = (now, None)
        return started

    def _decline(self, now: float) -> float:
        promises = self._promises
        del promises[: bisect.bisect_right(promises, now)]
        mean = self._mean or 0.0
        ends = sorted(
            end if end is not None and end > now else max(now, start + mean)
            for start, end in self._serving.values()
        )
        k = len(promises)
        if k < len(ends):
            due = ends[k]
        else:
            rounds = (k - len(ends)) // self._config.slots + 1
            due = ends[(k - len(ends)) % len(ends)] + rounds * mean
        bisect.insort(promises, due)
        return max(0.0, due - now)
