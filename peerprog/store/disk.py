"""The on-disk store (layout version 2): manifests, level files, names.

```
<store>/names/<name>                      latest model id for the name (text)
<store>/wanted                            names an app asked the node to fetch (node-private)
<store>/models/<model_id>/manifest.msgpack
<store>/models/<model_id>/levels/<n>      level n's encoded bytes; chunk k at its offset
<store>/models/<model_id>/verified        which chunks are verified (node-private)
<store>/models/<model_id>/decoded/        decoded levels as safetensors, or folders for a
                                          repository (node-private)
```

Every path component is validated (names, 64-hex ids, level numbers), so nothing a peer
sends can make the store touch a file outside its root. A publish is written into a
``models/.tmp-*`` folder and renamed into place whole; leftovers of interrupted writes are
removed when the store is opened. A model folder of the first layout (one ``chunks/<index>``
file per chunk) is migrated to level files when the store is opened: the chunks that
verify are copied into place, recorded, and the old files removed, in an order a crash at
any point can resume.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import secrets
import shutil
import time
from collections.abc import Collection, Iterator
from pathlib import Path

from peerprog.errors import InputError, PeerprogError, VerificationError
from peerprog.manifest import (
    SignedManifest,
    open_envelope,
    valid_model_id,
    valid_name,
    verify_chunk,
)
from peerprog.store.assemble import build_level
from peerprog.store.assemble_tree import build_tree
from peerprog.store.atomic import TMP_PREFIX, clean_temporaries, fsync_dir, write_atomic
from peerprog.store.levels import LEVELS, ModelFiles
from peerprog.swarm import Bitfield

log = logging.getLogger("peerprog.store")
MANIFEST = "manifest.msgpack"
WANTED = "wanted"
LOCK = ".lock"
DECODED = "decoded"
TORRENT = "torrent"
"""The model's BitTorrent v2 torrent (:mod:`peerprog.manifest.torrent`), when it has one."""
PUBLISHED = "published"
"""An empty file in a model's folder: the model was published into this store (this node
is its origin), not fetched."""
V1_CHUNKS = "chunks"


