"""Many byte streams over one WebSocket: the wire of the reverse channel.

A node that cannot be dialled opens a WebSocket to a peer that can be; over it the peer
opens *streams*, each a full-duplex byte stream that carries one HTTP/1.1 connection of
the peer protocol, exactly as a TCP connection would. Each WebSocket binary message is a
frame: a 4-byte big-endian stream id, a 1-byte kind and a payload —

- :data:`DATA`: at most :data:`FRAME_MAX` bytes of the stream;
- :data:`END`: no payload; the stream is closed both ways;
- :data:`CREDIT`: a 4-byte big-endian count of bytes the sender may send more.

Only the side that sends the channel's requests (the *opener*, the peer that accepted the
WebSocket) opens streams, with increasing ids; the other side serves each new id as a new
connection.

Each stream is an :class:`asyncio.Transport` (:class:`Stream`), so aiohttp's own client
and server protocols run over it unchanged: the same routes, upload slots, rate limits,
verification and bans as over TCP. **Flow control is per stream**, as HTTP/2's: each side
may have :data:`WINDOW` bytes of a stream sent and not yet handed to the other side's
protocol; the receiver grants more (``CREDIT``) as its protocol takes them, and holds
what arrives while that protocol has paused reading. So a stream whose reader is slow
holds up no other stream, a receiver never holds more than a window per stream, and a
sender that overruns a window breaks the rules (the channel is closed). A sender's
protocol is paused while its stream holds :data:`HIGH_WATER` bytes waiting for credit or
for the WebSocket.
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
CREDIT = 2
_HEAD = struct.Struct(">IB")
_COUNT = struct.Struct(">I")
FRAME_MAX = 256 * 1024
"""Most stream bytes in one frame."""
MESSAGE_MAX = FRAME_MAX + _HEAD.size
"""Largest WebSocket message a channel accepts."""
WS_MAX_MSG_SIZE = MESSAGE_MAX + 1
"""aiohttp's ``max_msg_size`` for a channel (it refuses a message of that size or more)."""
WINDOW = 2 << 20
"""Bytes of a stream that may be sent and not yet taken by the other side's protocol."""
HIGH_WATER = 1 << 20
"""A stream holding this many bytes to send pauses its protocol's writing..."""
LOW_WATER = 256 * 1024
"""...until it holds fewer than this many. The channel's own send queue stops taking
frames from the streams above :data:`HIGH_WATER`, too."""


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
        # sending
        self._window = WINDOW
        self._pending: collections.deque[bytes] = collections.deque()
        self._pending_bytes = 0
        self._writing_paused = False
        # receiving
        self._paused = False
        self._backlog: collections.deque[bytes] = collections.deque()
        self._backlog_bytes = 0
        self._to_credit = 0

    # -- what the protocol calls -----------------------------------------------------------

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        if name == "peername":
            return self._channel.peername
        return default

    def write(self, data: bytes | bytearray | memoryview) -> None:
        if self._closing or not data:
            return
        self._pending.append(bytes(data))
        self._pending_bytes += len(data)
        self.flush()
        if self._pending_bytes > HIGH_WATER and not self._writing_paused:
            self._writing_paused = True
            _call(self._protocol, "pause_writing")

    def writelines(self, list_of_data: Any) -> None:
        self.write(b"".join(list_of_data))

    def can_write_eof(self) -> bool:
        return False

    def write_eof(self) -> None:
        raise NotImplementedError("a channel stream cannot half-close")

    def get_write_buffer_size(self) -> int:
        return self._pending_bytes

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return LOW_WATER, HIGH_WATER

    def set_write_buffer_limits(self, high: int | None = None, low: int | None = None) -> None:
        pass  # the channel's limits hold for all its streams

    def pause_reading(self) -> None:
        self._paused = True

    def resume_reading(self) -> None:
        if self._paused:
            self._paused = False
            # later, as a socket transport would: the protocol may be in the middle of a
            # read (aiohttp resumes from inside its reader)
            asyncio.get_running_loop().call_soon(self._deliver)

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

    def flush(self) -> None:
        """Send what the window and the channel's queue allow."""
        channel = self._channel
        while self._pending and self._window > 0 and channel.buffered < HIGH_WATER:
            head = self._pending[0]
            n = min(len(head), self._window, FRAME_MAX)
            if n == len(head):
                self._pending.popleft()
            else:
                self._pending[0] = head[n:]
            self._pending_bytes -= n
            self._window -= n
            channel.send(self.sid, DATA, head[:n])
        if self._writing_paused and self._pending_bytes < LOW_WATER:
            self._writing_paused = False
            _call(self._protocol, "resume_writing")

    def credited(self, n: int) -> None:
        self._window += n
        self.flush()

    def received(self, payload: bytes) -> bool:
        """Bytes of the stream arrived; False if they overrun the window we granted."""
        self._backlog.append(payload)
        self._backlog_bytes += len(payload)
        if self._backlog_bytes > WINDOW:
            return False
        self._deliver()
        return True

    def _deliver(self) -> None:
        while self._backlog and not self._paused and not self._closing:
            piece = self._backlog.popleft()
            self._backlog_bytes -= len(piece)
            self._to_credit += len(piece)
            protocol = self._protocol
            assert isinstance(protocol, asyncio.Protocol)
            protocol.data_received(piece)
        if self._to_credit >= WINDOW // 4 and not self._closing:
            self._channel.send(self.sid, CREDIT, _COUNT.pack(self._to_credit))
            self._to_credit = 0

    def lost(self, exc: Exception | None) -> None:
        """The stream ended (closed here, by the other side, or with the channel)."""
        if self._closing:
            return
        self._closing = True
        self._pending.clear()
        self._backlog.clear()
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
        """Bytes queued to send on the WebSocket."""
        self._wake = asyncio.Event()
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
        if kind == DATA:
            self.bytes_out += len(payload)
        self._wake.set()

    def forget(self, sid: int) -> None:
        self._streams.pop(sid, None)

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
                was = self.buffered
                self.buffered -= len(frame)
                if was >= LOW_WATER > self.buffered:
                    for stream in list(self._streams.values()):
                        stream.flush()

    async def _read_loop(self) -> None:
        while True:
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
        if (
            kind not in (DATA, END, CREDIT)
            or (kind == END and payload)
            or (kind == CREDIT and len(payload) != _COUNT.size)
        ):
            return False
        stream = self._streams.get(sid)
        if stream is None:
            if kind != DATA or self._serve is None or sid <= self._last_opened:
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
        if kind == CREDIT:
            (n,) = _COUNT.unpack(payload)
            stream.credited(n)
            return True
        self.bytes_in += len(payload)
        return stream.received(payload) if payload else True


def _call(protocol: asyncio.BaseProtocol, method: str) -> None:
    with contextlib.suppress(Exception):
        getattr(protocol, method)()


def server_protocols(runner: web.AppRunner) -> Callable[[], asyncio.BaseProtocol]:
    """The protocol factory of a set-up aiohttp runner's server (each call: a new
    connection's request handler)."""
    server = runner.server
    assert server is not None, "the runner is not set up"
    return server
