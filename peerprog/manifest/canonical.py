"""Canonical msgpack: maps with sorted string keys, no floats, one encoding per value.

The model id is the SHA-256 of a manifest body, so a body must have exactly one encoding:
:func:`unpack` re-packs what it read and refuses a body that is not in canonical form.
"""

from __future__ import annotations

import contextlib
import gc
import threading
from collections.abc import Iterator
from typing import Any

import msgpack

from peerprog.errors import VerificationError

_gc_lock = threading.Lock()
_gc_depth = 0
_gc_was_enabled = False


@contextlib.contextmanager
def gc_paused() -> Iterator[None]:
    """The cyclic garbage collector held off meanwhile (re-entrant, any thread).

    Packing or parsing a manifest builds a few objects per tensor that all live on; with
    10^5 tensors the collector, run again and again as they pile up, cost as much as the
    work itself. Nothing cyclic is made here, so nothing is left for it to find."""
    global _gc_depth, _gc_was_enabled
    with _gc_lock:
        if _gc_depth == 0:
            _gc_was_enabled = gc.isenabled()
            gc.disable()
        _gc_depth += 1
    try:
        yield
    finally:
        with _gc_lock:
            _gc_depth -= 1
            if _gc_depth == 0 and _gc_was_enabled:
                gc.enable()


def _canon(obj: Any, path: str) -> Any:
    if isinstance(obj, dict):
        for k in obj:
            if not isinstance(k, str):
                raise TypeError(f"{path}: map key {k!r} is not a string")
        return {k: _canon(obj[k], f"{path}.{k}") for k in sorted(obj)}
    if isinstance(obj, list | tuple):
        return [_canon(v, f"{path}[{i}]") for i, v in enumerate(obj)]
    if isinstance(obj, float):
        raise TypeError(f"{path}: floats are not allowed in canonical msgpack")
    if obj is None or isinstance(obj, bool | int | str | bytes):
        return obj
    raise TypeError(f"{path}: cannot encode {type(obj).__name__}")


_PLAIN = frozenset({int, str, bytes, bool, type(None)})


class _Slow(Exception):
    """Not plain data: :func:`_canon` decides (and names the path of what is wrong)."""


def _canon_fast(obj: Any) -> Any:
    """:func:`_canon` for plain data (exact dicts with str keys, lists, tuples, and the
    scalars), with no path strings built and what is canonical already not copied (a
    manifest of many tensors cost tens of microseconds and a few kilobytes a tensor to
    pack). The same bytes packed (msgpack packs a tuple as a list). Anything else raises."""
    t = type(obj)
    if t in _PLAIN:
        return obj
    if t is dict:
        keys = list(obj)
        for k in keys:
            if type(k) is not str:
                raise _Slow
        ordered = sorted(keys)
        values = [obj[k] for k in ordered]
        canon = [v if type(v) in _PLAIN else _canon_fast(v) for v in values]
        if ordered == keys and all(c is v for c, v in zip(canon, values, strict=True)):
            return obj
        return dict(zip(ordered, canon, strict=True))
    if t is list or t is tuple:
        out = None
        for i, v in enumerate(obj):
            if type(v) not in _PLAIN:
                c = _canon_fast(v)
                if c is not v:
                    if out is None:
                        out = list(obj)
                    out[i] = c
        return obj if out is None else out
    raise _Slow


def pack(obj: Any) -> bytes:
    """Encode ``obj`` canonically (``TypeError`` on a float or an unsupported value)."""
    with gc_paused():
        try:
            canon = _canon_fast(obj)
        except (_Slow, TypeError):
            canon = _canon(obj, "$")
        out: bytes = msgpack.packb(canon, use_bin_type=True)
    return out


def unpack(data: bytes, what: str = "message", *, canonical: bool = False) -> Any:
    """Decode untrusted msgpack with size limits; :class:`VerificationError` if malformed.

    With ``canonical``, also refuse data that is not in canonical form.
    """
    try:
        # Bounds on what an untrusted message may allocate.
        with gc_paused():
            obj = msgpack.unpackb(
                data,
                raw=False,
                strict_map_key=True,
                max_str_len=1 << 20,
                max_bin_len=64 << 20,
                max_array_len=1 << 22,
                max_map_len=1 << 20,
                max_ext_len=0,
            )
    except Exception as e:  # msgpack raises many types for garbage
        raise VerificationError(f"{what}: malformed msgpack ({type(e).__name__})") from None
    if canonical:
        try:
            again = pack(obj)
        except TypeError as e:
            raise VerificationError(f"{what}: not canonical ({e})") from None
        if again != data:
            raise VerificationError(f"{what}: not in canonical msgpack form")
    return obj
