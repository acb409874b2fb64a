"""The catalog owns each model's life: a version taken up is fetched in its own scope, and
dropping it (once a newer version is exact) stops that fetch, waits for it, and removes its
files for good. A real store in a temporary folder; fake fetch jobs; no sockets."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import logging
import threading
from collections.abc import Iterable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from peerprog.manifest import SignedManifest, chunk_data, seal
from peerprog.manifest.torrent import build_torrent, hash_file
from peerprog.node.catalog import Catalog
from peerprog.node.diskguard import DiskGuard
from peerprog.node.state import ModelState
from peerprog.store import ModelFiles, Store
from peerprog.swarm import Bitfield
from tests.unit.samples import KEY, PUB, make_manifest


def version(n: int) -> tuple[SignedManifest, list[bytes]]:
    m, levels = make_manifest()
    m = dataclasses.replace(m, version=n, created=1700000000 + n)
    return seal(m, KEY), chunk_data(levels, m.chunk_size)


def catalog(tmp_path: Path) -> tuple[Catalog, Store, DiskGuard]:
    store = Store(tmp_path / "store")
    disk = DiskGuard(1.0, lambda: 1 << 40)
    return Catalog(store, frozenset([PUB]), disk), store, disk


async def land(
    cat: Catalog, state: ModelState, files: ModelFiles, chunks: list[bytes], indices: Iterable[int]
) -> None:
    """Write the chunks ``indices`` and tell the catalog, as a fetch does."""
    for i in indices:
        await asyncio.to_thread(files.write_chunk, i, chunks[i])
        cat.chunk_stored(state, i)


def slow_records(files: ModelFiles, writing: threading.Event, release: threading.Event) -> None:
    """Make each record of ``files`` wait for ``release`` (a loaded disk), once it has set
    ``writing``."""
    record = files.record

    def slow_record(have: Bitfield) -> Bitfield:
        writing.set()
        release.wait(10)
        return record(have)

    files.record = slow_record  # type: ignore[method-assign]


async def test_dropping_a_version_stops_its_fetch_and_its_files_stay_gone(tmp_path: Path) -> None:
    cat, store, _ = catalog(tmp_path)
    (v1, chunks1), (v2, chunks2) = version(1), version(2)
    writes_after_drop: list[BaseException] = []
    dropped = asyncio.Event()

    async def fetch(state: ModelState, files: ModelFiles) -> None:
        slow = state.model_id == v1.model_id  # still incomplete when v2 is exact
        chunks = chunks1 if slow else chunks2
        for i, data in enumerate(chunks):
            await asyncio.sleep(0.1 if slow else 0)
            try:
                await asyncio.to_thread(files.write_chunk, i, data)
            except OSError as e:
                writes_after_drop.append(e)
            cat.chunk_stored(state, i)

    cat.forget_listeners.append(lambda mid: dropped.set())
    cat.start(fetch)
    s1 = await cat.take_up(v1, "test")
    assert s1 is not None
    await asyncio.sleep(0.25)
    assert cat.fetching(v1.model_id) and not s1.complete
    s2 = await cat.take_up(v2, "test")
    assert s2 is not None
    await asyncio.wait_for(dropped.wait(), 10)
    await asyncio.sleep(1.0)  # were v1's fetch still running, it would write meanwhile
    assert s2.complete and list(cat.models) == [v2.model_id]
    assert not cat.fetching(v1.model_id)
    assert not store.model_dir(v1.model_id).exists()
    assert store.resolve("tiny") == v2.model_id
    assert writes_after_drop == []
    await cat.aclose()


async def test_a_chunk_write_into_a_dropped_model_fails_rather_than_recreate_it(
    tmp_path: Path,
) -> None:
    cat, store, _ = catalog(tmp_path)
    v1, chunks = version(1)
    cat.start(lambda state, files: asyncio.sleep(0))
    await cat.take_up(v1, "test")
    files = cat.files(v1.model_id)
    assert files is not None
    await cat.drop(v1.model_id)
    with pytest.raises(FileNotFoundError):
        files.write_chunk(0, chunks[0])
    assert not store.model_dir(v1.model_id).exists()


async def test_an_older_version_is_not_taken_up(tmp_path: Path) -> None:
    cat, _, _ = catalog(tmp_path)
    cat.start(lambda state, files: asyncio.sleep(0))
    (v1, _), (v2, _) = version(1), version(2)
    assert await cat.take_up(v2, "test") is not None
    assert await cat.take_up(v1, "test") is None
    assert await cat.take_up(v2, "test") is None  # known already
    await cat.aclose()


async def test_a_manifest_that_cannot_be_stored_is_a_store_error(tmp_path: Path) -> None:
    cat, store, disk = catalog(tmp_path)
    v1, _ = version(1)

    def full(signed: SignedManifest) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    store.put_manifest = full  # type: ignore[method-assign]
    assert await cat.take_up(v1, "test") is None
    assert disk.error is not None and "No space left on device" in disk.error
    assert not cat.models


async def test_only_a_model_published_here_is_loaded_as_its_origin(tmp_path: Path) -> None:
    """An edge that fetched a whole model and restarts holds it complete, but is not the
    model's origin (it would announce itself as the seed); a store ``publish`` wrote is."""
    from tests.unit.test_api_support import publish_sample

    store = Store(tmp_path / "edge")  # what a finished fetch leaves behind
    v1, chunks = version(1)
    store.put_manifest(v1)
    files = store.open_files(v1)
    for i, data in enumerate(chunks):
        files.write_chunk(i, data)
    files.record(Bitfield.full(len(chunks)))
    files.close()
    for root, origin in (("edge", False), ("seed", True)):
        if root == "seed":
            publish_sample(tmp_path / "seed")
        cat = Catalog(Store(tmp_path / root), frozenset([PUB]), DiskGuard(1.0, lambda: 1 << 40))
        (loaded,) = cat.load_store()
        cat.start(lambda state, files: asyncio.sleep(0))
        assert loaded.complete and loaded.origin is origin, root
        await cat.aclose()


