"""``GET /v1/models/<name>/events``: server-sent events as levels complete.

The stream follows the newest version of the name with a complete level. It opens with a
``level`` event for the level held now (if any), then sends one ``level`` event per level
completed, in order, each carrying the model's status JSON with ``level`` set to that
level; after the last level it sends ``complete`` and ends. Each event's id is
``<model_id>.<level>`` (``<model_id>.complete`` for ``complete``); a client reconnecting
with ``Last-Event-ID`` gets only what it missed. One that has seen ``complete`` of the
version still served is answered ``204 No Content``, which tells an ``EventSource`` to stop
reconnecting; a newer version since is streamed as usual. A comment line every
:data:`KEEPALIVE` seconds keeps idle connections open.
"""

from __future__ import annotations

import json
import logging

from aiohttp import web

from peerprog.api.context import ApiContext
from peerprog.api.errors import UnknownModel
from peerprog.api.view import ModelView

log = logging.getLogger("peerprog.api")
KEEPALIVE = 15.0


def format_event(event: str, data: object, event_id: str | None = None) -> bytes:
    """One server-sent event (the data as one line of JSON)."""
    head = f"id: {event_id}\n" if event_id else ""
    return f"{head}event: {event}\ndata: {json.dumps(data, separators=(',', ':'))}\n\n".encode()


COMPLETE = "complete"

Seen = tuple[str, int | None]
"""The last event a client saw: (model id, level), with level None for ``complete``."""


def parse_event_id(text: str | None) -> Seen | None:
    """``<model_id>.<level>`` → (model_id, level), ``<model_id>.complete`` → (model_id,
    None); None if absent or malformed."""
    if not text:
        return None
    model_id, _, level = text.strip().rpartition(".")
    if not model_id:
        return None
    if level == COMPLETE:
        return model_id, None
    if not (level.isascii() and level.isdigit()) or len(level) > 6:
        return None
    return model_id, int(level)


def saw_complete(state: ModelView | None, last: Seen | None) -> bool:
    """Whether the client has seen ``complete`` of ``state``: nothing more will come."""
    return state is not None and last is not None and last == (state.model_id, None)


def pending_events(state: ModelView, last: Seen | None) -> list[bytes]:
    """The events owed to a client that has seen ``last``: one per level after it (or the
    current level alone for a new client or a new version), then ``complete`` if the
    last level is reached."""
    if state.servable_level < 0 or saw_complete(state, last):
        return []
    first = state.servable_level
    if last is not None and last[0] == state.model_id and last[1] is not None:
        first = last[1] + 1
    out = []
    summary = state.summary()
    for level in range(first, state.servable_level + 1):
        out.append(format_event("level", {**summary, "level": level}, f"{state.model_id}.{level}"))
    if state.servable_level == state.manifest.levels_total - 1:
        out.append(format_event("complete", summary, f"{state.model_id}.{COMPLETE}"))
    return out


async def stream_events(request: web.Request, ctx: ApiContext, name: str) -> web.StreamResponse:
    """Answer an event stream request until the last level, the client leaves, or the
    daemon stops."""
    if not ctx.knows(name):
        raise UnknownModel(f"this node neither holds nor wants a model {name!r}")
    last = parse_event_id(request.headers.get("Last-Event-ID"))
    if saw_complete(ctx.node.newest_served(name), last):
        return web.Response(status=204)
    resp = web.StreamResponse(
        headers={
            "Content-Type": "text/event-stream; charset=utf-8",
            "Cache-Control": "no-cache",
            "X-Accel-Buffering": "no",
        }
    )
    await resp.prepare(request)
    ctx.stats.event_streams += 1
    try:
        await resp.write(b"retry: 1000\n\n")
        while not ctx.closing:
            state = ctx.node.newest_served(name)
            if state is not None:
                events = pending_events(state, last)
                if events:
                    await resp.write(b"".join(events))
                    last = (state.model_id, state.servable_level)
                    if state.servable_level == state.manifest.levels_total - 1:
                        break
            if not await ctx.notifier.wait(name, KEEPALIVE):
                await resp.write(b": keepalive\n\n")
    except (ConnectionResetError, ConnectionError):
        log.debug("event stream of %s: client left", name)
    finally:
        ctx.stats.event_streams -= 1
    return resp
