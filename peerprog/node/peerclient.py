"""HTTP client side of the peer protocol, for peers and web seeds alike.

Every wait has a timeout and every body a size cap, so a slow, silent or lying source can
hold no slot forever and cannot exhaust memory. A source is addressed by its *root*: a
peer's ``http://host:port/p2p/v1`` or a web seed's base URL, under which the store layout
is served.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from typing import Any

import aiohttp

from peerprog.errors import PeerFault, PeerprogError
from peerprog.manifest.envelope import MAX_ENVELOPE_BYTES
from peerprog.manifest.torrent import MAX_TORRENT_BYTES
from peerprog.node.mux import WS_MAX_MSG_SIZE, Channel, ChannelClosed
from peerprog.node.protocol import (
    PREFIX,
    Announce,
    decode_announce,
    decode_have,
    decode_have_delta,
    have_delta_limit,
)
from peerprog.node.ratelimit import TokenBucket, throttle
from peerprog.swarm import Bitfield
from peerprog.swarm.havelog import HaveDelta

NODE_HEADER = "Peerprog-Node"
"""The header naming the requesting node (its advertised URL), for the answering node's
super-seeding (which edge asks) and the reverse channels."""
CHANNEL_HEARTBEAT = 20.0
"""Seconds between WebSocket pings on a reverse channel: finds a dead link, keeps a NAT's
mapping open."""
DIAL_TIMEOUT = 5.0
"""Seconds a dial-back may take."""

Route = Callable[[str, int], Channel | None]
"""(host, port) → the reverse channel that reaches it, if one is open."""


class RoutedConnector(aiohttp.TCPConnector):
    """A TCP connector that sends the requests for a peer holding a reverse channel to
    this node over that channel (a stream of it per connection) instead of dialling."""

    def __init__(self, route: Route, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self._route = route

    async def _create_connection(
        self, req: aiohttp.ClientRequest, traces: Any, timeout: aiohttp.ClientTimeout
    ) -> Any:
        channel = self._route(req.url.host or "", req.url.port or 0)
        if channel is None:
            return await super()._create_connection(req, traces, timeout)
        protocol = self._factory()
        try:
            channel.open(protocol)
        except ChannelClosed as e:
            raise aiohttp.ClientConnectionError(f"{req.url.host}:{req.url.port}: {e}") from None
        return protocol


class TransportError(PeerprogError):
    """A source could not be reached or answered with an error status (transient)."""


class NotFound(TransportError):
    """The source answered 404: it does not hold what was asked for."""


class Refused(TransportError):
    """The source answered 400: it does not understand the request (an older peer)."""


class Busy(TransportError):
    """The source answered 503: its upload slots are taken (not a fault)."""

    def __init__(self, message: str, retry_after: float | None) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        """Seconds it asked us to wait (``Retry-After``), if it said."""


def _retry_after(header: str | None) -> float | None:
    """A ``Retry-After`` of seconds (an HTTP date, or garbage: None), at most an hour."""
    if header is None or not (header.isascii() and header.strip().isdigit()):
        return None
    return min(3600.0, float(header.strip()))


class RangeBody:
    """The streaming body of a ``levels/<n>`` answer: ``length`` bytes from ``start``."""

    def __init__(
        self, client: PeerClient, resp: aiohttp.ClientResponse, url: str, start: int, length: int
    ) -> None:
        self._client = client
        self._resp = resp
        self.url = url
        self.start = start
        self.length = length

    @property
    def whole(self) -> bool:
        """The source sent its whole level (it ignores ``Range``)."""
        return self._resp.status == 200

    async def pieces(self) -> AsyncIterator[bytes]:
        """The body as it arrives; :class:`PeerFault` past ``length`` bytes,
        :class:`TransportError` if it ends short."""
        client = self._client
        throttled = not client.download.unlimited
        got = 0
        while piece := await self._read():
            got += len(piece)
            if got > self.length:
                raise PeerFault(f"{self.url}: more than the {self.length} bytes asked for")
            if throttled:
                await throttle(client.download, len(piece))
            yield piece
        if got < self.length:
            raise TransportError(f"{self.url}: the answer ended after {got} of {self.length} bytes")

    async def _read(self) -> bytes:
        """The next piece of the body; what the network raises is a
        :class:`TransportError` here, so that an ``OSError`` reaching the caller's block is
        the caller's own (a disk write)."""
        try:
            return await self._resp.content.readany()
        except (aiohttp.ClientError, OSError, ValueError) as e:
            raise TransportError(f"{self.url}: {type(e).__name__}: {e}") from None


def _content_range(header: str, url: str) -> tuple[int, int]:
    """``bytes a-b/n`` → (a, b); :class:`PeerFault` if malformed."""
    unit, _, rest = header.strip().partition(" ")
    span, _, _ = rest.partition("/")
    first, _, last = span.partition("-")
    if unit != "bytes" or not (
        first.isascii() and first.isdigit() and last.isascii() and last.isdigit()
    ):
        raise PeerFault(f"{url}: a 206 answer with Content-Range {header[:80]!r}")
    return int(first), int(last)


