"""Reachability and reverse channels: how a node that cannot be dialled still serves.

- :class:`DialBack` (every node): when a peer announces a URL, this node dials it back
  (``GET node`` over a fresh TCP connection, never over a channel) and records in the peer
  table whether a node answering under that URL was reached; the answer to the announce
  says so (``dial_back``), which is how a node finds out whether it can be dialled.
- :class:`Hub` (the dialled side): serves ``GET /p2p/v1/channel``, the WebSocket a node we
  could not dial holds to us, and routes our requests to that node over it
  (:meth:`Hub.route`, read by the client's connector).
- :class:`Keeper` (the undiallable side): holds a channel to every peer that said it could
  not dial us (:meth:`~peerprog.swarm.PeerTable.channels_wanted`), reconnects one that
  breaks, and serves the requests that come over it with the node's own peer server.

The rules (who is routable, who needs a channel) are the peer table's; this module only
dials, accepts, holds and counts.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass

import aiohttp
from aiohttp import web
from yarl import URL

from peerprog.node.mux import WS_MAX_MSG_SIZE, Channel, Socket
from peerprog.node.peerclient import CHANNEL_HEARTBEAT, NODE_HEADER
from peerprog.node.tasks import TaskScope
from peerprog.swarm import PeerTable
from peerprog.urls import valid_url

log = logging.getLogger("peerprog.channel")

RETRY_MIN = 1.0
RETRY_MAX = 30.0
"""Backoff bounds (seconds) of a channel that cannot be opened or broke."""


def host_port(url: str) -> tuple[str, int]:
    """The (host, port) a peer's URL names, as a connection is keyed."""
    u = URL(url)
    return (u.host or "").lower(), u.port or 0


@dataclass
class ChannelStats:
    """What the channels of one side carried, open and closed ones alike."""

    open: int = 0
    bytes_in: int = 0
    bytes_out: int = 0


@dataclass
class _Closed:
    """The bytes of one side's channels that have closed."""

    bytes_in: int = 0
    bytes_out: int = 0

    def count(self, channel: Channel) -> None:
        self.bytes_in += channel.bytes_in
        self.bytes_out += channel.bytes_out

    def stats(self, channels: list[Channel]) -> ChannelStats:
        return ChannelStats(
            len(channels),
            self.bytes_in + sum(c.bytes_in for c in channels),
            self.bytes_out + sum(c.bytes_out for c in channels),
        )


@dataclass(frozen=True)
class ChannelsReport:
    """A node's reverse channels now: those it holds to peers that cannot dial it
    (``to_peers``), those peers hold to it (``from_peers``), and the stream bytes they
    carried (this node sending, receiving)."""

    to_peers: int
    from_peers: int
    bytes_sent: int
    bytes_received: int

    def to_json(self) -> dict[str, int]:
        return {
            "to_peers": self.to_peers,
            "from_peers": self.from_peers,
            "bytes_sent": self.bytes_sent,
            "bytes_received": self.bytes_received,
        }


def report(keeper: ChannelStats, hub: ChannelStats) -> ChannelsReport:
    """Both sides' counters as one report."""
    return ChannelsReport(
        keeper.open,
        hub.open,
        keeper.bytes_out + hub.bytes_out,
        keeper.bytes_in + hub.bytes_in,
    )


class DialBack:
    """Dials back the URLs peers announce; one dial per URL at a time, again only after
    ``reach_recheck`` seconds (the table's rule)."""

    def __init__(
        self,
        table: PeerTable,
        dial: Callable[[str], Awaitable[bool]],
        *,
        on_change: Callable[[], None],
        clock: Callable[[], float],
    ) -> None:
        self._table = table
        self._dial = dial
        self._on_change = on_change
        self._clock = clock
        self._pending: dict[str, asyncio.Future[bool]] = {}

    async def check(self, url: str) -> bool | None:
        """Could we dial ``url`` (a peer in the table) when we last tried; dials it now if
        that is due. None if the peer is not in the table."""
        url = url.rstrip("/")
        if not self._table.dial_due(url, self._clock()):
            peer = self._table.get(url)
            return None if peer is None else peer.dialable
        fut = self._pending.get(url)
        if fut is None:
            fut = self._pending[url] = asyncio.ensure_future(self._run(url))
        return await asyncio.shield(fut)

    async def _run(self, url: str) -> bool:
        try:
            ok = await self._dial(url)
        finally:
            self._pending.pop(url, None)
        if self._table.dialled(url, ok, self._clock()):
            log.info("dial-back of %s: %s", url, "reached" if ok else "not reached")
            self._on_change()
        return ok

    def close(self) -> None:
        for fut in self._pending.values():
            fut.cancel()


