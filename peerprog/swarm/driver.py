"""The fetch of one model, every decision of it: a sans-IO driver around the scheduler.

Like aioquic's connection, it never touches a socket, a clock or an event loop. Two shells
pump the very same object: the daemon's fetch loop (``peerprog.node.fetcher``) with real
HTTP, and the swarm simulator (``bench/simulate.py``) over simulated links. Whatever the
shell, it does only this::

    actions = driver.step(now)            # after any input below, and at next_wakeup()
    for action in actions:                # do what each says (HTTP, cancel a task)
        ...
    # as the answers come, report them, each with the ``now`` it came at:
    #   a source's have:  on_have / on_have_unsupported / on_have_failed
    #   a chunk request:  on_progress (bytes arrived), on_whole (the source sent the whole
    #                     level: it ignores Range), on_chunk (a chunk verified and written),
    #                     on_bad_chunk (a chunk failed its hash), on_end (the body ended),
    #                     on_busy (503), on_failed (transport error), on_aborted (ours,
    #                     e.g. the disk is full)
    # and arm a timer for next_wakeup()

The rules, each in one place:

1. **Which chunk from whom, and when a request times out:** the scheduler
   (``scheduler.py``, ``picker.py``, ``peers.py``); this driver turns its requests into
   range requests (:class:`Fetch`): runs of consecutive chunks of one level to one peer,
   at most ``run_bytes`` each (:func:`runs`).
2. **Sources:** the peer table (:class:`SourceDirectory`) says which sources there are;
   the driver looks at them every ``refresh`` seconds (sooner: :meth:`Driver.peers_changed`,
   or when a source's absent or lost state ends), and starts reading the have of each
   new one that is not absent or banned: a peer's have stream, long-polled
   (:class:`AskHave` with ``since``; an older peer that refuses ``since``: its plain have
   every ``have_poll_interval`` seconds), a web seed's manifest once (:class:`CheckManifest`:
   a web seed holds every chunk if it holds the model at all; then every
   ``have_poll_interval`` seconds it is taken as answering again, which is when a lost one
   comes back). A have answer makes the source a peer of the scheduler while the peer
   table says it is active (``origin`` if the table knows it as the model's seed). A have
   that fails, or a delta before any bitfield, makes the source *absent* (asked again after
   the peer table's ``absent_recheck``) and its requests are cancelled.
3. **Outcomes of a request:** a chunk that verified is credited (:meth:`Driver.on_chunk`;
   its end-game copies elsewhere are cancelled); a chunk that failed its hash bans its
   sender for good (the scheduler and the peer table), its other requests are cancelled; a
   body that ended without every chunk asked of it (a *short body*), or a transport error,
   fails the chunks not received (the scheduler backs the peer off) and the peer table
   judges the source: after ``fetch_failures`` failures in a row it is *lost* (removed from
   the scheduler, its requests cancelled) until its have answers after ``revive_after``; a
   503 (:meth:`Driver.on_busy`) hands the chunks back without judging the peer (the
   scheduler caps it, or backs off until ``Retry-After``); a failure of ours hands them
   back, nobody judged.
4. **Progress:** bytes of a body push the deadline of every chunk of it not received yet
   to ``stall_timeout`` after them (a moving transfer does not time out, a stalled one
   does, ``SchedulerConfig.stall_timeout``).
5. **Cancelling:** a range request is cancelled once every chunk asked of it and not
   received yet has been cancelled (timed out, received from another peer, its source
   removed); a chunk received keeps nothing alive.
6. **Whole levels:** a source that answered a range with its whole level (it ignores
   ``Range``) gets one request per level: chunks of that level asked of it later ride on
   the request already receiving the level (no new :class:`Fetch`).
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from peerprog.errors import PeerFault
from peerprog.swarm.bitfield import Bitfield
from peerprog.swarm.config import SchedulerConfig
from peerprog.swarm.havelog import HaveDelta, apply
from peerprog.swarm.peertable import Source, SourceState
from peerprog.swarm.request import Request
from peerprog.swarm.scheduler import Scheduler


@dataclass(frozen=True)
class DriverConfig:
    """Settings of a :class:`Driver`; the defaults are the daemon's."""

    scheduler: SchedulerConfig = field(default_factory=SchedulerConfig)
    """The scheduler's settings."""

    have_poll_interval: float = 1.0
    """Seconds between two plain ``have`` requests to a peer without a have stream, and
    between two looks at a web seed (``[peers] have_poll_interval``)."""

    long_poll: float = 25.0
    """Most seconds a peer may hold our ``have?since=`` long-poll."""

    refresh: float = 1.0
    """Longest time between two looks at the sources."""

    run_bytes: int = 16 << 20
    """Most bytes asked of a peer in one range request (a chunk alone may be more)."""

    def __post_init__(self) -> None:
        if self.have_poll_interval <= 0 or self.long_poll < 0 or self.refresh <= 0:
            raise ValueError("need have_poll_interval > 0, long_poll >= 0, refresh > 0")
        if self.run_bytes < 1:
            raise ValueError("run_bytes must be >= 1")


