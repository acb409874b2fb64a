"""The on-disk store of manifests and chunks (DESIGN.md "Store layout").

```
<store>/names/<name>                      latest model id for the name (text)
<store>/models/<model_id>/manifest.msgpack
<store>/models/<model_id>/chunks/<index>  one file per verified chunk, as published
```

Every path component is validated (names, 64-hex ids, integer indexes), so nothing a peer
sends can make the store touch a file outside its root. Chunks are written only after the
caller verified them; writes are atomic (:mod:`peerprog.store.atomic`).
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Collection
from pathlib import Path

from peerprog.errors import InputError, VerificationError
from peerprog.manifest import (
    Manifest,
    SignedManifest,
    open_envelope,
    valid_model_id,
    valid_name,
    verify_chunk,
)
from peerprog.store.atomic import clean_temporaries, write_atomic


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

    # --- paths -----------------------------------------------------------------------------

    def model_dir(self, model_id: str) -> Path:
        if not valid_model_id(model_id):
            raise InputError(f"{model_id!r:.80} is not a model id")
        return self.root / "models" / model_id

    def manifest_path(self, model_id: str) -> Path:
        return self.model_dir(model_id) / "manifest.msgpack"

    def chunk_path(self, model_id: str, index: int) -> Path:
        if not isinstance(index, int) or index < 0:
            raise InputError(f"{index!r} is not a chunk index")
        return self.model_dir(model_id) / "chunks" / str(index)

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

    # --- manifests -------------------------------------------------------------------------

    def model_ids(self) -> list[str]:
        """Ids of the models whose manifest is stored."""
        return sorted(
            p.name
            for p in (self.root / "models").iterdir()
            if valid_model_id(p.name) and (p / "manifest.msgpack").is_file()
        )

    def has_manifest(self, model_id: str) -> bool:
        return self.manifest_path(model_id).is_file()

    def read_manifest_bytes(self, model_id: str) -> bytes | None:
        try:
            return self.manifest_path(model_id).read_bytes()
        except FileNotFoundError:
            return None

    def put_manifest(self, signed: SignedManifest) -> None:
        """Store a verified manifest envelope (its chunks folder is created too); a stored
        file that differs (e.g. damaged on disk) is replaced."""
        self.make_model_dir(signed.model_id)
        if self.read_manifest_bytes(signed.model_id) != signed.envelope:
            write_atomic(self.manifest_path(signed.model_id), signed.envelope)

    def make_model_dir(self, model_id: str) -> None:
        """Create a model's folder (chunks are written only into an existing one)."""
        (self.model_dir(model_id) / "chunks").mkdir(parents=True, exist_ok=True)

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
        """Delete a model's folder (manifest and chunks)."""
        shutil.rmtree(self.model_dir(model_id), ignore_errors=True)

    # --- chunks ----------------------------------------------------------------------------

    def has_chunk(self, model_id: str, index: int) -> bool:
        return self.chunk_path(model_id, index).is_file()

    def read_chunk(self, model_id: str, index: int) -> bytes | None:
        try:
            return self.chunk_path(model_id, index).read_bytes()
        except FileNotFoundError:
            return None

    def write_chunk(self, model_id: str, index: int, data: bytes | memoryview) -> None:
        """Store a chunk the caller has verified, in the model's folder:
        :class:`FileNotFoundError` if there is none (the model was removed meanwhile).

        The folder is not fsynced per chunk: a rename lost to a power failure only means the
        chunk is fetched again (chunks are verified when a store is opened).
        """
        write_atomic(self.chunk_path(model_id, index), data, sync_dir=False)

    def chunk_indexes(self, model_id: str) -> list[int]:
        """Indexes of the chunk files present (not verified; see :meth:`scan`)."""
        folder = self.model_dir(model_id) / "chunks"
        clean_temporaries(folder)
        try:
            names = [p.name for p in folder.iterdir()]
        except FileNotFoundError:
            return []
        return sorted(int(n) for n in names if n.isascii() and n.isdigit())

    def scan(self, model_id: str, manifest: Manifest, *, verify: bool = True) -> list[int]:
        """The chunks held, each checked against ``manifest``; a bad file is deleted."""
        held = []
        for i in self.chunk_indexes(model_id):
            if i >= len(manifest.chunks):
                self.chunk_path(model_id, i).unlink(missing_ok=True)
                continue
            if verify:
                data = self.read_chunk(model_id, i)
                try:
                    verify_chunk(manifest, i, data or b"")
                except VerificationError:
                    self.chunk_path(model_id, i).unlink(missing_ok=True)
                    continue
            held.append(i)
        return held
