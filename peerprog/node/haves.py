"""The ``have`` answers this node serves: long-polls of each model's have stream, and, for a
model it is the origin of, super-seeding (the asyncio shell around
:class:`peerprog.swarm.seeding.SuperSeeder`).

A model's have stream is its :attr:`~peerprog.node.state.ModelState.havelog`; a long-poll
waits on :meth:`~peerprog.node.state.ModelState.news`. On the origin, each edge (named by
its ``Peerprog-Node`` header, else its address) sees only the seeder's offers to it: its
own numbered log of them, fed from :meth:`SuperSeeder.offers`. The seeder learns each
edge's ``have`` by long-polling the edge's own stream (for an edge the peer table knows),
and the chunks served from the level-range handler (:meth:`Haves.on_request`,
:meth:`Haves.on_sent`). An edge not heard from for :data:`EDGE_SILENCE` seconds, or whose
stream fails, is dropped from the seeder.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Protocol

from peerprog.errors import PeerFault
from peerprog.node.peerclient import TransportError
from peerprog.node.state import ModelState, new_epoch
from peerprog.node.tasks import TaskScope
from peerprog.swarm import Bitfield
from peerprog.swarm.havelog import HaveDelta, HaveLog, paced_until
from peerprog.swarm.seeding import SuperSeeder

log = logging.getLogger("peerprog.server")

EDGE_SILENCE = 60.0
"""Seconds without a request or a have answer from an edge before the seeder drops it."""
WATCH_WAIT = 20.0
"""Seconds the origin's long-poll of an edge's have stream may be held."""
ANSWERED_MAX = 4096
"""When the record of the last news sent to each asker (for the pacing) is pruned."""


class HaveSource(Protocol):
    """How the origin reads an edge's have stream (the node's
    :class:`~peerprog.node.peerclient.PeerClient`)."""

    async def get_have_since(
        self, root: str, model_id: str, count: int, since: tuple[str, int], wait: float
    ) -> HaveDelta: ...


@dataclass
class _Edge:
    log: HaveLog
    news: asyncio.Event = field(default_factory=asyncio.Event)
    heard: float = 0.0
    watcher: asyncio.Task[None] | None = None


class _Seeding:
    """One origin model's seeder and the edges' views of it."""

    def __init__(self, state: ModelState, seed: int) -> None:
        self.state = state
        m = state.manifest
        self.seeder = SuperSeeder([lv.chunks for lv in m.levels], seed=seed)
        self.edges: dict[str, _Edge] = {}

    def touch(self, peer: str, now: float) -> _Edge:
        """``peer`` was heard from: its edge (a new one if it was not known)."""
        edge = self.edges.get(peer)
        if edge is None:
            n = len(self.state.manifest.chunks)
            edge = self.edges[peer] = _Edge(HaveLog(n, epoch=new_epoch()))
            self.seeder.add_peer(peer, Bitfield(n), now)
        edge.heard = now
        return edge

    def drop(self, peer: str, now: float) -> None:
        edge = self.edges.pop(peer, None)
        if edge is None:
            return
        self.seeder.remove_peer(peer, now)
        if edge.watcher is not None:
            edge.watcher.cancel()
        edge.news.set()  # a waiting long-poll answers (a full bitfield of a new log next)

    def pump(self, now: float) -> None:
        """Drop silent edges; hand the seeder's new offers to the edges' logs."""
        for peer in [p for p, e in self.edges.items() if now - e.heard > EDGE_SILENCE]:
            log.debug("super-seeding: %s silent, dropped", peer)
            self.drop(peer, now)
        woken: set[str] = set()
        for peer, index in self.seeder.offers(now):
            edge = self.edges.get(peer)
            if edge is not None and edge.log.add(index) is not None:
                woken.add(peer)
        for peer in woken:
            edge = self.edges[peer]
            edge.news.set()
            edge.news = asyncio.Event()

    def close(self) -> None:
        for edge in self.edges.values():
            if edge.watcher is not None:
                edge.watcher.cancel()
            edge.news.set()
        self.edges.clear()


class Haves:
    """The have streams of every model the node serves."""

    def __init__(
        self,
        *,
        super_seeding: bool,
        client: HaveSource,
        root_of: Callable[[str], str | None],
        scope: TaskScope,
        clock: Callable[[], float],
        seed: int = 0,
    ) -> None:
        """``root_of(url)``: the peer-protocol root of a node the peer table knows (None:
        unknown, its stream is not read); ``scope`` owns the reads of edges' streams."""
        self._enabled = super_seeding
        self._client = client
        self._root_of = root_of
        self._scope = scope
        self._clock = clock
        self._seed = seed
        self._seeding: dict[str, _Seeding] = {}
        self._closing = False
        self._unreachable: set[str] = set()  # edges whose stream failed: not read again
        self._waits: set[asyncio.Event] = set()  # the events held long-polls wait on
        self._answered: dict[tuple[str, str], float] = {}  # (model, peer) -> last news sent

    def peer_name(self, url: str, remote: str) -> str:
        """The name of the node asking: the URL it says it is (``Peerprog-Node``) if the
        peer table knows that node, else its address (a node cannot make up edges)."""
        return url if url and self._root_of(url) is not None else remote

    def _seeding_of(self, state: ModelState) -> _Seeding | None:
        if not (self._enabled and state.origin and state.complete):
            return None
        s = self._seeding.get(state.model_id)
        if s is None or s.state is not state:
            s = self._seeding[state.model_id] = _Seeding(state, self._seed)
        return s

    def _edge(self, s: _Seeding, peer: str) -> _Edge:
        now = self._clock()
        edge = s.touch(peer, now)
        watch = edge.watcher is None and peer not in self._unreachable
        if watch and not (self._closing or self._scope.closed):
            root = self._root_of(peer)  # its announce may come after its first have request
            if root is not None:
                edge.watcher = self._scope.spawn(
                    self._watch(s, peer, root), name=f"have of edge {peer}"
                )
        s.pump(now)
        return s.edges.get(peer, edge)

    def plain(self, state: ModelState, peer: str) -> Bitfield:
        """The answer to a plain ``GET have`` from ``peer``."""
        s = self._seeding_of(state)
        if s is None:
            return state.have
        self._edge(s, peer)
        return s.seeder.view(peer)

    async def since(
        self, state: ModelState, peer: str, epoch: str, seq: int, wait: float
    ) -> HaveDelta:
        """The answer to ``GET have?since=epoch:seq&wait=`` from ``peer``: at once if there
        is news after ``since``, else when some comes, or empty after ``wait`` seconds; news
        of the have stream to the same peer at most every ``HAVE_PACE`` seconds
        (``paced_until``). A super-seeding origin's offers are not paced: the seeder batches
        them already, and its upload waits on them."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + wait
        key = (state.model_id, peer)
        while True:
            s = self._seeding_of(state)
            if s is None:
                stream, news, tick = state.havelog, state.news(), wait
            else:
                edge = self._edge(s, peer)
                stream, news = edge.log, edge.news
                tick = s.seeder.config.scan_interval  # the seeder looks again (expiry, starving)
            delta = stream.since(epoch, seq)
            now = loop.time()
            left = deadline - now
            if delta.full is not None or delta.added:
                pause = paced_until(self._answered.get(key), now) - now
                if s is None and 0 < pause < left and not self._closing:  # not the offers
                    await asyncio.sleep(pause)  # paced: what comes meanwhile goes along
                    continue
                if len(self._answered) >= ANSWERED_MAX:  # entries older than the pace
                    self._answered = {  # no longer hold anyone back
                        k: t for k, t in self._answered.items() if paced_until(t, now) > now
                    }
                self._answered[key] = now
                return delta
            if left <= 0 or self._closing:
                return delta
            self._waits.add(news)
            try:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(min(left, tick)):
                        await news.wait()
            finally:
                self._waits.discard(news)

    def close(self) -> None:
        """The node stops: every held long-poll answers now (the server's shutdown waits
        for its handlers), and no edge's stream is read any more."""
        self._closing = True
        for news in list(self._waits):
            news.set()
        for s in self._seeding.values():
            s.close()

    def on_request(self, state: ModelState, peer: str, chunks: Iterable[int]) -> None:
        """The level-range handler starts sending ``chunks`` to ``peer``."""
        s = self._seeding_of(state)
        if s is not None and peer in s.edges:
            now = self._clock()
            s.edges[peer].heard = now
            for i in chunks:
                s.seeder.on_request(peer, i, now)
            s.pump(now)

    def on_sent(self, state: ModelState, peer: str, chunks: Iterable[int]) -> None:
        """The upload of ``chunks`` to ``peer`` ended (sent, or cut off)."""
        s = self._seeding.get(state.model_id)
        if s is not None and s.state is state and peer in s.edges:
            now = self._clock()
            for i in chunks:
                s.seeder.on_sent(peer, i, now)
            s.pump(now)

    def forget(self, model_id: str) -> None:
        """The model was dropped."""
        self._answered = {k: t for k, t in self._answered.items() if k[0] != model_id}
        s = self._seeding.pop(model_id, None)
        if s is not None:
            s.close()

    async def _watch(self, s: _Seeding, peer: str, root: str) -> None:
        """Read edge ``peer``'s have stream into the seeder while it answers."""
        n = len(s.state.manifest.chunks)
        since = ("", 0)
        try:
            while peer in s.edges:
                delta = await self._client.get_have_since(
                    root, s.state.model_id, n, since, WATCH_WAIT
                )
                edge = s.edges.get(peer)
                if edge is None:
                    return
                now = self._clock()
                edge.heard = now
                if delta.epoch == "":  # an older edge: no stream to follow
                    return
                since = (delta.epoch, delta.seq)
                got = delta.full.indices() if delta.full is not None else delta.added
                for i in got:
                    s.seeder.add_have(peer, i, now)
                s.pump(now)
        except (TransportError, PeerFault) as e:
            log.debug("super-seeding: the have stream of %s ended: %s", peer, e)
            self._unreachable.add(peer)  # if it still asks, it is one the seeder cannot read
            s.drop(peer, self._clock())
