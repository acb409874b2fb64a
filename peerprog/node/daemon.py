"""The node: loads its store, serves peers, announces, resolves wanted names, fetches.

This is the asyncio shell; the decisions live in the pure parts (the swarm scheduler picks
chunks, the manifest module verifies them). Logs say what happens: a level reached, a peer
banned, a manifest refused.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from peerprog.errors import PeerFault, PeerprogError
from peerprog.node.config import Config, split_host_port
from peerprog.node.fetcher import Fetcher, Source
from peerprog.node.peerclient import PeerClient, TransportError
from peerprog.node.protocol import Announce, ModelRef, PeerRef
from peerprog.node.ratelimit import TokenBucket
from peerprog.node.resolver import Resolver
from peerprog.node.server import build_app
from peerprog.node.state import ModelState
from peerprog.store import Store
from peerprog.swarm import Bitfield

log = logging.getLogger("peerprog.node")
ANSWER_LIMIT = 1 << 20


@dataclass
class PeerInfo:
    """A peer this node has heard of."""

    url: str
    node: str = ""
    models: dict[str, ModelRef] = field(default_factory=dict)
    last_seen: float = 0.0
    failures: int = 0
    bootstrap: bool = False


class Node:
    """A peerprog node. ``await start()``, then ``await stop()``."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.store = Store(config.base_dir)
        self.trusted = frozenset(config.trust.publishers)
        self.models: dict[str, ModelState] = {}
        self.wanted: set[str] = set(config.models.want)
        self.peers: dict[str, PeerInfo] = {}
        self.upload_bucket = TokenBucket(config.limits.upload_bytes_per_s)
        self.download_bucket = TokenBucket(config.limits.download_bytes_per_s)
        self.client = PeerClient(
            self.download_bucket,
            max_connections=config.limits.max_connections,
            timeout=config.limits.request_timeout,
        )
        self.bytes_uploaded = 0
        self.store_error: str | None = None
        """The last failure to write the store (e.g. the disk is full); None once a write
        succeeds again."""
        self.started_at = time.time()
        self.url = config.node.public_url
        self.fetchers: dict[str, Fetcher] = {}
        self._tasks: set[asyncio.Task[Any]] = set()
        self._runner: web.AppRunner | None = None
        self._announce_now = asyncio.Event()
        self._resolve_now = asyncio.Event()
        self.level_listeners: list[Any] = []
        self.resolver = Resolver(self)
        self._announcing: set[str] = set()
        for url in config.peers.bootstrap:
            self.peers[url.rstrip("/")] = PeerInfo(url.rstrip("/"), bootstrap=True)

    # --- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        await self.client.__aenter__()
        await asyncio.to_thread(self._load_store)
        host, port = split_host_port(self.config.node.listen, "node.listen")
        self._runner = web.AppRunner(build_app(self), access_log=None, handler_cancellation=True)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, reuse_address=True)
        await site.start()
        bound = port
        server = site._server
        if isinstance(server, asyncio.base_events.Server) and server.sockets:
            bound = server.sockets[0].getsockname()[1]
        if not self.url:
            self.url = f"http://{host}:{bound}"
        self.port = bound
        log.info(
            "node %s serving peers on %s (%d models in store)",
            self.config.node.name,
            self.url,
            len(self.models),
        )
        for state in self.models.values():
            if not state.complete:
                self.start_fetcher(state)
        self.spawn(self._announce_loop())
        self.spawn(self._resolve_loop())

    async def stop(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._runner is not None:
            await self._runner.cleanup()
        await self.client.__aexit__()
        log.info("node %s stopped", self.config.node.name)

    def spawn(self, coro: Any) -> asyncio.Task[Any]:
        """Run ``coro`` as a task of the node: cancelled at stop, its failure logged."""
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("task failed", exc_info=task.exception())

    def _load_store(self) -> None:
        """Take up every trusted, verified model in the store; skip (and log) the rest."""
        for model_id in self.store.model_ids():
            try:
                signed = self.store.load_manifest(model_id, self.trusted)
            except PeerprogError as e:
                log.warning("store: ignoring model %s…: %s", model_id[:12], e)
                continue
            m = signed.manifest
            have = Bitfield(len(m.chunks))
            for i in self.store.scan(model_id, m, verify=True):
                have.set(i)
            state = ModelState(signed, have, origin=have.count() == len(m.chunks))
            state.metrics.chunks_from_disk = have.count()
            self.models[model_id] = state
            log.info(
                "store: %s v%d: %d/%d chunks, level %d",
                m.name,
                m.version,
                have.count(),
                len(m.chunks),
                state.best_level,
            )
        for name in {s.manifest.name for s in self.models.values()}:
            served = self.newest_served(name)
            if served is not None and self.store.resolve(name) != served.model_id:
                with contextlib.suppress(OSError):  # a name write lost to a full disk
                    self.store.set_name(name, served.model_id)

    # --- models ----------------------------------------------------------------------------

    def versions(self, name: str) -> list[ModelState]:
        """This node's models called ``name``, newest first."""
        found = [s for s in self.models.values() if s.manifest.name == name]
        return sorted(found, key=lambda s: (s.manifest.version, s.created), reverse=True)

    def newest_served(self, name: str) -> ModelState | None:
        """The newest version of ``name`` whose level 0 is complete (what apps get)."""
        for s in self.versions(name):
            if s.best_level >= 0:
                return s
        return None

    def want(self, name: str) -> None:
        """Start fetching ``name`` (and keep it up to date)."""
        if name not in self.wanted:
            self.wanted.add(name)
            log.info("want %s", name)
        self._resolve_now.set()

    def start_fetcher(self, state: ModelState) -> None:
        if state.model_id in self.fetchers:
            return
        fetcher = Fetcher(self, state)
        self.fetchers[state.model_id] = fetcher

        async def run() -> None:
            try:
                await fetcher.run()
            finally:
                self.fetchers.pop(state.model_id, None)

        self.spawn(run())

    def on_chunk_stored(self, state: ModelState, index: int) -> None:
        """Called by a fetcher after a verified chunk reached the disk."""
        if state.add_chunk(index):
            self.level_reached(state)

    def level_reached(self, state: ModelState) -> None:
        """``state`` gained a level: name it, tell the apps and the peers."""
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
        newest = self.newest_served(m.name)
        if newest is state:
            try:
                self.store.set_name(m.name, state.model_id)
            except OSError as e:  # set again at the next level, or at the next start
                self.store_error = f"cannot name {m.name}: {e.strerror or e}"
                log.error("%s", self.store_error)
        if state.complete:
            self._drop_older(state)
        state.notify()
        for listener in list(self.level_listeners):
            listener(state)
        self._announce_now.set()

    def _drop_older(self, state: ModelState) -> None:
        keep = self.config.models.keep_versions
        older = [
            s
            for s in self.versions(state.manifest.name)
            if s.manifest.version < state.manifest.version
        ]
        for old in older[keep:]:
            log.info(
                "dropping %s v%d: v%d is exact",
                old.manifest.name,
                old.manifest.version,
                state.manifest.version,
            )
            fetcher = self.fetchers.pop(old.model_id, None)
            if fetcher is not None:
                fetcher.wake()
            self.models.pop(old.model_id, None)
            self.store.remove_model(old.model_id)

    def announce_soon(self) -> None:
        """Announce to every peer now (e.g. a new model or level)."""
        self._announce_now.set()

    def sources_for(self, state: ModelState) -> list[Source]:
        """Every peer and web seed that may hold ``state``'s model."""
        out = []
        for info in list(self.peers.values())[: self.config.peers.max_peers]:
            if info.url == self.url:
                continue
            ref = info.models.get(state.model_id)
            kind = "seed" if ref is not None and ref.origin else "peer"
            out.append(Source(info.url, info.url + "/p2p/v1", kind))
        for url in self.config.peers.web_seeds:
            root = url.rstrip("/")
            out.append(Source("webseed:" + root, root, "web_seed"))
        return out

    # --- discovery -------------------------------------------------------------------------

    def my_announce(self) -> Announce:
        models = tuple(
            ModelRef(s.manifest.name, s.model_id, s.manifest.version, s.complete, s.origin)
            for s in self.models.values()
        )
        return Announce(self.config.node.name, self.url, models)

    def on_announce(self, ann: Announce) -> Announce:
        """Record an announcing peer; answer with the peers and models this node knows."""
        if ann.url and ann.url.rstrip("/") != self.url:
            self._learn(ann.url.rstrip("/"), ann.node, ann.models)
        if any(m.name in self.wanted for m in ann.models):
            self._resolve_now.set()
        peers = tuple(
            PeerRef(p.node, p.url)
            for p in list(self.peers.values())[:64]
            if p.url != ann.url.rstrip("/")
        )
        return Announce(self.config.node.name, self.url, self.my_announce().models, peers)

    def _learn(self, url: str, node: str, models: tuple[ModelRef, ...]) -> None:
        info = self.peers.get(url)
        if info is None:
            if len(self.peers) >= self.config.peers.max_peers:
                return
            info = self.peers[url] = PeerInfo(url)
            log.info("new peer %s (%s)", url, node)
            for fetcher in self.fetchers.values():
                fetcher.peers_changed()
        info.node = node or info.node
        info.models = {m.model_id: m for m in models}
        info.last_seen = time.time()
        info.failures = 0

    async def _announce_loop(self) -> None:
        interval = self.config.peers.announce_interval
        while True:
            await self._announce_all()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._announce_now.wait(), interval)
            self._announce_now.clear()
            await asyncio.sleep(0.05)  # coalesce bursts of level changes

    async def _announce_all(self) -> None:
        """Announce to every peer without waiting for the answers: a peer slow to answer
        holds up no other (and gets no second announce while one is pending)."""
        ann = self.my_announce()
        for info in list(self.peers.values())[: self.config.peers.max_peers]:
            if info.url not in self._announcing:
                self._announcing.add(info.url)
                self.spawn(self._announce_to(info, ann))

    async def _announce_to(self, info: PeerInfo, ann: Announce) -> None:
        try:
            answer = await self.client.announce(info.url, ann, ANSWER_LIMIT)
        except (TransportError, PeerFault) as e:
            info.failures += 1
            log.debug("announce to %s failed: %s", info.url, e)
            if info.failures >= 5 and not info.bootstrap:
                self.peers.pop(info.url, None)
            return
        finally:
            self._announcing.discard(info.url)
        self._learn(info.url, answer.node, answer.models)
        for p in answer.peers:
            url = p.url.rstrip("/")
            if url != self.url and url not in self.peers:
                self._learn(url, p.node, ())
        if any(m.name in self.wanted for m in answer.models):
            self._resolve_now.set()

    # --- resolving wanted names ------------------------------------------------------------

    async def _resolve_loop(self) -> None:
        while True:
            await self.resolver.resolve_all()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._resolve_now.wait(), self.config.peers.announce_interval
                )
            self._resolve_now.clear()
