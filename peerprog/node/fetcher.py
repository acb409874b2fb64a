"""The fetch loop of one model: the asyncio shell around :class:`peerprog.swarm.Scheduler`.

It only pumps: it asks the scheduler which chunks to request from whom
(``next_requests(now)``), runs those requests, reports each outcome back, and re-arms the
timer the scheduler asks for (``next_deadline()``). Whether a source is worth asking is the
peer table's call (:mod:`peerprog.swarm.peertable`); every chunk is verified against the
signed manifest before it is written, and one that fails gets its sender banned. Time is
``loop.time()`` throughout.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import time
from collections.abc import Awaitable, Callable, Sequence
from concurrent.futures import Executor
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

from peerprog.errors import PeerFault, VerificationError
from peerprog.node.diskguard import CHUNKS, DiskGuard
from peerprog.node.peerclient import Busy, NotFound, RangeBody, Refused, TransportError
from peerprog.node.state import ModelState
from peerprog.node.tasks import TaskScope
from peerprog.swarm import (
    Bitfield,
    Request,
    Scheduler,
    SchedulerConfig,
    Source,
    SourceState,
    havelog,
)
from peerprog.swarm.havelog import HaveDelta

log = logging.getLogger("peerprog.fetch")
T = TypeVar("T")
RUN_BYTES = 16 << 20
"""Most bytes asked of a peer in one request (a run of consecutive chunks)."""
REFRESH = 1.0
"""Longest time between two looks at the sources (new peers also wake the loop at once)."""
LONG_POLL = 25.0
"""Most seconds a peer may hold our ``have?since=`` long-poll (at most half the request
timeout, so that the read timeout never cuts a held answer)."""


class ChunkTransport(Protocol):
    """The requests a fetch makes (:class:`~peerprog.node.peerclient.PeerClient`)."""

    async def get_have(self, root: str, model_id: str, count: int) -> Bitfield: ...
    async def get_have_since(
        self, root: str, model_id: str, count: int, since: tuple[str, int], wait: float
    ) -> HaveDelta: ...
    async def get_manifest(self, root: str, model_id: str) -> bytes: ...
    def get_range(
        self,
        root: str,
        model_id: str,
        level: int,
        start: int,
        stop: int,
        level_size: int,
        timeout: float,
    ) -> AbstractAsyncContextManager[RangeBody]: ...


class ChunkSink(Protocol):
    """Where verified chunks go (:class:`~peerprog.store.ModelFiles`); thread-safe."""

    def span(self, index: int) -> tuple[int, int, int]: ...
    def write_chunk(self, index: int, data: Sequence[Any]) -> None: ...


class SourceDirectory(Protocol):
    """Which sources there are and how healthy (:class:`~peerprog.swarm.PeerTable`)."""

    def sources(self, model_id: str) -> list[Source]: ...
    def source_kind(self, key: str, model_id: str) -> str: ...
    def source_state(self, key: str, model_id: str, now: float) -> SourceState: ...
    def source_absent(self, key: str, model_id: str, now: float) -> None: ...
    def source_answered(self, key: str, model_id: str, now: float) -> SourceState: ...
    def fetch_failed(self, key: str, model_id: str, failures: int, now: float) -> bool: ...
    def ban(self, key: str, now: float) -> None: ...
    def is_banned(self, key: str) -> bool: ...
    def next_expiry(self, model_id: str) -> float | None: ...


@dataclass(frozen=True)
class FetchSettings:
    """How one fetch runs."""

    scheduler: SchedulerConfig
    have_poll_interval: float
    """Seconds between polls of a peer's ``have``."""
    request_timeout: float
    """Backstop on one chunk request beyond the scheduler's own deadline."""
    seed: int
    """Seed of the scheduler's random tie-break (different on each node)."""