class Hub:
    """The channels other nodes hold to this one, by their URL."""

    def __init__(
        self,
        table: PeerTable,
        dial_back: DialBack,
        *,
        on_change: Callable[[], None],
        clock: Callable[[], float],
        max_streams: int,
    ) -> None:
        self._table = table
        self._dial_back = dial_back
        self._on_change = on_change
        self._clock = clock
        self._max_streams = max_streams
        self._by_url: dict[str, Channel] = {}
        self._routes: dict[tuple[str, int], Channel] = {}
        self._closed = _Closed()

    @property
    def stats(self) -> ChannelStats:
        return self._closed.stats(list(self._by_url.values()))

    def route(self, host: str, port: int) -> Channel | None:
        """The channel to send a request for ``host:port`` over, if one is open."""
        return self._routes.get((host.lower(), port))

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """``GET /p2p/v1/channel``: a node we cannot dial opens its reverse channel."""
        url = request.headers.get(NODE_HEADER, "").rstrip("/")
        if not valid_url(url):
            raise web.HTTPBadRequest(
                text=f"a reverse channel needs the {NODE_HEADER} header: the URL you announce"
            )
        if self._table.is_banned(url):
            raise web.HTTPForbidden(text="banned")
        if self._table.get(url) is None and (
            self._table.heard_from(url, "", (), self._clock()) is None
        ):
            raise web.HTTPServiceUnavailable(text="peer table full", headers={"Retry-After": "30"})
        ws = web.WebSocketResponse(heartbeat=CHANNEL_HEARTBEAT, max_msg_size=WS_MAX_MSG_SIZE)
        if not ws.can_prepare(request).ok:
            raise web.HTTPBadRequest(text="a reverse channel is a WebSocket")
        if await self._dial_back.check(url):
            raise web.HTTPConflict(text=f"dialled back {url}: no reverse channel needed")
        await ws.prepare(request)
        peername = request.transport.get_extra_info("peername") if request.transport else None
        channel = Channel(ws, peername=peername, max_streams=self._max_streams)
        old = self._by_url.get(url)
        if old is not None:  # the node came back: its old channel is dead
            old.close_streams()
            old.stop()
        self._by_url[url] = self._routes[host_port(url)] = channel
        log.info("reverse channel from %s opened", url)
        if self._table.channel_changed(url, True):
            self._on_change()
        try:
            await channel.run()
        finally:
            self._closed.count(channel)
            if self._by_url.get(url) is channel:
                del self._by_url[url]
                self._routes.pop(host_port(url), None)
                log.info("reverse channel from %s closed", url)
                if self._table.channel_changed(url, False):
                    self._on_change()
        return ws

    def banned(self, url: str) -> None:
        """``url`` was banned: end its channel (a new one is refused)."""
        channel = self._by_url.get(url)
        if channel is not None:
            log.info("reverse channel from %s: closed, it is banned", url)
            channel.stop()

    def close(self) -> None:
        """End every channel (at the node's stop, before the server waits for handlers)."""
        for channel in list(self._by_url.values()):
            channel.close_streams()
            channel.stop()


class Keeper:
    """Holds a reverse channel to each peer the table says needs one."""

    def __init__(
        self,
        table: PeerTable,
        connect: Callable[[str], AbstractAsyncContextManager[Socket]],
        serve: Callable[[], asyncio.BaseProtocol],
        *,
        scope: TaskScope,
        max_streams: int,
    ) -> None:
        self._table = table
        self._connect = connect
        self._serve = serve
        self._scope = scope
        self._max_streams = max_streams
        self._held: dict[str, asyncio.Task[None]] = {}
        self._open: dict[str, Channel] = {}
        self._closed = _Closed()

    @property
    def stats(self) -> ChannelStats:
        return self._closed.stats(list(self._open.values()))

    def update(self) -> None:
        """Open channels the table now wants, close those it no longer does."""
        if self._scope.closed:
            return
        wanted = set(self._table.channels_wanted())
        for url in wanted - self._held.keys():
            self._held[url] = self._scope.spawn(self._hold(url), name=f"channel to {url}")
        for url in self._held.keys() - wanted:
            log.info("reverse channel to %s no longer needed", url)
            self._held.pop(url).cancel()

    async def _hold(self, url: str) -> None:
        delay = RETRY_MIN
        try:
            while True:
                try:
                    async with self._connect(url) as ws:
                        channel = Channel(
                            ws,
                            peername=host_port(url),
                            serve=self._serve,
                            max_streams=self._max_streams,
                        )
                        self._open[url] = channel
                        log.info("reverse channel to %s open: it can send us requests", url)
                        opened = asyncio.get_running_loop().time()
                        try:
                            await channel.run()
                        finally:
                            del self._open[url]
                            self._closed.count(channel)
                        if asyncio.get_running_loop().time() - opened > RETRY_MAX:
                            delay = RETRY_MIN  # it held: a fresh start
                    log.info("reverse channel to %s closed; opening it again", url)
                except (aiohttp.ClientError, OSError, TimeoutError, ValueError) as e:
                    log.info("reverse channel to %s: %s; retrying in %.0f s", url, e, delay)
                await asyncio.sleep(delay * random.uniform(0.75, 1.25))
                delay = min(RETRY_MAX, delay * 2)
        finally:
            if self._held.get(url) is asyncio.current_task():
                del self._held[url]
