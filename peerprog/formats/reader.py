"""Read a model file one tensor at a time, so that publishing a model needs one tensor in
memory, not the model.

* ``.safetensors``: the file is memory-mapped; a tensor is a view of the map, and
  :meth:`ModelReader.release` drops its pages from this process once it is encoded.
* ``.pt``/``.pth``/``.bin``: ``torch.load(..., mmap=True, weights_only=True)``; tensors
  are views of torch's map, released the same way.
* ``.npz``: each array is read from the zip when asked for, and freed after.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import mmap
import struct
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from peerprog.codec.base import RawTensor
from peerprog.codec.dtypes import DTYPES, name_of
from peerprog.errors import FormatError, InputError
from peerprog.formats.safetensors import MAX_HEADER, check_entry, check_metadata, check_spans

SUFFIXES = (".safetensors", ".pt", ".pth", ".bin", ".npz")
_MADV_DONTNEED = 4
_PAGE = mmap.PAGESIZE
_RELEASE_BATCH = 1 << 20
_libc: Any = None


@dataclass(frozen=True)
class TensorInfo:
    """A tensor as the file describes it, before it is read."""

    name: str
    dtype: str
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        n = DTYPES[self.dtype].itemsize
        for d in self.shape:
            n *= d
        return n


class ModelReader:
    """An open model file. Use as a context manager; tensors read are valid until
    :meth:`close` (views of a map: copy what you keep)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.metadata: dict[str, str] = {}
        """The file's own metadata (safetensors ``__metadata__``), e.g. ``format: pt``."""
        self._infos: list[TensorInfo] = []

    def infos(self) -> list[TensorInfo]:
        """Every tensor, in the file's order."""
        return list(self._infos)

    def read(self, name: str) -> RawTensor:
        """One tensor (:class:`FormatError` if it cannot be read)."""
        raise NotImplementedError

    def release(self, tensor: RawTensor) -> None:
        """Done with a tensor read from the file: drop its pages from this process."""
        drop_pages(tensor.array)

    def close(self) -> None:
        """Close the file."""

    def __enter__(self) -> ModelReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def tensors(self) -> Iterator[tuple[str, RawTensor]]:
        """Every tensor in order, each released when the next is read."""
        for info in self._infos:
            t = self.read(info.name)
            yield info.name, t
            self.release(t)


def open_model(path: Path) -> ModelReader:
    """Open a model file by its suffix; :class:`InputError`/:class:`FormatError` naming
    the file if it cannot be read."""
    path = Path(path)
    if not path.exists():
        raise InputError(f"{path}: no such file")
    if not path.is_file():
        raise InputError(f"{path}: not a file")
    suffix = path.suffix.lower()
    try:
        if suffix == ".safetensors":
            reader: ModelReader = SafetensorsReader(path)
        elif suffix in (".pt", ".pth", ".bin"):
            reader = _Torch(path)
        elif suffix == ".npz":
            reader = _Npz(path)
        else:
            raise InputError(
                f"{path}: unknown model format (expected one of {', '.join(SUFFIXES)})"
            )
    except FormatError as e:
        msg = str(e)
        raise FormatError(msg if msg.startswith(str(path)) else f"{path}: {msg}") from None
    except OSError as e:
        raise InputError(f"{path}: {e.strerror or e}") from None
    if not reader.infos():
        reader.close()
        raise FormatError(f"{path}: holds no tensors")
    return reader


