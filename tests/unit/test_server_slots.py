"""The peer server's uploads in the shell (:mod:`peerprog.node.server`): a queued
request cancelled just as its slot comes frees that slot and nothing raises; a capped
upload's pieces."""

from __future__ import annotations

import asyncio

from peerprog.node.ratelimit import TokenBucket
from peerprog.node.server import Upload, _free_slot, paced_piece
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


def test_a_capped_upload_is_sent_in_pieces_of_ten_milliseconds_of_the_cap() -> None:
    assert paced_piece(100_000) == 16384  # a slow cap: the smallest piece, smooth
    assert paced_piece(5_000_000) == 50_000
    assert paced_piece(20_000_000) == 128 * 1024  # a fast one: few sendfile calls
