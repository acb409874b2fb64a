"""The peer-protocol HTTP server: the store, read-only, under ``/p2p/v1/``, plus ``have`` and
``announce``.

Only verified chunks ever reach the store, so serving a file is safe. Uploads pass through
the node's upload token bucket in small pieces, so the cap holds across concurrent peers.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

from aiohttp import web

from peerprog.config import LimitsSection
from peerprog.errors import PeerFault, VerificationError
from peerprog.manifest import Manifest, valid_model_id, valid_name, verify_chunk
from peerprog.node.protocol import PREFIX, Announce, decode_announce, encode_have
from peerprog.node.ratelimit import TokenBucket, throttle
from peerprog.node.state import ModelState

log = logging.getLogger("peerprog.server")
MSGPACK = "application/msgpack"
SEND_PIECE = 16384


class Served(Protocol):
    """The models the server may serve (:class:`~peerprog.node.catalog.Catalog`)."""

    @property
    def models(self) -> Mapping[str, ModelState]: ...
    def newest_served(self, name: str) -> ModelState | None: ...


class ChunkReader(Protocol):
    """Where stored chunks are read (:class:`~peerprog.store.Store`); blocking."""

    def read_chunk(self, model_id: str, index: int) -> bytes | None: ...


@dataclass
class Upload:
    """The upload cap and what went through it."""

    bucket: TokenBucket
    bytes: int = 0


@dataclass(frozen=True)
class PeerService:
    """What the peer server needs."""

    served: Served
    chunks: ChunkReader
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


async def get_chunk(request: web.Request) -> web.StreamResponse:
    state = _model(request)
    svc = _svc(request)
    text = request.match_info["index"]
    if not (text.isascii() and text.isdigit()) or len(text) > 9:
        raise web.HTTPBadRequest(text="bad chunk index")
    index = int(text)
    if index >= len(state.manifest.chunks) or index not in state.have:
        raise web.HTTPNotFound(text="chunk not held")
    data = await asyncio.to_thread(
        _read_verified, svc.chunks, state.manifest, state.model_id, index
    )
    if data is None:
        raise web.HTTPNotFound(text="chunk not held")
    resp = web.StreamResponse(headers={"Content-Type": "application/octet-stream"})
    resp.content_length = len(data)
    try:
        await resp.prepare(request)
        if request.method == "HEAD":  # headers only: a body would corrupt the connection
            await resp.write_eof()
            return resp
        bucket = svc.upload.bucket
        if bucket.unlimited:
            await resp.write(data)
        else:
            view = memoryview(data)
            for start in range(0, len(view), SEND_PIECE):
                piece = view[start : start + SEND_PIECE]
                await throttle(bucket, len(piece))
                await resp.write(piece)
        await resp.write_eof()
    except ConnectionResetError:  # the peer left, or gave the request up: not an error
        log.debug("chunk %d to %s: the peer closed the connection", index, request.remote)
        return resp
    state.metrics.bytes_uploaded += len(data)
    svc.upload.bytes += len(data)
    state.metrics.chunks_uploaded += 1
    return resp


def _read_verified(
    chunks: ChunkReader, manifest: Manifest, model_id: str, index: int
) -> bytes | None:
    """A stored chunk, checked again: one damaged on disk since is never sent (a peer
    would ban us for it); None if absent or damaged."""
    data = chunks.read_chunk(model_id, index)
    if data is None:
        return None
    try:
        verify_chunk(manifest, index, data)
    except VerificationError as e:
        log.error("not serving chunk %d of %s…: damaged on disk (%s)", index, model_id[:12], e)
        return None
    return data


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
    app.router.add_get(PREFIX + "/models/{model_id}/chunks/{index}", get_chunk)
    app.router.add_post(PREFIX + "/announce", post_announce)
    return app