class SourceDirectory(Protocol):
    """Which sources there are and how healthy (:class:`~peerprog.swarm.PeerTable`)."""

    def sources(self, model_id: str) -> list[Source]: ...
    def source_state(self, key: str, model_id: str, now: float) -> SourceState: ...
    def source_absent(self, key: str, model_id: str, now: float) -> None: ...
    def source_answered(self, key: str, model_id: str, now: float) -> SourceState: ...
    def fetch_failed(self, key: str, model_id: str, failures: int, now: float) -> bool: ...
    def ban(self, key: str, now: float) -> None: ...
    def is_banned(self, key: str) -> bool: ...
    def next_expiry(self, model_id: str) -> float | None: ...


# -- actions (what the shell does) ------------------------------------------------------------


@dataclass(frozen=True)
class Fetch:
    """Ask ``source`` for ``chunks`` (consecutive, of ``level``): one range request, the
    byte range from the first chunk's offset to the end of the last."""

    id: int
    """Names the request in the reports about it and in :class:`Cancel`."""
    source: Source
    level: int
    chunks: tuple[int, ...]
    deadline: float
    """The scheduler's latest deadline for these chunks (a shell may put a backstop on
    the request beyond it; the driver cancels a stalled one itself)."""


@dataclass(frozen=True)
class Cancel:
    """Stop range request ``id`` (its body is no longer wanted)."""

    id: int


@dataclass(frozen=True)
class AskHave:
    """Read ``source``'s have: ``since`` is None for a plain ``GET have``, else the
    have stream after ``since`` (``have?since=<epoch>:<seq>``), held up to ``wait`` s."""

    source: Source
    since: tuple[str, int] | None
    wait: float


@dataclass(frozen=True)
class CheckManifest:
    """Ask web seed ``source`` for the manifest: it holds the model if it answers."""

    source: Source


@dataclass(frozen=True)
class StopHave:
    """Stop reading ``key``'s have (it is banned or absent): drop a request under way."""

    key: str


@dataclass(frozen=True)
class SourceUsed:
    """``key`` is a source of chunks now (``used``) or no longer (status)."""

    key: str
    used: bool


@dataclass(frozen=True)
class Banned:
    """``key`` sent chunk ``index`` that failed its hash: banned for good."""

    key: str
    index: int


Action = Fetch | Cancel | AskHave | CheckManifest | StopHave | SourceUsed | Banned


def runs(
    requests: Iterable[Request], level_of: Sequence[int], sizes: Sequence[int], limit: int
) -> list[list[Request]]:
    """``requests`` grouped into runs of consecutive chunks of one level to one peer, each of
    at most ``limit`` bytes (a chunk alone may be more), by peer then chunk."""
    out: list[list[Request]] = []
    size = 0
    for req in sorted(requests, key=lambda r: (r.peer, r.index)):
        prev = out[-1][-1] if out else None
        length = sizes[req.index]
        if (
            prev is not None
            and prev.peer == req.peer
            and prev.index + 1 == req.index
            and level_of[prev.index] == level_of[req.index]
            and size + length <= limit
        ):
            out[-1].append(req)
            size += length
        else:
            out.append([req])
            size = length
    return out


@dataclass
class _Run:
    """A range request under way."""

    fetch: Fetch
    pending: set[int]
    """Chunks asked of it (riders too), neither received nor cancelled."""
    asked: list[int]
    """Every chunk asked of it (riders too), in order."""


@dataclass
class _Watch:
    """How the driver reads one source's have."""

    source: Source
    since: tuple[str, int] | None
    """Where its have stream resumes; None: plain polls (or a web seed)."""
    held: Bitfield | None = None
    """What it holds as far as its answers said (None: every chunk)."""
    answered: bool = False
    asking: bool = False
    due: float | None = None
    """When to ask again (plain polls, web seeds)."""


