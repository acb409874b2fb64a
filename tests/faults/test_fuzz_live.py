"""Fuzzing a live node (in the test's event loop): the peer protocol and every local API
endpoint, with hostile path components, query parameters, headers and bodies.

Whatever arrives: no 5xx, no traceback in an answer or the log, the node's loops keep
running, its peer table stays within ``peers.max_peers``, and no file outside the store
(nor inside it) is created or changed.
"""

from __future__ import annotations

import asyncio
import json
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from yarl import URL

from peerprog.manifest import verify_chunk
from peerprog.manifest.canonical import pack
from tests.faults.live import Live, live_node, loops_alive, tree
from tests.storetools import chunk_range
from tests.unit.test_fuzz_inputs import NASTY_TEXT, announce_bodies

SEGMENTS = st.one_of(
    NASTY_TEXT,
    st.sampled_from(["tiny", "later", "a" * 64, "0", "-1", "99999999999", "%2e%2e%2f", "..%2f"]),
    st.sampled_from(["²", "٣", "¹²", "0x1", "1_0", " 1", "1 "]),  # digits int() may refuse
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=16),
    st.sampled_from(["../" * k + "outside/canary" for k in range(1, 6)]),
)


def encode(segment: str, raw: bool) -> str:
    """A path segment as sent: percent-encoded, or with its slashes and dots left raw."""
    return quote(segment, safe="/." if raw else "")


@pytest.fixture
async def live(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> AsyncIterator[Live]:
    with tempfile.TemporaryDirectory(prefix="pp-") as sockets:
        async with live_node(tmp_path, Path(sockets)) as node:
            yield node
    assert "Traceback" not in caplog.text
    assert "bug while answering" not in caplog.text


async def send(
    session: aiohttp.ClientSession, method: str, url: str, **kw: Any
) -> tuple[int, bytes]:
    async with asyncio.timeout(10):
        async with session.request(method, URL(url, encoded=True), **kw) as resp:
            try:
                async with asyncio.timeout(0.3):  # an event stream stays open: enough seen
                    body = await resp.read()
            except TimeoutError:
                body = b""
            return resp.status, body


# --- the peer protocol -----------------------------------------------------------------------

PEER_PATHS = [
    "/p2p/v1/names/{x}",
    "/p2p/v1/models/{x}/manifest.msgpack",
    "/p2p/v1/models/{x}/have",
    "/p2p/v1/models/{mid}/levels/{x}",
    "/p2p/v1/models/{mid}/{x}",
    "/p2p/v1/{x}",
    "/{x}",
]


RANGES = st.one_of(
    st.none(),
    st.builds(lambda a, b: f"bytes={a}-{b}", st.integers(-5, 1 << 20), st.integers(-5, 1 << 20)),
    st.builds(lambda t: f"bytes={t}", st.text(max_size=20)),
    st.text(max_size=30),
)


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    method=st.sampled_from(["GET", "HEAD", "POST", "PUT", "DELETE"]),
    template=st.sampled_from(PEER_PATHS),
    segment=SEGMENTS,
    raw=st.booleans(),
    byte_range=RANGES,
)
async def test_peer_paths(
    live: Live, method: str, template: str, segment: str, raw: bool, byte_range: str | None
) -> None:
    before = tree(live.root)
    path = template.format(x=encode(segment, raw), mid=live.signed.model_id)
    headers = {"Range": byte_range} if byte_range is not None and byte_range.isprintable() else {}
    async with aiohttp.ClientSession() as s:
        status, body = await send(s, method, live.peer_url + path, headers=headers)
    assert status < 500, (method, path, status, body[:200])
    assert b"Traceback" not in body
    if status in (200, 206) and "/levels/" in path and method == "GET":
        level = int(segment)
        start = 0 if status == 200 else int(headers["Range"].split("=")[1].split("-")[0] or 0)
        data = live.store_level(level)
        if status == 206 and headers["Range"].split("=")[1].startswith("-"):
            start = len(data) - len(body)
        assert body == data[start : start + len(body)]
    assert tree(live.root) == before
    assert loops_alive(live.node)


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.one_of(announce_bodies(), st.binary(max_size=100)))
async def test_announce_bodies(live: Live, body: bytes) -> None:
    before = tree(live.root)
    async with aiohttp.ClientSession() as s:
        status, answer = await send(s, "POST", live.peer_url + "/p2p/v1/announce", data=body)
    assert status in (200, 400), (status, answer[:200])
    assert len(live.node.peers) <= live.node.config.peers.max_peers
    assert tree(live.root) == before
    assert loops_alive(live.node)


async def test_announce_flood_keeps_the_peer_table_bounded(live: Live) -> None:
    models = [
        {"name": f"fake-{i}", "model_id": f"{i:064x}", "version": i} for i in range(256)
    ]  # fmt: skip
    async with aiohttp.ClientSession() as s:
        for r in range(100):
            peers = [
                {"node": f"p{i}", "url": f"http://127.0.0.{r % 200 + 2}:{i + 1}"} for i in range(64)
            ]
            body = pack(
                {"node": f"f{r}", "url": f"http://127.0.1.{r % 250 + 1}:9", "models": models,
                 "peers": peers}
            )  # fmt: skip
            status, _ = await send(s, "POST", live.peer_url + "/p2p/v1/announce", data=body)
            assert status == 200
    assert len(live.node.peers) <= live.node.config.peers.max_peers
    assert loops_alive(live.node)


# --- the local API -----------------------------------------------------------------------------

