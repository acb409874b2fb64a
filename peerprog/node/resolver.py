"""Resolving wanted names: the I/O of :mod:`peerprog.swarm.versions`.

Every ``announce_interval`` seconds, and as soon as a peer announces a wanted name, the
version policy says which look-ups to start; each runs as a background task (so a source
that never answers delays nothing but itself), fetches and verifies a manifest, reports
the outcome back to the policy, and hands a newer verified version to the catalog.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Collection
from typing import Protocol

from peerprog.errors import PeerFault, UntrustedPublisher, VerificationError
from peerprog.manifest import SignedManifest, open_envelope, valid_model_id
from peerprog.node.peerclient import NotFound, TransportError
from peerprog.node.tasks import TaskScope
from peerprog.swarm import Lookup, PeerTable, VersionPolicy

log = logging.getLogger("peerprog.node")


class ManifestTransport(Protocol):
    """The requests a look-up makes (:class:`~peerprog.node.peerclient.PeerClient`)."""

    async def get_name(self, root: str, name: str, timeout: float | None = None) -> str: ...
    async def get_manifest(self, root: str, model_id: str) -> bytes: ...
    async def get_torrent(self, root: str, model_id: str) -> bytes: ...


class Versions(Protocol):
    """The node's models (:class:`~peerprog.node.catalog.Catalog`)."""

    @property
    def wanted(self) -> Collection[str]: ...
    @property
    def models(self) -> Collection[str]: ...
    def newest_version(self, name: str) -> int: ...
    async def take_up(self, signed: SignedManifest, source: str) -> object: ...
    async def take_torrent(self, model_id: str, data: bytes) -> bool: ...


