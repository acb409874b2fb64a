"""The API server on a real unix socket in front of a fake node (no daemon): whatever a
client sends, the answer is never a 500 or a traceback; our own bugs are answered 500 JSON
and logged; stopping ends long-polls and event streams at once."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from urllib.parse import quote

import aiohttp
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from peerprog.api.server import ApiServer
from peerprog.config import ApiSection, Config
from tests.unit.test_api_support import FakeNode, publish_sample


@pytest.fixture
async def served(
    tmp_path: Path,
) -> AsyncIterator[tuple[ApiServer, FakeNode, aiohttp.ClientSession]]:
    store, signed = publish_sample(tmp_path / "store")
    node = FakeNode(store, want=("later",))
    node.config = dataclasses.replace(
        Config(), api=ApiSection(socket=str(tmp_path / "run" / "api.sock"))
    )
    node.add(signed, levels=1)
    server = ApiServer(node)
    await server.start()
    connector = aiohttp.UnixConnector(path=str(server.socket_path))
    async with aiohttp.ClientSession(connector=connector) as session:
        yield server, node, session
    await server.stop()


ANSWERS = {200, 202, 204, 304, 400, 404, 405, 503}  # 503: a level not reached (no wait)


def path_text() -> st.SearchStrategy[str]:
    return st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12)


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    method=st.sampled_from(["GET", "PUT", "POST", "DELETE", "HEAD", "OPTIONS"]),
    name=st.one_of(st.just("tiny"), st.just("later"), path_text()),
    tail=st.sampled_from(["", "/best", "/events", "/x"]),
    query=st.lists(
        st.tuples(st.sampled_from(["min_level", "wait", "x", ""]), path_text()), max_size=3
    ),
    etag=st.one_of(st.none(), path_text()),
)
async def test_client_input_never_gives_a_500(
    served: tuple[ApiServer, FakeNode, aiohttp.ClientSession],
    method: str,
    name: str,
    tail: str,
    query: list[tuple[str, str]],
    etag: str | None,
) -> None:
    _, _, session = served
    if tail == "/events" and method == "GET" and name in ("tiny", "later"):
        return  # a stream that stays open: tested elsewhere
    qs = "&".join(f"{quote(k)}={quote(v)}" for k, v in query)
    url = f"http://localhost/v1/models/{quote(name, safe='')}{tail}" + (f"?{qs}" if qs else "")
    if any(k == "wait" for k, _ in query):
        url += "&wait=0" if qs else "?wait=0"  # a duplicate: refused, never waited for
    headers = {"If-None-Match": quote(etag)} if etag is not None else {}
    async with session.request(method, url, headers=headers, allow_redirects=False) as resp:
        body = await resp.read()
        assert resp.status in ANSWERS, (method, url, resp.status, body[:200])
        if resp.status >= 400 and method != "HEAD":
            doc = await resp.json()
            assert set(doc) == {"error", "detail"}


async def test_our_bug_is_a_logged_500_in_json(
    served: tuple[ApiServer, FakeNode, aiohttp.ClientSession], caplog: pytest.LogCaptureFixture
) -> None:
    _, node, session = served

    def broken(name: str) -> None:
        raise RuntimeError("a bug of ours")

    node.versions = broken  # type: ignore[assignment,method-assign]
    with caplog.at_level(logging.ERROR, logger="peerprog.api"):
        async with session.get("http://localhost/v1/models/tiny") as resp:
            assert resp.status == 500
            doc = await resp.json()
    assert doc["error"] == "internal error" and "Traceback" not in doc["detail"]
    assert "bug while answering GET /v1/models/tiny" in caplog.text
    assert "a bug of ours" in caplog.text


async def test_event_stream_resumes_without_replay_and_ends_for_good_after_complete(
    served: tuple[ApiServer, FakeNode, aiohttp.ClientSession],
) -> None:
    _, node, session = served
    url = "http://localhost/v1/models/tiny/events"
    state = node.newest_served("tiny")
    assert state is not None
    for level in range(state.manifest.levels_total):
        node.receive(state, level)
    async with session.get(url) as r:
        body = (await r.read()).decode()
    ids = [line[4:] for line in body.splitlines() if line.startswith("id: ")]
    assert ids[-1] == f"{state.model_id}.complete"
    # a spec-following client reconnects with the last id: told to stop (204), no replay
    async with session.get(url, headers={"Last-Event-ID": ids[-1]}) as r:
        assert r.status == 204 and await r.read() == b""
    async with session.get(url, headers={"Last-Event-ID": f"{state.model_id}.0"}) as r:
        body = (await r.read()).decode()
    resumed = [line[4:] for line in body.splitlines() if line.startswith("id: ")]
    last = state.manifest.levels_total - 1
    assert resumed == [f"{state.model_id}.{lv}" for lv in range(1, last + 1)] + [ids[-1]]


async def test_stop_ends_long_polls_and_streams_at_once(
    served: tuple[ApiServer, FakeNode, aiohttp.ClientSession],
) -> None:
    server, _, session = served

    async def long_poll() -> int:
        async with session.get("http://localhost/v1/models/tiny/best?min_level=max&wait=60") as r:
            await r.read()
            return r.status

    async def stream() -> bytes:
        async with session.get("http://localhost/v1/models/later/events") as r:
            return await r.read()

    poll = asyncio.create_task(long_poll())
    events = asyncio.create_task(stream())
    await asyncio.sleep(0.2)
    assert server.ctx.stats.event_streams == 1 and server.ctx.stats.best_in_flight == 1
    started = time.monotonic()
    await server.stop()
    assert time.monotonic() - started < 1.5
    assert await asyncio.wait_for(poll, 5) == 503
    assert (await asyncio.wait_for(events, 5)).startswith(b"retry:")
    assert not server.socket_path.exists()
