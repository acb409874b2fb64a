"""Model files in and out: safetensors, PyTorch state dicts, numpy ``.npz``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from peerprog.codec.base import RawTensor
from peerprog.formats.reader import SUFFIXES, ModelReader, TensorInfo, open_model
from peerprog.formats.safetensors import (
    encode_safetensors,
    parse_safetensors,
    read_safetensors,
    write_safetensors,
)


def read_model(path: Path) -> dict[str, RawTensor]:
    """Read a whole (small) model's tensors from ``path`` (by suffix), as arrays of their
    own; :class:`InputError` if unreadable. Large models: :func:`open_model`."""
    with open_model(path) as reader:
        return {name: RawTensor(t.dtype, np.array(t.array)) for name, t in reader.tensors()}


__all__ = [
    "SUFFIXES",
    "ModelReader",
    "TensorInfo",
    "encode_safetensors",
    "open_model",
    "parse_safetensors",
    "read_model",
    "read_safetensors",
    "write_safetensors",
]
