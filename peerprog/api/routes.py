"""The endpoints of the local API, documented for users in ``docs/api.md`` (the unix socket
and the TCP listener share them).

| request | answer |
| --- | --- |
| ``GET /v1/models`` | JSON list: every model the node holds, and wanted names not found yet |
| ``PUT /v1/models/<name>`` | start fetching the model (202, its status) |
| ``DELETE /v1/models/<name>`` | stop fetching it and delete it (``?keep_data=true``: keep it) |
| ``GET /v1/models/<name>`` | the status JSON of the newest version |
| ``GET /v1/models/<name>/best`` | the best approximation as safetensors (:mod:`.best`) |
| ``GET /v1/models/<name>/tree`` | a repository's best level: its files as JSON |
| ``GET /v1/models/<name>/files/<path>`` | one file of that level (``model_id``, ``level``) |
| ``GET /v1/models/<name>/events`` | server-sent events as levels complete (:mod:`.events`) |
| ``POST /v1/store/rescan`` | take up models published into the store meanwhile |
| ``GET /v1/status`` | the node's status JSON |
| ``GET /metrics`` | Prometheus text (:mod:`.metrics`) |
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
import time
from collections.abc import Awaitable, Callable
from typing import BinaryIO

from aiohttp import web

from peerprog._version import __version__
from peerprog.api.best import BestFile
from peerprog.api.context import ApiContext
from peerprog.api.errors import BadRequest, LevelGone, LevelTimeout, UnknownModel
from peerprog.api.events import stream_events
from peerprog.api.metrics import CONTENT_TYPE, render_metrics
from peerprog.api.query import parse_best_query
from peerprog.api.view import GrowingView, ModelView
from peerprog.manifest import valid_name
from peerprog.manifest.tree import path_problem
from peerprog.sendfile import PIECE, parse_range, send_range
from peerprog.store import tree_doc
from peerprog.swarm import SOURCE_KINDS, Peer

CTX = web.AppKey("peerprog_api", ApiContext)
SEND_BUFFER = 1 << 20
"""Socket send buffer asked for ``best`` answers (the kernel doubles it; capped by
``net.core.wmem_max``)."""
GROWING_PIECE = 4 << 20
"""Bytes sent at a time of a file still being built (each waits until they are final)."""


def add_routes(app: web.Application) -> None:
    """Register every endpoint on ``app`` (whose ``app[CTX]`` is the API context)."""
    app.router.add_get("/v1/models", list_models)
    app.router.add_put("/v1/models/{name}", put_model)
    app.router.add_delete("/v1/models/{name}", delete_model)
    app.router.add_get("/v1/models/{name}", get_model)
    app.router.add_get("/v1/models/{name}/best", get_best)
    app.router.add_get("/v1/models/{name}/tree", get_tree)
    app.router.add_get("/v1/models/{name}/files/{path:.+}", get_file)
    app.router.add_get("/v1/models/{name}/events", get_events, allow_head=False)
    app.router.add_post("/v1/store/rescan", post_rescan)
    app.router.add_get("/v1/status", get_status)
    app.router.add_get("/metrics", get_metrics)


def model_name(request: web.Request) -> str:
    """The ``<name>`` of the path, checked."""
    name = request.match_info["name"]
    if not valid_name(name):
        raise BadRequest(f"{name[:80]!r} is not a valid model name (letters, digits, . _ -)")
    return name


def wanted_placeholder(name: str, problem: str | None) -> dict[str, object]:
    """The status of a wanted name no source has offered yet."""
    return {
        "name": name,
        "model_id": None,
        "version": None,
        "codec": None,
        "level": -1,
        "levels_total": None,
        "bytes_received": 0,
        "bytes_total": None,
        "complete": False,
        "peers": 0,
        "files": None,
        "problem": problem,
    }


def models_json(ctx: ApiContext) -> list[dict[str, object]]:
    """Every model the node holds (newest version of each name first), then the wanted
    names not found yet."""
    node = ctx.node
    states = sorted(node.models.values(), key=lambda s: (s.manifest.name, -s.manifest.version))
    docs = [{**s.summary(), "problem": node.problem(s.manifest.name)} for s in states]
    held = {s.manifest.name for s in states}
    docs += [wanted_placeholder(n, node.problem(n)) for n in sorted(node.wanted) if n not in held]
    return docs


def model_json(ctx: ApiContext, name: str) -> dict[str, object]:
    """The status of the newest version of ``name``; :class:`UnknownModel` if none."""
    versions = ctx.node.versions(name)
    if versions:
        return {**versions[0].summary(), "problem": ctx.node.problem(name)}
    if name in ctx.node.wanted:
        return wanted_placeholder(name, ctx.node.problem(name))
    raise UnknownModel(f"this node neither holds nor wants a model {name!r}")


async def list_models(request: web.Request) -> web.Response:
    return web.json_response(models_json(request.app[CTX]))


async def put_model(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    name = model_name(request)
    ctx.node.want(name)
    return web.json_response(model_json(ctx, name), status=202)


async def delete_model(request: web.Request) -> web.Response:
    """Stop fetching ``name``; with ``keep_data=true`` keep what is held, else delete it
    from the store too."""
    ctx = request.app[CTX]
    name = model_name(request)
    keep = request.query.get("keep_data", "false").lower()
    if keep not in ("true", "false", "1", "0"):
        raise BadRequest("keep_data must be true or false")
    if name not in ctx.node.wanted and not ctx.node.versions(name):
        raise UnknownModel(f"this node neither holds nor wants a model {name!r}")
    if keep in ("true", "1"):
        ctx.node.unwant(name)
        removed: list[str] = []
    else:
        removed = await ctx.node.remove(name)
        ctx.notifier.fire(name)
    return web.json_response({"name": name, "removed": removed, "kept_data": keep in ("true", "1")})


async def get_model(request: web.Request) -> web.Response:
    return web.json_response(model_json(request.app[CTX], model_name(request)))


async def get_best(request: web.Request) -> web.StreamResponse:
    ctx = request.app[CTX]
    name = model_name(request)
    query = parse_best_query(request.query.items())
    stats = ctx.stats
    stats.best_in_flight += 1
    try:
        for _ in range(3):  # a newer level may replace the file between finding and opening
            try:
                best, not_modified = await ctx.resolve_best(
                    name, query, request.headers.get("If-None-Match"), growing=True
                )
            except LevelTimeout:
                stats.best_timeouts += 1
                raise
            if best.repository:
                raise BadRequest(
                    f"{name} is a repository of {len(best.manifest.files)} files: fetch it as a "
                    f"directory (GET {request.path.removesuffix('/best')}/tree, then each "
                    "file; Client.best_dir; peerprog fetch --out DIR)"
                )
            headers = {**best.headers(), "Cache-Control": "no-cache"}
            if not_modified:
                stats.best_not_modified += 1
                return web.Response(status=304, headers=headers)
            f = open_best(best)
            if f is None:
                continue
            with f:
                filename = f"{best.name}-v{best.version}-level{best.level}.safetensors"
                headers["Content-Type"] = "application/octet-stream"
                headers["Content-Disposition"] = f'attachment; filename="{filename}"'
                resp = web.StreamResponse(headers=headers)
                resp.content_length = best.size
                widen_send_buffer(request)
                pace, piece = None, PIECE
                if best.growing is not None:
                    pace, piece = as_built(request, best.growing), GROWING_PIECE
                try:
                    await send_range(request, resp, f, 0, best.size, pace=pace, piece=piece)
                except ConnectionResetError:  # the app left mid-answer, or the build failed
                    return resp
            if request.method != "HEAD":
                stats.bytes_sent += best.size
            stats.best_answers += 1
            return resp
        raise LevelTimeout(f"{name}: its decoded file keeps changing; try again", retry_after=1)
    finally:
        stats.best_in_flight -= 1


async def get_tree(request: web.Request) -> web.Response:
    """A repository's best level (``min_level``, ``wait`` and ``If-None-Match`` as for
    ``best``) as its tree document: the model, the level, and every file."""
    ctx = request.app[CTX]
    name = model_name(request)
    query = parse_best_query(request.query.items())
    best, not_modified = await ctx.resolve_best(name, query, request.headers.get("If-None-Match"))
    if not best.repository:
        raise BadRequest(f"{name} is one model file, not a repository: GET its best")
    headers = {**best.headers(), "Cache-Control": "no-cache"}
    if not_modified:
        return web.Response(status=304, headers=headers)
    return web.json_response(tree_doc(best.manifest, best.model_id, best.level), headers=headers)


async def get_file(request: web.Request) -> web.StreamResponse:
    """One file of a repository's level, ``?model_id=<id>&level=<n>`` as the tree gave
    them (``Range`` answered 206); 410 once the node serves another level or version."""
    ctx = request.app[CTX]
    name = model_name(request)
    path = request.match_info["path"]
    problem = path_problem(path)
    if problem is not None:
        raise BadRequest(f"file path {path[:80]!r} {problem}")
    text = request.query.get("level", "")
    if not text.isascii() or not text.isdigit() or len(text) > 6:
        raise BadRequest("level must be the level number the tree gave")
    model_id = request.query.get("model_id", "")
    best = ctx.served_level(name, model_id, int(text))
    entry = best.manifest.file(path)
    if entry is None:
        raise UnknownModel(f"{name} has no file {path[:200]!r}")
    try:
        fd = os.open(best.path / path, os.O_RDONLY | os.O_NOFOLLOW)
    except FileNotFoundError:  # replaced by a newer level between the check and the open
        raise LevelGone(f"{name}: level {best.level} is no longer served") from None
    with os.fdopen(fd, "rb") as f:
        size = os.fstat(fd).st_size
        span = parse_range(request.headers.get("Range"), size)
        start, stop = span if span is not None else (0, size)
        headers = {
            **best.headers(),
            "Content-Type": "application/octet-stream",
            "Accept-Ranges": "bytes",
            "Cache-Control": "no-cache",
        }
        if span is not None:
            headers["Content-Range"] = f"bytes {start}-{stop - 1}/{size}"
        resp = web.StreamResponse(status=206 if span else 200, headers=headers)
        resp.content_length = stop - start
        widen_send_buffer(request)
        try:
            await send_range(request, resp, f, start, stop - start)
        except ConnectionResetError:  # the app left mid-answer: its choice
            return resp
    if request.method != "HEAD":
        ctx.stats.bytes_sent += stop - start
    return resp


def open_best(best: BestFile) -> BinaryIO | None:
    """Open the file ``best`` names; a file still being built may have been renamed into
    place meanwhile (then that is opened). None if it is gone: replaced by a newer level,
    or its build failed."""
    paths = [best.path] if best.growing is None else [best.path, best.growing.final]
    for path in paths:
        try:
            return open(path, "rb")
        except FileNotFoundError:
            continue
    return None


def as_built(request: web.Request, growing: GrowingView) -> Callable[[int], Awaitable[None]]:
    """A ``pace`` for :func:`send_range` of a file still being built: each piece waits
    until its bytes are final. If the build ends without them, the connection is closed,
    so the app sees an answer shorter than its ``Content-Length`` (never a whole one with
    bytes that were not final)."""
    sent = 0

    async def pace(n: int) -> None:
        nonlocal sent
        if not await growing.until(sent + n):
            if request.transport is not None:
                request.transport.close()
            raise ConnectionResetError("the level's build ended before the answer did")
        sent += n

    return pace


def widen_send_buffer(request: web.Request) -> None:
    """Let the kernel queue :data:`SEND_BUFFER` bytes of the answer: fewer, larger writes
    (with the default of about 200 KB, answers take about a fifth longer)."""
    transport = request.transport
    sock = transport.get_extra_info("socket") if transport is not None else None
    if sock is not None:
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, SEND_BUFFER)


async def get_events(request: web.Request) -> web.StreamResponse:
    return await stream_events(request, request.app[CTX], model_name(request))


async def post_rescan(request: web.Request) -> web.Response:
    """Take up what was published into the node's store meanwhile (``publish --socket``)."""
    found = await request.app[CTX].node.rescan()
    return web.json_response({"found": found})


