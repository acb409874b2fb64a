r"""A repository handed to an app as a directory: :class:`BestDir`, and :class:`DirStage`,
which writes one level's files beside the destination and swaps them into place whole.

Shared by :class:`~peerprog.api.client.Client` and
:class:`~peerprog.api.client.AsyncClient` (they differ only in how they send requests):

:func:`best_dir_calls` is the whole exchange as a generator of :class:`Call`\ s (sans-IO, as
h11 is); each client only sends them:

1. ``GET /v1/models/<name>/tree`` gives the level and its files (:func:`parse_tree`: every
   path checked, so nothing the daemon says is written outside the destination);
2. :meth:`DirStage.to_fetch` lists the files to ask for; a file carried whole that the
   destination already holds with the same SHA-256 (from its marker) is hard-linked instead;
3. each file is streamed straight to disk (:meth:`DirStage.open`), never held in memory;
4. :meth:`DirStage.finish` writes the marker (``.peerprog.json``: the tree document), makes
   the files durable, and puts the folder in place of the destination in one step
   (:func:`peerprog.dirswap.swap_dir`): a reader sees the old level or the new, never half.

The destination is refused if it exists and is not a folder peerprog wrote (no marker), so
an app can never have its own files replaced by mistake.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
from collections.abc import Generator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from peerprog.api.errors import ApiError, LevelGone
from peerprog.api.wire import Level, error_of, file_path, json_body, tree_path
from peerprog.dirswap import swap_dir
from peerprog.manifest.tree import MARKER, path_problem

TREE_TRIES = 5
"""Times a directory is begun again when the daemon moves on to a newer level mid-way."""

CREATE = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)


@dataclass(frozen=True)
class TreeFile:
    """One file of a repository's level, as the tree document lists it."""

    path: str
    size: int
    sha256: str
    """The source file's SHA-256 (hex); a coded file has it at the exact level only."""
    coded: bool


@dataclass(frozen=True)
class BestDir:
    """A repository at one level, written as a directory an app's library loads
    (``from_pretrained(path)``, ``SentenceTransformer(path)``)."""

    path: Path
    name: str
    model_id: str
    version: int
    level: int
    levels_total: int
    exact: bool
    """Every file byte for byte the published one."""
    bytes_received: int
    bytes_total: int
    etag: str
    files: tuple[TreeFile, ...]

    @property
    def last(self) -> bool:
        """Whether this is the model's last level: nothing better will come."""
        return self.level == self.levels_total - 1


@dataclass(frozen=True)
class Tree:
    """A ``tree`` answer, checked."""

    doc: dict[str, Any]
    etag: str
    files: tuple[TreeFile, ...]

    @property
    def model_id(self) -> str:
        return str(self.doc["model_id"])

    @property
    def level(self) -> int:
        return int(self.doc["level"])


def parse_tree(doc: Any, headers: Mapping[str, str]) -> Tree:
    """A ``tree`` answer's document; :class:`ApiError` if it is malformed or names a path
    that could leave the destination."""
    try:
        files = []
        for f in doc["files"]:
            problem = path_problem(f["path"])
            if problem is not None:
                raise ApiError(f"the daemon's tree names a file whose path {problem}")
            files.append(TreeFile(f["path"], int(f["size"]), str(f["sha256"]), bool(f["coded"])))
        keys = ("name", "model_id", "version", "level", "levels_total")
        missing = [k for k in keys if k not in doc]
        if missing:
            raise KeyError(", ".join(missing))
    except (KeyError, TypeError, ValueError) as e:
        raise ApiError(f"the daemon's tree answer is malformed ({e})") from None
    return Tree(doc, headers.get("etag", ""), tuple(files))


def read_marker(folder: Path) -> dict[str, Any] | None:
    """The tree document a folder peerprog wrote holds, or None."""
    try:
        doc = json.loads((folder / MARKER).read_bytes())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


