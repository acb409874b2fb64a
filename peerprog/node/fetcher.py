"""The fetch loop of one model: the asyncio shell around :class:`peerprog.swarm.driver.Driver`.

It only pumps: it calls ``driver.step(loop.time())`` after every report and at
``driver.next_wakeup()``, does what each action says (a range request, a ``have`` request,
a cancel), and reports what came back, with the time it came. Every decision of the
fetch (which chunks from whom, what a stall, a 503 or a short body means, when a source
is asked for its ``have``, lost or absent) is the driver's; the I/O is here: HTTP,
verifying each chunk against the signed manifest and writing it (in a worker), metrics.
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
from peerprog.swarm import Bitfield
from peerprog.swarm.driver import (
    Action,
    AskHave,
    Banned,
    Cancel,
    CheckManifest,
    Driver,
    DriverConfig,
    Fetch,
    SourceDirectory,
    SourceUsed,
    StopHave,
)
from peerprog.swarm.havelog import HaveDelta

log = logging.getLogger("peerprog.fetch")
T = TypeVar("T")


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
    def write_chunks(self, chunks: Sequence[tuple[int, Sequence[Any]]]) -> None: ...


class Directory(SourceDirectory, Protocol):
    """The peer table, as the fetch uses it: the driver's view, and the kind of a source
    for the metrics (:class:`~peerprog.swarm.PeerTable`)."""

    def source_kind(self, key: str, model_id: str) -> str: ...


@dataclass(frozen=True)
class FetchSettings:
    """How one fetch runs."""

    driver: DriverConfig
    request_timeout: float
    """Backstop on one range request beyond the driver's own deadline."""
    seed: int
    """Seed of the scheduler's random tie-break (different on each node)."""


class _BadChunk(VerificationError):
    def __init__(self, index: int, message: str) -> None:
        super().__init__(message)
        self.index = index