class PeerClient:
    """Outgoing requests to peers and web seeds, sharing one connection pool."""

    def __init__(
        self,
        download: TokenBucket,
        *,
        max_connections: int,
        max_connections_per_peer: int,
        timeout: float,
        route: Route = lambda _host, _port: None,
    ) -> None:
        self.download = download
        self.timeout = timeout
        self._session: aiohttp.ClientSession | None = None
        self._direct: aiohttp.ClientSession | None = None
        """Dial-backs and our own channels: always a fresh TCP connection."""
        self._limits = (max_connections, max_connections_per_peer)
        self._route = route
        self.node_url = ""
        """This node's advertised URL, sent as :data:`NODE_HEADER` (once known)."""

    def _headers(self, **more: str) -> dict[str, str]:
        headers = {NODE_HEADER: self.node_url} if self.node_url else {}
        headers.update(more)
        return headers

    async def __aenter__(self) -> PeerClient:
        limit, per_host = self._limits
        self._direct = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=limit, limit_per_host=per_host, force_close=True),
            timeout=aiohttp.ClientTimeout(total=None, connect=min(5.0, self.timeout)),
        )
        self._session = aiohttp.ClientSession(
            connector=RoutedConnector(self._route, limit=limit, limit_per_host=per_host),
            timeout=aiohttp.ClientTimeout(
                total=None, connect=min(5.0, self.timeout), sock_read=self.timeout
            ),
            # Ask for plain bytes; a server that compresses anyway (gzip, deflate) is
            # decoded, and size caps apply to what it decodes to.
            headers={"Accept-Encoding": "identity"},
            auto_decompress=True,
            read_bufsize=1 << 20,
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
        if self._direct is not None:
            await self._direct.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "PeerClient used outside 'async with'"
        return self._session

    @asynccontextmanager
    async def _transport_errors(
        self, url: str, timeout: float | None
    ) -> AsyncIterator[asyncio.Timeout]:
        """Bounds the block by ``timeout`` and turns what the network raises into
        :class:`TransportError`."""
        try:
            async with asyncio.timeout(timeout or self.timeout) as bound:
                yield bound
        except TimeoutError:
            raise TransportError(f"{url}: timed out") from None
        except (aiohttp.ClientError, OSError, ValueError) as e:
            # ValueError: a URL the client cannot use (e.g. a host label idna refuses)
            raise TransportError(f"{url}: {type(e).__name__}: {e}") from None

    async def _get(
        self, url: str, limit: int, *, throttled: bool = False, timeout: float | None = None
    ) -> bytes:
        async with (
            self._transport_errors(url, timeout),
            self.session.get(url, headers=self._headers()) as resp,
        ):
            if resp.status == 404:
                raise NotFound(f"{url}: 404")
            if resp.status == 400:
                raise Refused(f"{url}: 400")
            if resp.status != 200:
                raise TransportError(f"{url}: HTTP {resp.status}")
            if resp.content_length is not None and resp.content_length > limit:
                raise PeerFault(f"{url}: body of {resp.content_length} bytes is too large")
            return await self._body(resp, url, limit, throttled=throttled)

    async def _body(
        self, resp: aiohttp.ClientResponse, url: str, limit: int, *, throttled: bool = False
    ) -> bytes:
        """The whole body, refused (:class:`PeerFault`) as soon as it exceeds ``limit``."""
        throttled = throttled and not self.download.unlimited
        parts = []
        size = 0
        while piece := await resp.content.readany():
            parts.append(piece)
            size += len(piece)
            if size > limit:
                raise PeerFault(f"{url}: body is larger than {limit} bytes")
            if throttled:
                await throttle(self.download, len(piece))
        return parts[0] if len(parts) == 1 else b"".join(parts)

    async def dial(self, url: str) -> bool:
        """Dial ``url`` back over a new TCP connection (never a channel): does a node
        answer ``GET node`` there under that same URL (or, an older node without that
        route, 404)?"""
        assert self._direct is not None, "PeerClient used outside 'async with'"
        try:
            async with (
                asyncio.timeout(min(DIAL_TIMEOUT, self.timeout)),
                self._direct.get(f"{url}{PREFIX}/node", headers=self._headers()) as resp,
            ):
                if resp.status == 404:  # a node of an older release: it answered
                    return True
                if resp.status != 200:
                    return False
                answer = decode_announce(await self._body(resp, url, 64 * 1024))
        except (TimeoutError, aiohttp.ClientError, OSError, ValueError, PeerFault):
            return False
        return answer.url.rstrip("/") == url.rstrip("/")

    @asynccontextmanager
    async def channel(self, url: str) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
        """Open this node's reverse channel to the peer at ``url`` (a WebSocket)."""
        assert self._direct is not None, "PeerClient used outside 'async with'"
        async with self._direct.ws_connect(
            f"{url}{PREFIX}/channel",
            headers=self._headers(),
            heartbeat=CHANNEL_HEARTBEAT,
            max_msg_size=WS_MAX_MSG_SIZE,
            timeout=aiohttp.ClientWSTimeout(ws_receive=None, ws_close=5.0),
        ) as ws:
            yield ws

    async def get_name(self, root: str, name: str, timeout: float | None = None) -> str:
        data = await self._get(f"{root}/names/{name}", 256, timeout=timeout)
        return data.decode("ascii", "replace").strip()

    async def get_manifest(self, root: str, model_id: str) -> bytes:
        return await self._get(f"{root}/models/{model_id}/manifest.msgpack", MAX_ENVELOPE_BYTES)

    async def get_torrent(self, root: str, model_id: str) -> bytes:
        """``GET models/<id>/torrent``: the model's torrent as the source has it (unchecked:
        :func:`peerprog.manifest.torrent.parse_torrent` checks it)."""
        return await self._get(f"{root}/models/{model_id}/torrent", MAX_TORRENT_BYTES)

    async def get_have(self, root: str, model_id: str, count: int) -> Bitfield:
        data = await self._get(f"{root}/models/{model_id}/have", count // 8 + 256)
        return decode_have(data, count)

    async def get_have_since(
        self, root: str, model_id: str, count: int, since: tuple[str, int], wait: float
    ) -> HaveDelta:
        """``GET have?since=<epoch>:<seq>&wait=<s>``: the chunks the peer verified after
        ``since`` (it holds the request up to ``wait`` seconds for news), or its whole
        bitfield. :class:`Refused` from a peer that does not take ``since``; a body that
        is not a valid answer is the peer's fault (:class:`PeerFault`)."""
        epoch, seq = since
        url = f"{root}/models/{model_id}/have?since={epoch}:{seq}&wait={wait:g}"
        data = await self._get(url, have_delta_limit(count), timeout=wait + self.timeout)
        return decode_have_delta(data, count)

    @asynccontextmanager
    async def get_range(
        self,
        root: str,
        model_id: str,
        level: int,
        start: int,
        stop: int,
        level_size: int,
        timeout: float,
    ) -> AsyncIterator[RangeBody]:
        """``GET levels/<level>`` with ``Range: bytes=start-(stop-1)``; the body streams
        in the block. A source that ignores ``Range`` answers the whole level (200):
        :attr:`RangeBody.start` is then 0. :class:`NotFound` for 404/416,
        :class:`PeerFault` for an answer that is not the bytes asked for; an ``OSError``
        the block raises (a disk write) comes out as it is."""
        url = f"{root}/models/{model_id}/levels/{level}"
        headers = self._headers(Range=f"bytes={start}-{stop - 1}")
        own: OSError | None = None
        async with (
            self._transport_errors(url, timeout) as bound,
            self.session.get(url, headers=headers) as resp,
        ):
            coded = resp.headers.get("Content-Encoding", "identity").lower() != "identity"
            if resp.status in (404, 416):
                raise NotFound(f"{url}: {resp.status}")
            if resp.status == 503:
                after = _retry_after(resp.headers.get("Retry-After"))
                raise Busy(f"{url}: 503 (busy, retry after {after} s)", after)
            if resp.status == 206:
                first, last = _content_range(resp.headers.get("Content-Range", ""), url)
                if (first, last + 1) != (start, stop):
                    raise PeerFault(f"{url}: answered bytes {first}-{last}, not {start}-{stop - 1}")
                body = RangeBody(self, resp, url, start, stop - start)
            elif resp.status == 200:
                body = RangeBody(self, resp, url, 0, level_size)
                bound.reschedule(None)  # a whole level: only a stalled read ends it
            else:
                raise TransportError(f"{url}: HTTP {resp.status}")
            if not coded and resp.content_length is not None and resp.content_length != body.length:
                raise PeerFault(
                    f"{url}: a body of {resp.content_length} bytes, not the {body.length} asked for"
                )
            try:
                yield body
            except OSError as e:  # the block's own (a full disk): not the source's failure
                own = e
        if own is not None:
            raise own

    async def announce(self, root: str, ann: Announce, limit: int) -> Announce:
        """Announce to the peer serving under ``root``; its answer (peer exchange)."""
        url = f"{root}/announce"
        headers = self._headers(**{"Content-Type": "application/msgpack"})
        async with (
            self._transport_errors(url, None),
            self.session.post(url, data=ann.encode(), headers=headers) as resp,
        ):
            if resp.status != 200:
                raise TransportError(f"{url}: HTTP {resp.status}")
            body = await self._body(resp, url, limit)
        return decode_announce(body)
