"""Discovery: announcing to peers and answering their announces (peer exchange).

The node announces what it holds to every peer in its table at start, every
``announce_interval`` seconds, and soon after it gains a level; each answer tells it the
peers and models the other side knows. A peer first learnt of from another is announced to
at once: nodes started together learn of each other from the seed's answers, and an early
one would otherwise not know the later ones until its next round. Which peers there are,
and which are healthy, is the peer table's call (:mod:`peerprog.swarm.peertable`): this
module only sends, receives and reports.

Reachability rides on announces: the answer to an announce says whether the answering
node could dial the announcer's URL back (``dial_back``), an announce says whether its
sender is reachable, and peer exchange passes on what the passing node found. Only
routable peers are announced to (one we cannot dial is reached over its reverse channel,
or not at all).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Collection
from typing import Protocol

from peerprog.errors import PeerFault
from peerprog.node.peerclient import TransportError
from peerprog.node.protocol import MAX_EXCHANGED_PEERS, Announce, PeerRef
from peerprog.node.tasks import TaskScope
from peerprog.swarm import Peer, PeerTable

log = logging.getLogger("peerprog.node")
COALESCE = 0.05
"""Seconds to wait after a burst of level changes before announcing them together."""


class AnnounceTransport(Protocol):
    """Sends an announce (:class:`~peerprog.node.peerclient.PeerClient`)."""

    async def announce(self, root: str, ann: Announce, limit: int) -> Announce: ...


class Discovery:
    """Announces to the peers of ``table``; tells subscribers of each new peer."""

    def __init__(
        self,
        table: PeerTable,
        transport: AnnounceTransport,
        *,
        me: Callable[[], Announce],
        wanted: Callable[[], Collection[str]],
        on_wanted_news: Callable[[], None],
        interval: float,
        answer_limit: int,
        scope: TaskScope,
        dial_back: Callable[[str], Awaitable[bool | None]],
        on_reach_news: Callable[[], None],
    ) -> None:
        """``dial_back(url)``: could we dial ``url`` (dials it if due);
        ``on_reach_news``: a peer said whether it could dial us."""
        self.table = table
        self._transport = transport
        self._me = me
        self._wanted = wanted
        self._on_wanted_news = on_wanted_news
        self._interval = interval
        self._answer_limit = answer_limit
        self._scope = scope
        self._dial_back = dial_back
        self._on_reach_news = on_reach_news
        self._now = asyncio.Event()
        self._announcing: set[str] = set()
        self._subscribers: list[Callable[[], None]] = []

    def subscribe(self, on_new_peer: Callable[[], None]) -> Callable[[], None]:
        """Call ``on_new_peer`` whenever a peer is added; returns the unsubscribe call."""
        self._subscribers.append(on_new_peer)
        return lambda: self._subscribers.remove(on_new_peer)

    def announce_soon(self) -> None:
        """Announce to every peer now (e.g. a new model or level)."""
        self._now.set()

    def peers_changed(self) -> None:
        """Tell the subscribers that the sources may have changed (a peer became
        routable or stopped being)."""
        for notify in list(self._subscribers):
            notify()

    async def on_announce(self, ann: Announce) -> Announce:
        """A peer announced to us: record it and dial it back (if due); answer with the
        peers and models we know and whether we could dial it."""
        now = asyncio.get_running_loop().time()
        dialled = None
        if ann.url:
            added = self.table.heard_from(
                ann.url, ann.node, ann.models, now, reachable=ann.reachable
            )
            dialled = await self._dial_back(ann.url)
            self._added(added)
        self._news(ann)
        peers = tuple(
            PeerRef(p.node, p.url, p.dialable if p.dialled_at is not None else None)
            for p in self.table.exchange(now, ann.url, MAX_EXCHANGED_PEERS)
            if p.routable
        )
        mine = self._me()
        return Announce(
            mine.node, mine.url, mine.models, peers, reachable=mine.reachable, dial_back=dialled
        )

    async def run(self) -> None:
        """Announce until cancelled."""
        while True:
            self._announce_all()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._now.wait(), self._interval)
            self._now.clear()
            await asyncio.sleep(COALESCE)

    def _announce_all(self) -> None:
        """Announce to every peer without waiting for the answers: a peer slow to answer
        holds up no other (and gets no second announce while one is pending)."""
        ann = self._me()
        self.table.prune(asyncio.get_running_loop().time())
        for peer in self.table.routable():
            if peer.url not in self._announcing:
                self._announcing.add(peer.url)
                self._scope.spawn(self._announce_to(peer.url, ann), name=f"announce {peer.url}")

    async def _announce_to(self, url: str, ann: Announce) -> None:
        loop = asyncio.get_running_loop()
        try:
            answer = await self._transport.announce(
                self.table.root_of(url), ann, self._answer_limit
            )
        except (TransportError, PeerFault) as e:
            log.debug("announce to %s failed: %s", url, e)
            self.table.contact_failed(url, loop.time())
            return
        finally:
            self._announcing.discard(url)
        now = loop.time()
        self._added(
            self.table.heard_from(url, answer.node, answer.models, now, reachable=answer.reachable)
        )
        self.table.heard_back(url, answer.dial_back)
        for p in answer.peers:
            self._added(self.table.learned_of(p.url, p.node, now, reachable=p.reachable))
        self._news(answer)
        self._on_reach_news()

    def _added(self, peer: Peer | None) -> None:
        if peer is None:
            return
        log.info("new peer %s (%s)", peer.url, peer.node)
        if peer.last_seen is None and peer.routable and peer.url not in self._announcing:
            self._announcing.add(peer.url)
            # passed on to us: announce to it at once
            self._scope.spawn(self._announce_to(peer.url, self._me()), name=f"announce {peer.url}")
        self.peers_changed()

    def _news(self, ann: Announce) -> None:
        wanted = self._wanted()
        if any(m.name in wanted for m in ann.models):
            self._on_wanted_news()
