"""Many byte streams over one WebSocket: the wire of the reverse channel.

A node that cannot be dialled opens a WebSocket to a peer that can be; over it the peer
opens *streams*, each a full-duplex byte stream that carries one HTTP/1.1 connection of
the peer protocol, exactly as a TCP connection would. Each WebSocket binary message is a
frame: a 4-byte big-endian stream id, a 1-byte kind (:data:`DATA` or :data:`END`) and,
for ``DATA``, at most :data:`FRAME_MAX` bytes of the stream. Only the side that dials
the channel's requests (the *opener*, the peer that accepted the WebSocket) opens streams,
with increasing ids; the other side serves each new id as a new connection. ``END``
closes a stream both ways.

Each stream is an :class:`asyncio.Transport` (:class:`Stream`), so aiohttp's own client
and server protocols run over it unchanged: the same routes, upload slots, rate limits,
verification and bans as over TCP. Flow control is the channel's: a sender whose queue
holds :data:`HIGH_WATER` bytes pauses every stream's protocol until it drains below
:data:`LOW_WATER`; a receiving protocol that pauses reading stops the whole channel's
reading (as one TCP connection would), so memory stays bounded on both sides.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import struct
from collections.abc import Callable
from typing import Any, Protocol

import aiohttp
from aiohttp import web

log = logging.getLogger("peerprog.channel")

DATA = 0
END = 1
_HEAD = struct.Struct(">IB")
FRAME_MAX = 256 * 1024
"""Most stream bytes in one frame."""
MESSAGE_MAX = FRAME_MAX + _HEAD.size
"""Largest WebSocket message a channel accepts."""
HIGH_WATER = 1 << 20
LOW_WATER = 256 * 1024


class Socket(Protocol):
    """Either end of a WebSocket (aiohttp's client and server ones)."""

    async def send_bytes(self, data: bytes) -> None: ...
    async def receive(self, timeout: float | None = None) -> aiohttp.WSMessage: ...
    async def close(self, *, code: int = ..., message: bytes = ...) -> bool: ...


class ChannelClosed(ConnectionResetError):
    """The channel under a stream closed."""


class Stream(asyncio.Transport):
    """One stream of a :class:`Channel`: an asyncio transport for an aiohttp protocol."""

    def __init__(self, channel: Channel, sid: int, protocol: asyncio.BaseProtocol) -> None:
        super().__init__()
        self._channel = channel
        self.sid = sid
        self._protocol = protocol
        self._closing = False
        self._paused = False

    # -- what the protocol calls -----------------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self._channel.peername
        return default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing:
            return
        view = memoryview(data).cast("B")
        for i in range(0, len(view), FRAME_MAX):
            self._channel.send(self.sid, DATA, bytes(view[i : i + FRAME_MAX]))

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("a channel stream cannot half-close")

    def get_write_buffer_size(self) -> int:
        return self._channel.buffered

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return LOW_WATER, HIGH_WATER

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass  # the channel's limits hold for all its streams

    def pause_reading(self) -> None:
        if not self._paused and not self._closing:
            self._paused = True
            self._channel.reading_paused(+1)

    def resume_reading(self) -> None:
        if self._paused:
            self._paused = False
            self._channel.reading_paused(-1)

    def is_reading(self) -> bool:
        return not self._paused and not self._closing

    def is_closing(self) -> bool:
        return self._closing

    def set_protocol(self, protocol: asyncio.BaseProtocol) -> None:
        self._protocol = protocol

    def get_protocol(self) -> asyncio.BaseProtocol:
        return self._protocol

    def close(self) -> None:
        if not self._closing:
            self._channel.send(self.sid, END, b"")
            self.lost(None)

    def abort(self) -> None:
        self.close()

    # -- what the channel calls ------------------------------------------------------------

    def lost(self, exc: Exception | None) -> None:
        """The stream ended (closed here, by the other side, or with the channel)."""
        if self._closing:
            return
        self._closing = True
        self.resume_reading()
        self._channel.forget(self.sid)
        asyncio.get_running_loop().call_soon(self._protocol.connection_lost, exc)


class Channel:
    """Streams over one WebSocket. ``serve`` (on the side that serves requests) makes the
    protocol of each stream the other side opens; the opener calls :meth:`open`.
    :meth:`run` pumps until the WebSocket closes, then ends every stream."""

    def __init__(
        self,
        ws: Socket,
        *,
        peername: object = None,
        serve: Callable[[], asyncio.BaseProtocol] | None = None,
        max_streams: int = 64,
    ) -> None:
        self._ws = ws
        self.peername = peername
        self._serve = serve
        self._max_streams = max_streams
        self._streams: dict[int, Stream] = {}
        self._next_sid = 1
        self._last_opened = 0
        self._out: collections.deque[bytes] = collections.deque()
        self.buffered = 0
        """Bytes queued to send."""
        self._wake = asyncio.Event()
        self._writing_paused = False
        self._read_pauses = 0
        self._readable = asyncio.Event()
        self._readable.set()
        self.closed = False
        self.bytes_in = 0
        """Stream bytes received."""
        self.bytes_out = 0
        """Stream bytes sent."""
        self._runner: asyncio.Task[object] | None = None

    @property
    def streams(self) -> int:
        return len(self._streams)

    def open(self, protocol: asyncio.BaseProtocol) -> Stream:
        """A new stream carrying ``protocol`` (told ``connection_made`` here);
        :class:`ChannelClosed` if the channel is closed or has no room."""
        if self.closed:
            raise ChannelClosed("the reverse channel is closed")
        if len(self._streams) >= self._max_streams:
            raise ChannelClosed(f"the reverse channel has {self._max_streams} streams open")
        sid, self._next_sid = self._next_sid, self._next_sid + 1
        stream = self._streams[sid] = Stream(self, sid, protocol)
        protocol.connection_made(stream)
        return stream

    async def run(self) -> None:
        """Send and receive until the WebSocket closes (or the task is cancelled)."""
        self._runner = asyncio.current_task()
        writer = asyncio.create_task(self._write_loop(), name="channel writer")
        try:
            await self._read_loop()
        finally:
            writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await writer
            self.close_streams()
            with contextlib.suppress(Exception):
                await self._ws.close()

    def stop(self) -> None:
        """End :meth:`run` (it closes the WebSocket and every stream)."""
        if self._runner is not None:
            self._runner.cancel()

    def close_streams(self) -> None:
        self.closed = True
        for stream in list(self._streams.values()):
            stream.lost(ChannelClosed("the reverse channel closed"))
        self._streams.clear()

    # -- streams' side ---------------------------------------------------------------------

    def send(self, sid: int, kind: int, payload: bytes) -> None:
        if self.closed:
            return
        self._out.append(_HEAD.pack(sid, kind) + payload)
        self.buffered += len(payload) + _HEAD.size
        self.bytes_out += len(payload)
        self._wake.set()
        if self.buffered > HIGH_WATER and not self._writing_paused:
            self._writing_paused = True
            for s in list(self._streams.values()):
                _call(s.get_protocol(), "pause_writing")

    def forget(self, sid: int) -> None:
        self._streams.pop(sid, None)

    def reading_paused(self, delta: int) -> None:
        self._read_pauses += delta
        if self._read_pauses > 0:
            self._readable.clear()
        else:
            self._readable.set()

    # -- pumps -----------------------------------------------------------------------------

    async def _write_loop(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            while self._out:
                frame = self._out.popleft()
                try:
                    await self._ws.send_bytes(frame)
                except (ConnectionError, RuntimeError, aiohttp.ClientError) as e:
                    log.debug("reverse channel: send failed: %s", e)
                    with contextlib.suppress(Exception):
                        await self._ws.close()
                    return
                self.buffered -= len(frame)
                if self._writing_paused and self.buffered < LOW_WATER:
                    self._writing_paused = False
                    for s in list(self._streams.values()):
                        _call(s.get_protocol(), "resume_writing")

    async def _read_loop(self) -> None:
        while True:
            await self._readable.wait()
            msg = await self._ws.receive()
            if msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSED):
                return
            if msg.type is aiohttp.WSMsgType.ERROR:
                log.debug("reverse channel: %s", msg.data)
                return
            if msg.type is not aiohttp.WSMsgType.BINARY or len(msg.data) < _HEAD.size:
                log.warning("reverse channel from %s: not a frame; closing it", self.peername)
                return
            sid, kind = _HEAD.unpack_from(msg.data)
            payload = msg.data[_HEAD.size :]
            if not self._frame(sid, kind, payload):
                log.warning(
                    "reverse channel from %s: a bad frame (stream %d, kind %d); closing it",
                    self.peername,
                    sid,
                    kind,
                )
                return

    def _frame(self, sid: int, kind: int, payload: bytes) -> bool:
        """Handle one frame; False if it breaks the rules (the channel is then closed)."""
        if kind not in (DATA, END) or (kind == END and payload):
            return False
        stream = self._streams.get(sid)
        if stream is None:
            if kind == END or self._serve is None or sid <= self._last_opened:
                return True  # a stream already closed here: its late frames are dropped
            self._last_opened = sid
            if len(self._streams) >= self._max_streams:
                self.send(sid, END, b"")
                return True
            protocol = self._serve()
            stream = self._streams[sid] = Stream(self, sid, protocol)
            protocol.connection_made(stream)
        if kind == END:
            stream.lost(None)
            return True
        self.bytes_in += len(payload)
        if payload and not stream.is_closing():
            protocol = stream.get_protocol()
            assert isinstance(protocol, asyncio.Protocol)
            protocol.data_received(payload)
        return True


def _call(protocol: asyncio.BaseProtocol, method: str) -> None:
    with contextlib.suppress(Exception):
        getattr(protocol, method)()


def server_protocols(runner: web.AppRunner) -> Callable[[], asyncio.BaseProtocol]:
    """The protocol factory of a set-up aiohttp runner's server (each call: a new
    connection's request handler)."""
    server = runner.server
    assert server is not None, "the runner is not set up"
    return server
