"""The ``[bittorrent]`` config section, and the node's BitTorrent session kept in step with
the models held whole (a real libtorrent session on loopback; a fake catalog)."""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import pytest

from peerprog.config import BitTorrentSection, parse_config
from peerprog.errors import InputError
from peerprog.manifest.torrent import Torrent
from peerprog.node.bittorrent import BitTorrent, piece_priorities
from peerprog.node.state import ModelState
from peerprog.store.torrents import stored_torrent
from peerprog.swarm import Bitfield
from tests.bt import libtorrent
from tests.unit.samples import PUB, make_manifest
from tests.unit.test_torrent import published


@pytest.mark.parametrize(
    ("section", "why"),
    [
        ({"listen": "6881"}, "bittorrent.listen must be host:port"),
        ({"peers": ["10.0.0.1"]}, r"bittorrent.peers\[0\] must be host:port"),
        ({"trackers": ["ftp://t.example/"]}, r"bittorrent.trackers\[0\] must be an http"),
        ({"dht": "yes"}, "bittorrent.dht must be true or false"),
        ({"upnp": True}, "unknown key bittorrent.upnp"),
    ],
)
def test_a_bad_bittorrent_section_is_refused_naming_the_key(
    section: dict[str, object], why: str
) -> None:
    with pytest.raises(InputError, match=why):
        parse_config({"bittorrent": section})


def test_the_bittorrent_section_takes_trackers_and_peers() -> None:
    cfg = parse_config(
        {
            "bittorrent": {
                "enabled": True,
                "trackers": ["udp://tracker.example:6969/announce", "https://t.example/a"],
                "peers": ["10.0.0.1:6881", "[::1]:6881"],
            }
        }
    )
    assert cfg.bittorrent.enabled and not cfg.bittorrent.lsd and cfg.bittorrent.dht
    assert parse_config({}).bittorrent == BitTorrentSection()


def test_without_the_extra_the_session_is_refused_naming_it(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setitem(sys.modules, "libtorrent", None)  # import fails
    with pytest.raises(InputError, match=r"pip install 'peerprog\[bittorrent\]'"):
        BitTorrent(BitTorrentSection(enabled=True), tmp_path, Held({}, {}), lambda: 0.0)


class Held:
    """The catalog as the session sees it: the models held, and their torrents."""

    def __init__(self, torrents: dict[str, Torrent], models: dict[str, ModelState]) -> None:
        self.torrents = torrents
        self.models = models

    async def torrent(self, model_id: str) -> Torrent | None:
        return self.torrents.get(model_id)


async def test_the_session_seeds_the_models_held_whole_and_drops_the_others(
    tmp_path: Path,
) -> None:
    libtorrent()
    store, mid = published(tmp_path / "s")
    signed = store.load_manifest(mid, [PUB])
    torrent = stored_torrent(store, signed)
    assert torrent is not None
    n = len(signed.manifest.chunks)
    held = Held({mid: torrent}, {mid: ModelState(signed, Bitfield.full(n), origin=True)})
    section = BitTorrentSection(enabled=True, listen="127.0.0.1:0", dht=False)
    bt = BitTorrent(section, store.root, held, lambda: 0.0)  # seeding only: no piece sink
    try:
        await bt.sync()
        report = bt.report()
        assert report.torrents == 1 and report.listen_port > 0
        await bt.sync()  # nothing new: nothing added twice
        assert bt.report().torrents == 1
        held.models = {}  # dropped (a newer version is exact)
        await bt.sync()
        assert bt.report().torrents == 0
        held.models = {mid: ModelState(signed, Bitfield(n), origin=False)}
        await bt.sync()  # held in part: not fetched by a session without a piece sink
        assert bt.report().torrents == 0
    finally:
        await bt.close()


def test_pieces_are_asked_level_0_first_and_never_once_held() -> None:
    m, _ = make_manifest(chunk_size=1024)  # three levels of 3, 2 and 2 chunks
    have = Bitfield(len(m.chunks))
    assert piece_priorities(m, have) == [7, 7, 7, 6, 6, 5, 5]
    for i in (1, 5):
        have.set(i)
    assert piece_priorities(m, have) == [7, 0, 7, 6, 6, 0, 5]
    deep = dataclasses.replace(
        m, levels=tuple(dataclasses.replace(lv, level=lv.level + 7) for lv in m.levels)
    )
    assert min(piece_priorities(deep, Bitfield(len(m.chunks)))) == 1  # level 7 and on: 1
