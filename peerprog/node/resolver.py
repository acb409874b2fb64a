"""Resolving wanted names: which model ids are newer trusted versions of a name, and
taking them up (the manifest stored, a fetcher started).

Candidates come from two places: the models peers announce, and the answers of the
bootstrap peers and web seeds to ``GET names/<name>``. Each candidate is a background job
that takes its version up as soon as its manifest verifies, so a source that never
answers delays nothing but itself. One peer gets at most :data:`MAX_PER_PEER` of its
announced candidates tried at a time, and a name at most :data:`MAX_PENDING`: a peer
announcing hundreds of fake versions cannot crowd out the real one. A manifest that fails
verification is not asked for again for :data:`REFUSED_FOR` seconds — from anyone if the
signed body itself is refused (an untrusted publisher, another name), else from that
source only (it may have sent bytes that are not the id's); one that did not come is asked
of that source again after :data:`RETRY_AFTER` seconds.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

from peerprog.errors import PeerFault, UntrustedPublisher, VerificationError
from peerprog.manifest import SignedManifest, open_envelope, valid_model_id
from peerprog.node.peerclient import TransportError
from peerprog.node.state import ModelState
from peerprog.swarm import Bitfield

if TYPE_CHECKING:
    from peerprog.node.daemon import Node

log = logging.getLogger("peerprog.node")
NAME_TIMEOUT = 10.0
"""Longest wait for a ``names/<name>`` answer (a line of text), in seconds."""
MAX_PER_PEER = 2
"""Most announced candidates of one name, from one peer, tried at a time."""
MAX_PENDING = 16
"""Most candidates of one name tried at a time."""
REFUSED_FOR = 600.0
"""Seconds a manifest that failed verification is not asked for again."""
RETRY_AFTER = 60.0
"""Seconds before asking a source again for a manifest it did not deliver."""

Found = tuple[SignedManifest, str]
"""A verified manifest and the source it came from."""


class Resolver:
    """Finds and takes up the newest versions of the node's wanted names."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self._refused: dict[tuple[str, str], float] = {}  # (root or "", model id) → until
        self._pending: set[tuple[str, str]] = set()  # (name, model id or "name:" + root)

    async def resolve_all(self) -> None:
        """Start a look-up of every wanted name (the jobs run on in the background)."""
        now = time.monotonic()
        self._refused = {k: t for k, t in self._refused.items() if t > now}
        for name in sorted(self.node.wanted):
            self.resolve(name)

    def resolve(self, name: str) -> None:
        """Ask the sources about ``name``; each newer version found is taken up."""
        for model_id, roots in self._announced(name):
            self._job(name, model_id, self._manifest(name, model_id, roots))
        for root in self._roots():
            self._job(name, "name:" + root, self._ask(name, root))

    def _job(self, name: str, key: str, work: Coroutine[Any, Any, Found | None]) -> None:
        if (name, key) in self._pending:
            work.close()
            return
        self._pending.add((name, key))

        async def run() -> None:
            try:
                found = await work
                if found is not None:
                    await self._adopt(name, found)
            finally:
                self._pending.discard((name, key))

        self.node.spawn(run())

    # --- candidates --------------------------------------------------------------------

    def _newest(self, name: str) -> int:
        return max((s.manifest.version for s in self.node.versions(name)), default=0)

    def _announced(self, name: str) -> list[tuple[str, list[str]]]:
        """Model ids peers announce for ``name`` that may be newer and are not being tried
        yet, with who holds them (newest first, a few per peer)."""
        newest = self._newest(name)
        room = MAX_PENDING - sum(1 for n, _ in self._pending if n == name)
        found: dict[str, tuple[int, list[str]]] = {}
        for info in list(self.node.peers.values()):
            root = info.url + "/p2p/v1"
            refs = sorted(
                (
                    r
                    for r in info.models.values()
                    if r.name == name
                    and r.version > newest
                    and (name, r.model_id) not in self._pending
                    and self._open(r.model_id, root)
                ),
                key=lambda r: r.version,
                reverse=True,
            )
            for ref in refs[:MAX_PER_PEER]:
                found.setdefault(ref.model_id, (ref.version, []))[1].append(root)
        order = sorted(found.items(), key=lambda kv: kv[1][0], reverse=True)
        return [(model_id, roots) for model_id, (_, roots) in order[: max(0, room)]]

    def _roots(self) -> list[str]:
        """The sources asked for names: bootstrap peers and web seeds."""
        roots = [p.url + "/p2p/v1" for p in list(self.node.peers.values()) if p.bootstrap]
        return roots + [u.rstrip("/") for u in self.node.config.peers.web_seeds]

    def _open(self, model_id: str, root: str = "") -> bool:
        """Not known yet, and not refused (from anyone, or from ``root``)."""
        if model_id in self.node.models:
            return False
        now = time.monotonic()
        return self._refused.get(("", model_id), 0.0) <= now and (
            not root or self._refused.get((root, model_id), 0.0) <= now
        )

    # --- fetching manifests ------------------------------------------------------------

    async def _ask(self, name: str, root: str) -> Found | None:
        client = self.node.client
        timeout = min(NAME_TIMEOUT, self.node.config.limits.request_timeout)
        try:
            model_id = await client.get_name(root, name, timeout=timeout)
        except (TransportError, PeerFault):
            return None
        if not valid_model_id(model_id):
            return None
        return await self._manifest(name, model_id, [root])

    async def _manifest(self, name: str, model_id: str, roots: list[str]) -> Found | None:
        """The verified manifest of ``model_id`` from the first of ``roots`` that has it."""
        for root in roots:
            if not self._open(model_id, root):
                continue
            try:
                envelope = await self.node.client.get_manifest(root, model_id)
                signed = open_envelope(envelope, self.node.trusted, expect_id=model_id)
            except TransportError:
                self._refuse(root, model_id, RETRY_AFTER)
                continue
            except PeerFault as e:
                if isinstance(e, VerificationError):
                    log.warning("refused manifest %s… from %s: %s", model_id[:12], root, e)
                    # An untrusted publisher is the id's own fault; anything else may be
                    # this source's (bytes that are not the id's): refuse it only there.
                    self._refuse("" if isinstance(e, UntrustedPublisher) else root, model_id)
                continue
            if signed.manifest.name != name:
                log.warning(
                    "refused manifest %s… from %s: it is %r, not %r",
                    model_id[:12],
                    root,
                    signed.manifest.name,
                    name,
                )
                self._refuse("", model_id)
                continue
            return signed, root
        return None

    def _refuse(self, root: str, model_id: str, seconds: float = REFUSED_FOR) -> None:
        self._refused[(root, model_id)] = time.monotonic() + seconds

    # --- taking a version up -----------------------------------------------------------

    async def _adopt(self, name: str, found: Found) -> None:
        node = self.node
        signed, root = found
        m = signed.manifest
        if signed.model_id in node.models:
            return
        if m.version <= self._newest(name):  # an older version: never of use again
            self._refuse("", signed.model_id)
            return
        try:
            await asyncio.to_thread(node.store.put_manifest, signed)
            # chunks a damaged manifest had left unused: verified now, not fetched again
            held = await asyncio.to_thread(node.store.scan, signed.model_id, m)
        except OSError as e:
            node.store_error = f"cannot store the manifest of {name}: {e.strerror or e}"
            log.error("%s", node.store_error)
            return
        if signed.model_id in node.models or m.version <= self._newest(name):
            return
        have = Bitfield(len(m.chunks))
        for i in held:
            have.set(i)
        state = ModelState(signed, have, origin=False)
        state.metrics.chunks_from_disk = len(held)
        node.models[signed.model_id] = state
        log.info("found %s v%d (%s…) from %s", name, m.version, signed.model_id[:12], root)
        if state.best_level >= 0:
            node.level_reached(state)
        node.start_fetcher(state)
        node.announce_soon()
