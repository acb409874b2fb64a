"""The node in the BitTorrent network: a libtorrent session (``[bittorrent]``) that seeds
every model the node holds whole.

A model's torrent names its files ``<model id>/levels/<n>``, so with the store's
``models/`` folder as its save path libtorrent reads the store's own level files: nothing is
copied. Each is added in seed mode (libtorrent checks each piece the first time it sends it,
so a file damaged on disk is found, not sent) and not auto-managed (every model seeds, not
the first few). A model the node no longer holds whole (dropped for a newer version) is
removed from the session first. libtorrent is imported only here, when the session starts
(the ``bittorrent`` extra); the core never imports it.
"""

from __future__ import annotations

import asyncio
import importlib
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from peerprog._version import __version__
from peerprog.config import BitTorrentSection, split_host_port
from peerprog.errors import InputError
from peerprog.manifest.torrent import Torrent

log = logging.getLogger("peerprog.bittorrent")
SYNC_EVERY = 2.0
"""Seconds between two looks at the models held (added, removed) and at the alerts."""
PEERS_EVERY = 30.0
"""Seconds between two attempts to connect each torrent to ``bittorrent.peers``."""


class HeldWhole(Protocol):
    """Which models the node holds whole, and their torrents
    (:class:`~peerprog.node.catalog.Catalog`)."""

    def complete_ids(self) -> list[str]: ...
    async def torrent(self, model_id: str) -> Torrent | None: ...


@dataclass(frozen=True)
class BitTorrentReport:
    """The session as ``/v1/status`` shows it."""

    listen_port: int
    torrents: int
    peers: int
    bytes_uploaded: int

    def to_json(self) -> dict[str, int]:
        return {
            "listen_port": self.listen_port,
            "torrents": self.torrents,
            "peers": self.peers,
            "bytes_uploaded": self.bytes_uploaded,
        }


def load_libtorrent() -> Any:
    """The ``libtorrent`` module; :class:`InputError` naming the extra if it is missing."""
    try:
        return importlib.import_module("libtorrent")
    except ImportError as e:
        raise InputError(
            f"config: bittorrent.enabled needs libtorrent: pip install 'peerprog[bittorrent]' ({e})"
        ) from None


class BitTorrent:
    """The node's libtorrent session, seeding the models held whole."""

    def __init__(
        self,
        section: BitTorrentSection,
        models_dir: Path,
        held: HeldWhole,
        clock: Callable[[], float],
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self._section = section
        self._models_dir = models_dir
        self._held = held
        self._clock = clock
        self._sleep = sleep
        self._lt = load_libtorrent()
        host, port = split_host_port(section.listen, "bittorrent.listen")
        lt = self._lt
        self._session = lt.session(
            {
                "listen_interfaces": f"[{host}]:{port}" if ":" in host else f"{host}:{port}",
                "enable_dht": section.dht,
                "enable_lsd": section.lsd,
                "enable_upnp": False,
                "enable_natpmp": False,
                "user_agent": f"peerprog/{__version__}",
                "alert_mask": lt.alert_category.error | lt.alert_category.status,
            }
        )
        self._handles: dict[str, Any] = {}
        self._uploaded_gone = 0
        """Bytes uploaded by torrents removed since."""
        self._peers_at = -PEERS_EVERY

    @property
    def listen_port(self) -> int:
        return int(self._session.listen_port())

    async def run(self) -> None:
        """Keep the session's torrents in step with the models held whole, until
        cancelled."""
        log.info("BitTorrent session listening on port %d", self.listen_port)
        while True:
            await self.sync()
            await self._sleep(SYNC_EVERY)

    async def sync(self) -> None:
        """Add the models held whole that are not seeded yet, remove those no longer held,
        connect to the static peers now and then, and log what went wrong."""
        whole = set(self._held.complete_ids())
        for model_id in [m for m in self._handles if m not in whole]:
            self._remove(model_id)
        for model_id in sorted(whole - set(self._handles)):
            torrent = await self._held.torrent(model_id)
            if torrent is not None and model_id not in self._handles:
                self._add(torrent)
        now = self._clock()
        if self._section.peers and now - self._peers_at >= PEERS_EVERY:
            self._peers_at = now
            for handle in self._handles.values():
                self._connect(handle)
        self._alerts()

    def _add(self, torrent: Torrent) -> None:
        lt = self._lt
        params = lt.add_torrent_params()
        params.ti = lt.torrent_info(torrent.to_bytes())
        params.save_path = str(self._models_dir)
        params.flags |= lt.torrent_flags.seed_mode
        params.flags &= ~lt.torrent_flags.auto_managed
        params.flags &= ~lt.torrent_flags.paused
        if self._section.trackers:
            params.trackers = list(self._section.trackers)
        handle = self._session.add_torrent(params)
        self._handles[torrent.model_id] = handle
        self._connect(handle)
        log.info("seeding %s… into BitTorrent (%s)", torrent.model_id[:12], torrent.magnet())

    def _connect(self, handle: Any) -> None:
        for peer in self._section.peers:
            host, port = split_host_port(peer, "bittorrent.peers")
            try:
                handle.connect_peer((host, port))
            except RuntimeError as e:  # e.g. a name that does not resolve
                log.debug("BitTorrent peer %s: %s", peer, e)

    def _remove(self, model_id: str) -> None:
        handle = self._handles.pop(model_id)
        self._uploaded_gone += handle.status().total_payload_upload
        self._session.remove_torrent(handle)
        log.info("no longer seeding %s… into BitTorrent", model_id[:12])

    def _alerts(self) -> None:
        for alert in self._session.pop_alerts():
            kind = type(alert).__name__.removesuffix("_alert")
            if kind in ("file_error", "torrent_error", "listen_failed", "hash_failed"):
                log.warning("BitTorrent %s: %s", kind.replace("_", " "), alert.message())
            elif kind in ("tracker_error", "peer_error", "dht_error"):
                log.debug("BitTorrent %s: %s", kind.replace("_", " "), alert.message())

    def report(self) -> BitTorrentReport:
        statuses = [h.status() for h in self._handles.values()]
        return BitTorrentReport(
            listen_port=self.listen_port,
            torrents=len(statuses),
            peers=sum(s.num_peers for s in statuses),
            bytes_uploaded=self._uploaded_gone + sum(s.total_payload_upload for s in statuses),
        )

    async def close(self) -> None:
        """Stop seeding and end the session (libtorrent's own stop runs in a thread: it
        may wait for trackers)."""
        for model_id in list(self._handles):
            self._remove(model_id)
        box, self._session = [self._session], None
        await asyncio.to_thread(_end, box)


def _end(box: list[Any]) -> None:
    """Pause and destroy the one session in ``box`` (its last reference: it is destroyed
    here, in this thread)."""
    session = box.pop()
    session.pause()
    del session
