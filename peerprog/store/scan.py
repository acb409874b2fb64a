"""Model repositories: a folder tree as people ship models, scanned and read for publishing.

:func:`scan_repo` lists the files of a folder (a Hugging Face repository or cache snapshot,
a sentence-transformers model, a diffusers pipeline) that ``--include``/``--exclude`` keep, in
the conventions of ``huggingface_hub`` (``fnmatch`` globs on the relative path; a pattern
ending in ``/`` means everything under that folder). Symlinks are followed, so a cache
snapshot whose files point into ``../../blobs/`` publishes like a plain folder. Every
``.safetensors`` file is coded; every other file is carried whole.

:class:`RepoReader` reads the tensors of every ``.safetensors`` file as one model (each
tensor named ``<path>/<tensor>``, in the order of their data in each file), one tensor at a
time from memory maps, as :class:`~peerprog.formats.reader.ModelReader` does for one file.
(It lives in the store, not in :mod:`peerprog.formats`, because it names tensors and
checks paths by the manifest's rules.)
"""

from __future__ import annotations

import fnmatch
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from peerprog.codec.base import RawTensor
from peerprog.errors import FormatError, InputError
from peerprog.formats.reader import ModelReader, SafetensorsReader, TensorInfo
from peerprog.manifest.tree import MAX_FILES, path_problem, tensor_name

DEFAULT_EXCLUDE = (".git/", ".cache/huggingface/", ".peerprog.json")
"""Left out unless included by name: version control, ``hf download --local-dir``'s own
bookkeeping, and the marker peerprog writes into the directories it hands to apps."""
DUPLICATE_WEIGHTS = (
    "*.bin",
    "*.pt",
    "*.pth",
    "*.ckpt",
    "*.msgpack",
    "*.h5",
    "*.onnx",
    "*.onnx_data",
    "*.gguf",
    "onnx/*",
    "openvino/*",
)
"""Weight formats that usually duplicate a repository's safetensors files."""


@dataclass(frozen=True)
class ScannedFile:
    """A file of the repository to publish."""

    path: str
    """Relative to the repository, ``/``-separated."""
    source: Path
    """Where its bytes are read from (symlinks resolved)."""
    size: int

    @property
    def coded(self) -> bool:
        return self.path.endswith(".safetensors")


@dataclass(frozen=True)
class RepoScan:
    """What a publish of a folder takes."""

    root: Path
    files: tuple[ScannedFile, ...]
    excluded: int
    """Files left out by the patterns."""
    duplicates: tuple[str, ...]
    """Files carried whole that look like another copy of the weights (e.g. a
    ``pytorch_model.bin`` beside ``model.safetensors``): worth an ``--exclude``."""

    @property
    def coded(self) -> tuple[ScannedFile, ...]:
        return tuple(f for f in self.files if f.coded)

    @property
    def whole(self) -> tuple[ScannedFile, ...]:
        return tuple(f for f in self.files if not f.coded)


def _patterns(globs: Sequence[str]) -> list[str]:
    return [g + "*" if g.endswith("/") else g for g in globs]


def kept(path: str, include: Sequence[str], exclude: Sequence[str]) -> bool:
    """Whether ``path`` is published: it matches an ``include`` glob (or there are none)
    and no ``exclude`` glob; the default exclusions apply unless ``include`` names the path
    by a pattern of its own."""
    inc, exc = _patterns(include), _patterns(exclude)
    if inc and not any(fnmatch.fnmatchcase(path, p) for p in inc):
        return False
    if any(fnmatch.fnmatchcase(path, p) for p in exc):
        return False
    defaults = _patterns(DEFAULT_EXCLUDE)
    if any(fnmatch.fnmatchcase(path, p) for p in defaults):
        return bool(inc) and any(fnmatch.fnmatchcase(path, p) for p in inc if p != "*")
    return True


