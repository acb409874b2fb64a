"""The catalog: the models this node holds and the names it wants — the one owner of each
model's life on the node.

A model (one model id) is *taken up* (:meth:`Catalog.take_up`: found in the store at start,
or a newer version the resolver verified): its level files are opened, and it gets its own
task scope in which its fetcher runs until it is complete and its decoded levels are
built. It gains chunks (:meth:`Catalog.chunk_stored`; the record of verified chunks is made
durable soon after, and at once when a level completes) and levels, and is *dropped*
(:meth:`Catalog.drop`: its scope cancelled and awaited, then its files removed) once a newer
version is exact. Which version wins, is served and is dropped is the rule of
:mod:`peerprog.swarm.versions`; the catalog applies it.

A level reached is servable (built, served, announced to the level listeners) once the
recorder has made its record durable: :attr:`~peerprog.node.state.ModelState.servable_level`
is the rule, raised only there (and what a model is taken up with, read from its record).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from peerprog.errors import PeerprogError, VerificationError
from peerprog.manifest import SignedManifest
from peerprog.manifest.torrent import Torrent, parse_torrent
from peerprog.node.decoded import Built, DecodedLevels
from peerprog.node.diskguard import DiskGuard
from peerprog.node.state import ModelState
from peerprog.node.tasks import ScopeClosed, TaskScope
from peerprog.store import ModelFiles, Store
from peerprog.store.torrents import model_torrent
from peerprog.swarm import Bitfield
from peerprog.swarm.versions import named, newest_first, served, superseded

log = logging.getLogger("peerprog.node")

FetchJob = Callable[[ModelState, ModelFiles], Coroutine[Any, Any, None]]
"""Runs a model's fetch until it is complete (the node's fetcher factory)."""
RECORD_EVERY = 0.5
"""Seconds between two writes of a model's record of verified chunks while it grows."""
LevelListener = Callable[[ModelState], None]
"""Called with a model each time its servable level rises."""


@dataclass(eq=False)
class HeldModel:
    """One model the node holds: everything the catalog keeps of it, in one record made
    whole when it is taken up (:meth:`Catalog._adopt`) and dropped whole
    (:meth:`Catalog._forget`)."""

    state: ModelState
    files: ModelFiles
    """Its open level files."""
    scope: TaskScope
    """Owns its fetch and its decodes: closed, and awaited, before its files are."""
    decoded: DecodedLevels
    fetch: asyncio.Task[None] | None = None
    """Its fetch, started in :attr:`scope` (None: never started, or stopped by unwant)."""
    unrecorded: bool = False
    """Chunks were stored since its record was last written."""
    torrent: asyncio.Future[Torrent | None] | None = None
    """Finding (or building) its BitTorrent torrent; kept once it found one."""

    @property
    def fetching(self) -> bool:
        return self.fetch is not None and not self.fetch.done()


def _ended_without(task: asyncio.Future[Torrent | None]) -> bool:
    """Whether a search for a torrent ended without one (to be tried again)."""
    return task.done() and (task.cancelled() or task.exception() is not None or not task.result())


