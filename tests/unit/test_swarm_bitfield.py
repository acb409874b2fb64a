"""Bitfield: BitTorrent wire form, round trips, malformed bytes are the peer's fault."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from peerprog.errors import PeerFault
from peerprog.swarm import Bitfield


def test_msb_first_with_zero_padding() -> None:
    bf = Bitfield(10)
    bf.set(0)
    bf.set(9)
    assert bf.to_bytes() == b"\x80\x40"
    assert 0 in bf and 9 in bf and 1 not in bf
    assert len(bf) == 10 and bf.count() == 2 and bf.indices() == [0, 9]
    bf.clear(0)
    assert bf.to_bytes() == b"\x00\x40"


def test_full_and_empty() -> None:
    assert Bitfield.full(10).to_bytes() == b"\xff\xc0"
    assert Bitfield.full(16).to_bytes() == b"\xff\xff"
    assert Bitfield.full(0).to_bytes() == b""
    assert Bitfield.full(100_000).count() == 100_000
    assert Bitfield(100_000).indices() == []


def test_out_of_range() -> None:
    bf = Bitfield(8)
    assert 8 not in bf and -1 not in bf and "x" not in bf
    with pytest.raises(IndexError):
        bf.set(8)
    with pytest.raises(IndexError):
        bf.clear(-1)


def test_copy_is_independent_and_eq() -> None:
    bf = Bitfield(12)
    bf.set(3)
    other = bf.copy()
    assert other == bf
    other.set(4)
    assert other != bf and 4 not in bf
    assert Bitfield(12) != Bitfield(13)
    assert bf.changed(other) == [4]


@pytest.mark.parametrize(
    ("n", "data"),
    [
        (10, b"\x80"),  # too short
        (10, b"\x80\x00\x00"),  # too long
        (8, b""),
        (10, b"\x80\x20"),  # padding bit set
        (1, b"\x01"),
        (0, b"\x00"),
    ],
)
def test_from_bytes_malformed_is_peer_fault(n: int, data: bytes) -> None:
    with pytest.raises(PeerFault):
        Bitfield.from_bytes(n, data)


def _members(n: int) -> st.SearchStrategy[tuple[int, set[int]]]:
    members = st.sets(st.integers(0, n - 1)) if n else st.just(set[int]())
    return st.tuples(st.just(n), members)


@given(st.integers(0, 300).flatmap(_members))
def test_round_trip(case: tuple[int, set[int]]) -> None:
    n, members = case
    bf = Bitfield(n)
    for i in members:
        bf.set(i)
    assert len(bf.to_bytes()) == (n + 7) // 8
    back = Bitfield.from_bytes(n, bf.to_bytes())
    assert back == bf
    assert back.indices() == sorted(members)
    assert back.count() == len(members)
    assert all((i in back) == (i in members) for i in range(n))
    assert Bitfield(n).changed(back) == sorted(members)