class Fetcher:
    """Fetches one model until it is complete (or the task running :meth:`run` is
    cancelled: chunk writes under way are awaited, never abandoned)."""

    def __init__(
        self,
        state: ModelState,
        *,
        transport: ChunkTransport,
        sink: ChunkSink,
        sources: Directory,
        disk: DiskGuard,
        on_stored: Callable[[ModelState, int], None],
        settings: FetchSettings,
        workers: Executor,
        on_banned: Callable[[str], None] = lambda _key: None,
    ) -> None:
        """``workers`` verify and write chunks (several at once on several cores);
        ``on_banned(key)``: a source was banned (the shell ends what it holds open to it)."""
        self.state = state
        self._transport = transport
        self._sink = sink
        self._dir = sources
        self._disk = disk
        self._on_stored = on_stored
        self._settings = settings
        self._workers = workers
        self._on_banned = on_banned
        m = state.manifest
        self.driver = Driver(
            state.model_id,
            [lv.chunks for lv in m.levels],
            [c.length for c in m.chunks],
            sources,
            have=state.have.indices(),
            config=settings.driver,
            seed=settings.seed,
        )
        self._largest = max((c.length for c in m.chunks), default=0)
        self._scope = TaskScope(f"fetch {m.name} v{m.version}")
        """Owns the requests and ``have`` reads; every one is awaited when the fetch ends."""
        self._requests: dict[int, asyncio.Task[None]] = {}
        self._haves: dict[str, asyncio.Task[None]] = {}
        self._wake = asyncio.Event()

    @property
    def model_id(self) -> str:
        return self.state.model_id

    def wake(self) -> None:
        self._wake.set()

    def landed_elsewhere(self, index: int, kind: str) -> None:
        """Chunk ``index`` came from outside this fetch (``kind``: ``bittorrent``), verified
        and stored: counted and recorded as a chunk of this fetch's is, and asked of
        nobody."""
        if index not in self.state.have:
            self._tally(kind, kind, self.state.manifest.chunks[index].length)
            self._on_stored(self.state, index)
        self.driver.on_held(index, asyncio.get_running_loop().time())
        self._wake.set()

    def peers_changed(self) -> None:
        """The node learned of a new peer: look for sources at once."""
        self.driver.peers_changed()
        self._wake.set()

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
            while not self.driver.complete:
                now = loop.time()
                hold = self._disk.paused(now, self._largest)
                for action in self.driver.step(now, hold=hold):
                    self._do(action)
                wake = self.driver.next_wakeup()
                if not self._wake.is_set() and not self.driver.complete:
                    left = 1.0 if wake is None else min(1.0, wake - now)
                    if hold:
                        left = min(left, self._disk.until - now)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(max(0.0, left) + 0.001):
                            await self._wake.wait()
                self._wake.clear()
        finally:
            await self._scope.aclose()
        log.info("%s v%d complete", m.name, m.version)

    def _do(self, action: Action) -> None:
        if isinstance(action, Fetch):
            metrics = self.state.metrics
            level = action.level
            metrics.requests += len(action.chunks)
            metrics.requests_by_level[level] = metrics.requests_by_level.get(level, 0) + len(
                action.chunks
            )
            metrics.first_request_at.setdefault(level, time.time())
            name = f"chunks {action.chunks[0]}-{action.chunks[-1]} from {action.source.key}"
            self._requests[action.id] = self._scope.spawn(self._fetch(action), name=name)
        elif isinstance(action, Cancel):
            task = self._requests.pop(action.id, None)
            if task is not None:
                task.cancel()
        elif isinstance(action, AskHave | CheckManifest):
            key = action.source.key
            self._haves[key] = self._scope.spawn(self._have(action), name=f"have {key}")
        elif isinstance(action, StopHave):
            task = self._haves.pop(action.key, None)
            if task is not None:
                task.cancel()
        elif isinstance(action, SourceUsed):
            if action.used:
                self.state.sources.add(action.key)
            else:
                self.state.sources.discard(action.key)
        elif isinstance(action, Banned):
            metrics = self.state.metrics
            log.warning(
                "banned %s for model %s: chunk %d failed its hash",
                action.key,
                self.state.manifest.name,
                action.index,
            )
            if action.key not in metrics.peers_banned:
                metrics.peers_banned.append(action.key)
            self._on_banned(action.key)

    # --- have ------------------------------------------------------------------------------

    async def _have(self, action: AskHave | CheckManifest) -> None:
        """One read of a source's have (a long-poll of its have stream, its plain have, or
        a web seed's manifest), reported to the driver."""
        loop = asyncio.get_running_loop()
        src = action.source
        n = len(self.state.manifest.chunks)
        delta: HaveDelta | None = None
        try:
            if isinstance(action, CheckManifest):
                await self._transport.get_manifest(src.root, self.model_id)
            elif action.since is None:
                full = await self._transport.get_have(src.root, self.model_id, n)
                delta = HaveDelta("", 0, full=full)
            else:
                try:
                    delta = await self._transport.get_have_since(
                        src.root, self.model_id, n, action.since, action.wait
                    )
                except Refused:  # an older peer: it has no have stream
                    self.driver.on_have_unsupported(src.key, loop.time())
                    return
            self.driver.on_have(src.key, delta, loop.time())
        except (TransportError, PeerFault) as e:
            if not isinstance(e, NotFound):
                log.debug("%s: %s", src.key, e)
            self.driver.on_have_failed(src.key, loop.time())
        finally:
            if self._haves.get(src.key) is asyncio.current_task():
                del self._haves[src.key]
            self.wake()

    # --- chunks ----------------------------------------------------------------------------

    async def _fetch(self, fetch: Fetch) -> None:
        """One range request for a run of consecutive chunks, streamed; each chunk is
        verified and written (in a worker) as soon as its bytes are in, and reported."""
        loop = asyncio.get_running_loop()
        src = fetch.source
        _, offset, _ = self._sink.span(fetch.chunks[0])
        _, last_offset, last_length = self._sink.span(fetch.chunks[-1])
        try:
            # The driver cancels a stalled request; this is a backstop.
            hard = self._settings.request_timeout + max(0.0, fetch.deadline - loop.time())
            lv = self.state.manifest.levels[fetch.level]
            stop = last_offset + last_length
            async with self._transport.get_range(
                src.root, self.model_id, fetch.level, offset, stop, lv.bytes, hard
            ) as body:
                if body.whole:
                    self.driver.on_whole(fetch, loop.time())
                await self._take(fetch, body)
            self.driver.on_end(fetch, loop.time())
        except (VerificationError, PeerFault) as e:
            self.state.metrics.chunks_failed += 1
            index = e.index if isinstance(e, _BadChunk) else fetch.chunks[0]
            log.debug("chunk %d from %s: %s", index, src.key, e)
            self.driver.on_bad_chunk(fetch, index, loop.time())
        except Busy as e:  # its upload slots are taken: not a failure
            log.debug("chunks %d-%d: %s", fetch.chunks[0], fetch.chunks[-1], e)
            self.state.metrics.requests_declined += 1
            self.driver.on_busy(fetch, e.retry_after, loop.time())
        except TransportError as e:
            log.debug(
                "chunks %d-%d from %s failed: %s", fetch.chunks[0], fetch.chunks[-1], src.key, e
            )
            self.driver.on_failed(fetch, loop.time())
        except OSError as e:  # not the peer's fault
            self.driver.on_aborted(fetch, loop.time())
            if isinstance(e, FileNotFoundError):  # the model was dropped meanwhile
                log.debug("%s: model files gone", self.state.manifest.name)
            else:
                self._disk.failed(
                    CHUNKS,
                    f"cannot store chunks of {self.state.manifest.name}: {e.strerror or e}",
                    loop.time(),
                )
        finally:
            if self._requests.get(fetch.id) is asyncio.current_task():
                del self._requests[fetch.id]
            self.wake()

    async def _take(self, fetch: Fetch, body: RangeBody) -> None:
        """Cut an answer's body into the chunks it covers and land them as they complete;
        report the body's progress as its pieces arrive."""
        loop = asyncio.get_running_loop()
        m = self.state.manifest
        end = body.start + body.length
        spans = []
        for i in m.levels[fetch.level].chunks:
            _, offset, length = self._sink.span(i)
            if offset >= body.start and offset + length <= end:
                spans.append((i, offset - body.start, length))
        landing = _GroupCommit(lambda batch: self._land(fetch, batch))
        try:
            k, pos, parts = 0, 0, []  # the chunk being filled, the stream position
            async for piece in body.pieces():
                self.driver.on_progress(fetch, loop.time())
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
                            landing.add(i, parts)
                        else:  # held already (another source was faster): not short
                            self.driver.on_chunk(fetch, i, loop.time())
                        k, parts = k + 1, []
                landing.check()
            await landing.finish()
        finally:
            await landing.abandon()

    async def _land(self, fetch: Fetch, batch: list[tuple[int, list[memoryview]]]) -> None:
        """Verify a batch of chunks and write the good ones (in a worker: hashing and
        writing release the GIL); then tell the driver and the catalog. Raises for the first
        chunk that failed its hash (those before it are landed)."""
        loop = asyncio.get_running_loop()
        began = loop.time()
        work = loop.run_in_executor(self._workers, self._verify_write, batch)
        good, bad = await _finish(work)
        if good:
            self._disk.succeeded(CHUNKS, began)
        now = loop.time()
        for index in good:
            self.driver.on_chunk(fetch, index, now)
            if index not in self.state.have:
                self._count(fetch.source.key, self.state.manifest.chunks[index].length)
                self._on_stored(self.state, index)
        self.wake()
        if bad is not None:
            raise _BadChunk(bad, f"chunk {bad} from {fetch.source.key} failed its hash")

    def _verify_write(
        self, batch: list[tuple[int, list[memoryview]]]
    ) -> tuple[list[int], int | None]:
        """The chunks of ``batch`` that verified, up to the first that did not (its index, or
        None); those not held yet are written, adjacent ones in one write."""
        good, bad = [], None
        chunks = self.state.manifest.chunks
        for index, parts in batch:
            h = hashlib.sha256()
            for p in parts:
                h.update(p)
            if h.digest() != chunks[index].sha256:
                bad = index
                break
            good.append(index)
        fresh = [(i, parts) for i, parts in batch[: len(good)] if i not in self.state.have]
        if fresh:
            self._sink.write_chunks(fresh)
        return good, bad

    def _count(self, key: str, nbytes: int) -> None:
        # asked now, not when the source was found: its announce may have come since
        self._tally(self._dir.source_kind(key, self.model_id), key, nbytes)

    def _tally(self, kind: str, key: str, nbytes: int) -> None:
        """A verified chunk of ``nbytes`` from source ``key`` of ``kind``, in the metrics."""
        metrics = self.state.metrics
        metrics.chunks_verified += 1
        metrics.bytes_by_source[kind] = metrics.bytes_by_source.get(kind, 0) + nbytes
        metrics.bytes_by_peer[key] = metrics.bytes_by_peer.get(key, 0) + nbytes


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


