"""The fetch loop of one model: the asyncio shell around :class:`peerprog.swarm.Scheduler`.

It only pumps: it asks the scheduler which chunks to request from whom
(``next_requests(now)``), runs those requests, reports each outcome back, and re-arms the
timer the scheduler asks for (``next_deadline()``). Every chunk is verified against the
signed manifest before it is written; a chunk that fails gets its sender banned.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from peerprog.errors import PeerFault, VerificationError
from peerprog.manifest import verify_chunk
from peerprog.node.peerclient import NotFound, TransportError
from peerprog.swarm import Request, Scheduler, SchedulerConfig

if TYPE_CHECKING:
    from peerprog.node.daemon import Node
    from peerprog.node.state import ModelState

log = logging.getLogger("peerprog.fetch")
RECHECK_ABSENT = 5.0  # seconds before asking again a peer that did not hold the model
DISK_FULL_PAUSE = 2.0  # seconds without new requests after the store refused a write
REVIVE_AFTER = 30.0  # seconds before a peer dropped for failures, that still answers, is
# asked again: a bad spell of a link must not lose a source for good
SOURCES_REFRESH = 0.5  # seconds between looks for new peers (also on wake by the node)


@dataclass(frozen=True)
class Source:
    """Where chunks can come from: a peer or a web seed."""

    key: str  # the scheduler's peer id
    root: str  # URL under which the store layout is served
    kind: str  # "peer", "seed" or "web_seed"


class Fetcher:
    """Fetches one model until it is complete (or the fetcher is cancelled)."""

    def __init__(self, node: Node, state: ModelState) -> None:
        self.node = node
        self.state = state
        m = state.manifest
        limits = node.config.limits
        self.sched = Scheduler(
            [lv.chunks for lv in m.levels],
            [c.length for c in m.chunks],
            have=state.have.indices(),
            config=SchedulerConfig(max_in_flight_total=limits.max_in_flight),
            seed=hash((node.url, state.model_id)) & 0xFFFFFFFF,
        )
        self.sources: dict[str, Source] = {}
        self._tasks: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._pollers: dict[str, asyncio.Task[None]] = {}
        self._absent_until: dict[str, float] = {}
        self._wake = asyncio.Event()
        self._disk_full_until = 0.0
        self._refresh_due = True

    def wake(self) -> None:
        self._wake.set()

    def peers_changed(self) -> None:
        """The node learned of a new peer: look for sources at once."""
        self._refresh_due = True
        self._wake.set()

    # --- sources ---------------------------------------------------------------------------

    def refresh_sources(self) -> None:
        """Start polling any newly known peer or web seed for this model."""
        now = time.monotonic()
        for src in self.node.sources_for(self.state):
            if src.key in self.sched.banned or src.key in self._pollers:
                continue
            if self._absent_until.get(src.key, 0.0) > now:
                continue
            self.sources[src.key] = src
            self._pollers[src.key] = asyncio.create_task(self._poll(src))

    async def _poll(self, src: Source) -> None:
        """Keep the scheduler's view of what ``src`` holds up to date."""
        client = self.node.client
        m = self.state.manifest
        loop = asyncio.get_running_loop()
        try:
            if src.kind == "web_seed":
                await client.get_manifest(src.root, self.state.model_id)
                self.sched.add_peer(src.key, None, loop.time())
                self.state.sources.add(src.key)
                self.wake()
                return
            added = False
            dropped_at: float | None = None
            while not self.sched.complete and src.key not in self.sched.banned:
                have = await client.get_have(src.root, self.state.model_id, len(m.chunks))
                now = loop.time()
                if not added:
                    self.sched.add_peer(src.key, have, now)
                    added = True
                    self.state.sources.add(src.key)
                elif src.key in self.sched.peers():
                    self.sched.set_have(src.key, have, now)
                    dropped_at = None
                elif dropped_at is None:  # dropped after repeated failures, yet it answers
                    dropped_at = now
                elif now - dropped_at >= REVIVE_AFTER:  # give it a fresh start
                    log.debug("%s: asking again after %.0f s", src.key, now - dropped_at)
                    self.sched.add_peer(src.key, have, now)
                    dropped_at = None
                self.wake()
                await asyncio.sleep(self.node.config.peers.have_poll_interval)
        except (TransportError, PeerFault) as e:
            if not isinstance(e, NotFound):
                log.debug("%s: %s", src.key, e)
            self._absent_until[src.key] = time.monotonic() + RECHECK_ABSENT
            for req in self.sched.remove_peer(src.key, loop.time()):
                self._cancel(req)
            self.state.sources.discard(src.key)
            self.wake()
        finally:
            self._pollers.pop(src.key, None)

    # --- the loop --------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        m = self.state.manifest
        log.info(
            "fetching %s v%d (%s…): %d chunks, %d levels",
            m.name,
            m.version,
            self.state.model_id[:12],
            len(m.chunks),
            m.levels_total,
        )
        try:
            next_refresh = 0.0
            while not self.sched.complete:
                now = loop.time()
                if self._refresh_due or now >= next_refresh:
                    self._refresh_due = False
                    self.refresh_sources()
                    next_refresh = now + SOURCES_REFRESH
                for req in self.sched.handle_timer(now):
                    self._cancel(req)
                if now >= self._disk_full_until:
                    for req in self.sched.next_requests(now):
                        self._start(req)
                deadline = self.sched.next_deadline()
                timeout = 1.0 if deadline is None else min(1.0, max(0.0, deadline - now))
                if not self._wake.is_set():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(timeout + 0.001):
                            await self._wake.wait()
                self._wake.clear()
        finally:
            for task in [*self._tasks.values(), *self._pollers.values()]:
                task.cancel()
        log.info("%s v%d complete", m.name, m.version)

    def _start(self, req: Request) -> None:
        metrics = self.state.metrics
        level = self.state.manifest.level_of_chunk(req.index)
        metrics.requests += 1
        metrics.requests_by_level[level] = metrics.requests_by_level.get(level, 0) + 1
        metrics.first_request_at.setdefault(level, time.time())
        self._tasks[(req.peer, req.index)] = asyncio.create_task(self._fetch(req))

    def _cancel(self, req: Request) -> None:
        task = self._tasks.pop((req.peer, req.index), None)
        if task is not None:
            task.cancel()

    async def _fetch(self, req: Request) -> None:
        loop = asyncio.get_running_loop()
        src = self.sources[req.peer]
        m = self.state.manifest
        length = m.chunks[req.index].length
        # The scheduler's deadline cancels a stalled request; this is only a backstop.
        hard = self.node.config.limits.request_timeout + max(0.0, req.deadline - loop.time())
        try:
            data = await self.node.client.get_chunk(
                src.root, self.state.model_id, req.index, length, timeout=hard
            )
            # hashlib releases the GIL: hashing in a worker keeps the loop pumping.
            await asyncio.to_thread(verify_chunk, m, req.index, data)
        except (VerificationError, PeerFault) as e:
            self._tasks.pop((req.peer, req.index), None)
            self._on_bad(req, e)
            return
        except TransportError as e:
            self._tasks.pop((req.peer, req.index), None)
            log.debug("chunk %d from %s failed: %s", req.index, req.peer, e)
            self.sched.on_failed(req.peer, req.index, loop.time())
            self.wake()
            return
        try:
            if req.index not in self.state.have:
                await asyncio.to_thread(
                    self.node.store.write_chunk, self.state.model_id, req.index, data
                )
        except OSError as e:
            self._tasks.pop((req.peer, req.index), None)
            self.node.store_error = f"cannot store chunk {req.index} of {m.name}: {e.strerror or e}"
            log.error("%s; pausing downloads", self.node.store_error)
            self._disk_full_until = loop.time() + DISK_FULL_PAUSE
            self.sched.release(req.peer, req.index, loop.time())  # not the peer's fault
            self.wake()
            return
        self.node.store_error = None
        self._tasks.pop((req.peer, req.index), None)
        for dup in self.sched.on_chunk(req.peer, req.index, loop.time()):
            self._cancel(dup)
        if req.index not in self.state.have:
            self._count(src, len(data))
            self.node.on_chunk_stored(self.state, req.index)
        self.wake()

    def _count(self, src: Source, nbytes: int) -> None:
        metrics = self.state.metrics
        metrics.chunks_verified += 1
        metrics.bytes_by_source[src.kind] = metrics.bytes_by_source.get(src.kind, 0) + nbytes
        metrics.bytes_by_peer[src.key] = metrics.bytes_by_peer.get(src.key, 0) + nbytes

    def _on_bad(self, req: Request, err: Exception) -> None:
        loop = asyncio.get_running_loop()
        metrics = self.state.metrics
        metrics.chunks_failed += 1
        log.warning("banned %s for model %s: %s", req.peer, self.state.manifest.name, err)
        if req.peer not in metrics.peers_banned:
            metrics.peers_banned.append(req.peer)
        for other in self.sched.on_bad_chunk(req.peer, req.index, loop.time()):
            self._cancel(other)
        self.state.sources.discard(req.peer)
        self.wake()
