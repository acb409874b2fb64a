"""A stock libtorrent client for the tests: one session on loopback with DHT, LSD, UPnP and
NAT-PMP off, that downloads a torrent from the peers and web seeds it is given and reports
what happened. Tests that use it skip (with a message) where the ``bittorrent`` extra is
missing."""

from __future__ import annotations

import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest


def libtorrent() -> Any:
    """The ``libtorrent`` module, or a skip naming the extra."""
    return pytest.importorskip(
        "libtorrent", reason="the bittorrent extra (pip install 'peerprog[bittorrent]') is missing"
    )


@dataclass
class Download:
    """What a download ended with."""

    seeding: bool
    progress: float
    alerts: list[str] = field(default_factory=list)
    """The alerts that matter (errors, hash failures, web seed failures), as text."""


def download(
    torrent: bytes,
    save: Path,
    *,
    peers: Sequence[tuple[str, int]] = (),
    timeout: float = 60.0,
) -> Download:
    """Download ``torrent`` into ``save`` with a fresh libtorrent session, from its web
    seeds and the BitTorrent ``peers`` (connected by address), until it seeds or
    ``timeout`` passes; every block is on disk when this returns."""
    lt = libtorrent()
    ses = lt.session(
        {
            "enable_dht": False,
            "enable_lsd": False,
            "enable_upnp": False,
            "enable_natpmp": False,
            "listen_interfaces": "127.0.0.1:0",
            "alert_mask": lt.alert_category.error
            | lt.alert_category.peer
            | lt.alert_category.storage
            | lt.alert_category.status,
        }
    )
    params = lt.add_torrent_params()
    params.ti = lt.torrent_info(torrent)
    params.save_path = str(save)
    h = ses.add_torrent(params)
    for peer in peers:
        h.connect_peer(peer)
    keep = ("hash_failed", "url_seed", "peer_error", "file_error", "torrent_error")
    alerts: list[str] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and h.status().state != lt.torrent_status.seeding:
        ses.wait_for_alert(200)
        for a in ses.pop_alerts():
            kind = type(a).__name__.removesuffix("_alert")
            if kind in keep:
                alerts.append(f"{kind}: {a.message()}")
    h.flush_cache()
    flushed = time.monotonic() + 10
    while time.monotonic() < flushed:
        ses.wait_for_alert(200)
        if any(type(a).__name__ == "cache_flushed_alert" for a in ses.pop_alerts()):
            break
    status = h.status()
    result = Download(status.state == lt.torrent_status.seeding, status.progress, alerts)
    ses.remove_torrent(h)
    del ses
    return result


class Seeder:
    """A stock libtorrent seeder on loopback: ``torrent`` seeded from ``save`` (a folder
    holding ``<model id>/levels/<n>``). With ``lying``, it claims every piece without
    checking its files, so it sends whatever they hold (a peer that sends bad data)."""

    def __init__(
        self,
        torrent: bytes,
        save: Path,
        *,
        lying: bool = False,
        upload_rate: int = 0,
        host: str = "127.0.0.1",
    ) -> None:
        """``upload_rate``: a cap on what it sends, in bytes/s (0: none); ``host``: the
        loopback address it listens on (libtorrent keeps one connection per address)."""
        lt = libtorrent()
        self.host = host
        self.session = lt.session(
            {
                "enable_dht": False,
                "enable_lsd": False,
                "enable_upnp": False,
                "enable_natpmp": False,
                "listen_interfaces": f"{host}:0",
                "upload_rate_limit": upload_rate,
            }
        )
        if upload_rate:  # loopback peers are in libtorrent's unlimited local class
            every = lt.ip_filter()
            every.add_rule("0.0.0.0", "255.255.255.255", 1 << lt.session.global_peer_class_id)
            self.session.set_peer_class_filter(every)
        params = lt.add_torrent_params()
        params.ti = lt.torrent_info(torrent)
        params.save_path = str(save)
        params.flags &= ~lt.torrent_flags.auto_managed
        params.flags &= ~lt.torrent_flags.paused
        if lying:
            params.have_pieces = [True] * params.ti.num_pieces()
            params.flags |= lt.torrent_flags.no_verify_files
        else:
            params.flags |= lt.torrent_flags.seed_mode
        self.handle = self.session.add_torrent(params)

    @property
    def address(self) -> str:
        return f"{self.host}:{self.session.listen_port()}"

    def close(self) -> None:
        self.session.remove_torrent(self.handle)
        del self.session


def mirror_without_levels(store_root: Path, name: str, model_id: str, root: Path) -> Path:
    """A static mirror of the store at ``store_root`` (in ``root``, created if missing)
    holding the name ``name``, and the manifest and torrent of ``model_id``, but no level:
    its chunks must come from elsewhere."""
    (root / "names").mkdir(parents=True)
    shutil.copy(store_root / "names" / name, root / "names" / name)
    (root / "models" / model_id).mkdir(parents=True)
    for file in ("manifest.msgpack", "torrent"):
        shutil.copy(store_root / "models" / model_id / file, root / "models" / model_id / file)
    return root