class SafetensorsReader(ModelReader):
    """A ``.safetensors`` file, checked as the format requires, its tensors views of a map."""

    def __init__(self, path: Path) -> None:
        super().__init__(path)
        self._file = open(path, "rb")  # noqa: SIM115 - closed in close()
        try:
            size = path.stat().st_size
            head = self._file.read(8)
            if len(head) < 8:
                raise FormatError("not a safetensors file: shorter than its 8-byte header length")
            (hlen,) = struct.unpack("<Q", head)
            if hlen > MAX_HEADER or 8 + hlen > size:
                raise FormatError("not a safetensors file: header length out of range (truncated?)")
            raw = self._file.read(hlen)
            try:
                header = json.loads(raw)
            except (UnicodeDecodeError, json.JSONDecodeError) as e:
                raise FormatError(f"not a safetensors file: bad JSON header ({e})") from None
            if not isinstance(header, dict):
                raise FormatError("not a safetensors file: header is not a JSON object")
            self.metadata = check_metadata(header.pop("__metadata__", None))
            self.header = head + raw
            """The file's header as it is on disk: the 8-byte length and the JSON."""
            self._base = 8 + hlen
            body = size - self._base
            self._spans: dict[str, tuple[int, int]] = {}
            infos: dict[str, TensorInfo] = {}
            for name, info in header.items():
                dname, shape, start, end = check_entry(name, info, body)
                infos[name] = TensorInfo(name, dname, shape)
                self._spans[name] = (start, end)
            self.data_order = check_spans(self._spans, body)
            """The tensors' names in the order of their data in the file."""
            self._infos = list(infos.values())
            self._by_name = infos
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ) if size else None
            self._span = (0, 0)  # the map's addresses
            self._released = (0, 0)  # addresses released and not yet dropped
            if self._map is not None:
                start = np.frombuffer(self._map, np.uint8, 1).__array_interface__["data"][0]
                self._span = (start, start + size)
        except BaseException:
            self._file.close()
            raise

    def release(self, tensor: RawTensor) -> None:
        """Drop the pages under the tensor from this process, the pages it shares with its
        neighbours too: a model of many tensors smaller than a page would otherwise keep
        the whole file resident. Tensors released one after the other in the file are
        dropped together, a megabyte or more at a time. (Pages of a read-only file map:
        one still needed is read again from the page cache.)"""
        arr = tensor.array
        addr = arr.__array_interface__["data"][0]
        end = addr + arr.nbytes
        if not arr.nbytes or not self._span[0] <= addr <= end <= self._span[1]:
            return
        start, stop = self._released
        if addr == stop and start < stop:
            self._released = (start, end)
        else:
            self._drop_released()
            self._released = (addr, end)
        if self._released[1] - self._released[0] >= _RELEASE_BATCH:
            self._drop_released()

    def _drop_released(self) -> None:
        start, stop = self._released
        if start < stop:
            lo, hi = self._span  # (lo: a page boundary)
            _madvise(max(start // _PAGE * _PAGE, lo), min(-(-stop // _PAGE) * _PAGE, hi))
        self._released = (0, 0)

    def info(self, name: str) -> TensorInfo | None:
        """The tensor ``name`` as the header describes it, if the file holds it."""
        return self._by_name.get(name)

    def read(self, name: str) -> RawTensor:
        info = self._by_name[name]
        start, end = self._spans[name]
        dt = DTYPES[info.dtype]
        if end == start or self._map is None:
            return RawTensor(dt.name, np.zeros(info.shape, dt.storage))
        arr = np.frombuffer(self._map, dt.storage, (end - start) // dt.itemsize, self._base + start)
        return RawTensor(dt.name, arr.reshape(info.shape))

    def close(self) -> None:
        if getattr(self, "_map", None) is not None:
            with contextlib.suppress(BufferError):  # views still alive: the map goes with them
                self._map.close()  # type: ignore[union-attr]
        self._file.close()


class _Torch(ModelReader):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        from peerprog.formats.torchfile import load_state_dict, to_raw

        self._to_raw = to_raw
        self._state = load_state_dict(path, mmap=True)
        for name, t in self._state.items():
            raw = to_raw(name, t, copy=False)
            self._infos.append(TensorInfo(name, raw.dtype, tuple(raw.array.shape)))

    def read(self, name: str) -> RawTensor:
        raw: RawTensor = self._to_raw(name, self._state[name], copy=False)
        return raw

    def close(self) -> None:
        self._state = {}


class _Npz(ModelReader):
    def __init__(self, path: Path) -> None:
        super().__init__(path)
        try:
            self._npz = np.load(path, allow_pickle=False)
            if not hasattr(self._npz, "files"):
                raise FormatError("not a .npz archive")
            for name in self._npz.files:
                arr = self._npz[name]
                self._infos.append(TensorInfo(name, name_of(arr), tuple(arr.shape)))
                del arr
        except (ValueError, zipfile.BadZipFile, EOFError, OSError) as e:
            raise FormatError(f"not a readable .npz file ({e})") from None

    def read(self, name: str) -> RawTensor:
        try:
            v = self._npz[name]
        except (ValueError, zipfile.BadZipFile, EOFError, OSError) as e:
            raise FormatError(f"{self.path}: array {name!r} is unreadable ({e})") from None
        arr = np.ascontiguousarray(v, dtype=v.dtype.newbyteorder("<"))
        return RawTensor(name_of(arr), arr)

    def release(self, tensor: RawTensor) -> None:
        """Arrays of an ``.npz`` are this process's own memory: freed with the tensor."""

    def close(self) -> None:
        if hasattr(self, "_npz"):
            self._npz.close()


def drop_pages(arr: np.ndarray[Any, Any]) -> None:
    """Tell the kernel this process no longer needs the mapped pages under ``arr`` (file
    pages stay in the page cache; only this process's resident set shrinks)."""
    global _libc
    if arr.nbytes < _PAGE:
        return
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    addr = arr.__array_interface__["data"][0]
    start = -(-addr // _PAGE) * _PAGE  # whole pages inside the array only
    end = (addr + arr.nbytes) // _PAGE * _PAGE
    if end > start:
        _libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_DONTNEED)


def _madvise(start: int, end: int) -> None:
    """Drop the pages at addresses ``start .. end`` (page-aligned) from this process."""
    global _libc
    if end <= start:
        return
    if _libc is None:
        _libc = ctypes.CDLL(None, use_errno=True)
    _libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_DONTNEED)
