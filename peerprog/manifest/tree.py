"""A repository's files in the manifest: what each one is and how it is rebuilt.

A model published from a folder (a Hugging Face repository, a sentence-transformers model, a
diffusers pipeline) lists every file of the tree. A file is either

* ``whole`` — carried as it is: its bytes are a segment of level 0's stream (``blob``); or
* ``safetensors`` — coded: its header (the 8-byte length and the JSON, byte for byte as the
  source has it) is the level-0 segment ``blob``, and its tensors are the manifest's tensors
  ``first … first + count - 1``, in the order of their data in the file. The file at a level is
  the header followed by those tensors decoded at that level; at the last level of a lossless
  codec it is byte-identical to the source (``sha256``).

Paths are relative, ``/``-separated, and can never leave the folder they are written into:
:func:`check_path` is the one rule, used by the manifest parser (untrusted bodies), by publish
and by the clients that write a tree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from peerprog.codec.layout import Segment
from peerprog.errors import VerificationError

WHOLE = "whole"
SAFETENSORS = "safetensors"
KINDS = (WHOLE, SAFETENSORS)
MAX_FILES = 1 << 16
"""Files in one repository (a few hundred is usual; 65,536 leaves room for odd ones)."""
MARKER = ".peerprog.json"
"""The file peerprog writes into each directory it builds: which model and level it holds
(the tree document of ``GET /v1/models/<name>/tree``). No repository may hold a file of
that name."""
MAX_PATH = 1024
MAX_DEPTH = 32


@dataclass(frozen=True)
class RepoFile:
    """One file of a repository."""

    path: str
    """Relative, ``/``-separated (:func:`check_path`)."""
    kind: str
    """:data:`WHOLE` or :data:`SAFETENSORS`."""
    size: int
    """Its size in bytes (at every level: a decoded file has the source's size)."""
    sha256: bytes
    """The SHA-256 of the source file (a coded file matches it at the exact level)."""
    blob: Segment
    """A segment of level 0: the whole file, or a safetensors file's header."""
    first_tensor: int = 0
    tensor_count: int = 0
    """Its tensors in the manifest (``safetensors`` only), in the order of their data."""

    @property
    def coded(self) -> bool:
        return self.kind == SAFETENSORS

    @property
    def tensors(self) -> range:
        """Indices of its tensors in :attr:`Manifest.tensors`."""
        return range(self.first_tensor, self.first_tensor + self.tensor_count)

    def to_wire(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "kind": self.kind,
            "size": self.size,
            "sha256": self.sha256,
            "blob": [self.blob.offset, self.blob.length],
            "tensors": [self.first_tensor, self.tensor_count],
        }


def tensor_name(path: str, name: str) -> str:
    """The manifest's name of tensor ``name`` of the repository file ``path``: unique across
    the tree (two components may hold a ``conv_in.weight`` each)."""
    return f"{path}/{name}"


def path_problem(path: object) -> str | None:
    """Why ``path`` may not be written, or None if it is a safe relative path."""
    if not isinstance(path, str) or not path:
        return "is empty or not a string"
    if len(path) > MAX_PATH:
        return f"is longer than {MAX_PATH} characters"
    if "\x00" in path:
        return "contains a NUL"
    if "\\" in path:
        return "contains a backslash"
    if path.startswith("/"):
        return "is absolute"
    if path == MARKER:
        return "is the name of peerprog's own marker file"
    parts = path.split("/")
    if len(parts) > MAX_DEPTH:
        return f"is deeper than {MAX_DEPTH} folders"
    for part in parts:
        if part in ("", ".", ".."):
            return "has an empty, '.' or '..' component"
        if any(ord(c) < 32 for c in part):
            return "contains a control character"
    return None


def check_path(path: object) -> str:
    """``path`` if it is a safe relative path; :class:`VerificationError` naming it if not."""
    problem = path_problem(path)
    if problem is not None:
        raise VerificationError(f"manifest: file path {str(path)[:120]!r} {problem}")
    assert isinstance(path, str)
    return path


def parse_files(raw: object, level0_bytes: int, tensors: int) -> tuple[RepoFile, ...]:
    """The ``files`` of an untrusted manifest body, checked: safe unique paths, no file
    inside another's path, blobs inside level 0, and coded files' tensor ranges in order,
    disjoint and covering every tensor."""
    if not isinstance(raw, list):
        raise VerificationError("manifest: files is not a list")
    if len(raw) > MAX_FILES:
        raise VerificationError(f"manifest: {len(raw)} files is more than {MAX_FILES}")
    out: list[RepoFile] = []
    for i, f in enumerate(raw):
        out.append(_parse_file(f, i, level0_bytes))
    check_tree(out, tensors)
    return tuple(out)


def _parse_file(f: object, i: int, level0_bytes: int) -> RepoFile:
    where = f"manifest: files[{i}]"
    if not isinstance(f, dict) or set(f) != {"path", "kind", "size", "sha256", "blob", "tensors"}:
        raise VerificationError(f"{where} is not a file entry")
    path = check_path(f["path"])
    kind, size, sha, blob, tens = f["kind"], f["size"], f["sha256"], f["blob"], f["tensors"]
    if kind not in KINDS:
        raise VerificationError(f"{where} ({path}) has an unknown kind")
    if not _nat(size) or not isinstance(sha, bytes) or len(sha) != 32:
        raise VerificationError(f"{where} ({path}) has a bad size or sha256")
    if not _pair(blob) or blob[0] + blob[1] > level0_bytes:
        raise VerificationError(f"{where} ({path}) blob is outside level 0")
    if not _pair(tens):
        raise VerificationError(f"{where} ({path}) has a bad tensor range")
    if kind == WHOLE and (blob[1] != size or tens != [0, 0]):
        raise VerificationError(f"{where} ({path}): a whole file's blob must be the file")
    if kind == SAFETENSORS and blob[1] > size:
        raise VerificationError(f"{where} ({path}): its header is larger than the file")
    return RepoFile(path, kind, size, sha, Segment(blob[0], blob[1]), tens[0], tens[1])


def check_tree(files: Sequence[RepoFile], tensors: int) -> None:
    """Paths unique and not nested in one another; coded files' tensor ranges in manifest
    order, disjoint, and covering all ``tensors``."""
    paths = {f.path for f in files}
    if len(paths) != len(files):
        raise VerificationError("manifest: a file path is listed twice")
    for f in files:
        parts = f.path.split("/")
        for k in range(1, len(parts)):
            if "/".join(parts[:k]) in paths:
                raise VerificationError(f"manifest: {f.path!r} lies inside another file's path")
    nxt = 0
    for f in files:
        if f.coded:
            if f.first_tensor != nxt:
                raise VerificationError(f"manifest: the tensors of {f.path!r} are out of order")
            nxt += f.tensor_count
    if files and nxt != tensors:
        raise VerificationError("manifest: the files' tensors do not cover every tensor")


def _nat(v: object) -> bool:
    return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < 1 << 62


def _pair(v: object) -> bool:
    return isinstance(v, list) and len(v) == 2 and all(_nat(x) for x in v)
