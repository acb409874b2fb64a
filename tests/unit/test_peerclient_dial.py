"""The dial-back (:meth:`PeerClient.dial`): reached only if a node answers under the URL
dialled (or an older node answers 404), against a small aiohttp server on loopback."""

from __future__ import annotations

import socket

import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from peerprog.node.peerclient import PeerClient
from peerprog.node.protocol import Announce
from peerprog.node.ratelimit import TokenBucket


def client() -> PeerClient:
    return PeerClient(TokenBucket(0), max_connections=4, max_connections_per_peer=2, timeout=2.0)


@pytest.mark.parametrize(
    ("answer", "reached"),
    [
        ("self", True),
        ("other", False),
        ("404", True),
        ("500", False),
        ("garbage", False),
    ],
)
async def test_dial_back(answer: str, reached: bool) -> None:
    async def node(request: web.Request) -> web.StreamResponse:
        if answer in ("404", "500"):
            return web.Response(status=int(answer))
        if answer == "garbage":
            return web.Response(body=b"\xc1\xc1not msgpack")
        me = str(request.url.origin()) if answer == "self" else "http://elsewhere:1"
        return web.Response(body=Announce("n", me, ()).encode())

    app = web.Application()
    app.router.add_get("/p2p/v1/node", node)
    async with TestServer(app, host="127.0.0.1") as server, client() as c:
        assert await c.dial(str(server.make_url("")).rstrip("/")) is reached


async def test_a_closed_port_is_not_reached() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    async with client() as c:
        assert await c.dial(f"http://127.0.0.1:{port}") is False