class Driver:
    """Fetches one model: owns its scheduler, reads the peer table, and tells the shell
    what to do. See the module docstring for the rules."""

    def __init__(
        self,
        model_id: str,
        level_ranges: Sequence[range],
        chunk_sizes: Sequence[int],
        directory: SourceDirectory,
        *,
        have: Iterable[int] = (),
        config: DriverConfig | None = None,
        seed: int | None = None,
    ) -> None:
        """``level_ranges``, ``chunk_sizes``, ``have`` and ``seed``: as for
        :class:`~peerprog.swarm.Scheduler`; ``directory`` the node's peer table."""
        self.config = config if config is not None else DriverConfig()
        self.model_id = model_id
        self.sched = Scheduler(level_ranges, chunk_sizes, have, self.config.scheduler, seed=seed)
        self._dir = directory
        self._sizes = list(chunk_sizes)
        self._level_of = [lv for lv, r in enumerate(level_ranges) for _ in r]
        self._out: list[Action] = []
        self._ids = itertools.count(1)
        self._runs: dict[int, _Run] = {}
        self._by_chunk: dict[tuple[str, int], int] = {}  # (peer, chunk) -> run id
        self._whole: dict[tuple[str, int], int] = {}  # (peer, level) -> run id
        self._no_range: set[str] = set()
        self._watches: dict[str, _Watch] = {}
        self._polled: set[str] = set()  # watches with a ``due`` time (plain polls, web seeds)
        self._used: set[str] = set()
        self._refresh_at = -1.0
        self._deadline: float | None = None
        self._touched = False  # may the scheduler's deadline have moved earlier?

    # -- queries ----------------------------------------------------------------------------

    @property
    def complete(self) -> bool:
        """Every chunk held: the fetch is over."""
        return self.sched.complete

    def source(self, key: str) -> Source | None:
        """A source the driver reads the have of."""
        watch = self._watches.get(key)
        return watch.source if watch is not None else None

    def next_wakeup(self) -> float | None:
        """When :meth:`step` has something to do without news (may be in the past)."""
        if self.complete:
            return None
        times = [self._refresh_at]
        if self._deadline is not None:
            times.append(self._deadline)
        if self._polled:
            times.extend(
                w.due for w in self._watches.values() if w.due is not None and not w.asking
            )
        return min(times)

    # -- the pump ---------------------------------------------------------------------------

    def peers_changed(self) -> None:
        """The node learned of a new peer: look for sources at the next step."""
        self._refresh_at = -1.0

    def step(self, now: float, *, hold: bool = False) -> list[Action]:
        """Do what is due at ``now`` and return every action since the last step.
        ``hold``: send no new chunk request now (e.g. the shell's disk is full)."""
        if self.complete:
            return self._drain()
        if now >= self._refresh_at:
            self._refresh(now)
        for watch in list(self._watches.values()) if self._polled else ():
            if watch.due is not None and watch.due <= now and not watch.asking:
                watch.due = None
                self._polled.discard(watch.source.key)
                if watch.source.kind == "web_seed":
                    self._answered(watch, None, now)
                else:
                    self._ask(watch)
        if self._deadline is not None and self._deadline <= now:
            expired = self.sched.handle_timer(now)
            self._cancel(expired)
            for key in sorted({r.peer for r in expired}):
                self._judge(key, now)
            self._touched = True
        if not hold:
            sent = self.sched.next_requests(now)
            if sent:
                self._send(sent)
                self._touched = True
        if self._touched:
            self._touched = False
            self._deadline = self.sched.next_deadline()
        return self._drain()

    def _drain(self) -> list[Action]:
        out, self._out = self._out, []
        return out

    # -- sources ----------------------------------------------------------------------------

    def _refresh(self, now: float) -> None:
        for key in [k for k in self._watches if self._dir.is_banned(k)]:
            self._unwatch(key, now)
        for src in self._dir.sources(self.model_id):
            if src.key in self._watches or src.key in self.sched.banned:
                continue
            if self._dir.source_state(src.key, self.model_id, now) is SourceState.ABSENT:
                continue
            since = None if src.kind == "web_seed" else ("", 0)
            watch = self._watches[src.key] = _Watch(src, since)
            self._ask(watch)
        expiry = self._dir.next_expiry(self.model_id)
        self._refresh_at = now + self.config.refresh
        if expiry is not None and expiry > now:  # a source's absent or lost state ends
            self._refresh_at = min(self._refresh_at, expiry)

    def _ask(self, watch: _Watch) -> None:
        watch.asking = True
        if watch.source.kind == "web_seed":
            self._out.append(CheckManifest(watch.source))
        elif watch.since is not None:
            self._out.append(AskHave(watch.source, watch.since, self.config.long_poll))
        else:
            self._out.append(AskHave(watch.source, None, 0.0))

    def on_have(self, key: str, delta: HaveDelta | None, now: float) -> None:
        """``key`` answered its have request: ``delta`` is the answer (a plain ``have``:
        a full delta of epoch ``""``), or None for a web seed's manifest."""
        watch = self._watches.get(key)
        if watch is None or self.complete:
            return
        watch.asking = False
        if delta is not None:
            try:
                self._read(watch, delta)
            except PeerFault:
                self.on_have_failed(key, now)
                return
        self._answered(watch, delta, now)

    def _read(self, watch: _Watch, delta: HaveDelta) -> None:
        if delta.full is not None:
            watch.held = delta.full.copy()
        elif not watch.answered:
            raise PeerFault(f"{watch.source.key}: a have delta before its bitfield")
        else:
            assert watch.held is not None
            for i in delta.added:
                watch.held.set(i)
        if watch.since is not None:
            watch.since = (delta.epoch, delta.seq) if delta.epoch else None

    def _answered(self, watch: _Watch, delta: HaveDelta | None, now: float) -> None:
        key = watch.source.key
        watch.answered = True
        state = self._dir.source_answered(key, self.model_id, now)
        if state is SourceState.ACTIVE and not self.complete:
            if key not in self._used:
                have = None if watch.held is None else watch.held.copy()
                origin = self._dir_kind(watch) == "seed"
                self.sched.add_peer(key, have, now, origin=origin)
                self._used.add(key)
                self._out.append(SourceUsed(key, True))
            elif delta is not None:
                apply(self.sched, key, delta, now)
        if watch.since is not None:
            self._ask(watch)
        else:
            watch.due = now + self.config.have_poll_interval
            self._polled.add(key)

    def _dir_kind(self, watch: _Watch) -> str:
        """The source's kind now (a peer's announce may have said since that it is the
        origin)."""
        for src in self._dir.sources(self.model_id):
            if src.key == watch.source.key:
                return src.kind
        return watch.source.kind

    def on_have_unsupported(self, key: str, now: float) -> None:
        """``key`` refused ``have?since=`` (an older peer): poll its plain have."""
        watch = self._watches.get(key)
        if watch is None:
            return
        watch.asking = False
        watch.since = None
        if not self.complete:
            self._ask(watch)

    def on_have_failed(self, key: str, now: float) -> None:
        """``key``'s have request failed (unreachable, does not hold the model, or a
        malformed answer): it is absent; its requests are cancelled."""
        if key not in self._watches:
            return
        self._dir.source_absent(key, self.model_id, now)
        self._unwatch(key, now)

    def _unwatch(self, key: str, now: float) -> None:
        del self._watches[key]
        self._polled.discard(key)
        self._out.append(StopHave(key))
        self._lose(key, now)

    def _lose(self, key: str, now: float) -> None:
        """Stop asking ``key`` for chunks; its requests in flight are cancelled."""
        self._cancel(self.sched.remove_peer(key, now))
        if key in self._used:
            self._used.discard(key)
            self._out.append(SourceUsed(key, False))

    def _judge(self, key: str, now: float) -> None:
        """After a failure of ``key``: the peer table says whether it is lost."""
        if self._dir.fetch_failed(key, self.model_id, self.sched.failures(key), now):
            self._lose(key, now)

    # -- requests ---------------------------------------------------------------------------

    def _send(self, requests: list[Request]) -> None:
        for group in runs(requests, self._level_of, self._sizes, self.config.run_bytes):
            peer = group[0].peer
            level = self._level_of[group[0].index]
            whole = self._whole.get((peer, level))
            if whole is not None:  # the level is on its way whole: ride on that request
                run = self._runs[whole]
                for r in group:
                    run.pending.add(r.index)
                    run.asked.append(r.index)
                    self._by_chunk[(peer, r.index)] = whole
                continue
            watch = self._watches.get(peer)
            assert watch is not None, f"a request to {peer}, whose have is not read"
            fetch = Fetch(
                next(self._ids),
                watch.source,
                level,
                tuple(r.index for r in group),
                max(r.deadline for r in group),
            )
            self._runs[fetch.id] = _Run(fetch, set(fetch.chunks), list(fetch.chunks))
            for r in group:
                self._by_chunk[(peer, r.index)] = fetch.id
            if peer in self._no_range:
                self._whole[(peer, level)] = fetch.id
            self._out.append(fetch)

    def _cancel(self, requests: Iterable[Request]) -> None:
        """The scheduler gave these requests up: a run none of whose chunks is still
        awaited is cancelled (rule 5)."""
        for r in requests:
            rid = self._by_chunk.pop((r.peer, r.index), None)
            run = self._runs.get(rid) if rid is not None else None
            if run is None:
                continue
            run.pending.discard(r.index)
            if not run.pending:
                self._close(run)
                self._out.append(Cancel(run.fetch.id))

    def _close(self, run: _Run) -> _Run:
        fetch = run.fetch
        self._runs.pop(fetch.id, None)
        key = fetch.source.key
        for i in run.asked:
            if self._by_chunk.get((key, i)) == fetch.id:
                del self._by_chunk[(key, i)]
        if self._whole.get((key, fetch.level)) == fetch.id:
            del self._whole[(key, fetch.level)]
        return run

    # -- reports about a request ------------------------------------------------------------

    def on_progress(self, fetch: Fetch, now: float) -> None:
        """Bytes of ``fetch``'s body arrived at ``now`` (rule 4)."""
        run = self._runs.get(fetch.id)
        if run is not None:
            for i in run.pending:
                self.sched.on_progress(fetch.source.key, i, now)

    def on_whole(self, fetch: Fetch, now: float) -> None:
        """``fetch`` is being answered with its whole level (rule 6)."""
        key = fetch.source.key
        self._no_range.add(key)
        if fetch.id in self._runs:
            self._whole.setdefault((key, fetch.level), fetch.id)

    def on_chunk(self, fetch: Fetch, index: int, now: float) -> None:
        """Chunk ``index`` of ``fetch``'s body verified and is stored."""
        run = self._runs.get(fetch.id)
        if run is not None:
            run.pending.discard(index)
        self._cancel(self.sched.on_chunk(fetch.source.key, index, now))
        self._touched = True

    def on_held(self, index: int, now: float) -> None:
        """Chunk ``index`` verified and is stored, from outside the driver's sources (a
        BitTorrent peer): requests for it end, and it is asked of nobody."""
        for run in self._runs.values():
            run.pending.discard(index)
        self._cancel(self.sched.mark_have(index, now))
        self._touched = True

    def on_bad_chunk(self, fetch: Fetch, index: int, now: float) -> None:
        """Chunk ``index`` of ``fetch``'s body failed its hash: its sender is banned."""
        key = fetch.source.key
        self._end(fetch)
        self._cancel(self.sched.on_bad_chunk(key, index, now))
        self._dir.ban(key, now)
        self._out.append(Banned(key, index))
        if key in self._used:
            self._used.discard(key)
            self._out.append(SourceUsed(key, False))
        if key in self._watches:
            del self._watches[key]
            self._polled.discard(key)
            self._out.append(StopHave(key))

    def on_end(self, fetch: Fetch, now: float) -> None:
        """``fetch``'s body ended; a chunk asked of it and not received is a short body,
        the peer's failure (rule 3)."""
        run = self._end(fetch)
        if run is None:
            return
        missing = [i for i in run.asked if i in run.pending]
        if missing:
            key = fetch.source.key
            for i in missing:
                self.sched.on_failed(key, i, now)
            self._judge(key, now)
            self._touched = True

    def on_busy(self, fetch: Fetch, retry_after: float | None, now: float) -> None:
        """``fetch`` was declined (503, maybe with ``Retry-After``): not a failure."""
        run = self._end(fetch)
        if run is not None:
            declined = [i for i in run.asked if i in run.pending]
            self.sched.on_busy(fetch.source.key, declined, now, retry_after)
            self._touched = True

    def on_failed(self, fetch: Fetch, now: float) -> None:
        """``fetch`` failed (connection error, 404, 416, malformed answer): the chunks not
        received fail, the peer table judges the source."""
        run = self._end(fetch)
        if run is not None:
            key = fetch.source.key
            for i in run.asked:
                if i in run.pending:
                    self.sched.on_failed(key, i, now)
            self._judge(key, now)
            self._touched = True

    def on_aborted(self, fetch: Fetch, now: float) -> None:
        """The shell gave ``fetch`` up for a reason of its own (it could not store a
        chunk): its chunks go back to the pool, nobody is judged."""
        run = self._end(fetch)
        if run is not None:
            for i in run.asked:
                self.sched.release(fetch.source.key, i, now)

    def _end(self, fetch: Fetch) -> _Run | None:
        run = self._runs.get(fetch.id)
        return self._close(run) if run is not None else None
