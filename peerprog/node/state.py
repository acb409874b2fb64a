"""One model on a node: its manifest, the chunks it holds, and their metrics.

Read by the peer server and the local API; changed by its fetcher (through the catalog).

The rule of what apps are told of and served lives here, once:
:attr:`ModelState.servable_level` is the best level whose chunks, with those of every level
before it, are held *and* recorded durably; only :meth:`ModelState.mark_durable` raises it.
The ``best`` answers, the status, the events, the metrics, the decoded levels and the
choice of the version served (:func:`peerprog.swarm.versions.served`) all read it, so
that nothing an app was given is taken back by a crash.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from dataclasses import dataclass, field

from peerprog.manifest import Manifest, SignedManifest
from peerprog.swarm import SOURCE_KINDS, Bitfield
from peerprog.swarm.havelog import HaveLog


@dataclass
class ModelMetrics:
    """Counters of one model on one node."""

    bytes_by_source: dict[str, int] = field(default_factory=lambda: dict.fromkeys(SOURCE_KINDS, 0))
    bytes_by_peer: dict[str, int] = field(default_factory=dict)
    chunks_verified: int = 0
    chunks_failed: int = 0
    chunks_from_disk: int = 0
    requests: int = 0
    requests_by_level: dict[int, int] = field(default_factory=dict)
    peers_banned: list[str] = field(default_factory=list)
    first_request_at: dict[int, float] = field(default_factory=dict)
    level_complete_at: dict[int, float] = field(default_factory=dict)
    bytes_uploaded: int = 0
    chunks_uploaded: int = 0
    uploads_declined: int = 0
    """Range requests of this model answered 503 (every upload slot taken)."""
    requests_declined: int = 0
    """Our range requests that a peer answered 503 (busy: tried again later)."""

    def to_json(self) -> dict[str, object]:
        return {
            "bytes_by_source": dict(self.bytes_by_source),
            "bytes_by_peer": dict(self.bytes_by_peer),
            "chunks_verified": self.chunks_verified,
            "chunks_failed": self.chunks_failed,
            "chunks_from_disk": self.chunks_from_disk,
            "requests": self.requests,
            "requests_by_level": {str(k): v for k, v in sorted(self.requests_by_level.items())},
            "peers_banned": list(self.peers_banned),
            "first_request_at": {str(k): v for k, v in sorted(self.first_request_at.items())},
            "level_complete_at": {str(k): v for k, v in sorted(self.level_complete_at.items())},
            "bytes_uploaded": self.bytes_uploaded,
            "chunks_uploaded": self.chunks_uploaded,
            "uploads_declined": self.uploads_declined,
            "requests_declined": self.requests_declined,
        }


class ModelState:
    """One model (one model id) on this node."""

    def __init__(self, signed: SignedManifest, have: Bitfield, *, origin: bool) -> None:
        self.signed = signed
        self.have = have
        self.origin = origin
        self.metrics = ModelMetrics()
        self.sources: set[str] = set()
        self.havelog = HaveLog(len(signed.manifest.chunks), have.indices(), epoch=new_epoch())
        """The numbered record of the chunks held, for peers' ``have?since=``."""
        self._news = asyncio.Event()
        self._missing = [
            sum(1 for i in lv.chunks if i not in have) for lv in signed.manifest.levels
        ]
        self.best_level = self._compute_best_level()
        """The best level held (every chunk of it and of the levels before it): what peers
        may fetch. Apps get :attr:`servable_level`."""
        self._servable = self.best_level  # ``have`` is what the store's record names
        self.created = time.time()
        self.rate: float | None = None
        """Bytes per second verified since the first chunk came (None before a second)."""
        self._rate_start: float | None = None
        self._received = 0

    @property
    def manifest(self) -> Manifest:
        return self.signed.manifest

    @property
    def model_id(self) -> str:
        return self.signed.model_id

    @property
    def version(self) -> int:
        return self.signed.manifest.version

    @property
    def complete(self) -> bool:
        return self.have.count() == len(self.manifest.chunks)

    @property
    def bytes_held(self) -> int:
        if self.complete:
            return self.manifest.total_bytes
        chunks = self.manifest.chunks
        return sum(chunks[i].length for i in self.have.indices())

    def _compute_best_level(self) -> int:
        best = -1
        for n, missing in enumerate(self._missing):
            if missing:
                break
            best = n
        return best

    def received(self, nbytes: int, now: float) -> None:
        """``nbytes`` were verified at ``now``: update :attr:`rate` (the average since
        the first chunk arrived)."""
        if self._rate_start is None:
            self._rate_start = now
        self._received += nbytes
        if now > self._rate_start:
            self.rate = self._received / (now - self._rate_start)

    def add_chunk(self, index: int) -> bool:
        """Record a stored chunk; returns True if it completed one or more levels."""
        if index in self.have:
            return False
        self.have.set(index)
        self.havelog.add(index)
        self._news.set()  # wakes the long-polls waiting for this model's news
        self._news = asyncio.Event()
        self._missing[self.manifest.level_of_chunk(index)] -= 1
        new_best = self._compute_best_level()
        gained = new_best > self.best_level
        self.best_level = new_best
        return gained

    @property
    def servable_level(self) -> int:
        """The level apps are served and told of (-1: none): the best level held whose
        chunks, and those of every level before it, are in the durable record. A model is
        created from its record (so what it holds at start is servable) and the level rises
        only through :meth:`mark_durable`; it never falls."""
        return self._servable

    def mark_durable(self, recorded: Bitfield) -> bool:
        """The chunks ``recorded`` are the durable record now (as written: less any found
        damaged); returns True if that raised :attr:`servable_level`."""
        level = -1
        for lv in self.manifest.levels[: self.best_level + 1]:
            if not all(i in recorded for i in lv.chunks):
                break
            level = lv.level
        if level <= self._servable:
            return False
        self._servable = level
        return True

    def news(self) -> asyncio.Event:
        """An event set at the next chunk recorded (a fresh one after each)."""
        return self._news

    def summary(self) -> dict[str, object]:
        """The model's status JSON of the local API (``GET /v1/models/<name>``, ``docs/api.md``)."""
        m = self.manifest
        return {
            "name": m.name,
            "model_id": self.model_id,
            "version": m.version,
            "codec": m.codec,
            "level": self.servable_level,
            "levels_total": m.levels_total,
            "bytes_received": self.bytes_held,
            "bytes_total": m.total_bytes,
            "complete": self.servable_level == m.levels_total - 1,
            "peers": len(self.sources),
            "files": len(m.files),
        }


def new_epoch() -> str:
    """A fresh have-stream epoch (one life of a log)."""
    return secrets.token_hex(8)
