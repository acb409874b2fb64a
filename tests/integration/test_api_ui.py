"""The TCP listener's web UI routes and event-stream tickets, in front of a fake node
(loopback TCP, no daemon): the static files need no token and nothing outside their folder
is served; the API still needs the token; a ticket opens one event stream, once."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import numpy as np
import pytest
from aiohttp.test_utils import TestClient, TestServer

from peerprog.api.context import ApiContext
from peerprog.api.server import build_app
from peerprog.api.ui import CONTENT_TYPES
from peerprog.reference import digits
from peerprog.ui import STATIC_DIR
from tests.unit.test_api_support import FakeNode, publish_sample

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
ALLOWED = "http://localhost:3000"


class Served:
    def __init__(self, client: TestClient, node: FakeNode) -> None:  # type: ignore[type-arg]
        self.client = client
        self.node = node

    @property
    def own_origin(self) -> str:
        return f"http://127.0.0.1:{self.client.port}"


@pytest.fixture
async def tcp(tmp_path: Path) -> AsyncIterator[Served]:
    store, signed = publish_sample(tmp_path / "store")
    node = FakeNode(store)
    node.add(signed, levels=1)
    ctx = ApiContext(node)
    app = build_app(ctx, token=TOKEN, cors_origins=[ALLOWED])
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        yield Served(client, node)
    ctx.notifier.close()


async def test_ui_files_need_no_token_and_carry_their_type(tcp: Served) -> None:
    c = tcp.client
    served = [p for p in sorted(STATIC_DIR.iterdir()) if p.suffix in CONTENT_TYPES]
    assert {"index.html", "infer.html", "dashboard.js", "infer.js", "cnn.js"} <= {
        p.name for p in served
    }
    for path in served:
        resp = await c.get(f"/ui/{path.name}")
        assert resp.status == 200, path.name
        assert resp.headers["Content-Type"] == CONTENT_TYPES[path.suffix]
        assert await resp.read() == path.read_bytes()
        csp = resp.headers["Content-Security-Policy"]
        assert "default-src 'none'" in csp and "connect-src 'self'" in csp
        assert "frame-ancestors 'none'" in csp and resp.headers["X-Frame-Options"] == "DENY"
        assert resp.headers["X-Content-Type-Options"] == "nosniff"
    index = await c.get("/ui/")
    assert index.status == 200 and await index.read() == (STATIC_DIR / "index.html").read_bytes()
    redirect = await c.get("/ui", allow_redirects=False)
    assert redirect.status == 302 and redirect.headers["Location"] == "/ui/"


@pytest.mark.parametrize(
    "path",
    [
        "/ui/..%2f__init__.py",
        "/ui/%2e%2e%2f%2e%2e%2fapi%2fui.py",
        "/ui/..%2F..%2F..%2Fpyproject.toml",
        "/ui/__init__.py",
        "/ui/nope.js",
        "/ui/data/",
        "/ui/data/digits_cnn.safetensors",
        "/ui/static/index.html",
        "/ui/%2Fetc%2Fpasswd",
        "/ui//etc/passwd",
        "/ui/index.html%00.js",
    ],
)
async def test_nothing_outside_the_ui_folder(tcp: Served, path: str) -> None:
    resp = await tcp.client.get(aiohttp.client.URL(path, encoded=True))
    body = await resp.read()
    assert resp.status == 404, (path, resp.status, body[:200])
    assert json.loads(body)["error"] == "not found"


async def test_the_test_split_as_json(tcp: Served) -> None:
    resp = await tcp.client.get("/ui/data/digits-test.json")
    assert resp.status == 200 and resp.headers["Content-Type"] == "application/json"
    doc = await resp.json()
    x, y = digits.load_test_split()
    assert doc["shape"] == [8, 8] and doc["pixel_max"] == 16
    assert np.array_equal(np.array(doc["images"]).reshape(x.shape), x)
    assert doc["labels"] == y.tolist()


async def test_the_api_still_needs_the_token(tcp: Served) -> None:
    c = tcp.client
    for method, path in (
        ("GET", "/v1/models"),
        ("GET", "/v1/status"),
        ("POST", "/v1/tickets"),
        ("GET", "/v1/models/tiny/events"),
        ("GET", "/v1/models/tiny/best"),
        ("PUT", "/v1/models/x"),
    ):
        for headers in ({}, {"Authorization": "Bearer wrong"}):
            resp = await c.request(method, path, headers=headers)
            assert resp.status == 401, (method, path)
            assert (await resp.json())["error"] == "unauthorized"
    resp = await c.get("/v1/models", headers=AUTH)
    assert resp.status == 200


async def test_status_lists_each_models_levels(tcp: Served) -> None:
    doc = await (await tcp.client.get("/v1/status", headers=AUTH)).json()
    ((model_id, transfer),) = doc["transfers"].items()
    state = tcp.node.models[model_id]
    assert [lv["bytes"] for lv in transfer["levels"]] == [lv.bytes for lv in state.manifest.levels]
    assert all(isinstance(lv["quality"], dict) for lv in transfer["levels"])


async def ticket(c: TestClient, headers: dict[str, str] | None = None) -> str:  # type: ignore[type-arg]
    resp = await c.post("/v1/tickets", headers={**AUTH, **(headers or {})})
    assert resp.status == 200 and resp.headers["Cache-Control"] == "no-store"
    doc = await resp.json()
    assert set(doc) == {"ticket", "expires_in"} and doc["expires_in"] == 60
    assert isinstance(doc["ticket"], str) and len(doc["ticket"]) >= 32
    return str(doc["ticket"])


async def first_event(c: TestClient, url: str) -> tuple[int, bytes]:  # type: ignore[type-arg]
    async with c.get(url) as resp:
        if resp.status != 200:
            return resp.status, await resp.read()
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        data = b""
        async with asyncio.timeout(10):
            while b"event: level" not in data:
                data += await resp.content.readany()
        return resp.status, data


async def test_a_ticket_opens_one_event_stream_once(tcp: Served) -> None:
    c = tcp.client
    t = await ticket(c)
    status, data = await first_event(c, f"/v1/models/tiny/events?ticket={t}")
    assert status == 200 and b'"level":0' in data
    status, _ = await first_event(c, f"/v1/models/tiny/events?ticket={t}")
    assert status == 401  # used up
    status, _ = await first_event(c, "/v1/models/tiny/events?ticket=forged")
    assert status == 401
    # a ticket opens nothing but an event stream
    t = await ticket(c)
    for path in ("/v1/models", "/v1/status", "/v1/models/tiny", "/v1/models/tiny/best"):
        resp = await c.get(f"{path}?ticket={t}")
        assert resp.status == 401, path
    resp = await c.put(f"/v1/models/x?ticket={t}")
    assert resp.status == 401
    status, _ = await first_event(c, f"/v1/models/tiny/events?ticket={t}")
    assert status == 200  # not used up by the refused requests


async def test_the_pages_own_origin_may_post_but_no_other(tcp: Served) -> None:
    c = tcp.client
    # the UI's own origin: POST and PUT carry an Origin, let through (with the token)
    own = {"Origin": tcp.own_origin}
    await ticket(c, own)
    resp = await c.put("/v1/models/wanted-one", headers={**AUTH, **own})
    assert resp.status == 202 and "Access-Control-Allow-Origin" not in resp.headers
    resp = await c.post("/v1/tickets", headers=own)
    assert resp.status == 401  # still needs the token
    # an origin not listed gets nothing, token or not, UI files included
    evil = {"Origin": "http://evil.example"}
    for method, path in (("POST", "/v1/tickets"), ("GET", "/v1/models"), ("GET", "/ui/")):
        resp = await c.request(method, path, headers={**AUTH, **evil})
        assert resp.status == 403, (method, path)
        assert "Access-Control-Allow-Origin" not in resp.headers
    # the loopback address by another name (DNS rebinding) is not the UI's origin
    rebind = {"Origin": f"http://evil.example:{c.port}", "Host": f"evil.example:{c.port}"}
    resp = await c.post("/v1/tickets", headers={**AUTH, **rebind})
    assert resp.status == 403
    # a listed origin may ask for tickets (its preflight allows POST)
    pre = await c.options(
        "/v1/tickets", headers={"Origin": ALLOWED, "Access-Control-Request-Method": "POST"}
    )
    assert pre.status == 204 and "POST" in pre.headers["Access-Control-Allow-Methods"]
    assert "DELETE" in pre.headers["Access-Control-Allow-Methods"]  # DELETE /v1/models/<name>
    resp = await c.post("/v1/tickets", headers={**AUTH, "Origin": ALLOWED})
    assert resp.status == 200 and resp.headers["Access-Control-Allow-Origin"] == ALLOWED


async def test_the_unix_socket_has_no_ui_and_no_tickets(tmp_path: Path) -> None:
    store, signed = publish_sample(tmp_path / "store")
    node = FakeNode(store)
    node.add(signed, levels=1)
    app = build_app(ApiContext(node))
    async with TestClient(TestServer(app, host="127.0.0.1")) as c:
        for method, path in (("GET", "/ui/"), ("GET", "/ui/index.html"), ("POST", "/v1/tickets")):
            resp = await c.request(method, path)
            assert resp.status in (404, 405), (method, path, resp.status)
        assert (await c.get("/v1/models")).status == 200
