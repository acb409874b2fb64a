"""A model's decoded levels on disk: what ``best`` serves.

Each level reached is written as a safetensors file, ``decoded/<level>.safetensors``, tensor
by tensor from the level built before (every level since decoded in one pass) and the new
levels' bytes (:func:`peerprog.store.build_level`, in a worker thread); a repository's level
is a folder, ``decoded/<level>/``, holding every file of the tree
(:func:`peerprog.store.build_tree`). The newest level is kept and older ones are removed: an
answer still sending one holds it open, so removing it is safe. While the store's disk is
full, the level is written in the system's temporary directory instead, so that apps are
still served. A level file is written in order, so a request that comes while it is being
built can be sent it as it grows (:class:`Growing`; a repository's folder is served only
when whole).

Only the model's servable level is built (:attr:`~peerprog.node.state.ModelState.servable_level`:
held and recorded durably), whoever asks. For a model the node wants, it is built as soon as
it rises — except a level that would be superseded before it is built (the next level is
due sooner than a build takes): on a fast link the node then decodes the levels that
matter, not every level. For any other model (e.g. the origin's own), it is built when an
app asks for it.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import shutil
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from peerprog.node.diskguard import DiskGuard
from peerprog.node.state import ModelState
from peerprog.node.tasks import TaskScope
from peerprog.store import ModelFiles, Unusable, build_level, build_tree
from peerprog.store.assemble import Cancelled
from peerprog.swarm import Bitfield

log = logging.getLogger("peerprog.node")
DECODE_BYTES_PER_S = 150e6
"""A first guess of how fast a level is decoded (source bytes per second), until one is
measured: on the low side of groupplane's whole-ladder speed, since a build that was not
worth it also slows the download it shares the cores with."""


class Growing:
    """A level file under way: its first :attr:`ready` bytes are final, and can be sent
    while the rest is decoded (:func:`peerprog.store.build_level` writes in order)."""

    def __init__(self, level: int, final: Path) -> None:
        self.level = level
        self.final = final
        """Where the file is renamed to once whole."""
        self.path: Path | None = None
        """The temporary file, known from the build's first progress (gone, renamed to
        the level's file, once the build ends; an open descriptor still reads it)."""
        self.size = 0
        self.ready = 0
        self.ended: bool | None = None
        """None while under way; True once whole, False if it failed or was stopped."""
        self._changed = asyncio.Event()

    def advance(self, path: Path, ready: int, size: int) -> None:
        """The build's progress (in the loop's thread)."""
        self.path, self.ready, self.size = path, ready, size
        self._wake()

    def end(self, ok: bool) -> None:
        """The build ended; ``ok``: the file is whole (its last byte is final too)."""
        if ok:
            self.ready = self.size
        self.ended = ok
        self._wake()

    async def until(self, n: int) -> bool:
        """Wait until the first ``n`` bytes are final (True), or the build ends before
        they are (False: it failed or was stopped)."""
        while self.ready < n:
            if self.ended is not None:
                return False
            await self._changed.wait()
        return True

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()


@dataclass(frozen=True)
class Built:
    """A decoded level: a safetensors file, or a repository's folder."""

    level: int
    path: Path
    size: int
    growing: Growing | None = None
    """Set while the file is still being built (``path`` is then its temporary file):
    byte ``n`` may be sent once :meth:`Growing.until` ``(n + 1)`` is True."""


