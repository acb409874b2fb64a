"""The peer server's upload slots in the shell (:mod:`peerprog.node.server`): a queued
request cancelled just as its slot comes frees that slot, and nothing raises."""

from __future__ import annotations

import asyncio

from peerprog.node.ratelimit import TokenBucket
from peerprog.node.server import Upload, _free_slot
from peerprog.swarm.uploads import QUEUE, SERVE, UploadConfig, UploadSlots


async def test_a_waiter_cancelled_as_its_slot_comes_frees_it_for_the_next() -> None:
    loop = asyncio.get_running_loop()
    up = Upload(TokenBucket(0), UploadSlots(UploadConfig(1, 2)))
    a, b, c = object(), object(), object()
    assert up.slots.request(a, loop.time()) == SERVE
    for key in (b, c):
        assert up.slots.request(key, loop.time()) == QUEUE
        up.waiting[key] = loop.create_future()
    fb, fc = up.waiting[b], up.waiting[c]
    fb.cancel()  # b's requester left; its handler has not run its cleanup yet
    _free_slot(up, a)  # a ends: b's turn, but b is gone
    assert not fc.done()
    _free_slot(up, b)  # b's cleanup: its slot goes to c
    assert fc.done() and not fc.cancelled()
