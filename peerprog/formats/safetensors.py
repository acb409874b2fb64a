"""Read and write the safetensors format without the safetensors package.

The format: an unsigned little-endian 64-bit header length, a JSON header mapping tensor
names to ``{"dtype", "shape", "data_offsets"}`` (and an optional ``__metadata__`` map of
strings), then the tensors' raw little-endian bytes. Writing it ourselves lets us carry
bfloat16 (numpy has none) and build the file as a list of buffers without copies.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from peerprog.codec.base import RawTensor
from peerprog.codec.common import to_float64
from peerprog.codec.dtypes import DTYPES
from peerprog.errors import FormatError, InputError

ST_TO_NAME = {
    "F16": "float16",
    "BF16": "bfloat16",
    "F32": "float32",
    "F64": "float64",
    "BOOL": "bool",
    "I8": "int8",
    "U8": "uint8",
    "I16": "int16",
    "U16": "uint16",
    "I32": "int32",
    "U32": "uint32",
    "I64": "int64",
    "U64": "uint64",
}
NAME_TO_ST = {v: k for k, v in ST_TO_NAME.items()}
MAX_HEADER = 100 * 1024 * 1024


def encode_safetensors(
    tensors: Mapping[str, RawTensor], metadata: Mapping[str, str] | None = None
) -> list[bytes | memoryview]:
    """The safetensors file for ``tensors`` as a list of buffers (header first).

    The tensors' arrays are referenced, not copied; join or write the buffers in order.
    """
    header: dict[str, object] = {}
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    buffers: list[bytes | memoryview] = []
    offset = 0
    for name, t in tensors.items():
        if t.dtype not in NAME_TO_ST:
            raise FormatError(f"tensor {name!r}: dtype {t.dtype!r} cannot be stored")
        arr = np.ascontiguousarray(t.array)
        data = memoryview(arr.reshape(-1).view(np.uint8).data) if arr.size else memoryview(b"")
        header[name] = {
            "dtype": NAME_TO_ST[t.dtype],
            "shape": list(arr.shape),
            "data_offsets": [offset, offset + len(data)],
        }
        offset += len(data)
        buffers.append(data)
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (-len(raw) % 8)  # the data section starts 8-aligned
    return [struct.pack("<Q", len(raw)), raw, *buffers]


def write_safetensors(
    path: Path, tensors: Mapping[str, RawTensor], metadata: Mapping[str, str] | None = None
) -> int:
    """Write ``tensors`` to ``path``; returns the bytes written."""
    total = 0
    with open(path, "wb") as f:
        for buf in encode_safetensors(tensors, metadata):
            f.write(buf)
            total += len(buf)
    return total


def parse_safetensors(
    data: bytes | memoryview, *, copy: bool = True
) -> tuple[dict[str, RawTensor], dict[str, str]]:
    """Parse a safetensors file held in memory; returns (tensors, metadata).

    Raises :class:`FormatError` naming what is wrong on a malformed or truncated file.
    """
    view = memoryview(data)
    if len(view) < 8:
        raise FormatError("not a safetensors file: shorter than its 8-byte header length")
    (hlen,) = struct.unpack("<Q", view[:8])
    if hlen > MAX_HEADER or 8 + hlen > len(view):
        raise FormatError("not a safetensors file: header length out of range (truncated?)")
    try:
        header = json.loads(bytes(view[8 : 8 + hlen]))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise FormatError(f"not a safetensors file: bad JSON header ({e})") from None
    if not isinstance(header, dict):
        raise FormatError("not a safetensors file: header is not a JSON object")
    body = view[8 + hlen :]
    metadata = check_metadata(header.pop("__metadata__", None))
    tensors: dict[str, RawTensor] = {}
    spans: dict[str, tuple[int, int]] = {}
    for name, info in header.items():
        _, _, start, end = check_entry(name, info, len(body))
        spans[name] = (start, end)
        tensors[name] = _tensor(name, info, body, copy)
    check_spans(spans, len(body))
    return tensors, metadata


def check_entry(name: str, info: object, body_size: int) -> tuple[str, tuple[int, ...], int, int]:
    """A header entry's (dtype name, shape, start, end) in a data section of
    ``body_size`` bytes; :class:`FormatError` naming the tensor if it is malformed."""
    if not isinstance(info, dict):
        raise FormatError(f"safetensors tensor {name!r}: entry is not an object")
    st = info.get("dtype")
    shape = info.get("shape")
    offsets = info.get("data_offsets")
    if st not in ST_TO_NAME:
        raise FormatError(f"safetensors tensor {name!r}: unsupported dtype {st!r}")
    if not isinstance(shape, list) or not isinstance(offsets, list) or len(offsets) != 2:
        raise FormatError(f"safetensors tensor {name!r}: bad shape or data_offsets")
    if not _int_list(shape) or not _int_list(offsets):
        raise FormatError(f"safetensors tensor {name!r}: bad shape or data_offsets")
    dt = DTYPES[ST_TO_NAME[st]]
    start, end = offsets
    numel = 1
    for d in shape:
        numel *= d
    if not 0 <= start <= end <= body_size or end - start != numel * dt.itemsize:
        raise FormatError(f"safetensors tensor {name!r}: data out of range or wrong size")
    return dt.name, tuple(shape), start, end


def check_metadata(meta: object) -> dict[str, str]:
    """A header's ``__metadata__``: a map of strings to strings (the format allows nothing
    else); :class:`FormatError` if it is not."""
    if meta is None:
        return {}
    if not isinstance(meta, dict):
        raise FormatError("safetensors __metadata__ is not an object")
    for k, v in meta.items():
        if not isinstance(v, str):
            raise FormatError(
                f"safetensors __metadata__ value of {k!r:.60} is not a string (the format "
                "allows only strings)"
            )
    return dict(meta)


def check_spans(spans: Mapping[str, tuple[int, int]], body_size: int) -> list[str]:
    """The tensors' names in the order of their data, checked as the format requires: the
    data section is covered exactly, with no tensor overlapping another and no hole."""
    order = sorted(spans, key=lambda n: spans[n])
    pos = 0
    prev = None
    for name in order:
        start, end = spans[name]
        if start < pos:
            raise FormatError(
                f"safetensors tensor {name!r:.80}: its data overlaps tensor {prev!r:.80}'s"
            )
        if start > pos:
            raise FormatError(
                f"safetensors tensor {name!r:.80}: a gap of {start - pos} bytes before its data "
                "(the format allows none)"
            )
        pos = end
        prev = name
    if pos != body_size:
        raise FormatError(
            f"safetensors data section has {body_size - pos} bytes no tensor covers "
            "(truncated header or trailing data)"
        )
    return order


def _tensor(name: str, info: object, body: memoryview, copy: bool) -> RawTensor:
    dname, shape, start, end = check_entry(name, info, len(body))
    dt = DTYPES[dname]
    arr = np.frombuffer(body[start:end], dtype=dt.storage).reshape(shape)
    return RawTensor(dt.name, arr.copy() if copy else arr)


def _int_list(v: object) -> bool:
    return isinstance(v, Sequence) and all(isinstance(x, int) and x >= 0 for x in v)


def read_safetensors(path: Path) -> tuple[dict[str, RawTensor], dict[str, str]]:
    """Read a safetensors file; returns (tensors, metadata)."""
    data = path.read_bytes()
    return parse_safetensors(data, copy=False)


def read_sensitivity(path: Path) -> dict[str, np.ndarray[Any, np.dtype[Any]]]:
    """A sensitivity file (:mod:`peerprog.codec.sensitivity`): a safetensors file of float
    tensors, read as float64 arrays by name. InputError naming the file if it cannot be
    read, is not safetensors, or holds a tensor that is not a float."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot read the sensitivity file: {e.strerror}") from None
    try:
        tensors, _ = parse_safetensors(data, copy=False)
    except FormatError as e:
        raise InputError(f"{path}: not a sensitivity file (safetensors): {e}") from None
    out = {}
    for name, t in tensors.items():
        dt = DTYPES[t.dtype]
        if not dt.is_float:
            raise InputError(f"{path}: sensitivity of {name!r} is {t.dtype}, floats are needed")
        out[name] = to_float64(dt, t.array.reshape(-1)).reshape(t.array.shape)
    return out
