"""The node: the composition root of the asyncio shell.

It builds the parts and wires them together, and nothing else: the peer table and the
version policy (pure, in :mod:`peerprog.swarm`) decide; the catalog owns each model's life;
discovery announces; the resolver looks up wanted names; one fetcher per model pumps the
scheduler; the peer server serves the store; the dial-back, the hub and the keeper find out
whether peers can dial this node and hold the reverse channels
(:mod:`peerprog.node.channels`). Each part receives only the narrow
protocols it needs. ``await start()``, then ``await stop()``; a start that fails undoes
what it did.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor

from aiohttp import web

from peerprog.config import Config, split_host_port
from peerprog.errors import VerificationError
from peerprog.listen import GuardedSite, listen_limits
from peerprog.manifest import verify_chunk
from peerprog.node.bittorrent import BitTorrent, BitTorrentReport
from peerprog.node.catalog import Catalog
from peerprog.node.channels import ChannelsReport, ChannelStats, DialBack, Hub, Keeper, report
from peerprog.node.decoded import Built
from peerprog.node.discovery import Discovery
from peerprog.node.diskguard import CHUNKS, DiskGuard, free_bytes
from peerprog.node.fetcher import Fetcher, FetchSettings
from peerprog.node.haves import Haves
from peerprog.node.mux import server_protocols
from peerprog.node.peerclient import PeerClient
from peerprog.node.protocol import PREFIX, Announce
from peerprog.node.ratelimit import TokenBucket
from peerprog.node.resolver import Resolver
from peerprog.node.server import PeerService, Upload, build_app
from peerprog.node.state import ModelState
from peerprog.node.tasks import TaskScope
from peerprog.store import ModelFiles, Store
from peerprog.swarm import ModelRef, Peer, PeerTable, SchedulerConfig, VersionPolicy
from peerprog.swarm.driver import DriverConfig
from peerprog.swarm.uploads import UploadConfig, UploadSlots, slots_for

log = logging.getLogger("peerprog.node")


class Node:
    """A peerprog node."""

    def __init__(self, config: Config) -> None:
        self.config = config
        limits = config.limits
        self.store = Store(config.base_dir)
        self.started_at = time.time()
        self.url = config.node.public_url.rstrip("/")
        """The URL peers reach this node at (known once started)."""
        self.port: int | None = None
        self.disk = DiskGuard(limits.disk_full_pause, lambda: free_bytes(self.store.root))
        self.upload = Upload(
            TokenBucket(limits.upload_bytes_per_s),
            UploadSlots(
                UploadConfig(
                    slots_for(limits.upload_bytes_per_s, limits.upload_slots),
                    limits.upload_queue,
                )
            ),
        )
        self.table = PeerTable(
            config.peers,
            bootstrap=config.peers.bootstrap,
            web_seeds=config.peers.web_seeds,
            prefix=PREFIX,
        )
        self.client = PeerClient(
            TokenBucket(limits.download_bytes_per_s),
            max_connections=limits.max_connections,
            max_connections_per_peer=limits.max_connections_per_peer,
            timeout=limits.request_timeout,
            route=lambda host, port: self.hub.route(host, port),
        )
        self.dial_back = DialBack(
            self.table, self.client.dial, on_change=self._peers_changed, clock=_loop_time
        )
        self.hub = Hub(
            self.table,
            self.dial_back,
            on_change=self._peers_changed,
            clock=_loop_time,
            max_streams=limits.max_connections_per_peer,
        )
        """The reverse channels other nodes hold to this one."""
        self.trusted = frozenset(config.trust.publishers)
        self.catalog = Catalog(
            self.store,
            self.trusted,
            self.disk,
            want=config.models.want,
            keep_versions=config.models.keep_versions,
            clock=_loop_time,
        )
        self._scope = TaskScope(f"node {config.node.name}")
        self.haves = Haves(
            super_seeding=config.swarm.super_seeding,
            client=self.client,
            root_of=self._known_root,
            scope=self._scope,
            clock=_loop_time,
            seed=hash(config.node.name) & 0xFFFFFFFF,
        )
        self.discovery = Discovery(
            self.table,
            self.client,
            me=self.my_announce,
            wanted=lambda: self.catalog.wanted,
            on_wanted_news=self._resolve_soon,
            interval=config.peers.announce_interval,
            answer_limit=limits.max_request_bytes,
            scope=self._scope,
            dial_back=self.dial_back.check,
            on_reach_news=self._reach_news,
        )
        self.bittorrent: BitTorrent | None = None
        """The BitTorrent session (``[bittorrent]``), once started."""
        self.keeper: Keeper | None = None
        """The reverse channels this node holds to peers that cannot dial it (once
        started)."""
        self.resolver = Resolver(
            VersionPolicy(config.peers),
            self.client,
            self.table,
            self.catalog,
            trusted=self.trusted,
            interval=config.peers.announce_interval,
            name_timeout=min(limits.name_timeout, limits.request_timeout),
            scope=self._scope,
        )
        announce = lambda _state: self.discovery.announce_soon()  # noqa: E731
        self.catalog.level_listeners.append(announce)
        self.catalog.take_up_listeners.append(announce)
        self.catalog.forget_listeners.append(self.table.forget_model)
        self.catalog.forget_listeners.append(self.haves.forget)
        self._stack: contextlib.AsyncExitStack | None = None
        self._fetchers: dict[str, Fetcher] = {}
        """The fetch of each model being fetched."""
        self._workers = ThreadPoolExecutor(os.cpu_count() or 2, thread_name_prefix="chunks")
        """Verify and write received chunks, several at once."""

    # --- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        """Load the store, serve peers, start announcing, resolving and fetching."""
        async with contextlib.AsyncExitStack() as stack:
            await stack.enter_async_context(self.client)
            stack.callback(self._workers.shutdown)
            stack.push_async_callback(self.catalog.aclose)
            stack.push_async_callback(self._scope.aclose)
            await asyncio.to_thread(self.catalog.load_store)
            if self.config.bittorrent.enabled:  # before serving: a missing extra ends it here
                clock = asyncio.get_running_loop().time
                bt = BitTorrent(
                    self.config.bittorrent, self.store.root, self.catalog, clock,
                    sink=self.bittorrent_piece,
                )  # fmt: skip
                self.bittorrent = bt
                stack.push_async_callback(bt.close)
                for listeners in (
                    self.catalog.take_up_listeners,
                    self.catalog.level_listeners,
                    self.catalog.torrent_listeners,
                ):
                    listeners.append(lambda _state: bt.wake())
            host, port = split_host_port(self.config.node.listen, "node.listen")
            service = PeerService(
                self.catalog,
                self.discovery.on_announce,
                self.my_announce,
                self.upload,
                self.config.limits,
                self.haves,
                self.hub.handle,
            )
            runner = web.AppRunner(build_app(service), access_log=None, handler_cancellation=True)
            await runner.setup()
            stack.push_async_callback(runner.cleanup)
            # before the cleanup, which waits for handlers:
            stack.callback(self.haves.close)
            stack.callback(self.hub.close)
            stack.callback(self.dial_back.close)
            self.keeper = Keeper(
                self.table,
                self.client.channel,
                server_protocols(runner),
                scope=self._scope,
                max_streams=self.config.limits.max_connections_per_peer,
            )
            limits = listen_limits(self.config.limits)
            site = GuardedSite(runner, host, port, limits, key="node.listen")
            await site.start()
            self.port = site.port
            if not self.url:
                self.url = f"http://{host}:{self.port}"
                if host in ("0.0.0.0", "::", ""):
                    log.warning(
                        "node.listen = %s:%d listens on every address, but peers cannot dial "
                        "%s: set node.public_url to the address they should use (until then "
                        "it uploads only over reverse channels it opens to them)",
                        host,
                        self.port,
                        self.url,
                    )
            self.table.set_self(self.url)
            self.client.node_url = self.url
            log.info(
                "node %s serving peers on %s (%d models in store)",
                self.config.node.name,
                self.url,
                len(self.catalog.models),
            )
            if not self.catalog.models and not self.catalog.wanted:
                log.warning(
                    "node.data_dir %s holds no models and models.want is empty: this node "
                    "has nothing to serve until something is published there or an app "
                    "asks for a model (is node.data_dir right?)",
                    self.store.root,
                )
            self.catalog.start(self._fetch)
            self._scope.spawn(self.discovery.run(), name="announce")
            self._scope.spawn(self.resolver.run(), name="resolve")
            if self.config.models.rescan_interval > 0:
                self._scope.spawn(self._rescan_loop(), name="rescan")
            if self.bittorrent is not None:
                seeding = self._scope.spawn(self.bittorrent.run(), name="bittorrent")
                stack.push_async_callback(_cancelled, seeding)  # before the session closes
            self._stack = stack.pop_all()

    async def stop(self) -> None:
        """Stop serving, fetching, announcing; close connections."""
        if self._stack is not None:
            await self._stack.aclose()
            self._stack = None
        log.info("node %s stopped", self.config.node.name)

    async def rescan(self) -> list[str]:
        """Take up the models published into the store while the node runs; their ids."""
        return [s.model_id for s in await self.catalog.rescan()]

    async def _rescan_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.models.rescan_interval)
            await self.rescan()

    def background_tasks(self) -> list[asyncio.Task[object]]:
        """The node's own loops and jobs still running (not the fetches)."""
        return self._scope.tasks()

    async def _fetch(self, state: ModelState, files: ModelFiles) -> None:
        """Fetch one model (the catalog runs this in the model's scope)."""
        limits = self.config.limits
        fetcher = Fetcher(
            state,
            transport=self.client,
            sink=files,
            sources=self.table,
            disk=self.disk,
            on_stored=self.catalog.chunk_stored,
            settings=FetchSettings(
                driver=DriverConfig(
                    scheduler=SchedulerConfig(max_in_flight_total=limits.max_in_flight),
                    have_poll_interval=self.config.peers.have_poll_interval,
                    # a held long-poll must end before the read timeout cuts it
                    long_poll=min(DriverConfig.long_poll, limits.request_timeout / 2),
                ),
                request_timeout=limits.request_timeout,
                seed=hash((self.url, state.model_id)) & 0xFFFFFFFF,
            ),
            workers=self._workers,
            on_banned=self.hub.banned,
        )
        unsubscribe = self.discovery.subscribe(fetcher.peers_changed)
        self._fetchers[state.model_id] = fetcher
        try:
            await fetcher.run()
        finally:
            unsubscribe()
            if self._fetchers.get(state.model_id) is fetcher:
                del self._fetchers[state.model_id]

    async def bittorrent_piece(self, state: ModelState, index: int, data: bytes) -> bool:
        """A piece (chunk ``index``) a BitTorrent peer sent, past libtorrent's own hash
        check: checked against the signed manifest, then stored, counted (as from
        ``bittorrent``) and recorded by the model's fetch as any chunk. False if it does
        not match the manifest; a disk that refuses it is the store's error, not the
        piece's."""
        files = self.catalog.files(state.model_id)
        if index in state.have or files is None:
            return True
        loop = asyncio.get_running_loop()
        try:
            ok = await loop.run_in_executor(self._workers, _verify_write, state, files, index, data)
        except OSError as e:
            if not isinstance(e, FileNotFoundError):  # else: the model was dropped meanwhile
                why = f"cannot store chunks of {state.manifest.name}: {e.strerror or e}"
                self.disk.failed(CHUNKS, why, loop.time())
            return True
        if not ok:
            return False
        fetcher = self._fetchers.get(state.model_id)
        if fetcher is not None:
            fetcher.landed_elsewhere(index, "bittorrent")
        else:  # its fetch ended meanwhile (the model is whole): recorded all the same
            self.catalog.chunk_stored(state, index)
        return True

    def _known_root(self, url: str) -> str | None:
        """The peer-protocol root of ``url`` if the peer table knows that node."""
        return self.table.root_of(url) if self.table.get(url) is not None else None

    def _resolve_soon(self) -> None:
        self.resolver.resolve_soon()

    def _peers_changed(self) -> None:
        self.discovery.peers_changed()

    def _reach_news(self) -> None:
        if self.keeper is not None:
            self.keeper.update()

    def my_announce(self) -> Announce:
        """What this node announces: every model it holds."""
        models = tuple(
            ModelRef(s.manifest.name, s.model_id, s.version, s.complete, s.origin)
            for s in self.catalog.models.values()
        )
        return Announce(
            self.config.node.name, self.url, models, reachable=self.table.reachability()
        )

    # --- what the local API reads (peerprog.api.view.NodeView) -----------------------------

    @property
    def models(self) -> Mapping[str, ModelState]:
        return self.catalog.models

    @property
    def wanted(self) -> frozenset[str]:
        return self.catalog.wanted

    @property
    def peers(self) -> Mapping[str, Peer]:
        return {p.url: p for p in self.table.peers()}

    @property
    def bytes_uploaded(self) -> int:
        return self.upload.bytes

    @property
    def store_error(self) -> str | None:
        return self.disk.error

    @property
    def reachable(self) -> bool | None:
        return self.table.reachability()

    @property
    def bittorrent_report(self) -> BitTorrentReport | None:
        return self.bittorrent.report() if self.bittorrent is not None else None

    @property
    def channels(self) -> ChannelsReport:
        held = self.keeper.stats if self.keeper is not None else ChannelStats()
        return report(held, self.hub.stats)

    @property
    def level_listeners(self) -> list[Callable[[ModelState], None]]:
        return self.catalog.level_listeners

    def versions(self, name: str) -> list[ModelState]:
        return self.catalog.versions(name)

    def newest_served(self, name: str) -> ModelState | None:
        return self.catalog.newest_served(name)

    async def decoded(self, state: ModelState, *, growing: bool = False) -> Built:
        return await self.catalog.decoded(state, growing=growing)

    def decoded_at(self, model_id: str, level: int) -> Built | None:
        return self.catalog.decoded_at(model_id, level)

    def decoded_builds(self) -> int:
        return self.catalog.decoded_builds()

    def want(self, name: str) -> None:
        """Start fetching ``name`` (and keep it up to date)."""
        self.catalog.want(name)
        self.resolver.resolve_soon()

    def unwant(self, name: str) -> bool:
        """Stop keeping ``name`` up to date (what is held stays)."""
        self.resolver.forget(name)
        return self.catalog.unwant(name)

    async def remove(self, name: str) -> list[str]:
        """Unwant ``name`` and delete its versions from the store; their ids."""
        self.resolver.forget(name)
        return await self.catalog.remove(name)

    def problem(self, name: str) -> str | None:
        """Why ``name`` is not making progress, in a sentence (None if nothing is known to
        be wrong): a refused manifest, no source, a full disk, no source of its chunks."""
        versions = self.catalog.versions(name)
        if not versions:
            return self.resolver.problem(name) if name in self.catalog.wanted else None
        newest = versions[0]
        if newest.complete or name not in self.catalog.wanted:
            return None
        if self.disk.error is not None:
            return self.disk.error
        if not newest.sources and self.catalog.fetching(newest.model_id):
            known = len(self.table)
            return f"no peer or web seed that holds it answers (peers known: {known})"
        return self.resolver.problem(name)


def _loop_time() -> float:
    return asyncio.get_running_loop().time()


async def _cancelled(task: asyncio.Task[None]) -> None:
    """Cancel ``task`` and wait for it to end."""
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)


def _verify_write(state: ModelState, files: ModelFiles, index: int, data: bytes) -> bool:
    """Check chunk ``index`` against the manifest and write it (in a worker); False if it
    does not match."""
    try:
        verify_chunk(state.manifest, index, data)
    except VerificationError:
        return False
    files.write_chunks([(index, data)])
    return True
