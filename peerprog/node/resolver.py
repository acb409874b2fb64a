"""Resolving wanted names: which model ids are newer trusted versions of a name, and
taking them up (the manifest stored, a fetcher started).

Candidates come from two places: the models peers announce, and the answers of the
bootstrap peers and web seeds to ``GET names/<name>``. All are asked at once and each
answer is taken as it arrives, so a source that never answers delays nothing but itself.
A manifest that fails verification is not asked for again for :data:`REFUSED_FOR`
seconds — from anyone if the signed body itself is refused (an untrusted publisher, another
name), else from that source only (it may have sent bytes that are not the id's) — so a
peer announcing fake versions costs one attempt each, not one per round.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import TYPE_CHECKING

from peerprog.errors import PeerFault, PeerprogError, UntrustedPublisher, VerificationError
from peerprog.manifest import SignedManifest, open_envelope, valid_model_id
from peerprog.node.peerclient import TransportError
from peerprog.node.state import ModelState
from peerprog.swarm import Bitfield

if TYPE_CHECKING:
    from peerprog.node.daemon import Node

log = logging.getLogger("peerprog.node")
NAME_TIMEOUT = 10.0
"""Longest wait for a ``names/<name>`` answer (a line of text), in seconds."""
MAX_CANDIDATES = 8
"""Most announced model ids of one name tried per round (newest announced first)."""
REFUSED_FOR = 600.0
"""Seconds a refused manifest is not asked for again."""

Found = tuple[SignedManifest, str]
"""A verified manifest and the source it came from."""


class Resolver:
    """Finds and takes up the newest versions of the node's wanted names."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self._refused: dict[tuple[str, str], float] = {}  # (root or "", model id) → until

    async def resolve_all(self) -> None:
        """One round over every wanted name (the names concurrently)."""
        names = sorted(self.node.wanted)
        results = await asyncio.gather(*(self.resolve(n) for n in names), return_exceptions=True)
        for name, r in zip(names, results, strict=True):
            if isinstance(r, PeerprogError):
                log.warning("resolving %s: %s", name, r)
            elif isinstance(r, Exception):
                log.error("bug while resolving %s", name, exc_info=r)
            elif isinstance(r, BaseException):
                raise r
        now = time.monotonic()
        self._refused = {k: t for k, t in self._refused.items() if t > now}

    async def resolve(self, name: str) -> None:
        """Ask every source about ``name`` at once; take up each newer version found."""
        jobs = [
            asyncio.ensure_future(self._manifest(name, model_id, roots))
            for model_id, roots in self._announced(name)
        ]
        jobs += [asyncio.ensure_future(self._ask(name, root)) for root in self._roots()]
        try:
            for next_done in asyncio.as_completed(jobs):
                found = await next_done
                if found is not None:
                    await self._adopt(name, found)
        finally:
            for job in jobs:
                job.cancel()

    # --- candidates --------------------------------------------------------------------

    def _newest(self, name: str) -> int:
        return max((s.manifest.version for s in self.node.versions(name)), default=0)

    def _announced(self, name: str) -> list[tuple[str, list[str]]]:
        """Model ids peers announce for ``name`` that may be newer, with who holds them."""
        newest = self._newest(name)
        found: dict[str, tuple[int, list[str]]] = {}
        for info in list(self.node.peers.values()):
            for ref in info.models.values():
                if ref.name == name and ref.version > newest and self._open(ref.model_id):
                    root = info.url + "/p2p/v1"
                    found.setdefault(ref.model_id, (ref.version, []))[1].append(root)
        order = sorted(found.items(), key=lambda kv: kv[1][0], reverse=True)
        return [(model_id, roots) for model_id, (_, roots) in order[:MAX_CANDIDATES]]

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

    def _refuse(self, root: str, model_id: str) -> None:
        self._refused[(root, model_id)] = time.monotonic() + REFUSED_FOR

    # --- taking a version up -----------------------------------------------------------

    async def _adopt(self, name: str, found: Found) -> None:
        node = self.node
        signed, root = found
        m = signed.manifest
        if signed.model_id in node.models or m.version <= self._newest(name):
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
