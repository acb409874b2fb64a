"""Which versions of a name a node takes up, serves and drops. Sans-IO: calls take ``now``.

Rules, all here:

1. **Newest wins.** Versions of a name are ordered by version number, then by creation
   time (:func:`newest_first`). Apps and peers are served the newest version with a
   servable level 0, held and recorded durably (:func:`served`); the store's name is set
   to the newest version with level 0 held, after the record that makes it servable
   (:func:`named`); a version no newer than one held is never taken up.
2. **Older versions go** once a newer one is exact, except the ``keep`` newest of them
   (:func:`superseded`).
3. **Finding newer versions.** Candidates come from what peers announce and from asking
   bootstrap peers and web seeds ``names/<name>``. Each candidate is a :class:`Lookup` the
   shell runs in the background. A peer gets at most ``max_candidates_per_peer`` of its
   announced candidates of a name tried at a time, and a name at most
   ``max_candidates_per_name``: a peer
   announcing hundreds of fake versions cannot crowd out the real one.
4. **Refusals.** A manifest that fails verification is not asked for again for
   ``refuse_manifest_for`` seconds — from anyone if the signed body itself is refused (an untrusted
   publisher, another name, an older version), else from that source only (it may have
   sent bytes that are not the id's); one that did not come is asked of that source again
   after ``manifest_retry_after`` seconds.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol, TypeVar

from peerprog.swarm.peertable import ModelRef


class Version(Protocol):
    """A version of a name that the node holds."""

    @property
    def model_id(self) -> str: ...
    @property
    def version(self) -> int: ...
    @property
    def created(self) -> float: ...
    @property
    def best_level(self) -> int:
        """The best level held."""
        ...

    @property
    def servable_level(self) -> int:
        """The best level held and recorded durably."""
        ...

    @property
    def complete(self) -> bool: ...


V = TypeVar("V", bound=Version)


def newest_first(versions: Iterable[V]) -> list[V]:
    """Rule 1: the versions ordered newest first."""
    return sorted(versions, key=lambda v: (v.version, v.created), reverse=True)


def served(versions: Iterable[V]) -> V | None:
    """Rule 1: the version apps and peers get, the newest with a servable level 0 (or
    None)."""
    return _newest_with(versions, lambda v: v.servable_level)


def named(versions: Iterable[V]) -> V | None:
    """Rule 1: the version the store's name is to point at once the chunks held are
    recorded, the newest with level 0 held (or None): :func:`served` after that record."""
    return _newest_with(versions, lambda v: v.best_level)


def _newest_with(versions: Iterable[V], level: Callable[[V], int]) -> V | None:
    """The newest of ``versions`` whose ``level`` is 0 or more."""
    return next((v for v in newest_first(versions) if level(v) >= 0), None)


def superseded(versions: Iterable[V], keep: int) -> list[V]:
    """Rule 2: the versions to drop: older than the newest exact one, but the ``keep``
    newest of those."""
    ordered = newest_first(versions)
    for i, v in enumerate(ordered):
        if v.complete:
            older = [o for o in ordered[i + 1 :] if o.version < v.version]
            return older[keep:]
    return []


@dataclass(frozen=True)
class VersionConfig:
    """Settings of a :class:`VersionPolicy`; times in seconds."""

    max_candidates_per_peer: int = 2
    """Most announced versions of one name, from one peer, looked up at a time."""
    max_candidates_per_name: int = 16
    """Most versions of one name looked up at a time."""
    refuse_manifest_for: float = 600.0
    """Seconds a manifest that failed verification is not asked for again."""
    manifest_retry_after: float = 60.0
    """Seconds before a source is asked again for a manifest it did not deliver."""

    def __post_init__(self) -> None:
        if self.max_candidates_per_peer < 1 or self.max_candidates_per_name < 1:
            raise ValueError("max_candidates_per_peer and max_candidates_per_name must be >= 1")


@dataclass(frozen=True)
class Lookup:
    """A background job: fetch and verify the manifest ``model_id`` from the first of
    ``roots`` that has it; or (``model_id`` None) ask ``roots[0]`` which id ``name`` has."""

    name: str
    model_id: str | None
    roots: tuple[str, ...]

    @property
    def key(self) -> tuple[str, str]:
        return (self.name, self.model_id or "name:" + self.roots[0])


class VersionPolicy:
    """Rules 3 and 4: what to look up, and what not to ask for again."""

    def __init__(self, config: VersionConfig) -> None:
        self.config = config
        self._refused: dict[tuple[str, str], float] = {}  # (root or "", model id) → until
        self._pending: set[tuple[str, str]] = set()

    def lookups(
        self,
        name: str,
        *,
        newest: int,
        known: Collection[str],
        announced: Iterable[tuple[str, ModelRef]],
        name_roots: Sequence[str],
        now: float,
    ) -> list[Lookup]:
        """The look-ups to start for ``name`` now, recorded as pending until
        :meth:`done`. ``newest`` is the newest version held (0 for none), ``known`` the ids
        held, ``announced`` (root, model) pairs from peers, ``name_roots`` where to ask
        ``names/<name>``."""
        self._refused = {k: t for k, t in self._refused.items() if t > now}
        room = self.config.max_candidates_per_name - sum(1 for n, _ in self._pending if n == name)
        per_peer: dict[str, list[ModelRef]] = {}
        for root, ref in announced:
            if (
                ref.name == name
                and ref.version > newest
                and (name, ref.model_id) not in self._pending
                and self.open(ref.model_id, root, known, now)
            ):
                per_peer.setdefault(root, []).append(ref)
        found: dict[str, tuple[int, list[str]]] = {}
        for root, refs in per_peer.items():
            refs.sort(key=lambda r: r.version, reverse=True)
            for ref in refs[: self.config.max_candidates_per_peer]:
                found.setdefault(ref.model_id, (ref.version, []))[1].append(root)
        order = sorted(found.items(), key=lambda kv: kv[1][0], reverse=True)
        jobs = [Lookup(name, mid, tuple(roots)) for mid, (_, roots) in order[: max(0, room)]]
        jobs += [Lookup(name, None, (root,)) for root in name_roots]
        jobs = [j for j in jobs if j.key not in self._pending]
        self._pending.update(j.key for j in jobs)
        return jobs

    def done(self, lookup: Lookup) -> None:
        """A look-up ended (whatever its outcome)."""
        self._pending.discard(lookup.key)

    def open(self, model_id: str, root: str, known: Collection[str], now: float) -> bool:
        """Worth asking ``root`` for: not held, not refused (from anyone, or from ``root``)."""
        if model_id in known:
            return False
        return self._refused.get(("", model_id), 0.0) <= now and (
            not root or self._refused.get((root, model_id), 0.0) <= now
        )

    def takes(self, version: int, newest: int) -> bool:
        """Rule 1: is a verified manifest of ``version`` taken up, ``newest`` being held?"""
        return version > newest

    def missing(self, root: str, model_id: str, now: float) -> None:
        """``root`` did not deliver the manifest (unreachable, an error, not found)."""
        self._refused[(root, model_id)] = now + self.config.manifest_retry_after

    def refused_from(self, root: str, model_id: str, now: float) -> None:
        """What ``root`` sent failed verification, maybe by its fault: not from it again."""
        self._refused[(root, model_id)] = now + self.config.refuse_manifest_for

    def refused(self, model_id: str, now: float) -> None:
        """The signed body itself is refused (untrusted, another name, old): from nobody."""
        self._refused[("", model_id)] = now + self.config.refuse_manifest_for
