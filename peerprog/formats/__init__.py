"""Model files in and out: safetensors, PyTorch state dicts, numpy ``.npz``."""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import numpy as np

from peerprog.codec.base import RawTensor
from peerprog.codec.dtypes import name_of
from peerprog.errors import FormatError, InputError
from peerprog.formats.safetensors import (
    encode_safetensors,
    parse_safetensors,
    read_safetensors,
    write_safetensors,
)

SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".npz")


def read_model(path: Path) -> dict[str, RawTensor]:
    """Read a model's tensors from ``path`` (by suffix); :class:`InputError` if unreadable."""
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            tensors, _ = read_safetensors(path)
        elif suffix in (".pt", ".pth", ".bin"):
            from peerprog.formats.torchfile import read_torch

            tensors = read_torch(path)
        elif suffix == ".npz":
            tensors = _read_npz(path)
        else:
            raise InputError(
                f"{path}: unknown model format (expected one of {', '.join(SUFFIXES)})"
            )
    except FormatError as e:
        msg = str(e)
        raise FormatError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None
    except OSError as e:
        raise InputError(f"{path}: {e.strerror or e}") from None
    if not tensors:
        raise FormatError(f"{path}: holds no tensors")
    return tensors


def _native(v: np.ndarray[Any, Any]) -> RawTensor:
    arr = np.ascontiguousarray(v, dtype=v.dtype.newbyteorder("<"))
    return RawTensor(name_of(arr), arr)


def _read_npz(path: Path) -> dict[str, RawTensor]:
    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: _native(v) for k, v in npz.items()}
    except (ValueError, zipfile.BadZipFile, EOFError) as e:
        raise FormatError(f"not a readable .npz file ({e})") from None


__all__ = [
    "SUFFIXES",
    "encode_safetensors",
    "parse_safetensors",
    "read_model",
    "read_safetensors",
    "write_safetensors",
]