class Fetcher:
    """Fetches one model until it is complete (or the task running :meth:`run` is
    cancelled: chunk writes under way are awaited, never abandoned)."""

    def __init__(
        self,
        state: ModelState,
        *,
        transport: ChunkTransport,
        sink: ChunkSink,
        sources: SourceDirectory,
        disk: DiskGuard,
        on_stored: Callable[[ModelState, int], None],
        settings: FetchSettings,
        workers: Executor,
    ) -> None:
        """``workers`` verify and write chunks (several at once on several cores)."""
        self.state = state
        self._transport = transport
        self._sink = sink
        self._dir = sources
        self._disk = disk
        self._on_stored = on_stored
        self._settings = settings
        self._workers = workers
        self._whole: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._no_range: set[str] = set()
        """Sources that answered a range with their whole level."""
        """(source, level) → the request receiving that whole level from a source that
        ignores ``Range``: other requests for that level wait for it."""
        m = state.manifest
        self.sched = Scheduler(
            [lv.chunks for lv in m.levels],
            [c.length for c in m.chunks],
            have=state.have.indices(),
            config=settings.scheduler,
            seed=settings.seed,
        )
        self._largest = max((c.length for c in m.chunks), default=0)
        self._sources: dict[str, Source] = {}
        self._scope = TaskScope(f"fetch {m.name} v{m.version}")
        """Owns the requests and ``have`` polls; every one is awaited when the fetch ends."""
        self._tasks: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._pollers: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()
        self._refresh_due = True

    @property
    def model_id(self) -> str:
        return self.state.model_id

    def wake(self) -> None:
        self._wake.set()

    def peers_changed(self) -> None:
        """The node learned of a new peer: look for sources at once."""
        self._refresh_due = True
        self._wake.set()

    # --- sources ---------------------------------------------------------------------------

    def refresh_sources(self, now: float) -> None:
        """Start reading the ``have`` of every new source; let go of banned ones."""
        for key in [k for k in self._pollers if self._dir.is_banned(k)]:
            self._pollers.pop(key).cancel()
            self._lose(key, now)
        for src in self._dir.sources(self.model_id):
            if src.key in self._pollers or src.key in self.sched.banned:
                continue
            if self._dir.source_state(src.key, self.model_id, now) is SourceState.ABSENT:
                continue
            self._sources[src.key] = src
            self._pollers[src.key] = self._scope.spawn(self._poll(src), name=f"have {src.key}")

    async def _poll(self, src: Source) -> None:
        """Keep the scheduler's view of what ``src`` holds up to date while it answers: a
        peer's have stream, long-polled (a peer that does not take ``since``, and web
        seeds, are polled every ``have_poll_interval`` seconds)."""
        loop = asyncio.get_running_loop()
        n = len(self.state.manifest.chunks)
        wait = min(LONG_POLL, self._settings.request_timeout / 2)
        held: Bitfield | None = None  # what src holds, as far as we know (None: everything)
        since: tuple[str, int] | None = None if src.kind == "web_seed" else ("", 0)
        try:
            if src.kind == "web_seed":  # holds everything, if it holds the model at all
                await self._transport.get_manifest(src.root, self.model_id)
            while not self.sched.complete:
                delta: HaveDelta | None = None
                if since is not None:
                    try:
                        delta = await self._transport.get_have_since(
                            src.root, self.model_id, n, since, wait
                        )
                    except (Refused, NotFound):  # an older peer: poll its plain have
                        since = None
                        continue
                    since = (delta.epoch, delta.seq) if delta.epoch else None
                elif src.kind != "web_seed":
                    full = await self._transport.get_have(src.root, self.model_id, n)
                    delta = HaveDelta("", 0, full=full)
                if delta is not None:
                    if delta.full is not None:
                        held = delta.full.copy()
                    elif held is None:
                        raise PeerFault(f"{src.key}: a have delta before its bitfield")
                    else:
                        for i in delta.added:
                            held.set(i)
                now = loop.time()
                if self._dir.source_answered(src.key, self.model_id, now) is SourceState.ACTIVE:
                    if src.key not in self.sched.peers():
                        self.sched.add_peer(src.key, None if held is None else held.copy(), now)
                        self.state.sources.add(src.key)
                    elif delta is not None:
                        havelog.apply(self.sched, src.key, delta, now)
                    self.wake()
                if since is None:
                    await asyncio.sleep(self._settings.have_poll_interval)
        except (TransportError, PeerFault) as e:
            if not isinstance(e, NotFound):
                log.debug("%s: %s", src.key, e)
            self._dir.source_absent(src.key, self.model_id, loop.time())
            self._lose(src.key, loop.time())
        finally:
            if self._pollers.get(src.key) is asyncio.current_task():
                del self._pollers[src.key]

    def _lose(self, key: str, now: float) -> None:
        """Stop asking ``key`` for chunks (its requests in flight are cancelled)."""
        for req in self.sched.remove_peer(key, now):
            self._cancel(req)
        self.state.sources.discard(key)
        self.wake()

    def _judge(self, key: str, now: float) -> None:
        """After a failure of ``key``: the peer table says whether it is lost."""
        if self._dir.fetch_failed(key, self.model_id, self.sched.failures(key), now):
            log.debug("%s: too many failures, not asked for a while", key)
            self._lose(key, now)

    # --- the loop --------------------------------------------------------------------------

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        m = self.state.manifest
        log.info(
            "fetching %s v%d (%s…): %d chunks, %d levels",
            m.name,
            m.version,
            self.model_id[:12],
            len(m.chunks),
            m.levels_total,
        )
        try:
            next_refresh = 0.0
            while not self.sched.complete:
                now = loop.time()
                if self._refresh_due or now >= next_refresh:
                    self._refresh_due = False
                    self.refresh_sources(now)
                    expiry = self._dir.next_expiry(self.model_id)
                    next_refresh = now + REFRESH if expiry is None else min(now + REFRESH, expiry)
                expired = self.sched.handle_timer(now)
                for req in expired:
                    self._cancel(req)
                for key in {r.peer for r in expired}:
                    self._judge(key, now)
                if not self._disk.paused(now, self._largest):
                    self._start(self.sched.next_requests(now))
                deadline = self.sched.next_deadline()
                wait = next_refresh if deadline is None else min(deadline, next_refresh)
                if not self._wake.is_set():
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(max(0.0, min(1.0, wait - now)) + 0.001):
                            await self._wake.wait()
                self._wake.clear()
        finally:
            await self._scope.aclose()
        log.info("%s v%d complete", m.name, m.version)

    def _start(self, reqs: list[Request]) -> None:
        """Send the new requests, consecutive chunks of one level to one peer together."""
        for run in _runs(reqs, self._sink, RUN_BYTES):
            metrics = self.state.metrics
            level = self._sink.span(run[0].index)[0]
            metrics.requests += len(run)
            metrics.requests_by_level[level] = metrics.requests_by_level.get(level, 0) + len(run)
            metrics.first_request_at.setdefault(level, time.time())
            first, last = run[0].index, run[-1].index
            task = self._scope.spawn(
                self._fetch(run), name=f"chunks {first}-{last} from {run[0].peer}"
            )
            for req in run:
                self._tasks[(req.peer, req.index)] = task

    def _cancel(self, req: Request) -> None:
        """Give up a request; its answer is stopped once no request of its run is left."""
        task = self._tasks.pop((req.peer, req.index), None)
        if task is not None and task not in self._tasks.values():
            task.cancel()

    async def _fetch(self, run: list[Request]) -> None:
        """One request for a run of consecutive chunks: a byte range of a level file,
        streamed; each chunk is verified and written (in a worker) as soon as its bytes are
        in, and reported at once."""
        loop = asyncio.get_running_loop()
        peer = run[0].peer
        src = self._sources[peer]
        level, offset, _ = self._sink.span(run[0].index)
        _, last_offset, last_length = self._sink.span(run[-1].index)
        me = asyncio.current_task()
        assert me is not None
        try:
            whole = self._whole.get((peer, level))
            if whole is not None:  # this source sends whole levels: one is on its way
                with contextlib.suppress(Exception):
                    await asyncio.shield(whole)
            else:
                if peer in self._no_range:  # the level will come whole: others wait for it
                    self._whole[(peer, level)] = me
                # The scheduler's deadline cancels a stalled request; this is a backstop.
                hard = self._settings.request_timeout + max(0.0, run[-1].deadline - loop.time())
                lv = self.state.manifest.levels[level]
                stop = last_offset + last_length
                async with self._transport.get_range(
                    src.root, self.model_id, level, offset, stop, lv.bytes, hard
                ) as body:
                    if body.whole:
                        self._no_range.add(peer)
                        self._whole.setdefault((peer, level), me)
                    await self._take(src, level, body)
            missing = [r.index for r in run if r.index not in self.state.have]
            if missing:
                raise TransportError(f"{peer}: no chunk {missing[0]} in its answer")
        except (VerificationError, PeerFault) as e:
            self._on_bad(run[0], e)
        except Busy as e:  # its upload slots are taken: not a failure
            log.debug("chunks %d-%d: %s", run[0].index, run[-1].index, e)
            self.state.metrics.requests_declined += 1
            declined = [r.index for r in run if r.index not in self.state.have]
            self.sched.on_busy(peer, declined, loop.time(), e.retry_after)
        except TransportError as e:
            log.debug("chunks %d-%d from %s failed: %s", run[0].index, run[-1].index, peer, e)
            for r in run:
                if r.index not in self.state.have:
                    self.sched.on_failed(peer, r.index, loop.time())
            self._judge(peer, loop.time())
        except OSError as e:
            for r in run:  # not the peer's fault
                self.sched.release(peer, r.index, loop.time())
            if isinstance(e, FileNotFoundError):  # the model was dropped meanwhile
                log.debug("%s: model files gone", self.state.manifest.name)
            else:
                self._disk.failed(
                    CHUNKS,
                    f"cannot store chunks of {self.state.manifest.name}: {e.strerror or e}",
                    loop.time(),
                )
        finally:
            if self._whole.get((peer, level)) is me:
                del self._whole[(peer, level)]
            for r in run:
                if self._tasks.get((peer, r.index)) is me:
                    del self._tasks[(peer, r.index)]
            self.wake()

    async def _take(self, src: Source, level: int, body: RangeBody) -> None:
        """Cut an answer's body into the chunks it covers; land each as it completes."""
        m = self.state.manifest
        end = body.start + body.length
        spans = []
        for i in m.levels[level].chunks:
            _, offset, length = self._sink.span(i)
            if offset >= body.start and offset + length <= end:
                spans.append((i, offset - body.start, length))
        landing: list[asyncio.Task[None]] = []  # owned here: awaited before this returns
        try:
            k, pos, parts = 0, 0, []  # the chunk being filled, the stream position
            async for piece in body.pieces():
                view = memoryview(piece)
                while view and k < len(spans):
                    i, start, length = spans[k]
                    if pos < start:  # bytes before a chunk we take (not the case for 206)
                        skip = min(len(view), start - pos)
                        view, pos = view[skip:], pos + skip
                        continue
                    take = min(len(view), start + length - pos)
                    parts.append(view[:take])
                    view, pos = view[take:], pos + take
                    if pos == start + length:
                        if i not in self.state.have:
                            landing.append(asyncio.create_task(self._land(src, i, parts)))
                        k, parts = k + 1, []
            await _gather_first_error(landing)
        finally:
            for t in landing:
                t.cancel()
            await asyncio.gather(*landing, return_exceptions=True)

    async def _land(self, src: Source, index: int, parts: list[memoryview]) -> None:
        """Verify a chunk and write it (in a worker: hashing and writing release the GIL);
        then tell the scheduler and the catalog. Raises what went wrong."""
        loop = asyncio.get_running_loop()
        began = loop.time()
        work = loop.run_in_executor(self._workers, self._verify_write, index, parts)
        ok = await _finish(work)
        if not ok:
            raise VerificationError(f"chunk {index} from {src.key} failed its hash")
        self._disk.succeeded(CHUNKS, began)
        for dup in self.sched.on_chunk(src.key, index, loop.time()):
            self._cancel(dup)
        if index not in self.state.have:
            self._count(src, self.state.manifest.chunks[index].length)
            self._on_stored(self.state, index)
        self.wake()

    def _verify_write(self, index: int, parts: list[memoryview]) -> bool:
        h = hashlib.sha256()
        for p in parts:
            h.update(p)
        if h.digest() != self.state.manifest.chunks[index].sha256:
            return False
        if index not in self.state.have:
            self._sink.write_chunk(index, parts)
        return True

    def _count(self, src: Source, nbytes: int) -> None:
        metrics = self.state.metrics
        metrics.chunks_verified += 1
        # asked now, not when the source was found: its announce may have come since
        kind = self._dir.source_kind(src.key, self.model_id)
        metrics.bytes_by_source[kind] = metrics.bytes_by_source.get(kind, 0) + nbytes
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
        self._dir.ban(req.peer, loop.time())
        self.state.sources.discard(req.peer)
        self.wake()


async def _finish(work: Awaitable[T]) -> T:
    """Await a write to the end even if the caller is cancelled meanwhile (then re-raise
    the cancellation): a write abandoned half-way could land after its model was dropped."""
    fut = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(fut)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            await fut
        raise


async def _gather_first_error(tasks: list[asyncio.Task[None]]) -> None:
    """Wait for every task; raise the first error among them (the others still end)."""
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for r in results:
        if isinstance(r, BaseException):
            raise r


def _runs(reqs: list[Request], sink: ChunkSink, limit: int) -> list[list[Request]]:
    """``reqs`` grouped into runs of consecutive chunks of one level to one peer, each of
    at most ``limit`` bytes (a chunk alone may be more)."""
    runs: list[list[Request]] = []
    size = 0
    for req in sorted(reqs, key=lambda r: (r.peer, r.index)):
        level, _, length = sink.span(req.index)
        prev = runs[-1][-1] if runs else None
        if (
            prev is not None
            and prev.peer == req.peer
            and prev.index + 1 == req.index
            and sink.span(prev.index)[0] == level
            and size + length <= limit
        ):
            runs[-1].append(req)
            size += length
        else:
            runs.append([req])
            size = length
    return runs
