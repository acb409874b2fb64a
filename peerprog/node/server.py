"""The peer-protocol HTTP server: the store, read-only, under ``/p2p/v1/``, plus ``have`` and
``announce``.

A chunk, or a run of consecutive chunks, is a byte range of a level file (``Range``,
answered 206 by ``sendfile``). Only verified chunks are written, and a range is served
only if every chunk it touches is held and its level file is as the node left it (else
the chunks are hashed again first: one damaged on disk is never sent — a peer would ban
us for it). Uploads pass through the node's upload token bucket in small pieces, so the
cap holds across concurrent peers.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web

from peerprog.config import LimitsSection
from peerprog.errors import PeerFault
from peerprog.manifest import valid_model_id, valid_name
from peerprog.node.protocol import PREFIX, Announce, decode_announce, encode_have
from peerprog.node.ratelimit import TokenBucket, throttle
from peerprog.node.state import ModelState
from peerprog.sendfile import send_range
from peerprog.store import ModelFiles

log = logging.getLogger("peerprog.server")
MSGPACK = "application/msgpack"
SEND_PIECE = 16384


class Served(Protocol):
    """The models the server may serve (:class:`~peerprog.node.catalog.Catalog`)."""

    @property
    def models(self) -> Mapping[str, ModelState]: ...
    def newest_served(self, name: str) -> ModelState | None: ...
    def files(self, model_id: str) -> ModelFiles | None: ...


@dataclass
class Upload:
    """The upload cap and what went through it."""

    bucket: TokenBucket
    bytes: int = 0


@dataclass(frozen=True)
class PeerService:
    """What the peer server needs."""

    served: Served
    on_announce: Callable[[Announce], Announce]
    upload: Upload
    limits: LimitsSection


SERVICE = web.AppKey("peerprog_peer_service", PeerService)


def _svc(request: web.Request) -> PeerService:
    return request.app[SERVICE]


async def get_name(request: web.Request) -> web.StreamResponse:
    name = request.match_info["name"]
    if not valid_name(name):
        raise web.HTTPBadRequest(text="bad model name")
    state = _svc(request).served.newest_served(name)
    if state is None:
        raise web.HTTPNotFound(text="unknown model name")
    return web.Response(text=state.model_id + "\n")


def _model(request: web.Request) -> ModelState:
    model_id = request.match_info["model_id"]
    if not valid_model_id(model_id):
        raise web.HTTPBadRequest(text="bad model id")
    state = _svc(request).served.models.get(model_id)
    if state is None:
        raise web.HTTPNotFound(text="unknown model")
    return state


async def get_manifest(request: web.Request) -> web.StreamResponse:
    return web.Response(body=_model(request).signed.envelope, content_type=MSGPACK)


async def get_have(request: web.Request) -> web.StreamResponse:
    return web.Response(body=encode_have(_model(request).have), content_type=MSGPACK)


def parse_range(header: str | None, size: int) -> tuple[int, int] | None:
    """``Range: bytes=a-b`` (or ``a-``, ``-n``) of a ``size``-byte file as (start, stop);
    None without a header; :class:`web.HTTPRequestRangeNotSatisfiable` if it is malformed,
    several ranges, or outside the file."""
    if header is None:
        return None
    unit, _, spec = header.strip().partition("=")
    first, dash, last = spec.strip().partition("-")
    ok = unit.strip().lower() == "bytes" and bool(dash) and "," not in spec
    ok = ok and all(not x or (x.isascii() and x.isdigit() and len(x) <= 18) for x in (first, last))
    if not ok or (not first and not last):
        raise _unsatisfiable(size)
    if not first:  # the last n bytes
        start, stop = max(0, size - int(last)), size
    else:
        start = int(first)
        stop = min(size, int(last) + 1) if last else size
    if start >= stop or start >= size:
        raise _unsatisfiable(size)
    return start, stop


def _unsatisfiable(size: int) -> web.HTTPRequestRangeNotSatisfiable:
    return web.HTTPRequestRangeNotSatisfiable(
        headers={"Content-Range": f"bytes */{size}"}, text="range not held"
    )


async def get_level(request: web.Request) -> web.StreamResponse:
    """A byte range of a level file (206), or the whole level (200), by ``sendfile``;
    416 unless every chunk it touches is held, verified and intact."""
    state = _model(request)
    svc = _svc(request)
    text = request.match_info["level"]
    if not (text.isascii() and text.isdigit()) or len(text) > 4:
        raise web.HTTPBadRequest(text="bad level")
    m = state.manifest
    level = int(text)
    files = svc.served.files(state.model_id)
    if level >= m.levels_total or files is None:
        raise web.HTTPNotFound(text="no such level")
    lv = m.levels[level]
    span = parse_range(request.headers.get("Range"), lv.bytes)
    start, stop = span if span is not None else (0, lv.bytes)
    chunks = _chunks_in(files, lv.chunks, start, stop)
    usable = await asyncio.to_thread(files.usable, chunks, state.have)
    if not usable:
        for i in chunks:
            if i in files.damaged:
                log.error("not serving chunk %d of %s…: damaged on disk", i, state.model_id[:12])
        if span is None:
            raise web.HTTPNotFound(text="level not held whole")
        raise _unsatisfiable(lv.bytes)
    headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
    if span is not None:
        headers["Content-Range"] = f"bytes {start}-{stop - 1}/{lv.bytes}"
    resp = web.StreamResponse(status=206 if span is not None else 200, headers=headers)
    resp.content_length = stop - start
    bucket = svc.upload.bucket
    pace = None if bucket.unlimited else functools.partial(throttle, bucket)
    try:
        with open(files.level_path(level), "rb") as f:
            await send_range(request, resp, f, start, stop - start, pace=pace, piece=SEND_PIECE)
    except ConnectionResetError:  # the peer left, or gave the request up: not an error
        log.debug("level %d to %s: the peer closed the connection", level, request.remote)
        return resp
    if request.method != "HEAD":
        state.metrics.bytes_uploaded += stop - start
        state.metrics.chunks_uploaded += len(chunks)
        svc.upload.bytes += stop - start
    return resp


def _chunks_in(files: ModelFiles, chunks: range, start: int, stop: int) -> list[int]:
    """The chunks of a level that the byte range [start, stop) touches."""
    out = []
    for i in chunks:
        _, offset, length = files.span(i)
        if offset < stop and offset + length > start:
            out.append(i)
    return out


async def post_announce(request: web.Request) -> web.StreamResponse:
    svc = _svc(request)
    limit = svc.limits.max_request_bytes
    if request.content_length is not None and request.content_length > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=request.content_length)
    try:
        # the whole body (``content.read(n)`` returns what has arrived so far); the app's
        # client_max_size refuses one over the limit with 413; a peer dripping it is cut off
        async with asyncio.timeout(svc.limits.request_timeout):
            body = await request.read()
    except TimeoutError:
        raise web.HTTPRequestTimeout() from None
    try:
        ann = decode_announce(body)
    except PeerFault as e:
        log.warning("refused announce from %s: %s", request.remote, e)
        raise web.HTTPBadRequest(text=str(e)) from None
    answer = svc.on_announce(ann)
    return web.Response(body=answer.encode(), content_type=MSGPACK)


def build_app(service: PeerService) -> web.Application:
    """The peer-protocol application."""
    app = web.Application(client_max_size=service.limits.max_request_bytes)
    app[SERVICE] = service
    app.router.add_get(PREFIX + "/names/{name}", get_name)
    app.router.add_get(PREFIX + "/models/{model_id}/manifest.msgpack", get_manifest)
    app.router.add_get(PREFIX + "/models/{model_id}/have", get_have)
    app.router.add_get(PREFIX + "/models/{model_id}/levels/{level}", get_level)
    app.router.add_post(PREFIX + "/announce", post_announce)
    return app