class DecodedLevels:
    """The decoded levels of one model."""

    def __init__(
        self,
        state: ModelState,
        files: ModelFiles,
        folder: Path,
        scope: TaskScope,
        disk: DiskGuard,
        *,
        ahead: bool,
    ) -> None:
        """``ahead``: build each level as it becomes servable once an app has asked for the
        model, and the exact level when the model is complete (else only when asked for:
        while no app looks, decoding would only take the CPU the download and uploads
        need). Files go
        into ``folder``, or, while its disk is full, into a folder of the system's
        temporary directory."""
        self._state = state
        self._files = files
        self._folder = folder
        self._disk = disk
        self._spare = (
            Path(tempfile.gettempdir()) / f"peerprog-decoded-{state.model_id[:16]}-{os.getpid()}"
        )
        self._scope = scope
        self.ahead = ahead
        self._asked = False
        """An app has asked for a level of the model."""
        self.built: Built | None = None
        self.previous: Built | None = None
        """For a repository, the level before :attr:`built`, kept until the next one is
        built: an app writing its files as a directory finishes it."""
        self._task: asyncio.Task[None] | None = None
        self._changed = asyncio.Event()
        """Set (and replaced) when a build ends."""
        self._grows = asyncio.Event()
        """Set (and replaced) when a build's file can be read as it grows."""
        self._growing: Growing | None = None
        """The level file being built, if it is one file (a repository's folder is not
        read as it is built)."""
        self._cancel = threading.Event()
        self._speed = DECODE_BYTES_PER_S
        self.builds = 0
        """Level files built so far."""
        self.error: str | None = None

    def level_servable(self) -> None:
        """The model's servable level rose: build it now if ahead, an app has asked for
        the model or it is complete, and it is worth it."""
        if self.ahead and (self._asked or self._state.complete) and self._worth_building():
            self._start()

    async def get(self, *, growing: bool = False) -> Built:
        """The decoded file of the model's servable level as it is now (or a higher one
        built meanwhile), built now if need be; with ``growing``, while a single file of
        that level is being built, that file as it grows (:attr:`Built.growing`).
        :class:`Unusable` if no level is servable or it cannot be built from the store;
        ``KeyError`` once the model is dropped (:meth:`stop`)."""
        self._asked = True
        level = self._state.servable_level
        if level < 0:
            raise Unusable(f"{self._state.manifest.name}: no level is servable yet")
        self._lost()
        while self.built is None or self.built.level < level:
            if self._cancel.is_set():
                raise KeyError(self._state.model_id)
            g = self._growing
            if growing and g is not None and g.level >= level and g.path and g.ended is None:
                return Built(g.level, g.path, g.size, g)
            self._start()
            events = [self._changed, self._grows] if growing else [self._changed]
            waiters = [asyncio.ensure_future(e.wait()) for e in events]
            try:
                await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for waiter in waiters:
                    waiter.cancel()
            if self.error is not None and (self.built is None or self.built.level < level):
                raise Unusable(self.error)
        return self.built

    def _lost(self) -> None:
        """Forget the built file if something removed it (an operator cleaning the store):
        derived data, built again from the verified chunks."""
        built = self.built
        if built is not None and not built.path.exists():
            log.warning(
                "%s: the decoded level %d is gone from %s; building it again",
                self._state.manifest.name,
                built.level,
                built.path.parent,
            )
            self.built = None

    def serving(self, level: int) -> Built | None:
        """The decoded ``level`` if it is on disk now (the newest, or the one before)."""
        for built in (self.built, self.previous):
            if built is not None and built.level == level and built.path.exists():
                return built
        return None

    def stop(self) -> None:
        """Stop a build under way, and any later (the model is dropped, or the node stops):
        the build ends quietly at its next tensor."""
        self._cancel.set()

    def _worth_building(self) -> bool:
        s = self._state
        m = s.manifest
        if s.complete or s.best_level < 0:
            return True
        rate = s.rate
        nxt = m.levels[s.best_level + 1] if s.best_level + 1 < m.levels_total else None
        if rate is None or nxt is None:
            return True
        missing = sum(m.chunks[i].length for i in nxt.chunks if i not in s.have)
        return missing / rate > m.source_bytes / self._speed

    def _start(self) -> None:
        if self._cancel.is_set():
            return
        if self._task is None or self._task.done():
            self._task = self._scope.spawn(
                self._build(), name=f"decode {self._state.manifest.name}"
            )

    async def _build(self) -> None:
        s = self._state
        folder = self._folder
        try:
            while s.servable_level >= 0 and (
                self.built is None or self.built.level < s.servable_level
            ):
                level = s.servable_level
                old = self.built
                # from the level built last, every level since in one pass
                prior = old if old is not None and old.level < level else None
                repo = s.manifest.is_repository
                path = folder / (str(level) if repo else f"{level}.safetensors")
                folder.mkdir(exist_ok=True)
                t0 = time.monotonic()
                loop = asyncio.get_running_loop()
                began = loop.time()
                self._end_growing()  # a try that failed for a full disk
                growing = None if repo else Growing(level, path)
                self._growing = growing
                try:
                    size = await asyncio.to_thread(
                        self._build_one, s.have.copy(), level, path, prior, growing, loop
                    )
                except OSError as e:
                    if e.errno not in (errno.ENOSPC, errno.EDQUOT) or folder != self._folder:
                        self._failed(level, e)
                        return
                    self._disk.failed(
                        "decode",
                        f"cannot decode {s.manifest.name} level {level} into the store: "
                        f"{e.strerror or e}; using {self._spare}",
                        began,
                    )
                    folder = self._spare  # apps are served while the store's disk is full
                    continue
                except Unusable as e:
                    self._failed(level, e)
                    return
                except Cancelled:  # stopped: the model is dropped or the node stops
                    log.debug("%s: decode of level %d stopped", s.manifest.name, level)
                    return
                took = time.monotonic() - t0
                if took > 0:
                    self._speed = s.manifest.source_bytes / took
                if folder == self._folder:
                    self._disk.succeeded("decode", began)
                if growing is not None:
                    growing.end(True)
                self.built = Built(level, path, size)
                self.builds += 1
                self.error = None
                log.info(
                    "%s v%d: level %d decoded in %.2f s", s.manifest.name, s.version, level, took
                )
                if s.manifest.is_repository:  # the one before stays for a level more
                    old, self.previous = self.previous, old
                if old is not None and old.path != path:
                    await asyncio.to_thread(_remove, old.path)
                self._wake()
        finally:
            self._end_growing()
            self._wake()

    def _advanced(self, growing: Growing, tmp: Path, ready: int, size: int) -> None:
        """A build's progress (in the loop's thread)."""
        first = growing.path is None
        growing.advance(tmp, ready, size)
        if first:  # waiters in get() that take a growing file can send it now
            self._grows.set()
            self._grows = asyncio.Event()

    def _end_growing(self) -> None:
        """The build under way ended (whole, failed or stopped): readers of its file as
        it grew are told, and later requests wait for the next build or use the file."""
        growing, self._growing = self._growing, None
        if growing is not None and growing.ended is None:
            growing.end(False)

    def _build_one(
        self,
        held: Bitfield,
        level: int,
        path: Path,
        prior: Built | None,
        growing: Growing | None,
        loop: asyncio.AbstractEventLoop,
    ) -> int:
        """Build ``level`` at ``path`` from the chunks ``held``, from ``prior`` (a level
        built before) if given, telling ``growing`` of its progress (blocking: in a
        worker thread)."""
        s = self._state
        prior_path = None if prior is None else prior.path
        prior_level = None if prior is None else prior.level
        if s.manifest.is_repository:
            return build_tree(
                s.manifest, s.model_id, self._files, held, level, path,
                prior=prior_path, prior_level=prior_level, cancel=self._cancel,
            )  # fmt: skip

        def progress(tmp: Path, ready: int, size: int) -> None:
            if growing is not None:
                loop.call_soon_threadsafe(self._advanced, growing, tmp, ready, size)

        return build_level(
            s.manifest, s.model_id, self._files, held, level, path,
            prior=prior_path, prior_level=prior_level, cancel=self._cancel, progress=progress,
        )  # fmt: skip

    def _failed(self, level: int, e: Exception) -> None:
        self.error = str(e)
        log.error("cannot decode %s level %d: %s", self._state.manifest.name, level, e)

    def remove(self) -> None:
        """Remove the decoded files (the model is dropped; blocking)."""
        shutil.rmtree(self._folder, ignore_errors=True)
        self.remove_spare()

    def remove_spare(self) -> None:
        """Remove the files decoded into the system's temporary folder while the store's
        disk was full (the node stops: nothing outside the store outlives it; blocking)."""
        shutil.rmtree(self._spare, ignore_errors=True)

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()


def _remove(path: Path) -> None:
    """Remove a superseded decoded level (a file, or a repository's folder)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(OSError):
            path.unlink()
