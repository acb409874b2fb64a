"""Reachability in announces (:mod:`peerprog.node.protocol`): what a node says of itself,
the answer's dial-back, and peer exchange's hint; older peers' messages stay valid."""

from __future__ import annotations

import pytest

from peerprog.errors import PeerFault
from peerprog.manifest.canonical import pack, unpack
from peerprog.node.protocol import Announce, PeerRef, decode_announce


def test_reachability_fields_round_trip() -> None:
    ann = Announce(
        "n",
        "http://a:1",
        (),
        (PeerRef("p", "http://p:2", False), PeerRef("q", "http://q:3")),
        reachable=False,
        dial_back=True,
    )
    assert decode_announce(ann.encode()) == ann
    doc = unpack(ann.encode(), "announce")
    assert doc["peers"][1] == {"node": "q", "url": "http://q:3"}  # not said: not sent


def test_an_announce_without_them_is_as_before() -> None:
    plain = Announce("n", "http://a:1", ())
    assert set(unpack(plain.encode(), "announce")) == {"node", "url", "models", "peers"}
    got = decode_announce(plain.encode())
    assert got.reachable is None and got.dial_back is None


@pytest.mark.parametrize("key", ["reachable", "dial_back"])
def test_a_flag_that_is_not_a_boolean_is_the_peers_fault(key: str) -> None:
    body = pack({"node": "n", "url": "", "models": [], "peers": [], key: 1})
    with pytest.raises(PeerFault, match=key):
        decode_announce(body)


def test_a_bad_hint_in_peer_exchange_is_ignored() -> None:
    body = pack(
        {
            "node": "n",
            "url": "",
            "models": [],
            "peers": [{"node": "p", "url": "http://p:1", "reachable": "no"}],
        }
    )
    assert decode_announce(body).peers == (PeerRef("p", "http://p:1", None),)
