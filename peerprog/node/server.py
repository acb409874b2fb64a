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
import math
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from aiohttp import web

from peerprog.config import LimitsSection
from peerprog.errors import PeerFault
from peerprog.manifest import valid_model_id, valid_name
from peerprog.manifest.torrent import Torrent
from peerprog.node.haves import Haves
from peerprog.node.peerclient import NODE_HEADER
from peerprog.node.protocol import (
    PREFIX,
    Announce,
    decode_announce,
    encode_have,
    encode_have_delta,
    valid_epoch,
)
from peerprog.node.ratelimit import TokenBucket, throttle
from peerprog.node.state import ModelState
from peerprog.sendfile import PIECE, parse_range, send_range, unsatisfiable
from peerprog.store import ModelFiles
from peerprog.swarm.uploads import QUEUE, SERVE, UploadSlots
from peerprog.urls import valid_url

log = logging.getLogger("peerprog.server")
MSGPACK = "application/msgpack"
TORRENT_TYPE = "application/x-bittorrent"
SEND_PIECE = 16384
"""Smallest piece an upload under a cap is sent in..."""
SEND_PIECE_MAX = 128 * 1024
"""...and the largest: a piece is 10 ms of the cap between these (few sendfile calls on a
fast capped link, a smooth rate on a slow one)."""
MAX_WAIT = 30.0
"""Longest a ``have?since=`` long-poll is held (a larger ``wait`` is cut to this)."""


class Served(Protocol):
    """The models the server may serve (:class:`~peerprog.node.catalog.Catalog`)."""

    @property
    def models(self) -> Mapping[str, ModelState]: ...
    def newest_served(self, name: str) -> ModelState | None: ...
    def files(self, model_id: str) -> ModelFiles | None: ...
    async def torrent(self, model_id: str) -> Torrent | None: ...


@dataclass
class Upload:
    """The upload cap and what went through it."""

    bucket: TokenBucket
    slots: UploadSlots
    """Which range requests are sent now, wait, or are declined (503)."""
    bytes: int = 0
    declined: int = 0
    """Range requests answered 503."""
    waiting: dict[object, asyncio.Future[None]] = field(default_factory=dict)
    """Queued requests, each woken when its slot comes."""


@dataclass(frozen=True)
class PeerService:
    """What the peer server needs."""

    served: Served
    on_announce: Callable[[Announce], Awaitable[Announce]]
    """Records an announce; the answer (peer exchange, dial-back)."""
    me: Callable[[], Announce]
    """This node's own announce (the answer of ``GET node``)."""
    upload: Upload
    limits: LimitsSection
    haves: Haves
    channel: Callable[[web.Request], Awaitable[web.StreamResponse]]
    """Serves ``GET channel``: a reverse channel opened to this node."""


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


async def get_torrent(request: web.Request) -> web.StreamResponse:
    """The model's BitTorrent torrent (hybrid v1+v2), with this node's
    ``/p2p/v1/models/`` added to its web seeds unless peers found it cannot be dialled; 404
    while it has none (it is built once the model is held whole)."""
    state = _model(request)
    svc = _svc(request)
    torrent = await svc.served.torrent(state.model_id)
    if torrent is None:
        raise web.HTTPNotFound(text="no torrent for this model yet")
    me = svc.me()
    if me.url and me.reachable is not False:  # a node no one can dial is no web seed
        torrent = torrent.with_web_seeds([me.url.rstrip("/") + PREFIX + "/models/"])
    return web.Response(body=torrent.to_bytes(), content_type=TORRENT_TYPE)


def peer_of(request: web.Request) -> str:
    """Who asks: the URL in its ``Peerprog-Node`` header, else its address."""
    url = request.headers.get(NODE_HEADER, "").rstrip("/")
    return _svc(request).haves.peer_name(url if valid_url(url) else "", request.remote or "")


def parse_since(text: str) -> tuple[str, int]:
    """``<epoch>:<seq>`` → (epoch, seq); 400 naming ``since`` if malformed."""
    epoch, colon, seq = text.partition(":")
    if not (colon and valid_epoch(epoch) and seq.isascii() and seq.isdigit() and len(seq) <= 12):
        raise web.HTTPBadRequest(text="bad since: want <epoch>:<seq>")
    return epoch, int(seq)


def parse_wait(text: str | None) -> float:
    """Seconds a long-poll may be held (absent: 0), at most :data:`MAX_WAIT`; 400 naming
    ``wait`` if it is not a number >= 0."""
    if text is None:
        return 0.0
    try:
        wait = float(text)
    except ValueError:
        wait = math.nan
    if not math.isfinite(wait) or wait < 0 or len(text) > 16:
        raise web.HTTPBadRequest(text="bad wait: want seconds >= 0")
    return min(wait, MAX_WAIT)


