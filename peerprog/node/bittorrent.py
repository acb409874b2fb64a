"""The node in the BitTorrent network: a libtorrent session (``[bittorrent]``) that seeds
every model the node holds whole and fetches missing chunks of the others from BitTorrent
peers.

**Seeding.** A model's torrent names its files ``<model id>/levels/<n>``, so with the
store's ``models/`` folder as its save path libtorrent reads the store's own level files:
nothing is copied. Such a torrent is added in seed mode (libtorrent checks each piece the
first time it sends it, so a file damaged on disk is found, not sent).

**Fetching.** A model held in part whose torrent the node has (its publisher's, which came
with the manifest) is added with a scratch folder (``<store>/bittorrent/``) as its save
path: libtorrent never writes into the store. Piece *k* is chunk *k*; the chunks held get
priority 0 (never asked of BitTorrent peers), the others a priority by level, level 0
highest, so level 0 still comes first. Each piece libtorrent completes (its own hash check
passed) is read back, checked against the signed manifest, and handed to the node, which
stores and records it as any chunk; a piece that does not match the manifest is dropped and
the torrent with it. A peer that sends bad data fails libtorrent's hash check and is banned
by libtorrent. Once the model is whole, its partial torrent and scratch files are removed
and it is seeded from the store.

Every torrent is kept out of libtorrent's queueing (not auto-managed). A model no longer
held (dropped for a newer version) is removed from the session first. libtorrent is
imported only here, when the session starts (the ``bittorrent`` extra); the core never
imports it.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from peerprog._version import __version__
from peerprog.config import BitTorrentSection, split_host_port
from peerprog.errors import InputError
from peerprog.manifest import Manifest
from peerprog.manifest.torrent import Torrent
from peerprog.node.state import ModelState
from peerprog.swarm import Bitfield

log = logging.getLogger("peerprog.bittorrent")
SYNC_EVERY = 2.0
"""Seconds between two looks at the models held (added, removed, pieces held), besides
those :meth:`BitTorrent.wake` asks for."""
ALERTS_EVERY = 0.02
"""Seconds between two reads of the session's alerts while a model is fetched (its
pieces are taken as they come; libtorrent's own notify callback, from its thread, can
deadlock against a call made with the GIL held)."""
PEERS_EVERY = 30.0
"""Seconds between two attempts to connect each torrent to ``bittorrent.peers`` (a torrent
being fetched with no peer at all: at each sync)."""
SCRATCH = "bittorrent"
"""The folder of the store where libtorrent writes pieces of models held in part."""


class Held(Protocol):
    """The models the node holds and their torrents (:class:`~peerprog.node.catalog.Catalog`)."""

    @property
    def models(self) -> Mapping[str, ModelState]: ...
    async def torrent(self, model_id: str) -> Torrent | None: ...


PieceSink = Callable[[ModelState, int, bytes], Awaitable[bool]]
"""Checks a piece (a chunk) against the manifest, stores and records it; False if it does
not match (:meth:`peerprog.node.Node.bittorrent_piece`)."""


@dataclass
class _Seeded:
    """One torrent in the session."""

    handle: Any
    whole: bool
    """Seeded from the store (else fetching into the scratch folder)."""
    priorities: list[int]
    """The piece priorities last set (fetching)."""


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


def piece_priorities(manifest: Manifest, have: Bitfield) -> list[int]:
    """libtorrent's priority of each piece (chunk) of a model held ``have``: 0 for a chunk
    held (never asked of BitTorrent peers), else 7 for level 0, 6 for level 1, … down to 1,
    so that level 0 comes first."""
    want = [0] * len(manifest.chunks)
    for lv in manifest.levels:
        for i in lv.chunks:
            if i not in have:
                want[i] = max(1, 7 - lv.level)
    return want


def load_libtorrent() -> Any:
    """The ``libtorrent`` module; :class:`InputError` naming the extra if it is missing."""
    try:
        return importlib.import_module("libtorrent")
    except ImportError as e:
        raise InputError(
            f"config: bittorrent.enabled needs libtorrent: pip install 'peerprog[bittorrent]' ({e})"
        ) from None


class BitTorrent:
    """The node's libtorrent session: it seeds the models held whole and fetches the others
    (with a piece sink)."""

    def __init__(
        self,
        section: BitTorrentSection,
        store_root: Path,
        held: Held,
        clock: Callable[[], float],
        sink: PieceSink | None = None,
    ) -> None:
        """``sink``: where fetched pieces go (None: seed only)."""
        self._section = section
        self._models_dir = store_root / "models"
        self._scratch = store_root / SCRATCH
        self._held = held
        self._sink = sink
        self._clock = clock
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
                # a peer that refused us (e.g. holding a connection of ours that died with
                # a restart) is tried again after 10 s, not libtorrent's 60
                "min_reconnect_time": 10,
                "alert_mask": lt.alert_category.error
                | lt.alert_category.status
                | lt.alert_category.storage
                | lt.alert_category.peer
                | lt.alert_category.piece_progress,
            }
        )
        self._torrents: dict[str, _Seeded] = {}
        self._reading: set[tuple[str, int]] = set()
        """Pieces read back from libtorrent, not handed to the node yet."""
        self._tasks: set[asyncio.Task[None]] = set()
        self._changed = asyncio.Event()
        self._refused: set[str] = set()
        """Models whose torrent sent a piece that is not the manifest's chunk: not added
        again (until the node restarts)."""
        self._uploaded_gone = 0
        """Bytes uploaded by torrents removed since."""
        self._peers_at = -PEERS_EVERY

    @property
    def listen_port(self) -> int:
        return int(self._session.listen_port())

    def wake(self) -> None:
        """The models held changed (one taken up, a level reached, a torrent found): look
        at them now rather than at the next periodic sync."""
        self._changed.set()

    async def run(self) -> None:
        """Keep the session's torrents in step with the models held, and take its alerts
        (every :data:`ALERTS_EVERY` seconds while a model is fetched), until cancelled."""
        log.info("BitTorrent session listening on port %d", self.listen_port)
        due = self._clock()
        while True:
            if self._changed.is_set() or self._clock() >= due:
                self._changed.clear()
                await self.sync()
                due = self._clock() + SYNC_EVERY
            else:
                self._alerts()
            fetching = any(not t.whole for t in self._torrents.values())
            pause = min(ALERTS_EVERY if fetching else SYNC_EVERY, max(0.0, due - self._clock()))
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(pause):
                    await self._changed.wait()

    async def sync(self) -> None:
        """Add the models held that are not in the session yet (whole: seeded from the
        store; in part: fetched, if their torrent is here), swap a fetched one for its
        seed once whole, remove those no longer held, update what is asked of BitTorrent
        peers, connect to the static peers now and then, and take the alerts."""
        models = self._held.models
        for model_id, t in list(self._torrents.items()):
            state = models.get(model_id)
            if state is None or (state.complete and not t.whole):
                self._remove(model_id)
            elif not t.whole:
                self._prioritize(state, t)
        for model_id in sorted(set(models) - set(self._torrents) - self._refused):
            state = models[model_id]
            if not state.complete and self._sink is None:
                continue
            torrent = await self._held.torrent(model_id)
            if torrent is not None and model_id not in self._torrents:
                self._add(torrent, state)
        now = self._clock()
        if self._section.peers:
            every = now - self._peers_at >= PEERS_EVERY
            if every:
                self._peers_at = now
            for t in self._torrents.values():  # one fetching with no peer: at each sync
                if every or (not t.whole and t.handle.status().num_peers == 0):
                    self._connect(t.handle)
        self._alerts()

    def _add(self, torrent: Torrent, state: ModelState) -> None:
        lt = self._lt
        params = lt.add_torrent_params()
        params.ti = lt.torrent_info(torrent.to_bytes())
        whole = state.complete
        if whole:
            params.save_path = str(self._models_dir)
            params.flags |= lt.torrent_flags.seed_mode
        else:
            self._scratch.mkdir(exist_ok=True)
            params.save_path = str(self._scratch)
        params.flags &= ~lt.torrent_flags.auto_managed
        params.flags &= ~lt.torrent_flags.paused
        if self._section.trackers:
            params.trackers = list(self._section.trackers)
        handle = self._session.add_torrent(params)
        t = self._torrents[torrent.model_id] = _Seeded(handle, whole, [])
        if not whole:
            self._prioritize(state, t)
        self._connect(handle)
        what = "seeding" if whole else "fetching"
        log.info("%s %s… over BitTorrent (%s)", what, torrent.model_id[:12], torrent.magnet())

    def _prioritize(self, state: ModelState, t: _Seeded) -> None:
        """Ask BitTorrent peers for the chunks not held, level 0 first."""
        want = piece_priorities(state.manifest, state.have)
        if want != t.priorities:
            t.handle.prioritize_pieces(want)
            t.priorities = want

    def _connect(self, handle: Any) -> None:
        for peer in self._section.peers:
            host, port = split_host_port(peer, "bittorrent.peers")
            try:
                handle.connect_peer((host, port))
            except RuntimeError as e:  # e.g. a name that does not resolve
                log.debug("BitTorrent peer %s: %s", peer, e)

    def _remove(self, model_id: str) -> None:
        t = self._torrents.pop(model_id)
        self._uploaded_gone += t.handle.status().total_payload_upload
        if t.whole:
            self._session.remove_torrent(t.handle)
        else:  # its scratch files go with it
            self._session.remove_torrent(t.handle, self._lt.session.delete_files)
        log.debug("%s… left the BitTorrent session", model_id[:12])

    def _alerts(self) -> None:
        lt = self._lt
        for alert in self._session.pop_alerts():
            if isinstance(alert, lt.piece_finished_alert):
                self._finished(alert)
            elif isinstance(alert, lt.read_piece_alert):
                self._read(alert)
            else:
                kind = type(alert).__name__.removesuffix("_alert")
                if kind in ("file_error", "torrent_error", "listen_failed", "hash_failed"):
                    log.warning("BitTorrent %s: %s", kind.replace("_", " "), alert.message())
                elif kind == "peer_ban":
                    log.warning("BitTorrent peer banned (it sent bad data): %s", alert.message())
                elif kind in ("tracker_error", "peer_error", "dht_error"):
                    log.debug("BitTorrent %s: %s", kind.replace("_", " "), alert.message())

    def _model_of(self, handle: Any) -> str | None:
        for model_id, t in self._torrents.items():
            if t.handle == handle and not t.whole:
                return model_id
        return None

    def _finished(self, alert: Any) -> None:
        """libtorrent has a piece (its hash check passed): read it back for the node."""
        model_id = self._model_of(alert.handle)
        if model_id is not None and (model_id, alert.piece_index) not in self._reading:
            self._reading.add((model_id, alert.piece_index))
            alert.handle.read_piece(alert.piece_index)

    def _read(self, alert: Any) -> None:
        model_id = self._model_of(alert.handle)
        key = (model_id or "", alert.piece)
        if model_id is None or key not in self._reading:
            return
        if alert.error.value():
            self._reading.discard(key)
            log.warning("BitTorrent: cannot read piece %d back: %s", alert.piece, alert.message())
            return
        state = self._held.models.get(model_id)
        if state is None or self._sink is None:
            self._reading.discard(key)
            return
        if alert.piece >= len(state.manifest.chunks):
            self._reading.discard(key)
            return
        # the last piece of a level ends in its pad file's zeros: the chunk is what precedes
        data = bytes(alert.buffer)[: state.manifest.chunks[alert.piece].length]
        task = asyncio.ensure_future(self._deliver(state, alert.piece, data))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _deliver(self, state: ModelState, index: int, data: bytes) -> None:
        assert self._sink is not None
        try:
            if not await self._sink(state, index, data) and state.model_id in self._torrents:
                log.error(
                    "%s: BitTorrent piece %d does not match the signed manifest: "
                    "its torrent is dropped",
                    state.manifest.name,
                    index,
                )
                self._remove(state.model_id)
                self._refused.add(state.model_id)
        finally:
            self._reading.discard((state.model_id, index))

    def report(self) -> BitTorrentReport:
        statuses = [t.handle.status() for t in self._torrents.values()]
        return BitTorrentReport(
            listen_port=self.listen_port,
            torrents=len(statuses),
            peers=sum(s.num_peers for s in statuses),
            bytes_uploaded=self._uploaded_gone + sum(s.total_payload_upload for s in statuses),
        )

    async def close(self) -> None:
        """Stop seeding and end the session (libtorrent's own stop runs in a thread: it
        may wait for trackers)."""
        for task in list(self._tasks):  # pieces being stored: they end first
            await asyncio.gather(task, return_exceptions=True)
        for model_id in list(self._torrents):
            self._remove(model_id)
        box, self._session = [self._session], None
        await asyncio.to_thread(_end, box)


def _end(box: list[Any]) -> None:
    """Pause and destroy the one session in ``box`` (its last reference: it is destroyed
    here, in this thread)."""
    session = box.pop()
    session.pause()
    del session
