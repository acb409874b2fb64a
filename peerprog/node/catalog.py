"""The catalog: the models this node holds and the names it wants — the one owner of each
model's life on the node.

A model (one model id) is *taken up* (:meth:`Catalog.take_up`: found in the store at start,
or a newer version the resolver verified), gets its own task scope in which its fetcher
runs until it is complete, gains levels (:meth:`Catalog.chunk_stored`), and is *dropped*
(:meth:`Catalog.drop`: its scope cancelled and awaited, then its files removed) once a newer
version is exact. Which version wins, is served and is dropped is the rule of
:mod:`peerprog.swarm.versions`; the catalog applies it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Callable, Coroutine, Iterable, Mapping
from typing import Any

from peerprog.errors import PeerprogError
from peerprog.manifest import SignedManifest
from peerprog.node.diskguard import DiskGuard
from peerprog.node.state import ModelState
from peerprog.node.tasks import TaskScope
from peerprog.store import Store
from peerprog.swarm import Bitfield
from peerprog.swarm.versions import newest_first, served, superseded

log = logging.getLogger("peerprog.node")

FetchJob = Callable[[ModelState], Coroutine[Any, Any, None]]
"""Runs a model's fetch until it is complete (the node's fetcher factory)."""
LevelListener = Callable[[ModelState], None]


class Catalog:
    """Models by id, wanted names, and a task scope per model being fetched."""

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
        self._models: dict[str, ModelState] = {}
        self._scopes: dict[str, TaskScope] = {}
        self._wanted: set[str] = set(want)
        self._fetch: FetchJob | None = None
        self._root = TaskScope("catalog")
        self.level_listeners: list[LevelListener] = []
        """Called with a model each time it gains a level (after the catalog's own work)."""
        self.take_up_listeners: list[LevelListener] = []
        """Called with a model each time one is taken up from a source."""
        self.forget_listeners: list[Callable[[str], None]] = []
        """Called with a model id once it is dropped."""

    # --- queries ---------------------------------------------------------------------------

    @property
    def models(self) -> Mapping[str, ModelState]:
        return self._models

    @property
    def wanted(self) -> frozenset[str]:
        return frozenset(self._wanted)

    def versions(self, name: str) -> list[ModelState]:
        """The node's versions of ``name``, newest first."""
        return newest_first(s for s in self._models.values() if s.manifest.name == name)

    def newest_served(self, name: str) -> ModelState | None:
        """The version of ``name`` apps and peers get (newest with level 0 complete)."""
        return served(self.versions(name))

    def newest_version(self, name: str) -> int:
        """The newest version number held of ``name`` (0 for none)."""
        return max((s.version for s in self.versions(name)), default=0)

    def fetching(self, model_id: str) -> bool:
        """Whether a fetch of ``model_id`` is running."""
        scope = self._scopes.get(model_id)
        return scope is not None and bool(scope.tasks())

    # --- life cycle ------------------------------------------------------------------------

    def want(self, name: str) -> bool:
        """Keep ``name`` up to date from now on; True if it was not wanted yet."""
        if name in self._wanted:
            return False
        self._wanted.add(name)
        log.info("want %s", name)
        return True

    def load_store(self) -> list[ModelState]:
        """Take up every trusted, verified model of the store (blocking: run in a thread;
        before :meth:`start`). A model that does not verify is skipped and logged."""
        found = []
        for model_id in self.store.model_ids():
            try:
                signed = self.store.load_manifest(model_id, self._trusted)
            except PeerprogError as e:
                log.warning("store: ignoring model %s…: %s", model_id[:12], e)
                continue
            m = signed.manifest
            held = self.store.scan(model_id, m, verify=True)
            state = self._state(signed, held, origin=len(held) == len(m.chunks))
            self._models[model_id] = state
            found.append(state)
            log.info(
                "store: %s v%d: %d/%d chunks, level %d",
                m.name,
                m.version,
                len(held),
                len(m.chunks),
                state.best_level,
            )
        for name in {s.manifest.name for s in self._models.values()}:
            newest = self.newest_served(name)
            if newest is not None and self.store.resolve(name) != newest.model_id:
                with contextlib.suppress(OSError):  # a name write lost to a full disk
                    self.store.set_name(name, newest.model_id)
        return found

    def start(self, fetch: FetchJob) -> None:
        """Start fetching every incomplete model; later ones are fetched as taken up."""
        self._fetch = fetch
        for state in list(self._models.values()):
            if not state.complete:
                self._start_fetch(state)

    async def take_up(self, signed: SignedManifest, source: str) -> ModelState | None:
        """Store a verified manifest, find chunks already on disk, start fetching. Returns
        the model, or None if it was not taken up (known, not newer, or not storable)."""
        m = signed.manifest
        if signed.model_id in self._models or m.version <= self.newest_version(m.name):
            return None
        try:
            await asyncio.to_thread(self.store.put_manifest, signed)
            # chunks a damaged manifest had left unused: verified now, not fetched again
            held = await asyncio.to_thread(self.store.scan, signed.model_id, m)
        except OSError as e:
            self._disk.failed(
                f"cannot store the manifest of {m.name}: {e.strerror or e}",
                self._clock(),
                pause=False,
            )
            return None
        if signed.model_id in self._models or m.version <= self.newest_version(m.name):
            return None
        state = self._state(signed, held, origin=False)
        self._models[signed.model_id] = state
        log.info("found %s v%d (%s…) from %s", m.name, m.version, signed.model_id[:12], source)
        if state.best_level >= 0:
            self._level_reached(state)
        if not state.complete:
            self._start_fetch(state)
        for listener in list(self.take_up_listeners):
            listener(state)
        return state

    def chunk_stored(self, state: ModelState, index: int) -> None:
        """A verified chunk of ``state`` reached the disk."""
        if self._models.get(state.model_id) is state and state.add_chunk(index):
            self._level_reached(state)

    async def drop(self, model_id: str) -> None:
        """Forget a model at once; stop its fetch (and wait for it), then remove its files."""
        await self._forget(model_id)

    def _forget(self, model_id: str) -> asyncio.Task[None]:
        state = self._models.pop(model_id, None)
        scope = self._scopes.pop(model_id, None)
        if state is not None:
            for listener in list(self.forget_listeners):
                listener(model_id)

        async def remove() -> None:
            if scope is not None:
                await scope.aclose()
            if state is not None:
                await asyncio.to_thread(self.store.remove_model, model_id)

        return self._root.spawn(remove(), name=f"drop {model_id[:12]}")

    async def aclose(self) -> None:
        """Stop every fetch (and the drops under way)."""
        await self._root.aclose()
        for scope in list(self._scopes.values()):
            await scope.aclose()

    # --- internals -------------------------------------------------------------------------

    def _state(self, signed: SignedManifest, held: list[int], *, origin: bool) -> ModelState:
        have = Bitfield(len(signed.manifest.chunks))
        for i in held:
            have.set(i)
        state = ModelState(signed, have, origin=origin)
        state.metrics.chunks_from_disk = len(held)
        return state

    def _start_fetch(self, state: ModelState) -> None:
        if self._fetch is None or self.fetching(state.model_id):
            return
        scope = self._scopes.get(state.model_id)
        if scope is None:
            scope = self._scopes[state.model_id] = TaskScope(f"model {state.model_id[:12]}")
        scope.spawn(self._fetch(state), name=f"fetch {state.manifest.name}")

    def _level_reached(self, state: ModelState) -> None:
        m = state.manifest
        state.metrics.level_complete_at[state.best_level] = time.time()
        log.info(
            "%s v%d: level %d of %d reached (%d/%d bytes)",
            m.name,
            m.version,
            state.best_level,
            m.levels_total - 1,
            state.bytes_held,
            m.total_bytes,
        )
        if self.newest_served(m.name) is state:
            try:
                self.store.set_name(m.name, state.model_id)
            except OSError as e:  # set again at the next level, or at the next start
                self._disk.failed(
                    f"cannot name {m.name}: {e.strerror or e}", self._clock(), pause=False
                )
        if state.complete:
            for old in superseded(self.versions(m.name), self._keep):
                log.info("dropping %s v%d: v%d is exact", m.name, old.version, m.version)
                self._forget(old.model_id)
        for listener in list(self.level_listeners):
            listener(state)