async def get_have(request: web.Request) -> web.StreamResponse:
    """The chunks held (plain), or with ``since=<epoch>:<seq>`` those verified after it,
    answered when there are some or after ``wait`` seconds (a long-poll). On a
    super-seeding origin, what it offers the asking peer."""
    state = _model(request)
    haves = _svc(request).haves
    peer = peer_of(request)
    since = request.query.get("since")
    if since is None:
        return web.Response(body=encode_have(haves.plain(state, peer)), content_type=MSGPACK)
    epoch, seq = parse_since(since)
    wait = parse_wait(request.query.get("wait"))
    delta = await haves.since(state, peer, epoch, seq, wait)
    return web.Response(body=encode_have_delta(delta), content_type=MSGPACK)


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
    usable = files.usable_unless_changed(chunks, state.have)
    if usable is None:  # a level file changed on disk: hash its chunks again first
        usable = await asyncio.to_thread(files.usable, chunks, state.have)
    if not usable:
        for i in chunks:
            if i in files.damaged:
                log.error("not serving chunk %d of %s…: damaged on disk", i, state.model_id[:12])
        if span is None:
            raise web.HTTPNotFound(text="level not held whole")
        raise unsatisfiable(lv.bytes)
    headers = {"Content-Type": "application/octet-stream", "Accept-Ranges": "bytes"}
    if span is not None:
        headers["Content-Range"] = f"bytes {start}-{stop - 1}/{lv.bytes}"
    resp = web.StreamResponse(status=206 if span is not None else 200, headers=headers)
    resp.content_length = stop - start
    bucket = svc.upload.bucket
    pace = None if bucket.unlimited else functools.partial(throttle, bucket)
    peer = peer_of(request)
    key = object()
    # a client that is no peerprog node (no Peerprog-Node): a BitTorrent client using this
    # node as a web seed takes a 503 as "no such file" for good, so it waits instead
    patient = NODE_HEADER not in request.headers
    await _take_slot(svc.upload, state, key, patient=patient)
    try:
        svc.haves.on_request(state, peer, chunks)
        with open(files.level_path(level), "rb") as f:
            # paced: pieces of 10 ms of the cap keep it smooth; else sendfile, or 1 MiB reads
            piece = PIECE if pace is None else paced_piece(bucket.rate)
            await send_range(request, resp, f, start, stop - start, pace=pace, piece=piece)
    except ConnectionResetError:  # the peer left, or gave the request up: not an error
        log.debug("level %d to %s: the peer closed the connection", level, request.remote)
        return resp
    finally:
        _free_slot(svc.upload, key)
        svc.haves.on_sent(state, peer, chunks)
    if request.method != "HEAD":
        state.metrics.bytes_uploaded += stop - start
        state.metrics.chunks_uploaded += len(chunks)
        svc.upload.bytes += stop - start
    return resp


def paced_piece(rate: float) -> int:
    """Bytes an upload capped at ``rate`` bytes/s sends at a time."""
    return int(min(SEND_PIECE_MAX, max(SEND_PIECE, rate / 100)))


async def _take_slot(upload: Upload, state: ModelState, key: object, *, patient: bool) -> None:
    """Wait for an upload slot for ``key``, or answer 503 with ``Retry-After`` (never to a
    ``patient`` requester: it waits)."""
    loop = asyncio.get_running_loop()
    verdict = upload.slots.request(key, loop.time(), patient=patient)
    if verdict == SERVE:
        return
    if verdict == QUEUE:
        fut = upload.waiting[key] = loop.create_future()
        try:
            await fut
        except BaseException:
            _free_slot(upload, key)  # gone while waiting, or just as its slot came
            raise
        return
    assert isinstance(verdict, float)
    upload.declined += 1
    state.metrics.uploads_declined += 1
    raise web.HTTPServiceUnavailable(
        headers={"Retry-After": str(max(1, math.ceil(verdict)))}, text="upload slots busy"
    )


def _free_slot(upload: Upload, key: object) -> None:
    """``key``'s upload ended (or it stopped waiting): the next waiting request starts."""
    upload.waiting.pop(key, None)
    started = upload.slots.end(key, asyncio.get_running_loop().time())
    if started is not None:
        fut = upload.waiting.pop(started)
        if not fut.done():  # done: it was cancelled and frees its slot itself, next
            fut.set_result(None)


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
    answer = await svc.on_announce(ann)
    return web.Response(body=answer.encode(), content_type=MSGPACK)


async def get_node(request: web.Request) -> web.StreamResponse:
    """Who answers here: this node's announce (what a dial-back checks)."""
    return web.Response(body=_svc(request).me().encode(), content_type=MSGPACK)


async def get_channel(request: web.Request) -> web.StreamResponse:
    return await _svc(request).channel(request)


def build_app(service: PeerService) -> web.Application:
    """The peer-protocol application."""
    app = web.Application(client_max_size=service.limits.max_request_bytes)
    app[SERVICE] = service
    app.router.add_get(PREFIX + "/names/{name}", get_name)
    app.router.add_get(PREFIX + "/models/{model_id}/manifest.msgpack", get_manifest)
    app.router.add_get(PREFIX + "/models/{model_id}/have", get_have)
    app.router.add_get(PREFIX + "/models/{model_id}/levels/{level}", get_level)
    app.router.add_get(PREFIX + "/models/{model_id}/torrent", get_torrent)
    app.router.add_post(PREFIX + "/announce", post_announce)
    app.router.add_get(PREFIX + "/node", get_node)
    app.router.add_get(PREFIX + "/channel", get_channel)
    return app
