"""Read PyTorch ``.pt``/``.pth`` state dicts (torch is imported lazily, only here)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from peerprog.codec.base import RawTensor
from peerprog.errors import FormatError, InputError

_TORCH_DTYPES = {
    "torch.float16": "float16",
    "torch.bfloat16": "bfloat16",
    "torch.float32": "float32",
    "torch.float64": "float64",
    "torch.bool": "bool",
    "torch.int8": "int8",
    "torch.uint8": "uint8",
    "torch.int16": "int16",
    "torch.int32": "int32",
    "torch.int64": "int64",
}


def load_state_dict(path: Path, *, mmap: bool = False) -> dict[str, Any]:
    """The tensors of a state dict saved with ``torch.save`` (``weights_only`` loading:
    no pickled code); with ``mmap``, backed by a map of the file. A dict holding the state
    dict under ``state_dict`` or ``model`` is unwrapped."""
    try:
        import torch
    except ImportError:
        raise InputError(f"{path}: reading .pt files needs torch (pip install torch)") from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except RuntimeError as e:
        if mmap and "mmap" in str(e):  # an old (not zip) format cannot be mapped
            return load_state_dict(path, mmap=False)
        raise FormatError(f"{path}: not a readable torch file ({type(e).__name__}: {e})") from None
    except Exception as e:  # torch raises many types for a bad file
        raise FormatError(f"{path}: not a readable torch file ({type(e).__name__}: {e})") from None
    for key in ("state_dict", "model"):
        if isinstance(obj, Mapping) and isinstance(obj.get(key), Mapping):
            obj = obj[key]
    if not isinstance(obj, Mapping):
        raise FormatError(f"{path}: holds a {type(obj).__name__}, not a state dict")
    out: dict[str, Any] = {}
    for name, t in obj.items():
        if not isinstance(t, torch.Tensor):
            raise FormatError(f"{path}: entry {name!r} is a {type(t).__name__}, not a tensor")
        out[str(name)] = t
    return out


def read_torch(path: Path) -> dict[str, RawTensor]:
    """Read a whole state dict (see :func:`load_state_dict`)."""
    return {name: to_raw(name, t) for name, t in load_state_dict(path).items()}


def to_raw(name: str, t: Any, *, copy: bool = True) -> RawTensor:
    """A torch tensor as a :class:`RawTensor` (a view of its memory unless ``copy`` or it
    is not contiguous)."""
    import torch

    dname = _TORCH_DTYPES.get(str(t.dtype))
    if dname is None:
        raise FormatError(f"tensor {name!r}: unsupported torch dtype {t.dtype}")
    t = t.detach().contiguous()
    arr = t.view(torch.int16).numpy().view(np.uint16) if dname == "bfloat16" else t.numpy()
    return RawTensor(dname, np.array(arr) if copy else arr)
