"""The peer table: every peer and web seed this node knows, and whether it is healthy.
Sans-IO: every call takes ``now``; every rule of a peer's health lives in this file.

A **peer** (one base URL) is in one of these states:

- ``KNOWN``: heard of (a bootstrap peer, peer exchange) or heard from; contacted as usual.
- ``BACKING_OFF``: its last ``failures`` contacts (announces) failed in a row; it is still
  contacted at the usual interval, and still a source.
- ``DROPPED``: ``max_failures`` contacts failed in a row: forgotten (removed from the
  table), so it is neither contacted nor passed on; news of it from other peers is ignored
  for ``forget_for`` seconds (dead entries must not circulate by peer exchange), but it
  comes back at once when it announces to us itself. A bootstrap peer is never dropped.
- ``BANNED``: it (or a web seed) sent a chunk that failed its hash: never asked for
  anything again, never passed on, and news of it from other peers is ignored.

Transitions: :meth:`PeerTable.heard_from` (it announced to us, or answered our announce)
makes it ``KNOWN`` with no failures; :meth:`~PeerTable.learned_of` (another peer passed it
on) adds it as ``KNOWN`` if it is new and the table has room; :meth:`~PeerTable.contact_failed`
makes it ``BACKING_OFF``, then ``DROPPED``; :meth:`~PeerTable.ban` makes it ``BANNED``.

Peer exchange (:meth:`~PeerTable.exchange`) passes on only peers heard from directly within
``pex_fresh`` seconds and not failing: what a node passes on it has seen alive itself.

**Reachability.** Whether we can open connections to a peer (``dialable``) is what our own
dial-back of its announced URL found (:meth:`~PeerTable.dialled`, redone every
``reach_recheck`` seconds while it announces to us), else what it says of itself or what
(not known: we try); a peer passed on in peer exchange as one the passing node could not
dial is not added (it announces to us itself if we can be dialled, and else there is no
path). A peer we cannot dial is still
*routable* while it holds a reverse channel to us (:meth:`~PeerTable.channel_changed`):
requests to it go over that. Only routable peers are contacted and are sources; an
unroutable one not heard from within ``pex_fresh`` seconds is forgotten. The other way
round, each peer tells us whether it could dial *us* (``reaches_me``): we keep a reverse
channel to every peer that could not (:meth:`~PeerTable.channels_wanted`), and we are
reachable (:meth:`~PeerTable.reachability`) if any peer could.

For each model, a peer or web seed that is not dropped or banned is a **source** in one of:

- ``ACTIVE``: its ``have`` is read and the scheduler may ask it for chunks.
- ``ABSENT``: it did not hold the model (or its ``have`` could not be read): left alone for
  ``absent_recheck`` seconds, or until it announces the model, then ``ACTIVE`` again.
- ``LOST``: ``fetch_failures`` chunk requests in a row failed (the scheduler's count, in
  which the requests of one bad spell count once); its ``have`` is still read, but it gets
  no request for ``revive_after`` seconds, then a fresh start (``ACTIVE``) — a bad spell of
  a link must not lose a source for good.

The scheduler (``scheduler.py``) paces requests within those states: its per-peer backoff
after a failure and its timeouts are about one request, not about the peer's health.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

SOURCE_KINDS = ("seed", "peer", "web_seed", "bittorrent")
"""Where bytes come from: the origin (a complete holder that published the model), another
peer, a plain HTTP web seed, or BitTorrent peers (``[bittorrent]``)."""

WEB_SEED_PREFIX = "webseed:"
"""Web seeds are named ``webseed:<root URL>`` among sources."""


@dataclass(frozen=True)
class ModelRef:
    """A model a node announces: name, id, version, and whether it holds all of it
    (``complete``) because it published it (``origin``)."""

    name: str
    model_id: str
    version: int
    complete: bool = False
    origin: bool = False


@dataclass(frozen=True)
class Source:
    """Where chunks of a model can come from: a peer or a web seed."""

    key: str
    """Its name among sources (a peer's base URL, or ``webseed:<root>``)."""
    root: str
    """URL under which it serves the store layout."""
    kind: str
    """One of :data:`SOURCE_KINDS`."""


class PeerHealth(enum.Enum):
    KNOWN = "known"
    BACKING_OFF = "backing_off"
    DROPPED = "dropped"
    BANNED = "banned"


class SourceState(enum.Enum):
    ACTIVE = "active"
    ABSENT = "absent"
    LOST = "lost"


@dataclass(frozen=True)
class PeerTableConfig:
    """Settings of a :class:`PeerTable`; times in seconds."""

    max_peers: int = 64
    """Most peers remembered; peer exchange beyond it is ignored."""
    max_failures: int = 5
    """Failed announces in a row after which a peer (not a bootstrap peer) is forgotten."""
    fetch_failures: int = 8
    """Failed chunk requests in a row after which a source gets no requests for a model
    for ``revive_after`` seconds."""
    revive_after: float = 30.0
    """Seconds a source that failed ``fetch_failures`` requests is left alone."""
    absent_recheck: float = 5.0
    """Seconds before a source that did not hold a model is asked again."""
    pex_fresh: float = 60.0
    """Peer exchange passes on only peers heard from directly within this many seconds."""
    forget_for: float = 600.0
    """Seconds during which other peers' news of a dropped peer is ignored."""
    reach_recheck: float = 60.0
    """Seconds after which a peer's announced URL is dialled back again."""

    def __post_init__(self) -> None:
        if self.max_failures < 1 or self.fetch_failures < 1:
            raise ValueError("max_failures and fetch_failures must be >= 1")
        if not self.reach_recheck > 0:
            raise ValueError("reach_recheck must be > 0")


@dataclass
class Peer:
    """One peer as the table sees it (read it; only the table changes it)."""

    url: str
    bootstrap: bool = False
    node: str = ""
    """The name it gives itself."""
    models: dict[str, ModelRef] = field(default_factory=dict)
    """What it announced last, by model id."""
    state: PeerHealth = PeerHealth.KNOWN
    failures: int = 0
    """Contacts that failed in a row."""
    last_seen: float | None = None
    """When it was last heard from directly."""
    dialable: bool | None = None
    """Can we open connections to it: our dial-back's finding, else what it said of itself
    (None: not known, so we try)."""
    dialled_at: float | None = None
    """When our own dial-back last found ``dialable`` (None: never)."""
    channel: bool = False
    """It holds a reverse channel to us: requests to it go over that."""
    reaches_me: bool | None = None
    """Could it dial us (its dial-back of our URL; None: it has not said)."""

    @property
    def routable(self) -> bool:
        """Can we send it requests: it holds a channel to us, or it is not known to be
        beyond our dialling."""
        return self.channel or self.dialable is not False


@dataclass
class _Source:
    state: SourceState = SourceState.ACTIVE
    until: float = 0.0


class PeerTable:
    """Peers and sources of one node. ``self_url`` is never added; web seeds come from the
    config and are never contacted, only asked for chunks."""

    def __init__(
        self,
        config: PeerTableConfig,
        *,
        self_url: str = "",
        bootstrap: Iterable[str] = (),
        web_seeds: Iterable[str] = (),
        prefix: str = "",
    ) -> None:
        """``prefix`` is the path under a peer's URL where it serves its store."""
        self.config = config
        self.self_url = self_url.rstrip("/")
        self._prefix = prefix
        self._peers: dict[str, Peer] = {}
        self._banned: set[str] = set()
        self._dropped: dict[str, float] = {}
        """Dropped peers' URLs → until when news of them is ignored."""
        self._sources: dict[tuple[str, str], _Source] = {}
        self._web_seeds = tuple(u.rstrip("/") for u in web_seeds)
        for url in bootstrap:
            url = url.rstrip("/")
            if url != self.self_url:
                self._peers.setdefault(url, Peer(url, bootstrap=True))

    def set_self(self, url: str) -> None:
        """This node's own URL (known once it listens): never a peer of its own."""
        self.self_url = url.rstrip("/")
        self._peers.pop(self.self_url, None)

    # -- queries ---------------------------------------------------------------------------

    def peers(self) -> list[Peer]:
        """The peers (not dropped or banned), oldest first."""
        return list(self._peers.values())

    def routable(self) -> list[Peer]:
        """The peers we can send requests to (to announce to, to fetch from)."""
        return [p for p in self._peers.values() if p.routable]

    def reachability(self) -> bool | None:
        """Can peers dial us: True if any peer's dial-back reached us, False if some tried
        and none did, None if none has said."""
        said = [p.reaches_me for p in self._peers.values() if p.reaches_me is not None]
        return any(said) if said else None

    def channels_wanted(self) -> list[str]:
        """The peers we should hold a reverse channel to: each could not dial us, and we
        can dial it."""
        return [
            p.url for p in self._peers.values() if p.reaches_me is False and p.dialable is not False
        ]

    def dial_due(self, url: str, now: float) -> bool:
        """Should ``url`` (a peer that announced to us) be dialled back now?"""
        p = self.get(url)
        return p is not None and (
            p.dialled_at is None or now - p.dialled_at >= self.config.reach_recheck
        )

    def get(self, url: str) -> Peer | None:
        """A peer (not dropped or banned), or None."""
        return self._peers.get(url.rstrip("/"))

    def __len__(self) -> int:
        return len(self._peers)

    def is_banned(self, key: str) -> bool:
        return key in self._banned

    def exchange(self, now: float, exclude: str = "", limit: int | None = None) -> list[Peer]:
        """The peers to pass on in peer exchange (``exclude``: the one we answer): those
        heard from within ``pex_fresh`` seconds whose last contact did not fail."""
        fresh = now - self.config.pex_fresh
        out = [
            p
            for p in self.peers()
            if p.url != exclude.rstrip("/")
            and p.failures == 0
            and p.last_seen is not None
            and p.last_seen >= fresh
        ]
        return out if limit is None else out[:limit]

    def announced(self, name: str) -> Iterator[tuple[Peer, ModelRef]]:
        """Every (peer, model) a usable peer announced under ``name``."""
        for p in self.peers():
            for ref in list(p.models.values()):
                if ref.name == name:
                    yield p, ref

    def root_of(self, url: str) -> str:
        """Where a peer serves its store."""
        return url + self._prefix

    def name_roots(self) -> list[str]:
        """Where to ask what a name's latest version is: bootstrap peers and web seeds."""
        boot = [self.root_of(p.url) for p in self.peers() if p.bootstrap]
        return boot + list(self._web_seeds)

    def sources(self, model_id: str) -> list[Source]:
        """Every peer and web seed that may hold ``model_id`` and is not banned (whatever
        its source state: see :meth:`source_state`)."""
        out = [
            Source(p.url, self.root_of(p.url), self.source_kind(p.url, model_id))
            for p in self.peers()[: self.config.max_peers]
            if p.routable
        ]
        for root in self._web_seeds:
            key = WEB_SEED_PREFIX + root
            if key not in self._banned:
                out.append(Source(key, root, "web_seed"))
        return out

    def source_kind(self, key: str, model_id: str) -> str:
        """What ``key`` is for ``model_id`` as far as we know now (a peer is ``peer`` until
        its announce says it is the model's origin): one of :data:`SOURCE_KINDS`."""
        if key.startswith(WEB_SEED_PREFIX):
            return "web_seed"
        p = self._peers.get(key)
        ref = p.models.get(model_id) if p is not None else None
        return "seed" if ref is not None and ref.origin else "peer"

    def source_state(self, key: str, model_id: str, now: float) -> SourceState:
        """A source's state for a model now (``ABSENT``/``LOST`` end when their time is up:
        ``ABSENT`` becomes ``ACTIVE``; ``LOST`` stays until :meth:`source_answered`)."""
        s = self._sources.get((key, model_id))
        if s is None:
            return SourceState.ACTIVE
        if s.state is SourceState.ABSENT and s.until <= now:
            del self._sources[(key, model_id)]
            return SourceState.ACTIVE
        return s.state

    def next_expiry(self, model_id: str) -> float | None:
        """When the next ``ABSENT`` or ``LOST`` state of a source of ``model_id`` ends."""
        times = [s.until for (_, mid), s in self._sources.items() if mid == model_id]
        return min(times, default=None)

    # -- peers -----------------------------------------------------------------------------

    def heard_from(
        self,
        url: str,
        node: str,
        models: Sequence[ModelRef],
        now: float,
        *,
        reachable: bool | None = None,
    ) -> Peer | None:
        """A peer announced to us or answered our announce (``reachable``: what it says
        of itself); returns it if it is new (the shell may look for sources again), else
        None."""
        url = url.rstrip("/")
        if url == self.self_url or url in self._banned:
            return None
        p = self._peers.get(url)
        new = p is None
        if p is None:
            if len(self) >= self.config.max_peers:
                return None
            p = self._peers[url] = Peer(url)
        self._dropped.pop(url, None)
        p.node = node or p.node
        for m in models:  # it holds a model now that it did not: no longer absent for it
            source = self._sources.get((url, m.model_id))
            if m.model_id not in p.models and source and source.state is SourceState.ABSENT:
                del self._sources[(url, m.model_id)]
        p.models = {m.model_id: m for m in models}
        if reachable is not None and p.dialled_at is None:
            p.dialable = reachable
        p.state = PeerHealth.KNOWN
        p.failures = 0
        p.last_seen = now
        return p if new else None

    def learned_of(
        self, url: str, node: str, now: float, *, reachable: bool | None = None
    ) -> Peer | None:
        """Another peer passed ``url`` on (``reachable``: what that peer says of it);
        returns the peer if it was added. One that peer could not dial is not: if we can
        be dialled it announces to us itself, and if we cannot there is no path."""
        url = url.rstrip("/")
        if url == self.self_url or url in self._banned:
            return None
        if url in self._peers or len(self) >= self.config.max_peers:
            return None
        if self._dropped.get(url, now) > now:
            return None
        if reachable is False:  # it cannot be dialled: it announces itself, or no path
            return None
        self._dropped.pop(url, None)
        p = self._peers[url] = Peer(url, node=node)
        return p

    def dialled(self, url: str, ok: bool, now: float) -> bool:
        """Our dial-back of ``url`` reached it (``ok``) or not; True if whether it is
        routable changed (the shell may look for sources again)."""
        p = self.get(url)
        if p is None:
            return False
        was = p.routable
        p.dialable, p.dialled_at = ok, now
        return p.routable != was

    def channel_changed(self, url: str, open_: bool) -> bool:
        """``url`` opened (or lost) its reverse channel to us; True if whether it is
        routable changed."""
        p = self.get(url)
        if p is None:
            return False
        was = p.routable
        p.channel = open_
        return p.routable != was

    def heard_back(self, url: str, reaches_me: bool | None) -> None:
        """``url``'s answer said whether its dial-back of our URL reached us."""
        p = self.get(url)
        if p is not None and reaches_me is not None:
            p.reaches_me = reaches_me

    def prune(self, now: float) -> list[Peer]:
        """Forget the unroutable peers (not bootstrap peers) not heard from within
        ``pex_fresh`` seconds: nothing reaches them, and they no longer announce. Returns
        them."""
        stale = now - self.config.pex_fresh
        gone = [
            p
            for p in self._peers.values()
            if not p.routable and not p.bootstrap and (p.last_seen or 0.0) < stale
        ]
        for p in gone:
            del self._peers[p.url]
            self._forget_sources(p.url)
        return gone

    def contact_failed(self, url: str, now: float) -> PeerHealth | None:
        """An announce to ``url`` failed; returns the peer's new state."""
        p = self.get(url)
        if p is None:
            return None
        p.failures += 1
        p.state = PeerHealth.BACKING_OFF
        if p.failures >= self.config.max_failures and not p.bootstrap:
            p.state = PeerHealth.DROPPED
            del self._peers[p.url]
            self._forget_sources(p.url)
            self._dropped = {u: t for u, t in self._dropped.items() if t > now}
            self._dropped[p.url] = now + self.config.forget_for
        return p.state

    def ban(self, key: str, now: float) -> None:
        """``key`` (a peer's URL or a web seed's source key) sent a bad chunk: for good."""
        self._banned.add(key)
        p = self._peers.pop(key, None)
        if p is not None:
            p.state = PeerHealth.BANNED
        self._forget_sources(key)

    def _forget_sources(self, key: str) -> None:
        for k in [k for k in self._sources if k[0] == key]:
            del self._sources[k]

    # -- sources ---------------------------------------------------------------------------

    def source_absent(self, key: str, model_id: str, now: float) -> None:
        """``key`` does not hold ``model_id`` (or could not say): ask again later."""
        self._sources[(key, model_id)] = _Source(
            SourceState.ABSENT, now + self.config.absent_recheck
        )

    def fetch_failed(self, key: str, model_id: str, failures: int, now: float) -> bool:
        """A chunk request to ``key`` failed, the ``failures``-th in a row: True if it is
        now ``LOST`` for ``model_id`` (the shell stops asking it)."""
        if failures < self.config.fetch_failures:
            return False
        if self.source_state(key, model_id, now) is SourceState.LOST:
            return False
        self._sources[(key, model_id)] = _Source(SourceState.LOST, now + self.config.revive_after)
        return True

    def source_answered(self, key: str, model_id: str, now: float) -> SourceState:
        """``key`` answered a ``have`` request for ``model_id``; returns its state now (a
        ``LOST`` source whose time is up comes back ``ACTIVE``)."""
        s = self._sources.get((key, model_id))
        if s is None:
            return SourceState.ACTIVE
        if s.until <= now:
            del self._sources[(key, model_id)]
            return SourceState.ACTIVE
        return s.state

    def forget_model(self, model_id: str) -> None:
        """Drop every source state of a model the node no longer holds."""
        for k in [k for k in self._sources if k[1] == model_id]:
            del self._sources[k]
