"""Polls every node's local API into timelines: level reached when, bytes over time, bytes
by source, bytes uploaded. Times are seconds since the race started (``t0``)."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

import aiohttp

from peerprog import AsyncClient
from peerprog.api.errors import ApiError
from peerprog_demo.localapi import MetricsReader, bytes_by_source, bytes_uploaded, parse_metrics

STATUS_EVERY = 0.1
METRICS_EVERY = 0.5
RATE_WINDOW = 2.0


class Watched(Protocol):
    """A node to poll (:class:`peerprog_demo.swarm.NodeSpec` is one)."""

    @property
    def name(self) -> str:
        """The node's name."""
        ...

    @property
    def role(self) -> str:
        """``seed`` or ``edge``."""
        ...

    @property
    def socket(self) -> Path:
        """Its local API socket."""
        ...


@dataclass(frozen=True)
class Event:
    """Something worth a log line: a level reached, a node complete."""

    t: float
    node: str
    kind: str
    """``level`` or ``complete``."""
    level: int
    bytes: int


@dataclass
class NodeTrack:
    """What is known of one node's copy of the model."""

    name: str
    role: str
    level: int = -1
    levels_total: int = 0
    bytes_received: int = 0
    bytes_total: int = 0
    peers: int = 0
    complete_at: float | None = None
    level_times: dict[int, float] = field(default_factory=dict)
    level_bytes: dict[int, int] = field(default_factory=dict)
    by_source: dict[str, int] = field(default_factory=dict)
    uploaded: int = 0
    samples: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=4096))
    history: list[tuple[float, int]] = field(default_factory=list)

    upload_samples: deque[tuple[float, int]] = field(default_factory=lambda: deque(maxlen=4096))

    def rate(self, now: float) -> float:
        """Bytes/s received over the last :data:`RATE_WINDOW` seconds."""
        if self.complete_at is not None:
            return 0.0
        return window_rate(self.samples, now)

    def upload_rate(self, now: float) -> float:
        """Bytes/s uploaded over the last :data:`RATE_WINDOW` seconds."""
        return window_rate(self.upload_samples, now)

    def record(self, t: float, status: dict[str, object]) -> list[Event]:
        """Take in a ``GET /v1/models/<name>`` answer seen at ``t``; the events it makes."""
        events: list[Event] = []
        level = _int(status.get("level"), -1)
        self.levels_total = _int(status.get("levels_total"), self.levels_total)
        self.bytes_received = _int(status.get("bytes_received"), self.bytes_received)
        self.bytes_total = _int(status.get("bytes_total"), self.bytes_total)
        self.peers = _int(status.get("peers"), self.peers)
        if not self.samples or self.samples[-1][1] != self.bytes_received:
            self.samples.append((t, self.bytes_received))
            self.history.append((t, self.bytes_received))
        if self.role == "seed":  # it holds every level from the start
            self.level = max(self.level, level)
            return events
        for n in range(self.level + 1, level + 1):
            self.level_times[n] = t
            self.level_bytes[n] = self.bytes_received
            events.append(Event(t, self.name, "level", n, self.bytes_received))
        self.level = max(self.level, level)
        if status.get("complete") is True and self.complete_at is None:
            self.complete_at = t
            events.append(Event(t, self.name, "complete", self.level, self.bytes_received))
        return events


def window_rate(samples: Sequence[tuple[float, int]], now: float) -> float:
    """The mean rate of a byte counter over the last :data:`RATE_WINDOW` seconds to ``now``."""
    if not samples:
        return 0.0
    t1, b1 = now, samples[-1][1]
    t0, b0 = t1, b1
    for t, b in reversed(samples):
        t0, b0 = t, b
        if t1 - t >= RATE_WINDOW:
            break
    return (b1 - b0) / (t1 - t0) if t1 - t0 > 0.2 else 0.0


def _int(v: object, default: int) -> int:
    return v if isinstance(v, int) and not isinstance(v, bool) else default


class Monitor:
    """Polls the nodes of ``specs`` for model ``name``; ``tracks`` holds what it saw."""

    def __init__(
        self,
        specs: Sequence[Watched],
        name: str,
        clock: Callable[[], float],
        on_event: Callable[[Event], None],
    ) -> None:
        self.name = name
        self.clock = clock
        self.on_event = on_event
        self.clients = {s.name: AsyncClient(s.socket, timeout=5.0) for s in specs}
        self.metrics = {s.name: MetricsReader(s.socket) for s in specs}
        self.tracks = {s.name: NodeTrack(s.name, s.role) for s in specs}

    async def close(self) -> None:
        """Close every API connection."""
        for client in self.clients.values():
            await client.close()
        for reader in self.metrics.values():
            await reader.close()

    @property
    def edges(self) -> list[NodeTrack]:
        """The edge nodes' tracks, in order."""
        return [t for t in self.tracks.values() if t.role == "edge"]

    @property
    def all_complete(self) -> bool:
        """Does every edge hold the exact model?"""
        return all(t.complete_at is not None for t in self.edges)

    async def poll_status(self) -> None:
        """One status request to every node."""
        await asyncio.gather(*(self._status(n) for n in self.tracks))

    async def _status(self, node: str) -> None:
        with contextlib.suppress(ApiError):  # not up yet, or the model not known yet
            doc = await self.clients[node].status(self.name)
            for ev in self.tracks[node].record(self.clock(), doc):
                self.on_event(ev)

    async def poll_metrics(self) -> None:
        """One ``/metrics`` request to every node: bytes by source, bytes uploaded."""
        await asyncio.gather(*(self._metrics(n) for n in self.tracks))

    async def _metrics(self, node: str) -> None:
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError, ValueError):
            samples = parse_metrics(await self.metrics[node].read())
            track = self.tracks[node]
            track.by_source = bytes_by_source(samples, self.name) or track.by_source
            up = bytes_uploaded(samples, self.name)
            if up is not None:
                track.uploaded = up
                track.upload_samples.append((self.clock(), up))

    async def run(self) -> None:
        """Poll until cancelled."""
        last_metrics = -METRICS_EVERY
        while True:
            await self.poll_status()
            if self.clock() - last_metrics >= METRICS_EVERY:
                last_metrics = self.clock()
                await self.poll_metrics()
            await asyncio.sleep(STATUS_EVERY)