class Catalog:
    """The models held by id (one :class:`HeldModel` each), and the wanted names."""

    def __init__(
        self,
        store: Store,
        trusted: frozenset[str],
        disk: DiskGuard,
        *,
        want: Iterable[str] = (),
        keep_versions: int = 0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self._trusted = trusted
        self._disk = disk
        self._keep = keep_versions
        self._clock = clock
        self._held: dict[str, HeldModel] = {}
        self._closed = False
        """Set by :meth:`aclose`: the level files are closed."""
        self._busy: set[str] = set()
        """Ids being taken up, rescanned or removed: a rescan leaves their folders alone."""
        self._ignored: set[str] = set()
        """Ids in the store that did not verify (logged once; read again at a restart)."""
        self._record_now = asyncio.Event()
        self._writing: asyncio.Future[Written] | None = None
        """The records being written by the recorder: one writer at a time, so an older
        record never replaces a newer one (shutdown waits for it, it is not cancelled)."""
        self._asked: set[str] = set(store.wanted())
        """Names an app asked for (persisted); with the config's ``want``, the wanted."""
        self._wanted: set[str] = set(want) | self._asked
        self._fetch: FetchJob | None = None
        self._root = TaskScope("catalog")
        self.level_listeners: list[LevelListener] = []
        """Called with a model each time its servable level rises (after the catalog's own
        work)."""
        self.take_up_listeners: list[LevelListener] = []
        """Called with a model each time one is taken up from a source."""
        self.forget_listeners: list[Callable[[str], None]] = []
        """Called with a model id once it is dropped."""
        self.torrent_listeners: list[LevelListener] = []
        """Called with a model once its publisher's torrent came from a peer or a mirror."""

    # --- queries ---------------------------------------------------------------------------

    @property
    def models(self) -> Mapping[str, ModelState]:
        """The models held, by id (a snapshot)."""
        return {mid: held.state for mid, held in self._held.items()}

    @property
    def wanted(self) -> frozenset[str]:
        return frozenset(self._wanted)

    def versions(self, name: str) -> list[ModelState]:
        """The node's versions of ``name``, newest first."""
        return newest_first(h.state for h in self._held.values() if h.state.manifest.name == name)

    def newest_served(self, name: str) -> ModelState | None:
        """The version of ``name`` apps and peers get (newest with level 0 servable)."""
        return served(self.versions(name))

    def newest_version(self, name: str) -> int:
        """The newest version number held of ``name`` (0 for none)."""
        return max((s.version for s in self.versions(name)), default=0)

    def files(self, model_id: str) -> ModelFiles | None:
        """The open level files of a model held."""
        held = self._held.get(model_id)
        return held.files if held is not None and not self._closed else None

    async def decoded(self, state: ModelState, *, growing: bool = False) -> Built:
        """The decoded file of ``state`` at its servable level (``KeyError`` if it is no
        longer held); with ``growing``, the file being built as it grows
        (:meth:`DecodedLevels.get`)."""
        return await self._holding(state).decoded.get(growing=growing)

    async def torrent(self, model_id: str) -> Torrent | None:
        """The BitTorrent v2 torrent of a model held: the stored one, else built from its
        level files once it is held whole (one build at a time; kept once found). None
        while it has none, and for a model not held."""
        held = self._held.get(model_id)
        if held is None or self._closed:
            return None
        task = held.torrent
        if task is None or (
            task.done() and (task.cancelled() or task.exception() or not task.result())
        ):
            state = held.state
            job = asyncio.to_thread(
                model_torrent, self.store, state.signed, held.files, state.have.copy()
            )
            try:
                task = held.scope.spawn(job, name=f"torrent {state.manifest.name}")
            except ScopeClosed:  # being dropped
                return None
            held.torrent = task
        try:
            return await asyncio.shield(task)
        except (OSError, PeerprogError) as e:
            log.warning("%s: no torrent: %s", held.state.manifest.name, e)
            return None

    async def take_torrent(self, model_id: str, data: bytes) -> bool:
        """A model's torrent from a peer or a mirror: kept (and served from now on) if it
        is the model's and its publisher signed it; False if not (a bad one is logged)."""
        held = self._held.get(model_id)
        if held is None or self._closed:
            return False
        signed = held.state.signed
        try:
            torrent = parse_torrent(data, signed.manifest, model_id, signed.publisher)
        except VerificationError as e:
            log.warning("%s: refused a torrent from a peer: %s", signed.manifest.name, e)
            return False
        if torrent.attestation is None:  # one its source built: this node builds the same
            log.debug("%s: the torrent from a peer is not signed; not kept", signed.manifest.name)
            return False
        try:
            await asyncio.to_thread(self.store.put_torrent, model_id, torrent.to_bytes())
        except OSError as e:
            log.warning("%s: cannot store its torrent: %s", signed.manifest.name, e)
        found: asyncio.Future[Torrent | None] = asyncio.get_running_loop().create_future()
        found.set_result(torrent)
        held.torrent = found
        for listener in list(self.torrent_listeners):
            listener(held.state)
        return True

    def decoded_at(self, model_id: str, level: int) -> Built | None:
        """The decoded level ``level`` of ``model_id`` if it is on disk now (never built
        here): what a repository's file request is answered from."""
        held = self._held.get(model_id)
        return held.decoded.serving(level) if held is not None else None

    def decoded_builds(self) -> int:
        """Decoded level files built so far (of the models held now)."""
        return sum(h.decoded.builds for h in self._held.values())

    def fetching(self, model_id: str) -> bool:
        """Whether a fetch of ``model_id`` is running."""
        held = self._held.get(model_id)
        return held is not None and held.fetching

    def _holding(self, state: ModelState) -> HeldModel:
        """The record of ``state`` (``KeyError`` if it is no longer held)."""
        held = self._held.get(state.model_id)
        if held is None or held.state is not state:
            raise KeyError(state.model_id)
        return held

    # --- life cycle ------------------------------------------------------------------------

    def want(self, name: str) -> bool:
        """Keep ``name`` up to date from now on (remembered across restarts); True if it
        was not wanted yet."""
        if name in self._wanted:
            return False
        self._wanted.add(name)
        self._asked.add(name)
        self._save_wanted()
        log.info("want %s", name)
        for state in self.versions(name):
            held = self._held[state.model_id]
            held.decoded.ahead = True
            held.decoded.level_servable()
            if not state.complete:
                self._start_fetch(held)
        return True

    def unwant(self, name: str) -> bool:
        """Stop keeping ``name`` up to date: its fetches stop, what is held stays (and is
        served). True if it was wanted."""
        if name not in self._wanted:
            return False
        self._wanted.discard(name)
        self._asked.discard(name)
        self._save_wanted()
        log.info("no longer want %s", name)
        for state in self.versions(name):
            held = self._held[state.model_id]
            held.decoded.ahead = False
            task, held.fetch = held.fetch, None
            if task is not None:
                task.cancel()  # awaited by the model's scope when it closes
        return True

    async def remove(self, name: str) -> list[str]:
        """Unwant ``name`` and delete every version of it from the store (waiting for
        their fetches to stop); returns their ids."""
        self.unwant(name)
        ids = [s.model_id for s in self.versions(name)]
        await asyncio.gather(*(self._forget(held) for held in self._holding_ids(ids)))
        if ids and self.store.resolve(name) in ids:
            await asyncio.to_thread(self.store.clear_name, name)
        log.info("removed %s (%d versions)", name, len(ids))
        return ids

    def _save_wanted(self) -> None:
        try:
            self.store.set_wanted(self._asked)
        except OSError as e:
            self._disk.failed(
                "wanted", f"cannot record the wanted names: {e.strerror or e}", self._clock()
            )

    def load_store(self) -> list[ModelState]:
        """Take up every trusted, verified model of the store (blocking: run in a thread;
        before :meth:`start`). A model that does not verify is skipped and logged."""
        found = [self._load(mid) for mid in self.store.model_ids()]
        for name in {h.state.manifest.name for h in self._held.values()}:
            newest = self.newest_served(name)
            if newest is not None and self.store.resolve(name) != newest.model_id:
                with contextlib.suppress(OSError):  # a name write lost to a full disk
                    self.store.set_name(name, newest.model_id)
        return [s for s in found if s is not None]

    async def rescan(self) -> list[ModelState]:
        """Take up the models published into the store since it was loaded (by
        ``peerprog publish`` beside the running node); returns them."""
        ids = await asyncio.to_thread(self.store.model_ids)
        skip = self._held.keys() | self._busy | self._ignored
        new = [mid for mid in ids if mid not in skip]
        if not new:
            return []
        self._busy.update(new)
        try:
            loaded = [await asyncio.to_thread(self._read, mid) for mid in new]
        finally:
            self._busy.difference_update(new)
        found = []
        for got in loaded:
            if got is None or got[0].model_id in self._held:
                continue
            held = self._adopt_loaded(*got, where="published")
            state = held.state
            found.append(state)
            if state.best_level >= 0:
                self._level_reached(state)
                self._servable(state)
            if not state.complete and state.manifest.name in self._wanted:
                self._start_fetch(held)
            for listener in list(self.take_up_listeners):
                listener(state)
        return found

    def _load(self, model_id: str) -> ModelState | None:
        got = self._read(model_id)
        return None if got is None else self._adopt_loaded(*got, where="store").state

    def _adopt_loaded(
        self, signed: SignedManifest, files: ModelFiles, held: Bitfield, *, where: str
    ) -> HeldModel:
        m = signed.manifest
        complete = held.count() == len(m.chunks)
        # an edge that fetched the whole model is a complete holder, not the origin
        state = self._state(
            signed, held, origin=complete and self.store.published_here(signed.model_id)
        )
        record = self._adopt(state, files)
        log.info(
            "%s: %s v%d: %d/%d chunks, level %d",
            where,
            m.name,
            m.version,
            held.count(),
            len(m.chunks),
            state.best_level,
        )
        return record

    def _read(self, model_id: str) -> tuple[SignedManifest, ModelFiles, Bitfield] | None:
        """A stored model's manifest, open files and the chunks it holds: its record, and
        the chunks written but not recorded before the node stopped that verify
        (:meth:`~peerprog.store.ModelFiles.resume`). Blocking; None (logged) if it does not
        verify or cannot be opened."""
        self._ignored.add(model_id)  # until it is read whole
        try:
            signed = self.store.load_manifest(model_id, self._trusted)
        except PeerprogError as e:
            log.warning("store: ignoring model %s…: %s", model_id[:12], e)
            return None
        try:
            files = self.store.open_files(signed)
        except OSError as e:
            log.warning("store: ignoring model %s…: %s", model_id[:12], e)
            return None
        try:
            held = files.resume()
        except OSError as e:
            files.close()
            log.warning("store: ignoring model %s…: %s", model_id[:12], e)
            return None
        self._ignored.discard(model_id)
        return signed, files, held

    def start(self, fetch: FetchJob) -> None:
        """Start fetching every incomplete model (later ones are fetched as taken up), and
        building the decoded levels of the wanted ones."""
        self._fetch = fetch
        self._root.spawn(self._recorder(), name="record")
        for held in list(self._held.values()):
            wanted = held.state.manifest.name in self._wanted
            if not held.state.complete and wanted:
                self._start_fetch(held)
            held.decoded.ahead = wanted
            held.decoded.level_servable()

    async def take_up(self, signed: SignedManifest, source: str) -> ModelState | None:
        """Store a verified manifest, find chunks already on disk, start fetching. Returns
        the model, or None if it was not taken up (known, not newer, or not storable)."""
        m = signed.manifest
        if signed.model_id in self._held or m.version <= self.newest_version(m.name):
            return None
        if signed.model_id in self._busy:
            return None
        self._busy.add(signed.model_id)
        try:
            return await self._take_up(signed, source)
        finally:
            self._busy.discard(signed.model_id)

    async def _take_up(self, signed: SignedManifest, source: str) -> ModelState | None:
        m = signed.manifest
        began = self._clock()
        try:
            await asyncio.to_thread(self.store.put_manifest, signed)
            files = await asyncio.to_thread(self.store.open_files, signed)
        except OSError as e:
            self._disk.failed(
                "manifest", f"cannot store the manifest of {m.name}: {e.strerror or e}", began
            )
            return None
        self._disk.succeeded("manifest", began)
        try:
            # chunks on disk before a damaged manifest was replaced: not fetched again
            held = await asyncio.to_thread(files.resume)
        except OSError:
            files.close()
            raise
        if signed.model_id in self._held or m.version <= self.newest_version(m.name):
            files.close()
            return None
        state = self._state(signed, held, origin=False)
        record = self._adopt(state, files)
        log.info("found %s v%d (%s…) from %s", m.name, m.version, signed.model_id[:12], source)
        if state.best_level >= 0:  # what its record names: servable
            self._level_reached(state)
            self._servable(state)
        if not state.complete:
            self._start_fetch(record)
        for listener in list(self.take_up_listeners):
            listener(state)
        return state

    def chunk_stored(self, state: ModelState, index: int) -> None:
        """A verified chunk of ``state`` reached the disk."""
        held = self._held.get(state.model_id)
        if held is None or held.state is not state:
            return
        state.received(state.manifest.chunks[index].length, self._clock())
        held.unrecorded = True
        if state.add_chunk(index):
            self._record_now.set()  # servable once durable: recorded at once
            self._level_reached(state)

    async def drop(self, model_id: str) -> None:
        """Forget a model at once; stop its fetch (and wait for it), then remove its files."""
        for held in self._holding_ids([model_id]):
            await self._forget(held)

    def _holding_ids(self, ids: Iterable[str]) -> list[HeldModel]:
        """The records of those of ``ids`` held."""
        return [held for mid in ids if (held := self._held.get(mid)) is not None]

    def _forget(self, held: HeldModel) -> asyncio.Task[None]:
        """Drop ``held`` from the catalog at once; a task of the catalog's stops its fetch
        and decodes, waits for them, then closes and removes its files."""
        model_id = held.state.model_id
        del self._held[model_id]
        held.decoded.stop()
        for listener in list(self.forget_listeners):
            listener(model_id)
        self._busy.add(model_id)

        async def remove() -> None:
            try:
                await held.scope.aclose()
                held.files.close()
                await asyncio.to_thread(held.decoded.remove)
                await asyncio.to_thread(self.store.remove_model, model_id)
            finally:
                self._busy.discard(model_id)

        return self._root.spawn(remove(), name=f"drop {model_id[:12]}")

    async def aclose(self) -> None:
        """Stop every fetch and build (and the drops under way); record what is verified;
        close the level files; remove decoded files kept outside the store."""
        for held in self._held.values():
            held.decoded.stop()
        for held in list(self._held.values()):
            await held.scope.aclose()
        await self._root.aclose()
        for held in self._held.values():
            await asyncio.to_thread(held.decoded.remove_spare)
        if self._writing is not None:
            await asyncio.gather(self._writing, return_exceptions=True)
        await asyncio.to_thread(_write_records, self.store, self._record_jobs())
        self._closed = True
        for held in self._held.values():
            held.files.close()

    # --- internals -------------------------------------------------------------------------

    def _state(self, signed: SignedManifest, held: Bitfield, *, origin: bool) -> ModelState:
        state = ModelState(signed, held.copy(), origin=origin)
        state.metrics.chunks_from_disk = held.count()
        return state

    def _adopt(self, state: ModelState, files: ModelFiles) -> HeldModel:
        """Make the record of a model taken up (its files open): its scope and decoded
        levels."""
        mid = state.model_id
        scope = TaskScope(f"model {mid[:12]}")
        ahead = state.manifest.name in self._wanted
        folder = self.store.decoded_dir(mid)
        shutil.rmtree(folder, ignore_errors=True)  # derived data: rebuilt from verified chunks
        decoded = DecodedLevels(state, files, folder, scope, self._disk, ahead=ahead)
        held = self._held[mid] = HeldModel(state, files, scope, decoded)
        return held

    def _start_fetch(self, held: HeldModel) -> None:
        if self._fetch is None or held.fetching:
            return
        held.fetch = held.scope.spawn(
            self._fetch(held.state, held.files), name=f"fetch {held.state.manifest.name}"
        )

    async def _recorder(self) -> None:
        """Make the records of verified chunks durable, every :data:`RECORD_EVERY` seconds
        while chunks arrive, and at once when a level completes; then raise each model's
        servable level to what its record now names."""
        while True:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._record_now.wait(), RECORD_EVERY)
            self._record_now.clear()
            if any(held.unrecorded for held in self._held.values()):
                began = self._clock()
                jobs = self._record_jobs()
                recorded, failed = await self._write(jobs)
                for state, _, _, _ in jobs:
                    written = recorded.get(state.model_id)
                    if written is not None and state.mark_durable(written):
                        self._servable(state)
                for what, _, message in failed:
                    self._disk.failed(what, message, began)
                kinds = {what for what, _, _ in failed}
                for what in ("record", "name"):
                    if what not in kinds:
                        self._disk.succeeded(what, began)

    async def _write(self, jobs: list[RecordJob]) -> Written:
        """Write ``jobs`` in a worker, shielded from cancellation; a model whose record
        failed is written again at the next round."""
        self._writing = asyncio.ensure_future(asyncio.to_thread(_write_records, self.store, jobs))
        self._writing.add_done_callback(self._rewrite_failed)
        return await asyncio.shield(self._writing)

    def _rewrite_failed(self, done: asyncio.Future[Written]) -> None:
        if not done.cancelled() and done.exception() is None:
            for held in self._holding_ids(mid for _, mid, _ in done.result()[1]):
                held.unrecorded = True

    def _record_jobs(self) -> list[RecordJob]:
        """The records to write now, and whether each model's name should point at it once
        they are: the work is chosen here, on the event loop; :func:`_write_records` does
        it."""
        jobs = []
        for held in (self._held[mid] for mid in sorted(self._held)):
            if held.unrecorded:
                held.unrecorded = False
                state = held.state
                serve = named(self.versions(state.manifest.name)) is state
                jobs.append((state, held.files, state.have.copy(), serve))
        return jobs

    def _level_reached(self, state: ModelState) -> None:
        """``state`` holds a new level (servable once recorded: :meth:`_servable`)."""
        m = state.manifest
        now = time.time()
        for level in range(state.best_level + 1):  # levels completed together: all now
            state.metrics.level_complete_at.setdefault(level, now)
        log.info(
            "%s v%d: level %d of %d reached (%d/%d bytes)",
            m.name,
            m.version,
            state.best_level,
            m.levels_total - 1,
            state.bytes_held,
            m.total_bytes,
        )
        if state.complete:
            for old in superseded(self.versions(m.name), self._keep):
                log.info("dropping %s v%d: v%d is exact", m.name, old.version, m.version)
                self._forget(self._held[old.model_id])

    def _servable(self, state: ModelState) -> None:
        """``state``'s servable level rose: build it ahead (if wanted) and tell the level
        listeners (apps may have it now)."""
        held = self._held.get(state.model_id)
        if held is None or held.state is not state:
            return
        held.decoded.level_servable()
        for listener in list(self.level_listeners):
            listener(state)


RecordJob = tuple[ModelState, ModelFiles, Bitfield, bool]
Written = tuple[dict[str, Bitfield], list[tuple[str, str, str]]]
"""What :func:`_write_records` did: the chunks recorded by model id, and (what, model id,
message) of each failure."""


def _write_records(store: Store, jobs: list[RecordJob]) -> Written:
    """Write each record, then, if asked, the name — only once the record holds the
    model's level 0 (blocking)."""
    recorded: dict[str, Bitfield] = {}
    failed = []
    for state, files, have, serve in jobs:
        m = state.manifest
        try:
            written = recorded[state.model_id] = files.record(have)
        except FileNotFoundError:
            continue  # dropped meanwhile
        except OSError as e:
            why = f"cannot record the chunks of {m.name}: {e.strerror or e}"
            failed.append(("record", state.model_id, why))
            continue
        serve = serve and all(i in written for i in m.levels[0].chunks)
        if serve and store.resolve(m.name) != state.model_id:
            try:
                store.set_name(m.name, state.model_id)
            except OSError as e:  # set again at the next record
                failed.append(("name", state.model_id, f"cannot name {m.name}: {e.strerror or e}"))
    return recorded, failed