class DirStage:
    """One level's files, written into a folder beside ``dest`` and swapped into place."""

    def __init__(self, dest: Path, tree: Tree) -> None:
        self.dest = Path(dest)
        self.tree = tree
        self._old: dict[str, str] = {}
        if os.path.lexists(self.dest):
            if self.dest.is_symlink() or not self.dest.is_dir():
                raise ApiError(f"{self.dest} exists and is not a directory")
            marker = read_marker(self.dest)
            if marker is None and any(self.dest.iterdir()):
                raise ApiError(
                    f"{self.dest} is a directory peerprog did not write (it has no {MARKER}); "
                    "remove it or choose another"
                )
            for f in (marker or {}).get("files", []):
                if isinstance(f, dict) and isinstance(f.get("path"), str):
                    self._old[f["path"]] = str(f.get("sha256"))
        self.dest.parent.mkdir(parents=True, exist_ok=True)
        token = secrets.token_hex(4)
        self.folder = self.dest.parent / f".{self.dest.name}.peerprog-{os.getpid()}-{token}"
        self.folder.mkdir()
        self._done = False

    def __enter__(self) -> DirStage:
        return self

    def __exit__(self, *exc: object) -> None:
        if not self._done:
            shutil.rmtree(self.folder, ignore_errors=True)

    def to_fetch(self) -> Iterator[TreeFile]:
        """The files to ask the daemon for (the others are linked from the destination)."""
        for f in self.tree.files:
            if not f.coded and self._old.get(f.path) == f.sha256 and self._link(f):
                continue
            yield f

    def _link(self, f: TreeFile) -> bool:
        src = self.dest / f.path
        try:
            if src.is_symlink() or not src.is_file() or src.stat().st_size != f.size:
                return False
            (self.folder / f.path).parent.mkdir(parents=True, exist_ok=True)
            os.link(src, self.folder / f.path, follow_symlinks=False)
        except OSError:
            return False
        return True

    @contextlib.contextmanager
    def open(self, f: TreeFile) -> Iterator[BinaryIO]:
        """A new file for ``f``'s bytes; checked for its size and made durable on close."""
        target = self.folder / f.path
        target.parent.mkdir(parents=True, exist_ok=True)
        with os.fdopen(os.open(target, CREATE, 0o644), "wb") as out:
            yield out
            out.flush()
            size = os.fstat(out.fileno()).st_size
            if size != f.size:
                raise ApiError(f"{f.path}: the daemon sent {size} of its {f.size} bytes")
            os.fsync(out.fileno())

    def finish(self) -> BestDir:
        """Write the marker and put the folder in place of the destination."""
        doc = self.tree.doc
        marker = self.folder / MARKER
        with os.fdopen(os.open(marker, CREATE, 0o644), "w") as out:
            json.dump(doc, out, indent=1)
            out.flush()
            os.fsync(out.fileno())
        for dirpath, _, _ in os.walk(self.folder):
            fd = os.open(dirpath, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        swap_dir(self.folder, self.dest)
        self._done = True
        return BestDir(
            path=self.dest,
            name=str(doc["name"]),
            model_id=str(doc["model_id"]),
            version=int(doc["version"]),
            level=int(doc["level"]),
            levels_total=int(doc["levels_total"]),
            exact=bool(doc["exact"]),
            bytes_received=int(doc.get("bytes_received", 0)),
            bytes_total=int(doc.get("bytes_total", 0)),
            etag=self.tree.etag,
            files=self.tree.files,
        )


Answer = tuple[int, Mapping[str, str], bytearray]
"""Status, headers (names in lower case), body (empty when written to the call's sink)."""


@dataclass(frozen=True)
class Call:
    """A ``GET`` a client sends for :func:`best_dir_calls`."""

    target: str
    headers: Mapping[str, str] | None = None
    wait: float | None = None
    sink: BinaryIO | None = None
    """Where a 200 answer's body goes (else it is returned)."""


def best_dir_calls(
    name: str, dest: Path, min_level: Level, wait: float | None, etag: str | None
) -> Generator[Call, Answer, BestDir | None]:
    """The requests that write the best level of the repository ``name`` as ``dest``: send
    each :class:`Call` yielded and send its answer back in. Returns the :class:`BestDir`, or
    None when the daemon answers 304 to ``etag``. A level the daemon moves past mid-way
    (410) is begun again at the newer level."""
    for _ in range(TREE_TRIES):
        headers = {"If-None-Match": etag} if etag else None
        status, got, body = yield Call(tree_path(name, min_level, wait), headers, wait)
        if status == 304:
            return None
        if status >= 400:
            raise error_of(status, body, got.get("retry-after"))
        tree = parse_tree(json_body(body), got)
        try:
            with DirStage(dest, tree) as stage:
                for f in stage.to_fetch():
                    with stage.open(f) as out:
                        target = file_path(name, f.path, tree.model_id, tree.level)
                        status, got, body = yield Call(target, sink=out)
                        if status >= 400:
                            raise error_of(status, body, got.get("retry-after"))
                return stage.finish()
        except LevelGone:
            min_level, etag = tree.level, None  # a newer level came meanwhile: take it
    raise LevelGone(f"{name}: the daemon kept moving to newer levels; try again")