async def test_a_record_still_being_written_at_shutdown_is_not_replaced_by_an_older_one(
    tmp_path: Path,
) -> None:
    """The recorder writes a record (slowly: a loaded disk) when level 0 completes; the rest
    arrives and the node stops meanwhile. Shutdown waits for that write (two writers could
    leave the older record last, or write through closed files), and the record it leaves
    names every chunk."""
    cat, store, _ = catalog(tmp_path)
    v1, chunks = version(1)
    level0 = list(v1.manifest.levels[0].chunks)
    order: list[str] = []
    rest = asyncio.Event()

    async def fetch(state: ModelState, files: ModelFiles) -> None:
        record, calls = files.record, []

        def slow_record(have: Bitfield) -> Bitfield:
            calls.append(have)
            if len(calls) > 1:
                return record(have)
            loop.call_soon_threadsafe(rest.set)
            try:
                threading.Event().wait(0.5)
                return record(have)
            finally:
                order.append("slow record written")

        files.record = slow_record  # type: ignore[method-assign]
        for i in level0:
            await asyncio.to_thread(files.write_chunk, i, chunks[i])
            cat.chunk_stored(state, i)
        await rest.wait()  # the first record is being written
        for i in range(len(chunks)):
            if i not in level0:
                await asyncio.to_thread(files.write_chunk, i, chunks[i])
                cat.chunk_stored(state, i)

    loop = asyncio.get_running_loop()
    cat.start(fetch)
    state = await cat.take_up(v1, "test")
    assert state is not None
    while not state.complete:
        await asyncio.sleep(0.01)
    await cat.aclose()
    order.append("closed")
    await asyncio.sleep(1.0)  # a write left running would end meanwhile
    assert order == ["slow record written", "closed"]
    with store.open_files(v1) as files:
        assert files.recorded().count() == len(chunks)


async def test_a_level_is_served_only_once_its_record_is_durable(tmp_path: Path) -> None:
    """Level 0 completes while the recorder's write is slow (a loaded disk): an app asking
    for it meanwhile must wait, else a crash before the write would take back what it was
    given. Once written, the level is durable and announced to the listeners."""
    cat, _, _ = catalog(tmp_path)
    v1, chunks = version(1)
    level0 = list(v1.manifest.levels[0].chunks)
    writing, release = threading.Event(), threading.Event()
    heard: list[int] = []

    async def fetch(state: ModelState, files: ModelFiles) -> None:
        slow_records(files, writing, release)
        await land(cat, state, files, chunks, level0)

    cat.level_listeners.append(lambda s: heard.append(s.servable_level))
    cat.start(fetch)
    state = await cat.take_up(v1, "test")
    assert state is not None
    await asyncio.to_thread(writing.wait, 10)
    assert state.best_level == 0 and state.servable_level == -1 and heard == []
    release.set()
    while not heard:
        await asyncio.sleep(0.01)
    assert state.servable_level == 0 and heard == [0]
    await cat.aclose()


def holding(tmp_path: Path, signed: SignedManifest, chunks: list[bytes]) -> None:
    """A store at ``tmp_path / "store"`` that holds ``signed`` whole, recorded."""
    store = Store(tmp_path / "store")
    store.put_manifest(signed)
    with store.open_files(signed) as files:
        for i, data in enumerate(chunks):
            files.write_chunk(i, data)
        files.record(Bitfield.full(len(chunks)))


async def test_apps_get_the_older_version_until_the_newer_ones_level_0_is_recorded(
    tmp_path: Path,
) -> None:
    """v1 is held whole; v2's level 0 completes while its record is written slowly. Until
    that record is durable, v2 has no servable level: apps (and peers) still get v1, rather
    than waiting for a level a crash could take back."""
    (v1, chunks1), (v2, chunks2) = version(1), version(2)
    holding(tmp_path, v1, chunks1)
    cat, _, _ = catalog(tmp_path)
    (s1,) = cat.load_store()
    writing, release = threading.Event(), threading.Event()

    async def fetch(state: ModelState, files: ModelFiles) -> None:
        slow_records(files, writing, release)
        await land(cat, state, files, chunks2, v2.manifest.levels[0].chunks)

    cat.start(fetch)
    s2 = await cat.take_up(v2, "test")
    assert s2 is not None
    await asyncio.to_thread(writing.wait, 10)
    assert s2.best_level == 0 and s2.servable_level == -1
    assert cat.newest_served("tiny") is s1
    release.set()
    while s2.servable_level < 0:
        await asyncio.sleep(0.01)
    assert cat.newest_served("tiny") is s2
    await cat.aclose()


