"""The reverse channel's wire (:mod:`peerprog.node.mux`): aiohttp's own server and client
running over streams of a channel, over an in-memory WebSocket pair (no network)."""

from __future__ import annotations

import asyncio
import contextlib
import struct
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from peerprog.node.mux import (
    CREDIT,
    DATA,
    END,
    FRAME_MAX,
    HIGH_WATER,
    MESSAGE_MAX,
    WINDOW,
    WS_MAX_MSG_SIZE,
    Channel,
    ChannelClosed,
    server_protocols,
)
from peerprog.node.peerclient import RoutedConnector

BINARY = aiohttp.WSMsgType.BINARY


class End:
    """One end of an in-memory WebSocket pair; counts what is queued to the other."""

    def __init__(self, inbox: asyncio.Queue[aiohttp.WSMessage], outbox: asyncio.Queue[Any]):
        self.inbox, self.outbox = inbox, outbox
        self.closed = False
        self.sent_frames: list[bytes] = []

    async def send_bytes(self, data: bytes) -> None:
        if self.closed:
            raise ConnectionResetError("closed")
        self.sent_frames.append(data)
        await self.outbox.put(aiohttp.WSMessage(BINARY, data, None))

    async def receive(self, timeout: float | None = None) -> aiohttp.WSMessage:
        return await self.inbox.get()

    async def close(self, *, code: int = 1000, message: bytes = b"") -> bool:
        if not self.closed:
            self.closed = True
            await self.outbox.put(aiohttp.WSMessage(aiohttp.WSMsgType.CLOSE, code, None))
        return True


def pair(maxsize: int = 0) -> tuple[End, End]:
    a: asyncio.Queue[Any] = asyncio.Queue(maxsize)
    b: asyncio.Queue[Any] = asyncio.Queue(maxsize)
    return End(a, b), End(b, a)


BIG = bytes(range(256)) * (12 * 1024)  # 3 MiB


async def hello(request: web.Request) -> web.StreamResponse:
    return web.Response(text=f"hello {request.remote}")


async def big(request: web.Request) -> web.StreamResponse:
    """Written in pieces, each awaiting the transport's drain (as the peer server does)."""
    resp = web.StreamResponse()
    resp.content_length = len(BIG)
    await resp.prepare(request)
    for i in range(0, len(BIG), 64 * 1024):
        await resp.write(BIG[i : i + 64 * 1024])
    await resp.write_eof()
    return resp


async def echo(request: web.Request) -> web.StreamResponse:
    return web.Response(body=await request.read())


@contextlib.asynccontextmanager
async def served(maxsize: int = 0, max_streams: int = 8) -> AsyncIterator[tuple[Any, ...]]:
    """A channel whose serving end runs an aiohttp app; a client session routed to it."""
    app = web.Application()
    app.router.add_get("/hello", hello)
    app.router.add_get("/big", big)
    app.router.add_post("/echo", echo)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    opener_end, server_end = pair(maxsize)
    opener = Channel(opener_end, max_streams=max_streams)
    server = Channel(
        server_end,
        peername=("192.0.2.7", 4000),
        serve=server_protocols(runner),
        max_streams=max_streams,
    )
    tasks = [asyncio.create_task(opener.run()), asyncio.create_task(server.run())]
    connector = RoutedConnector(
        lambda host, port: opener if (host, port) == ("hidden.example", 7000) else None
    )
    session = aiohttp.ClientSession(connector=connector)
    try:
        yield session, opener, server, server_end
    finally:
        await session.close()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        await runner.cleanup()


async def test_http_requests_go_over_the_channel_and_keep_their_streams_alive() -> None:
    async with served() as (session, opener, server, _):
        for _ in range(3):
            async with session.get("http://hidden.example:7000/hello") as resp:
                assert resp.status == 200
                assert await resp.text() == "hello 192.0.2.7"  # the channel's peer
        assert opener.streams == 1  # one keep-alive connection, reused
        async with session.post("http://hidden.example:7000/echo", data=b"x" * 100_000) as resp:
            assert await resp.read() == b"x" * 100_000
        assert server.bytes_in >= 100_000 and opener.bytes_in >= 100_000


async def test_a_large_body_arrives_whole_and_the_senders_queue_stays_bounded() -> None:
    async with served(maxsize=4) as (session, _opener, server, server_end):
        peak = 0

        async def watch() -> None:
            nonlocal peak
            while True:
                peak = max(peak, server.buffered)
                await asyncio.sleep(0)

        watcher = asyncio.create_task(watch())
        results = await asyncio.gather(
            *(_read(session, "http://hidden.example:7000/big") for _ in range(3))
        )
        watcher.cancel()
        assert all(r == BIG for r in results)
        assert max(len(f) for f in server_end.sent_frames) <= FRAME_MAX + 5
        assert peak <= HIGH_WATER + 2 * FRAME_MAX + 64 * 1024, peak


async def _read(session: aiohttp.ClientSession, url: str) -> bytes:
    async with session.get(url) as resp:
        return await resp.read()


