""":class:`BestModel`: what ``Client.best`` returns — one model at one level, as numpy
arrays that view the received bytes (no copy), with the means to hand it to torch."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    """The safetensors ``__metadata__`` (the ``peerprog.*`` keys)."""
    raw: bytearray = field(repr=False)
    """The safetensors file as received (the arrays are views into it)."""

    @property
    def last(self) -> bool:
        """Whether this is the model's last level: nothing better will come."""
        return self.level == self.levels_total - 1

    def save(self, path: str | os.PathLike[str]) -> int:
        """Write the safetensors file to ``path`` (atomically); returns its size."""
        from peerprog.store.atomic import write_atomic

        target = Path(path)
        write_atomic(target, memoryview(self.raw))
        return len(self.raw)

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


def parse_best(body: bytearray, headers: Mapping[str, str]) -> BestModel:
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