class Resolver:
    """Finds and takes up the newest versions of the node's wanted names."""

    def __init__(
        self,
        policy: VersionPolicy,
        transport: ManifestTransport,
        table: PeerTable,
        catalog: Versions,
        *,
        trusted: frozenset[str],
        interval: float,
        name_timeout: float,
        scope: TaskScope,
    ) -> None:
        self.policy = policy
        self._transport = transport
        self._table = table
        self._catalog = catalog
        self._trusted = trusted
        self._interval = interval
        self._name_timeout = name_timeout
        self._scope = scope
        self._now = asyncio.Event()
        self._problems: dict[str, str] = {}
        self._answers: dict[str, dict[str, str]] = {}  # name → root → how it answered
        self._warned: set[tuple[str, str]] = set()

    def problem(self, name: str) -> str | None:
        """Why no version of ``name`` is being fetched, if something says so."""
        return self._problems.get(name)

    def forget(self, name: str) -> None:
        """``name`` is no longer wanted."""
        self._problems.pop(name, None)
        self._answers.pop(name, None)

    def resolve_soon(self) -> None:
        self._now.set()

    async def run(self) -> None:
        """Resolve every wanted name each interval (or when woken) until cancelled."""
        while True:
            self.resolve_all()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._now.wait(), self._interval)
            self._now.clear()

    def resolve_all(self) -> None:
        """Start the look-ups the policy asks for, for every wanted name."""
        now = asyncio.get_running_loop().time()
        for name in sorted(self._catalog.wanted):
            announced = [
                (self._table.root_of(p.url), ref) for p, ref in self._table.announced(name)
            ]
            for lookup in self.policy.lookups(
                name,
                newest=self._catalog.newest_version(name),
                known=self._catalog.models,
                announced=announced,
                name_roots=self._table.name_roots(),
                now=now,
            ):
                self._scope.spawn(self._run(lookup), name=f"look up {name}")

    async def _run(self, lookup: Lookup) -> None:
        try:
            found = await self._look_up(lookup)
            if found is not None:
                await self._take_up(*found)
        finally:
            self.policy.done(lookup)

    async def _look_up(self, lookup: Lookup) -> tuple[SignedManifest, str] | None:
        if lookup.model_id is not None:
            return await self._manifest(lookup.name, lookup.model_id, lookup.roots)
        (root,) = lookup.roots
        try:
            model_id = await self._transport.get_name(root, lookup.name, timeout=self._name_timeout)
        except NotFound:
            self._answered(lookup.name, root, "does not know it")
            return None
        except (TransportError, PeerFault) as e:
            self._answered(lookup.name, root, f"unreachable ({e})")
            return None
        if not valid_model_id(model_id):
            if (root, lookup.name) not in self._warned:
                self._warned.add((root, lookup.name))
                log.warning(
                    "%s answered names/%s with %r, which is not a model id: is it a peerprog "
                    "store?",
                    root,
                    lookup.name,
                    model_id[:40],
                )
            self._answered(lookup.name, root, "answered something that is not a model id")
            return None
        return await self._manifest(lookup.name, model_id, lookup.roots)

    def _answered(self, name: str, root: str, how: str) -> None:
        """A name look-up of ``root`` found nothing; once every source has said so (and no
        peer announces the name), that is the name's problem."""
        answers = self._answers.setdefault(name, {})
        answers[root] = how
        roots = self._table.name_roots()
        if all(r in answers for r in roots) and not any(True for _ in self._table.announced(name)):
            said = "; ".join(f"{r} {answers[r]}" for r in roots) or "no source is configured"
            self._problems.setdefault(name, f"no source knows it ({said})")

    async def _manifest(
        self, name: str, model_id: str, roots: tuple[str, ...]
    ) -> tuple[SignedManifest, str] | None:
        """The verified manifest of ``model_id`` from the first of ``roots`` that has it."""
        loop = asyncio.get_running_loop()
        for root in roots:
            if not self.policy.open(model_id, root, self._catalog.models, loop.time()):
                continue
            try:
                envelope = await self._transport.get_manifest(root, model_id)
                signed = open_envelope(envelope, self._trusted, expect_id=model_id)
            except TransportError:
                self.policy.missing(root, model_id, loop.time())
                continue
            except PeerFault as e:
                if isinstance(e, VerificationError):
                    log.warning("refused manifest %s… from %s: %s", model_id[:12], root, e)
                    # An untrusted publisher is the id's own fault; anything else may be
                    # this source's (bytes that are not the id's): refuse it only there.
                    if isinstance(e, UntrustedPublisher):
                        self.policy.refused(model_id, loop.time())
                        self._problems[name] = (
                            f"refused version {model_id[:12]}… from {root}: {e} "
                            "(add its key to trust.publishers to accept it)"
                        )
                    else:
                        self.policy.refused_from(root, model_id, loop.time())
                        self._problems[name] = f"refused version {model_id[:12]}… from {root}: {e}"
                continue
            if signed.manifest.name != name:
                log.warning(
                    "refused manifest %s… from %s: it is %r, not %r",
                    model_id[:12],
                    root,
                    signed.manifest.name,
                    name,
                )
                self.policy.refused(model_id, loop.time())
                continue
            return signed, root
        return None

    async def _take_up(self, signed: SignedManifest, root: str) -> None:
        m = signed.manifest
        if signed.model_id in self._catalog.models:
            return
        if not self.policy.takes(m.version, self._catalog.newest_version(m.name)):
            self.policy.refused(signed.model_id, asyncio.get_running_loop().time())
            return
        if await self._catalog.take_up(signed, root) is not None:
            self._problems.pop(m.name, None)
            self._answers.pop(m.name, None)
            self._scope.spawn(self._torrent(signed, root), name=f"torrent of {m.name}")

    async def _torrent(self, signed: SignedManifest, root: str) -> None:
        """Ask the manifest's source for the model's torrent (the publisher's, signed),
        for the catalog to check and keep; without it the node builds the same one, unsigned,
        once it holds the model whole."""
        try:
            data = await self._transport.get_torrent(root, signed.model_id)
        except (TransportError, PeerFault) as e:  # 404: an older node, or a mirror without
            log.debug("no torrent of %s from %s: %s", signed.manifest.name, root, e)
            return
        await self._catalog.take_torrent(signed.model_id, data)