async def get_status(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    node = ctx.node
    received = dict.fromkeys(SOURCE_KINDS, 0)
    for s in node.models.values():
        for kind, n in s.metrics.bytes_by_source.items():
            received[kind] = received.get(kind, 0) + n
    now = time.time()
    loop_now = asyncio.get_running_loop().time()
    doc = {
        "node": node.config.node.name,
        "peerprog_version": __version__,
        "url": node.url,
        "started_at": node.started_at,
        "uptime_s": round(max(0.0, now - node.started_at), 3),
        "peers": len(node.peers),
        "peer_list": [peer_json(p, loop_now) for p in node.peers.values()],
        "reachable": node.reachable,
        "channels": node.channels.to_json(),
        "bittorrent": None if (bt := node.bittorrent_report) is None else bt.to_json(),
        "wanted": sorted(node.wanted),
        "bytes_uploaded": node.bytes_uploaded,
        "store_error": node.store_error,
        "bytes_received_by_source": received,
        "models": models_json(ctx),
        "transfers": {mid: transfer_json(s) for mid, s in node.models.items()},
        "api": {
            "socket": node.config.api.socket,
            "listen_tcp": node.config.api.listen_tcp,
            "best_answers": ctx.stats.best_answers,
            "best_in_flight": ctx.stats.best_in_flight,
            "event_streams": ctx.stats.event_streams,
            "snapshots_built": node.decoded_builds(),
        },
    }
    return web.json_response(doc)


def peer_json(peer: Peer, now: float) -> dict[str, object]:
    """A peer of the table as ``/v1/status`` lists it."""
    seen = None if peer.last_seen is None else round(now - peer.last_seen, 1)
    return {
        "url": peer.url,
        "node": peer.node,
        "state": peer.state.value,
        "bootstrap": peer.bootstrap,
        "failures": peer.failures,
        "last_seen_s_ago": seen,
        "dialable": peer.dialable,
        "channel": peer.channel,
        "reaches_me": peer.reaches_me,
    }


def transfer_json(state: ModelView) -> dict[str, object]:
    """One model's counters in ``/v1/status``, with its levels (sizes and the manifest's
    quality figures, e.g. ``rel_rmse_ppm``) for the web UI's charts."""
    levels = [
        {"level": lv.level, "bytes": lv.bytes, "quality": dict(lv.quality)}
        for lv in state.manifest.levels
    ]
    return {**state.metrics.to_json(), "levels": levels}


async def get_metrics(request: web.Request) -> web.Response:
    ctx = request.app[CTX]
    text = render_metrics(ctx.node, ctx.stats)
    return web.Response(body=text.encode(), headers={"Content-Type": CONTENT_TYPE})
