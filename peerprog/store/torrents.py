"""A stored model's BitTorrent v2 torrent: read and checked, or built from its level files.

``publish`` writes the torrent (signed by the publisher). A node holding a model published
before torrents existed, or whose torrent it did not get, builds it from its verified level
files once it holds them whole: the build is deterministic, so every such node makes the
same torrent with the same info-hash, and nothing in the manifest or the model id changes.
"""

from __future__ import annotations

import contextlib
import logging
import os

from peerprog.errors import VerificationError
from peerprog.manifest import SignedManifest
from peerprog.manifest.torrent import (
    FileHasher,
    Torrent,
    build_torrent,
    parse_torrent,
    piece_length_ok,
)
from peerprog.store.disk import Store
from peerprog.store.levels import ModelFiles
from peerprog.swarm import Bitfield

log = logging.getLogger("peerprog.store")
READ = 4 << 20


def stored_torrent(store: Store, signed: SignedManifest) -> Torrent | None:
    """The model's stored torrent, checked against its manifest; None if it has none (or
    the stored one is damaged: it is removed, and built again when it can be)."""
    data = store.read_torrent(signed.model_id)
    if data is None:
        return None
    try:
        return parse_torrent(data, signed.manifest, signed.model_id, signed.publisher)
    except VerificationError as e:
        log.warning("%s: stored torrent removed: %s", signed.manifest.name, e)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(store.torrent_path(signed.model_id))
        return None


def model_torrent(
    store: Store, signed: SignedManifest, files: ModelFiles, held: Bitfield
) -> Torrent | None:
    """The model's torrent: the stored one, else built from its level ``files`` and stored,
    if every chunk is ``held`` and intact. None if it has none and cannot have one yet (not
    held whole) or ever (its chunk size is not a piece length). Blocking: it may hash every
    level file."""
    torrent = stored_torrent(store, signed)
    m = signed.manifest
    if torrent is not None or not piece_length_ok(m.chunk_size) or held.count() < len(m.chunks):
        return torrent
    every = range(len(m.chunks))
    if not files.usable(every, held):
        return None
    hashes = []
    for lv in m.levels:
        hasher = FileHasher(m.chunk_size, padded=m.levels_total > 1)
        for start in range(0, lv.bytes, READ):
            hasher.update(files.read(lv.level, start, min(READ, lv.bytes - start)))
        hashes.append(hasher.finish())
    if not files.usable(every, held):  # changed on disk while it was read
        return None
    stored = stored_torrent(store, signed)
    if stored is not None:  # the publisher's came from a peer meanwhile
        return stored
    torrent = build_torrent(m, signed.model_id, hashes)
    store.put_torrent(signed.model_id, torrent.to_bytes())
    log.info("%s v%d: torrent built from its levels (%s)", m.name, m.version, torrent.magnet())
    return torrent