API_PATHS = [
    "/v1/models",
    "/v1/models/{x}",
    "/v1/models/{x}/best",
    "/v1/models/{x}/events",
    "/v1/models/{x}/{x}",
    "/v1/status",
    "/metrics",
    "/v1/{x}",
    "/{x}",
]
PARAMS = st.sampled_from(["min_level", "wait", "level", "x", "", "min_level[]", "\x00"])
VALUES = st.one_of(
    st.sampled_from(["0", "max", "-1", "1e9", "nan", "inf", "0.01", "", "00000001", "٣"]),
    st.text(max_size=8),
)
HEADERS = st.dictionaries(
    st.sampled_from(["If-None-Match", "Last-Event-ID", "Range", "Authorization", "Origin"]),
    st.one_of(
        st.text(st.characters(min_codepoint=32, max_codepoint=126), max_size=40),
        st.sampled_from([f"{'a' * 64}.²", f"{'a' * 64}.٣", "x.99999999999999", "."]),
    ),
    max_size=3,
)


@settings(deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    method=st.sampled_from(["GET", "HEAD", "PUT", "POST", "DELETE", "OPTIONS"]),
    template=st.sampled_from(API_PATHS),
    segment=SEGMENTS,
    raw=st.booleans(),
    query=st.lists(st.tuples(PARAMS, VALUES), max_size=3),
    headers=HEADERS,
)
async def test_api_requests(
    live: Live,
    method: str,
    template: str,
    segment: str,
    raw: bool,
    query: list[tuple[str, str]],
    headers: dict[str, str],
) -> None:
    # removing the model under test is a request like any other, but ends the fuzzing
    assume(not (method == "DELETE" and template == "/v1/models/{x}" and segment == "tiny"))
    before = tree(live.root)
    path = template.format(x=encode(segment, raw))
    qs = "&".join(f"{quote(k, safe='')}={quote(v, safe='')}" for k, v in query)
    if any(k == "wait" for k, _ in query):
        qs += "&wait=0"  # a duplicate: refused at once, never waited for
    url = "http://localhost" + path + (f"?{qs}" if qs else "")
    connector = aiohttp.UnixConnector(path=str(live.api.socket_path))
    async with aiohttp.ClientSession(connector=connector) as s:
        status, body = await send(s, method, url, headers=headers, allow_redirects=False)
    assert status < 500 or status == 503, (method, url, status, body[:200])
    assert b"Traceback" not in body
    if status >= 400 and method != "HEAD":
        doc = json.loads(body)
        assert set(doc) == {"error", "detail"}
        assert status != 503 or doc["error"] == "level not reached"
    after = tree(live.root)
    if method in ("PUT", "DELETE") and status < 400:
        # an accepted want (or unwant) of a name is recorded in the store: only there
        before.pop("store/wanted", None)
        after.pop("store/wanted", None)
    assert after == before
    assert loops_alive(live.node)


async def test_api_and_peer_fuzz_leave_the_node_working(live: Live) -> None:
    """After hostile input, the node still serves its model to peers and apps."""
    mid = live.signed.model_id
    path, headers = chunk_range(live.data_dir, mid, 0)
    async with aiohttp.ClientSession() as s:
        status, body = await send(s, "GET", f"{live.peer_url}/p2p/v1{path}", headers=headers)
    assert status == 206
    verify_chunk(live.signed.manifest, 0, body)
    connector = aiohttp.UnixConnector(path=str(live.api.socket_path))
    async with aiohttp.ClientSession(connector=connector) as s:
        status, body = await send(s, "GET", "http://localhost/v1/models/tiny/best?min_level=max")
    assert status == 200 and body[:8]


async def hang_up(family: int, address: object, request: bytes) -> None:
    """Send a request and close at once (a reset on TCP): a peer or app that leaves."""
    import socket
    import struct

    loop = asyncio.get_running_loop()
    s = socket.socket(family, socket.SOCK_STREAM)
    s.setblocking(False)
    try:
        await loop.sock_connect(s, address)
        await loop.sock_sendall(s, request)
        if family == socket.AF_INET:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    finally:
        s.close()


async def test_peers_and_apps_that_hang_up_mid_answer(
    live: Live, caplog: pytest.LogCaptureFixture
) -> None:
    import socket

    mid = live.signed.model_id
    path, _ = chunk_range(live.data_dir, mid, 0)
    chunk = f"GET /p2p/v1{path} HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    best = b"GET /v1/models/tiny/best HTTP/1.1\r\nHost: x\r\n\r\n"
    for _ in range(40):
        await hang_up(socket.AF_INET, ("127.0.0.1", live.node.port), chunk)
        await hang_up(socket.AF_UNIX, str(live.api.socket_path), best)
    await asyncio.sleep(0.5)
    assert "Error handling request" not in caplog.text
    await test_api_and_peer_fuzz_leave_the_node_working(live)


async def test_head_of_a_chunk_has_no_body(live: Live) -> None:
    """A body after a HEAD answer would be read as the next answer on the connection."""
    path, headers = chunk_range(live.data_dir, live.signed.model_id, 0)
    url = f"{live.peer_url}/p2p/v1{path}"
    async with aiohttp.ClientSession() as s:
        for _ in range(3):  # one connection, reused
            async with s.head(url, headers=headers) as resp:
                assert resp.status == 206 and resp.content_length
            async with s.get(url, headers=headers) as resp:
                assert resp.status == 206
                verify_chunk(live.signed.manifest, 0, await resp.read())
