"""The API's shared state: the node, the wake-ups, and the rule of what a ``best`` request
is answered with (:meth:`ApiContext.resolve_best`)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from peerprog.api.best import BestFile, etag_of
from peerprog.api.errors import ApiError, LevelGone, LevelTimeout, UnknownModel
from peerprog.api.notify import LevelNotifier
from peerprog.api.query import BestQuery
from peerprog.api.view import DecodedView, ModelView, NodeView
from peerprog.errors import InputError


@dataclass
class ApiStats:
    """Counters of the API itself (shown in ``/v1/status`` and ``/metrics``)."""

    best_answers: int = 0
    best_not_modified: int = 0
    best_timeouts: int = 0
    best_in_flight: int = 0
    bytes_sent: int = 0
    event_streams: int = 0


@dataclass
class ApiContext:
    """Everything the request handlers share."""

    node: NodeView
    notifier: LevelNotifier = field(default_factory=LevelNotifier)
    stats: ApiStats = field(default_factory=ApiStats)

    @property
    def closing(self) -> bool:
        return self.notifier.closed

    def knows(self, name: str) -> bool:
        """Whether the node holds or wants a model called ``name``."""
        return name in self.node.wanted or bool(self.node.versions(name))

    def on_level(self, state: ModelView) -> None:
        """The node's level listener: wake the name's waiters."""
        self.notifier.fire(state.manifest.name)

    async def resolve_best(
        self,
        name: str,
        query: BestQuery,
        if_none_match: str | None = None,
        *,
        growing: bool = False,
    ) -> tuple[BestFile, bool]:
        """The file to answer ``best`` with, and whether it matches ``If-None-Match``;
        with ``growing``, the file may be one still being built (:attr:`BestFile.growing`).

        The model is the newest version of ``name`` with a servable level (held and
        recorded durably: ``servable_level``), served at that level. It waits up to
        ``query.wait`` seconds for the level asked for (and for its decode); with
        ``If-None-Match`` naming what is served now, it waits as long for something newer
        and then reports "not modified". Raises :class:`UnknownModel` for a name the node
        neither holds nor wants, :class:`LevelTimeout` when the level is not reached.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + query.wait
        while True:
            if self.closing:
                raise LevelTimeout("the daemon is shutting down", retry_after=5)
            state = self.node.newest_served(name)
            if state is None and not self.knows(name):
                raise UnknownModel(f"this node neither holds nor wants a model {name!r}")
            remaining = deadline - loop.time()
            level = state.servable_level if state is not None else -1
            if state is not None and level >= query.target(state.manifest.levels_total):
                now = etag_of(state.model_id, level)
                if not etag_matches(now, if_none_match) or remaining <= 0:
                    try:
                        best = await self._decoded(state, growing)
                    except KeyError:  # a newer version replaced it (and its files) meanwhile
                        continue
                    return best, etag_matches(best.etag, if_none_match)
            elif remaining <= 0:
                why = _not_reached(name, state, query)
                problem = self.node.problem(name)
                raise LevelTimeout(f"{why}: {problem}" if problem else why, retry_after=1)
            await self.notifier.wait(name, remaining)

    async def _decoded(self, state: ModelView, growing: bool) -> BestFile:
        try:
            built = await self.node.decoded(state, growing=growing)
        except InputError as e:  # chunks damaged or gone under a model still served
            raise ApiError(f"{state.manifest.name}: cannot decode: {e}", status=503) from None
        return self._best_file(state, built)

    def _best_file(self, state: ModelView, built: DecodedView) -> BestFile:
        m = state.manifest
        return BestFile(
            model_id=state.model_id,
            name=m.name,
            version=m.version,
            codec=m.codec,
            level=built.level,
            levels_total=m.levels_total,
            bytes_received=sum(lv.bytes for lv in m.levels[: built.level + 1]),
            bytes_total=m.total_bytes,
            path=built.path,
            size=built.size,
            manifest=m,
            growing=built.growing,
        )

    def served_level(self, name: str, model_id: str, level: int) -> BestFile:
        """The decoded level a repository's file request names, as it is on disk now
        (nothing is built for it): the newest level of the model, or the one before.
        :class:`LevelGone` once neither is that level, :class:`UnknownModel` if the node
        neither holds nor wants ``name``."""
        state = self.node.models.get(model_id) if model_id else self.node.newest_served(name)
        if state is None or state.manifest.name != name:
            if not self.knows(name):
                raise UnknownModel(f"this node neither holds nor wants a model {name!r}")
            raise LevelGone(f"{name}: {model_id[:12] or 'that version'} is not held now")
        built = self.node.decoded_at(state.model_id, level)
        if built is None:
            raise LevelGone(
                f"{name}: level {level} of {state.model_id[:12]} is no longer served (now: "
                f"level {state.servable_level}); ask for the tree again"
            )
        return self._best_file(state, built)


def etag_matches(etag: str, if_none_match: str | None) -> bool:
    """Whether ``etag`` is one of an ``If-None-Match`` header's tags (or it is ``*``)."""
    if not if_none_match:
        return False
    for tag in if_none_match.split(","):
        tag = tag.strip()
        if tag == "*" or tag.removeprefix("W/") == etag:
            return True
    return False


def _not_reached(name: str, state: ModelView | None, query: BestQuery) -> str:
    waited = f"within {query.wait:g} s" if query.wait else "yet (no wait given)"
    if state is None:
        return f"{name}: no level of any version is complete {waited}"
    asked = "the last level" if query.max_level else f"level {query.min_level}"
    return f"{name}: {asked} not reached {waited} (best complete level: {state.servable_level})"