class _GroupCommit:
    """Lands one body's chunks as they complete, one batch at a time: while a batch is
    verified and written, the chunks completing meanwhile queue up and go together in the
    next (one worker job, one write and one wake-up per batch: on a fast link a batch
    holds many chunks, on a slow one each chunk lands alone as soon as it is in)."""

    def __init__(self, land: Callable[[list[tuple[int, list[memoryview]]]], Awaitable[None]]):
        self._land = land
        self._queue: list[tuple[int, list[memoryview]]] = []
        self._task: asyncio.Task[None] | None = None

    def add(self, index: int, parts: list[memoryview]) -> None:
        self._queue.append((index, parts))
        if self._task is None:
            self._task = asyncio.create_task(self._drain())

    async def _drain(self) -> None:
        while self._queue:
            batch, self._queue = self._queue, []
            await self._land(batch)
        self._task = None

    def check(self) -> None:
        """Raise what a batch raised (the body need not be read on)."""
        task = self._task
        if task is not None and task.done():
            task.result()

    async def finish(self) -> None:
        """Wait until every chunk added is landed; raise what went wrong."""
        if self._task is not None:
            await self._task

    async def abandon(self) -> None:
        """Stop: a batch being written ends first (:func:`_finish`), the queue is dropped."""
        self._queue = []
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