async def test_a_level_whose_record_failed_once_is_announced_when_a_record_succeeds(
    tmp_path: Path,
) -> None:
    """The first record after level 0 completes fails (a full disk); the next one, a round
    later, succeeds. The listeners hear of level 0 then, once, and never of a level that
    is not servable."""
    cat, _, _ = catalog(tmp_path)
    v1, chunks = version(1)
    heard: list[int] = []

    async def fetch(state: ModelState, files: ModelFiles) -> None:
        record, calls = files.record, []

        def failing_once(have: Bitfield) -> Bitfield:
            calls.append(have)
            if len(calls) == 1:
                raise OSError(errno.ENOSPC, "No space left on device")
            return record(have)

        files.record = failing_once  # type: ignore[method-assign]
        await land(cat, state, files, chunks, v1.manifest.levels[0].chunks)

    cat.level_listeners.append(lambda s: heard.append(s.servable_level))
    cat.start(fetch)
    state = await cat.take_up(v1, "test")
    assert state is not None
    for _ in range(500):
        if heard and heard[-1] >= 0:
            break
        await asyncio.sleep(0.01)
    assert heard == [0] and state.servable_level == 0
    await cat.aclose()


async def test_a_chunk_left_out_of_the_record_as_damaged_keeps_its_level_unservable(
    tmp_path: Path,
) -> None:
    """A chunk of level 0 is found damaged on disk before the record is written: the record
    leaves it out, so level 0 is not durable, and not servable."""
    cat, _, _ = catalog(tmp_path)
    v1, chunks = version(1)
    level0 = list(v1.manifest.levels[0].chunks)
    written = asyncio.Event()

    async def fetch(state: ModelState, files: ModelFiles) -> None:
        for i in level0:
            await asyncio.to_thread(files.write_chunk, i, chunks[i])
        files.damaged.add(level0[0])  # as a recheck of a changed level file finds it
        for i in level0:
            cat.chunk_stored(state, i)
        written.set()

    cat.start(fetch)
    state = await cat.take_up(v1, "test")
    assert state is not None
    await written.wait()
    await asyncio.sleep(1.0)  # two rounds of the recorder
    assert state.best_level == 0 and state.servable_level == -1
    await cat.aclose()


async def test_chunks_written_but_never_recorded_are_held_at_start_without_a_fetch(
    tmp_path: Path,
) -> None:
    """A node wrote every chunk of v1 and was killed before its first record: at the
    next start the chunks are hashed, found good and recorded, the model is complete and
    servable, and no fetch is started for it."""
    v1, chunks = version(1)
    store = Store(tmp_path / "store")
    store.put_manifest(v1)
    with store.open_files(v1) as files:
        for i, data in enumerate(chunks):
            files.write_chunk(i, data)
    cat = Catalog(store, frozenset([PUB]), DiskGuard(1.0, lambda: 1 << 40), want=["tiny"])
    (state,) = await asyncio.to_thread(cat.load_store)
    fetched: list[ModelState] = []

    async def fetch(state: ModelState, files: ModelFiles) -> None:
        fetched.append(state)

    cat.start(fetch)
    await asyncio.sleep(0.1)
    assert state.complete and state.servable_level == v1.manifest.levels_total - 1
    assert state.metrics.chunks_from_disk == len(chunks) and fetched == []
    assert store.held(v1).count() == len(chunks)
    await cat.aclose()


async def test_a_torrent_from_a_peer_is_kept_only_if_the_publisher_signed_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cat, store, _ = catalog(tmp_path)
    cat.start(lambda state, files: asyncio.sleep(0))
    m, levels = make_manifest(chunk_size=16384)
    signed = seal(m, KEY)
    assert await cat.take_up(signed, "test") is not None
    mid = signed.model_id
    files = [hash_file(level, 16384) for level in levels]
    torrent = build_torrent(m, mid, files)
    other = build_torrent(m, version(2)[0].model_id, files).signed(KEY)  # another model's
    with caplog.at_level(logging.WARNING, "peerprog"):
        assert not await cat.take_torrent(mid, torrent.to_bytes())  # unsigned: built by a node
        assert not caplog.records
        assert not await cat.take_torrent(
            mid, torrent.signed(Ed25519PrivateKey.generate()).to_bytes()
        )
        assert not await cat.take_torrent(mid, other.to_bytes())
        assert not await cat.take_torrent(mid, b"not a torrent")
        assert len(caplog.records) == 3 and not store.torrent_path(mid).exists()
    assert await cat.take_torrent(mid, torrent.signed(KEY).to_bytes())
    assert store.read_torrent(mid) == torrent.signed(KEY).to_bytes()
    assert await cat.torrent(mid) == torrent.signed(KEY)  # served from now on
    await cat.aclose()