async def test_a_stream_limit_and_a_closed_channel_are_connection_errors() -> None:
    async with served(max_streams=1) as (session, opener, _server, _):
        async with session.get("http://hidden.example:7000/hello") as resp:
            await resp.read()
        # the one stream is held by the keep-alive connection: a second at once is refused
        async with session.get("http://hidden.example:7000/big") as resp:
            with pytest.raises(aiohttp.ClientConnectionError):
                async with session.get("http://hidden.example:7000/hello"):
                    pass
            assert await resp.read() == BIG
        opener.close_streams()
        with pytest.raises(ChannelClosed):
            opener.open(asyncio.Protocol())


@pytest.mark.parametrize(
    "frame",
    [
        b"\x00\x00",  # shorter than a frame head
        struct.pack(">IB", 1, 7) + b"x",  # an unknown kind
        struct.pack(">IB", 1, END) + b"x",  # END with a payload
        struct.pack(">IB", 1, CREDIT) + b"xy",  # CREDIT without its 4 bytes
    ],
)
async def test_a_bad_frame_closes_the_channel_and_nothing_else(frame: bytes) -> None:
    a, b = pair()
    server = Channel(b, serve=asyncio.Protocol)
    run = asyncio.create_task(server.run())
    await a.send_bytes(frame)
    await asyncio.wait_for(run, 5)
    assert server.closed


async def test_late_frames_of_closed_streams_are_dropped() -> None:
    a, b = pair()
    opened: list[asyncio.Protocol] = []

    def serve() -> asyncio.Protocol:
        opened.append(asyncio.Protocol())
        return opened[-1]

    server = Channel(b, serve=serve)
    run = asyncio.create_task(server.run())
    await a.send_bytes(struct.pack(">IB", 5, DATA) + b"hi")
    await a.send_bytes(struct.pack(">IB", 5, END))
    await a.send_bytes(struct.pack(">IB", 5, DATA) + b"late")  # closed: not a new stream
    await a.send_bytes(struct.pack(">IB", 3, DATA) + b"old")  # below the last opened
    await a.send_bytes(struct.pack(">IB", 9, END))  # never opened
    await asyncio.sleep(0.05)
    assert len(opened) == 1 and server.streams == 0 and not server.closed
    run.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await run


async def test_full_frames_pass_a_real_websocket_of_the_channels_size_limit() -> None:
    """aiohttp refuses a message of ``max_msg_size`` bytes or more: a channel's largest
    frame must pass, one byte more must not."""
    got: list[bytes] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(max_msg_size=WS_MAX_MSG_SIZE)
        await ws.prepare(request)
        async for msg in ws:
            got.append(msg.data if msg.type is BINARY else b"")
        return ws

    app = web.Application()
    app.router.add_get("/", handler)
    async with (
        TestServer(app, host="127.0.0.1") as server,
        aiohttp.ClientSession() as s,
        s.ws_connect(server.make_url("/")) as ws,
    ):
        await ws.send_bytes(b"\0" * MESSAGE_MAX)
        await ws.send_bytes(b"\0" * (MESSAGE_MAX + 1))
        await ws.receive()  # the server closes it
    assert [len(m) for m in got] == [MESSAGE_MAX, 0]


class Sink(asyncio.Protocol):
    """A protocol that keeps what it gets; ``pause`` makes it pause reading at once."""

    def __init__(self, pause: bool = False) -> None:
        self.got = bytearray()
        self.pause = pause
        self.transport: Any = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        if self.pause:
            self.transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        self.got += data


async def test_a_paused_stream_holds_up_no_other_and_gets_its_bytes_on_resume() -> None:
    a, b = pair()
    sinks: list[Sink] = []

    def serve() -> Sink:
        sinks.append(Sink(pause=not sinks))  # the first stream's reader pauses
        return sinks[-1]

    opener, server = Channel(a), Channel(b, serve=serve)
    tasks = [asyncio.create_task(opener.run()), asyncio.create_task(server.run())]
    slow, fast = opener.open(asyncio.Protocol()), opener.open(asyncio.Protocol())
    slow.write(b"s" * (WINDOW + 300_000))  # more than a window: the rest waits for credit
    fast.write(b"f" * 1_000_000)
    for _ in range(200):
        await asyncio.sleep(0)
        if len(sinks) == 2 and len(sinks[1].got) == 1_000_000:
            break
    assert len(sinks[1].got) == 1_000_000  # the other stream got everything
    assert sinks[0].got == b""  # held for the paused reader, within one window
    sinks[0].transport.resume_reading()
    for _ in range(200):
        await asyncio.sleep(0)
        if len(sinks[0].got) == WINDOW + 300_000:
            break
    assert sinks[0].got == b"s" * (WINDOW + 300_000)  # credit let the rest through
    for t in tasks:
        t.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_sender_overrunning_the_window_loses_the_channel() -> None:
    a, b = pair()
    server = Channel(b, serve=lambda: Sink(pause=True))
    run = asyncio.create_task(server.run())
    for _ in range(WINDOW // FRAME_MAX + 1):
        await a.send_bytes(struct.pack(">IB", 1, DATA) + b"x" * FRAME_MAX)
    await asyncio.wait_for(run, 5)
    assert server.closed
