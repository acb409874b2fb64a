"""The body of a ``have?since=`` long-poll: it round-trips, and a garbage or lying answer
is the peer's fault (PeerFault), never anything else."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from peerprog.errors import PeerFault
from peerprog.node.protocol import decode_have_delta, encode_have, encode_have_delta
from peerprog.swarm import Bitfield
from peerprog.swarm.havelog import HaveDelta, HaveLog

N = 20


def test_added_round_trips() -> None:
    log = HaveLog(N, [3, 1], epoch="ab12")
    log.add(7)
    delta = log.since("ab12", 1)
    assert decode_have_delta(encode_have_delta(delta), N) == HaveDelta("ab12", 3, (1, 7))


def test_empty_round_trips() -> None:
    delta = HaveDelta("ab12", 5, ())
    assert decode_have_delta(encode_have_delta(delta), N) == delta


def test_full_round_trips() -> None:
    log = HaveLog(N, [0, 19, 4], epoch="ab12")
    got = decode_have_delta(encode_have_delta(log.since("other", 0)), N)
    assert (got.epoch, got.seq, got.added) == ("ab12", 3, ())
    assert got.full is not None and got.full.indices() == [0, 4, 19]


def test_a_plain_have_body_reads_as_full_of_no_epoch() -> None:
    bf = Bitfield(N)
    bf.set(2)
    got = decode_have_delta(encode_have(bf), N)
    assert got.epoch == "" and got.full is not None and got.full.indices() == [2]


GARBAGE: list[tuple[str, Any]] = [
    ("not a map", [1, 2]),
    ("epoch not a string", {"epoch": 5, "seq": 1, "added": [1]}),
    ("epoch with odd characters", {"epoch": "a/b", "seq": 1, "added": [1]}),
    ("epoch too long", {"epoch": "a" * 65, "seq": 1, "added": [1]}),
    ("seq missing", {"epoch": "e", "added": [1]}),
    ("seq negative", {"epoch": "e", "seq": -1, "added": []}),
    ("seq a bool", {"epoch": "e", "seq": True, "added": []}),
    ("seq a float", {"epoch": "e", "seq": 1.0, "added": []}),
    ("added not a list", {"epoch": "e", "seq": 1, "added": 3}),
    ("added missing", {"epoch": "e", "seq": 1}),
    ("index out of range", {"epoch": "e", "seq": 1, "added": [N]}),
    ("index negative", {"epoch": "e", "seq": 1, "added": [-1]}),
    ("index a string", {"epoch": "e", "seq": 1, "added": ["1"]}),
    ("index a bool", {"epoch": "e", "seq": 1, "added": [True]}),
    ("more added than chunks", {"epoch": "e", "seq": 99, "added": [1] * (N + 1)}),
    ("more added than seq", {"epoch": "e", "seq": 1, "added": [1, 2]}),
    ("bitfield of another count", {"epoch": "e", "seq": 1, "count": N + 1, "bitfield": b"\0"}),
    ("bitfield too short", {"epoch": "e", "seq": 1, "count": N, "bitfield": b"\0"}),
    ("bitfield not bytes", {"epoch": "e", "seq": 1, "count": N, "bitfield": "abc"}),
    ("padding bits set", {"epoch": "e", "seq": 1, "count": N, "bitfield": b"\0\0\xff"}),
]


@pytest.mark.parametrize(("what", "body"), GARBAGE, ids=[g[0] for g in GARBAGE])
def test_garbage_is_the_peers_fault(what: str, body: Any) -> None:
    with pytest.raises(PeerFault):
        decode_have_delta(msgpack.packb(body), N)


@pytest.mark.parametrize("data", [b"", b"\xc1", b"\x92\x01", b"\xdf\xff\xff\xff\xff"])
def test_bytes_that_are_not_msgpack_are_the_peers_fault(data: bytes) -> None:
    with pytest.raises(PeerFault):
        decode_have_delta(data, N)