class Store:
    """A store rooted at ``root`` (created if missing)."""

    def __init__(self, root: Path, *, create: bool = True) -> None:
        self.root = Path(root)
        if create:
            try:
                (self.root / "names").mkdir(parents=True, exist_ok=True)
                (self.root / "models").mkdir(parents=True, exist_ok=True)
            except OSError as e:
                raise InputError(f"{self.root}: cannot create store ({e.strerror})") from None
        elif not (self.root / "models").is_dir():
            raise InputError(f"{self.root}: not a peerprog store (no models/ folder)")
        clean_temporaries(self.root / "names")
        if create:
            self._clean_models()

    # --- paths -----------------------------------------------------------------------------

    def model_dir(self, model_id: str) -> Path:
        if not valid_model_id(model_id):
            raise InputError(f"{model_id!r:.80} is not a model id")
        return self.root / "models" / model_id

    def manifest_path(self, model_id: str) -> Path:
        return self.model_dir(model_id) / MANIFEST

    def level_path(self, model_id: str, level: int) -> Path:
        if not isinstance(level, int) or isinstance(level, bool) or level < 0:
            raise InputError(f"{level!r} is not a level")
        return self.model_dir(model_id) / LEVELS / str(level)

    def torrent_path(self, model_id: str) -> Path:
        return self.model_dir(model_id) / TORRENT

    def decoded_dir(self, model_id: str) -> Path:
        return self.model_dir(model_id) / DECODED

    def name_path(self, name: str) -> Path:
        if not valid_name(name):
            raise InputError(f"{name!r:.80} is not a valid model name")
        return self.root / "names" / name

    # --- names -----------------------------------------------------------------------------

    def resolve(self, name: str) -> str | None:
        """The model id ``names/<name>`` points at, or None."""
        try:
            text = self.name_path(name).read_text().strip()
        except FileNotFoundError:
            return None
        return text if valid_model_id(text) else None

    def set_name(self, name: str, model_id: str) -> None:
        """Point ``names/<name>`` at ``model_id`` (atomically)."""
        self.model_dir(model_id)
        write_atomic(self.name_path(name), (model_id + "\n").encode())

    def clear_name(self, name: str) -> None:
        with contextlib.suppress(FileNotFoundError):
            self.name_path(name).unlink()

    def names(self) -> dict[str, str]:
        """Every name and the id it points at."""
        out = {}
        for p in sorted((self.root / "names").iterdir()):
            if valid_name(p.name) and (mid := self.resolve(p.name)):
                out[p.name] = mid
        return out

    # --- wanted names (node-private) --------------------------------------------------------

    def wanted(self) -> list[str]:
        """The names the node was asked to keep up to date (``wanted``, one per line)."""
        try:
            lines = (self.root / WANTED).read_text().splitlines()
        except FileNotFoundError:
            return []
        return [n for n in (line.strip() for line in lines) if valid_name(n)]

    def set_wanted(self, names: Collection[str]) -> None:
        """Replace the list of wanted names (atomically)."""
        write_atomic(self.root / WANTED, "".join(f"{n}\n" for n in sorted(names)).encode())

    # --- manifests -------------------------------------------------------------------------

    def model_ids(self) -> list[str]:
        """Ids of the models whose manifest is stored."""
        return sorted(
            p.name
            for p in (self.root / "models").iterdir()
            if valid_model_id(p.name) and (p / MANIFEST).is_file()
        )

    def published_here(self, model_id: str) -> bool:
        """Whether the model was published into this store rather than fetched."""
        return (self.model_dir(model_id) / PUBLISHED).is_file()

    def has_manifest(self, model_id: str) -> bool:
        return self.manifest_path(model_id).is_file()

    def read_manifest_bytes(self, model_id: str) -> bytes | None:
        try:
            return self.manifest_path(model_id).read_bytes()
        except FileNotFoundError:
            return None

    def put_manifest(self, signed: SignedManifest) -> None:
        """Store a verified manifest envelope (its model folder is created too); a stored
        file that differs (e.g. damaged on disk) is replaced."""
        self.model_dir(signed.model_id).mkdir(parents=True, exist_ok=True)
        if self.read_manifest_bytes(signed.model_id) != signed.envelope:
            write_atomic(self.manifest_path(signed.model_id), signed.envelope)

    def read_torrent(self, model_id: str) -> bytes | None:
        """The model's stored ``.torrent`` file, if it has one (as written: checked by
        whoever reads it)."""
        try:
            return self.torrent_path(model_id).read_bytes()
        except FileNotFoundError:
            return None

    def put_torrent(self, model_id: str, data: bytes) -> None:
        """Store a model's checked ``.torrent`` file (atomically)."""
        write_atomic(self.torrent_path(model_id), data)

    def load_manifest(self, model_id: str, trusted: Collection[str] | None) -> SignedManifest:
        """Read and verify a stored manifest (:class:`VerificationError` if tampered)."""
        data = self.read_manifest_bytes(model_id)
        if data is None:
            raise InputError(f"model {model_id[:16]}… has no manifest in {self.root}")
        try:
            return open_envelope(data, trusted, expect_id=model_id)
        except VerificationError as e:
            raise VerificationError(f"stored manifest of {model_id[:16]}…: {e}") from None

    def remove_model(self, model_id: str) -> None:
        """Delete a model's folder (manifest, level files, records). It is renamed away
        first, so that a write still under way cannot bring any of it back."""
        folder = self.model_dir(model_id)
        gone = folder.with_name(f"{TMP_PREFIX}removed-{model_id[:16]}-{secrets.token_hex(4)}")
        try:
            os.rename(folder, gone)
        except FileNotFoundError:
            return
        for _ in range(20):  # a decode thread being stopped may still add a file meanwhile
            shutil.rmtree(gone, ignore_errors=True)
            if not gone.exists():
                return
            time.sleep(0.05)
        log.warning("store: could not remove %s entirely", gone)

    # --- level files -----------------------------------------------------------------------

    def open_files(self, signed: SignedManifest) -> ModelFiles:
        """The level files of a stored model (created, empty, if missing)."""
        folder = self.model_dir(signed.model_id)
        if not (folder / MANIFEST).is_file():
            raise FileNotFoundError(f"{folder}: no manifest")
        return ModelFiles(folder, signed.manifest)

    def held(self, signed: SignedManifest) -> Bitfield:
        """The verified chunks of a stored model (blocking)."""
        with self.open_files(signed) as files:
            return files.recorded()

    def decode(
        self,
        signed: SignedManifest,
        level: int,
        out: Path,
        *,
        prior: Path | None = None,
        prior_level: int | None = None,
    ) -> int:
        """Write a stored model decoded at ``level`` to ``out`` as safetensors, or, for a
        repository, as the folder ``out`` with its marker (from its verified chunks;
        ``prior``: its decoded file or folder of level ``prior_level``, default the level
        before, if any). Returns the bytes written;
        :class:`~peerprog.store.assemble.Unusable` if a chunk is missing. Blocking."""
        with self.open_files(signed) as files:
            held = files.recorded()
            if signed.manifest.is_repository:
                return build_tree(
                    signed.manifest, signed.model_id, files, held, level, out, prior=prior,
                    prior_level=prior_level, durable=True,
                )  # fmt: skip
            return build_level(
                signed.manifest, signed.model_id, files, held, level, out, prior=prior,
                prior_level=prior_level,
            )  # fmt: skip

    @contextlib.contextmanager
    def staging(self) -> Iterator[Path]:
        """A new folder in which a publish writes a model before it has an id: locked
        while in use (so that another process opening the store leaves it alone), removed
        if the block fails (commit it with :meth:`commit` inside the block)."""
        path = self.root / "models" / f"{TMP_PREFIX}publish-{secrets.token_hex(6)}"
        path.mkdir()
        fd = os.open(path / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield path
        except BaseException:
            shutil.rmtree(path, ignore_errors=True)
            raise
        finally:
            os.close(fd)

    def commit(self, staged: Path, model_id: str) -> None:
        """Rename a staged model folder into place (durably); if the model is there
        already, the staged copy is dropped."""
        target = self.model_dir(model_id)
        with contextlib.suppress(FileNotFoundError):
            (staged / LOCK).unlink()
        try:
            os.rename(staged, target)
        except OSError:
            if not (target / MANIFEST).is_file():
                raise
            shutil.rmtree(staged, ignore_errors=True)
        fsync_dir(self.root / "models")

    # --- at open ---------------------------------------------------------------------------

    def _clean_models(self) -> None:
        """Remove interrupted publishes and writes, and migrate first-layout models."""
        models = self.root / "models"
        for p in models.iterdir():
            if p.name.startswith(TMP_PREFIX):
                _remove_unless_locked(p)
            elif valid_model_id(p.name) and p.is_dir():
                clean_temporaries(p)
                if (p / V1_CHUNKS).is_dir():
                    self._migrate(p.name)

    def _migrate(self, model_id: str) -> None:
        """Layout 1 → 2 for one model (its manifest must read; its signature is checked,
        not its publisher, which the node checks later)."""
        folder = self.model_dir(model_id)
        old = folder / V1_CHUNKS
        if (folder / LEVELS).is_dir():  # a migration that ended before removing the old files
            shutil.rmtree(old, ignore_errors=True)
            return
        try:
            signed = self.load_manifest(model_id, None)
        except PeerprogError as e:
            log.warning("store: cannot migrate model %s… (%s); left as it is", model_id[:12], e)
            return
        m = signed.manifest
        work = folder / f"{TMP_PREFIX}migrate"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir()
        moved = 0
        with ModelFiles(work, m) as files:
            have = Bitfield(len(m.chunks))
            for i in range(len(m.chunks)):
                try:
                    data = (old / str(i)).read_bytes()
                    verify_chunk(m, i, data)
                except (OSError, VerificationError):
                    continue
                files.write_chunk(i, data)
                have.set(i)
                moved += 1
            files.record(have)
        fsync_dir(work / LEVELS)
        os.replace(work / "verified", folder / "verified")
        os.rename(work / LEVELS, folder / LEVELS)
        fsync_dir(folder)
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(old, ignore_errors=True)
        log.info("store: migrated %s v%d to layout 2 (%d chunks)", m.name, m.version, moved)


def _remove_unless_locked(folder: Path) -> None:
    """Remove a staging folder, unless a publish still holds its lock."""
    try:
        fd = os.open(folder / LOCK, os.O_RDWR)
    except FileNotFoundError:
        shutil.rmtree(folder, ignore_errors=True)
        return
    except OSError:
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return  # in use by a publish
    finally:
        os.close(fd)
    shutil.rmtree(folder, ignore_errors=True)