def scan_repo(root: Path, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> RepoScan:
    """The files of ``root`` to publish, sorted by path; :class:`InputError` naming the
    file for one that cannot be read or written back safely, an index naming a file that is
    not there, or a tree of more than :data:`~peerprog.manifest.tree.MAX_FILES` files."""
    root = Path(root)
    if not root.is_dir():
        raise InputError(f"{root}: not a folder")
    found: list[ScannedFile] = []
    excluded = 0
    seen_dirs: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen_dirs:  # a symlink loop, or a folder linked twice
            dirnames[:] = []
            continue
        seen_dirs.add(real)
        dirnames.sort()
        rel_dir = Path(dirpath).relative_to(root).as_posix()
        for fname in sorted(filenames):
            rel = fname if rel_dir == "." else f"{rel_dir}/{fname}"
            if not kept(rel, include, exclude):
                excluded += 1
                continue
            problem = path_problem(rel)
            if problem is not None:
                raise InputError(f"{root / rel}: its path {problem}; exclude it to publish")
            full = Path(dirpath) / fname
            try:
                source = full.resolve(strict=True)
                size = source.stat().st_size
            except (OSError, RuntimeError) as e:
                raise InputError(f"{full}: cannot be read ({e})") from None
            if not source.is_file():
                raise InputError(f"{full}: not a regular file; exclude it to publish")
            found.append(ScannedFile(rel, source, size))
            if len(found) > MAX_FILES:
                raise InputError(
                    f"{root}: more than {MAX_FILES:,} files; narrow it with --include/--exclude"
                )
    if not found:
        raise InputError(f"{root}: no files to publish (after --include/--exclude)")
    found.sort(key=lambda f: f.path)
    files = tuple(found)
    _check_indexes(root, files)
    has_st = any(f.coded for f in files)
    dups = tuple(
        f.path
        for f in files
        if has_st and not f.coded and any(fnmatch.fnmatchcase(f.path, p) for p in DUPLICATE_WEIGHTS)
    )
    return RepoScan(root, files, excluded, dups)


def _check_indexes(root: Path, files: tuple[ScannedFile, ...]) -> None:
    """Every ``*.safetensors.index.json`` names shards that are published."""
    paths = {f.path for f in files}
    for f in files:
        if not f.path.endswith(".safetensors.index.json"):
            continue
        try:
            doc = json.loads(f.source.read_bytes())
            weight_map = doc["weight_map"]
            shards = set(weight_map.values())
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
            raise InputError(f"{root / f.path}: not a readable safetensors index ({e})") from None
        folder = f.path.rpartition("/")[0]
        for shard in sorted(str(s) for s in shards):
            rel = f"{folder}/{shard}" if folder else shard
            if rel not in paths:
                raise InputError(
                    f"{root / f.path}: names {shard!r}, which is not in the repository "
                    "(missing, or left out by --include/--exclude)"
                )


class RepoReader(ModelReader):
    """The tensors of every coded file of a scanned repository, as one model."""

    def __init__(self, scan: RepoScan) -> None:
        super().__init__(scan.root)
        self.scan = scan
        self.shards: list[tuple[ScannedFile, SafetensorsReader]] = []
        self._where: dict[str, tuple[SafetensorsReader, str]] = {}
        try:
            for f in scan.coded:
                try:
                    reader = SafetensorsReader(f.source)
                except FormatError as e:
                    raise FormatError(f"{scan.root / f.path}: {e}") from None
                except OSError as e:
                    raise InputError(f"{scan.root / f.path}: {e.strerror or e}") from None
                self.shards.append((f, reader))
                if reader.path.stat().st_size != f.size:
                    raise InputError(f"{scan.root / f.path}: changed while it was read")
                for inner in reader.data_order:
                    info = reader.info(inner)
                    assert info is not None
                    qname = tensor_name(f.path, inner)
                    self._infos.append(TensorInfo(qname, info.dtype, info.shape))
                    self._where[qname] = (reader, inner)
            self._check_index_names()
        except BaseException:
            self.close()
            raise

    def _check_index_names(self) -> None:
        """An index's tensors are in the shards it names."""
        coded = {f.path: r for f, r in self.shards}
        for f in self.scan.files:
            if not f.path.endswith(".safetensors.index.json"):
                continue
            folder = f.path.rpartition("/")[0]
            weight_map = json.loads(f.source.read_bytes())["weight_map"]
            for tname, shard in weight_map.items():
                rel = f"{folder}/{shard}" if folder else str(shard)
                reader = coded.get(rel)
                if reader is not None and reader.info(tname) is None:
                    raise InputError(
                        f"{self.scan.root / f.path}: names tensor {tname!r:.80} in {shard!r}, "
                        "which does not hold it"
                    )

    def read(self, name: str) -> RawTensor:
        reader, inner = self._where[name]
        return reader.read(inner)

    def close(self) -> None:
        for _, reader in self.shards:
            reader.close()
