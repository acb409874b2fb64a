""":class:`BestModel`: what ``Client.best`` returns — one model at one level, as numpy
arrays that map the received file (no copy in memory), with the means to hand it to
torch."""

from __future__ import annotations

import contextlib
import dataclasses
import mmap
import os
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np
import numpy.typing as npt

from peerprog.api.errors import ApiError
from peerprog.errors import FormatError
from peerprog.formats import parse_safetensors

Array = npt.NDArray[Any]


@dataclass(frozen=True)
class BestModel:
    """The best approximation of a model the daemon had, as a safetensors file parsed."""

    name: str
    model_id: str
    version: int
    level: int
    """The level of this approximation (0 … ``levels_total - 1``)."""
    levels_total: int
    exact: bool
    """Bit for bit the published model."""
    bytes_received: int
    """Bytes of the levels this approximation is made of."""
    bytes_total: int
    etag: str
    tensors: dict[str, Array] = field(repr=False)
    """name → numpy array, writable, in the dtype published (bfloat16 as ``uint16`` bit
    patterns: see :attr:`dtypes`)."""
    dtypes: dict[str, str] = field(repr=False)
    """name → peerprog dtype name (``float32``, ``bfloat16``…)."""
    metadata: dict[str, str] = field(repr=False)
    """The safetensors ``__metadata__``: the source file's own keys and the ``peerprog.*``
    keys."""
    raw: Any = field(repr=False)
    """The safetensors file as received, mapped (the arrays are views into it)."""
    path: Path | None = None
    """The file it was written to (:meth:`Client.best_path`), if any."""

    @property
    def last(self) -> bool:
        """Whether this is the model's last level: nothing better will come."""
        return self.level == self.levels_total - 1

    def save(self, path: str | os.PathLike[str]) -> int:
        """Write the safetensors file to ``path`` (atomically); returns its size."""
        from peerprog.store.atomic import write_atomic

        target = Path(path)
        view = memoryview(self.raw)
        write_atomic(target, view)
        return len(view)

    def torch_tensors(self) -> dict[str, Any]:
        """The tensors as ``torch.Tensor``s sharing this model's memory where possible."""
        return {name: to_torch(arr, self.dtypes[name]) for name, arr in self.tensors.items()}

    def load_into(self, module: Any, *, strict: bool = True) -> Any:
        """``module.load_state_dict`` with these tensors (torch converts dtypes as needed);
        returns what it returns (missing and unexpected keys)."""
        return module.load_state_dict(self.torch_tensors(), strict=strict)


def to_torch(arr: Array, dtype: str) -> Any:
    """A numpy array of peerprog dtype ``dtype`` as a ``torch.Tensor`` (torch imported here)."""
    import torch

    if not arr.flags.aligned or not arr.flags.writeable:
        arr = arr.copy()
    if dtype == "bfloat16":
        return torch.from_numpy(arr.view(np.int16)).view(torch.bfloat16)
    return torch.from_numpy(arr)


PIECE = 1 << 20
"""Bytes read from the socket at a time into a ``best`` file."""


class BestSink:
    """Where a ``best`` answer is written: a new file at ``path`` (fsynced and renamed into
    place by :meth:`finish`, so that a crash leaves the old file or the whole new one), or
    an unnamed temporary file; removed unless finished."""

    def __init__(self, path: Path | None) -> None:
        self._path = path
        self._tmp = None if path is None else path.with_name(f".{path.name}.{os.getpid()}.part")
        self.file: BinaryIO = (
            tempfile.TemporaryFile() if self._tmp is None else open(self._tmp, "w+b")  # noqa: SIM115
        )
        self._done = False

    def __enter__(self) -> BestSink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.file.close()
        if not self._done and self._tmp is not None:
            with contextlib.suppress(OSError):
                self._tmp.unlink()

    def finish(self, headers: Mapping[str, str]) -> BestModel:
        """The written answer, mapped and parsed (copy-on-write: the arrays are writable
        and the file stays as received)."""
        self.file.flush()
        size = os.fstat(self.file.fileno()).st_size
        declared = headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) != size:
            raise ApiError(f"the daemon closed the connection after {size} of {declared} bytes")
        raw = mmap.mmap(self.file.fileno(), size, access=mmap.ACCESS_COPY) if size else bytearray()
        model = parse_best(raw, headers)
        if self._tmp is not None and self._path is not None:
            # durable before it is in place: a crash leaves the old file or the whole new one
            os.fsync(self.file.fileno())
            os.replace(self._tmp, self._path)
            _fsync_dir(self._path.parent)
            model = dataclasses.replace(model, path=self._path)
        self._done = True
        return model


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def parse_best(body: Any, headers: Mapping[str, str]) -> BestModel:
    """Read a ``best`` answer (``headers`` with lower-case names); :class:`ApiError` if it
    is not a peerprog safetensors file."""
    try:
        tensors, meta = parse_safetensors(memoryview(body), copy=False)
    except FormatError as e:
        raise ApiError(f"the daemon's answer is not a valid safetensors file: {e}") from None
    try:
        level = int(meta["peerprog.level"])
        levels_total = int(meta["peerprog.levels_total"])
        model = BestModel(
            name=meta["peerprog.name"],
            model_id=meta["peerprog.model_id"],
            version=int(meta["peerprog.version"]),
            level=level,
            levels_total=levels_total,
            exact=meta.get("peerprog.exact") == "true",
            bytes_received=int(meta["peerprog.bytes_received"]),
            bytes_total=int(meta["peerprog.bytes_total"]),
            etag=headers.get("etag", ""),
            tensors={name: t.array for name, t in tensors.items()},
            dtypes={name: t.dtype for name, t in tensors.items()},
            metadata=meta,
            raw=body,
        )
    except (KeyError, ValueError) as e:
        raise ApiError(f"the daemon's answer lacks its peerprog.* metadata ({e})") from None
    if headers.get("peerprog-level", str(level)) != str(level):
        raise ApiError("the daemon's answer has a Peerprog-Level header unlike its metadata")
    return model
