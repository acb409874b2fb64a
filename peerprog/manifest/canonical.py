"""Canonical msgpack: maps with sorted string keys, no floats, one encoding per value.

The model id is the SHA-256 of a manifest body, so a body must have exactly one encoding:
:func:`unpack` re-packs what it read and refuses a body that is not in canonical form.
"""

from __future__ import annotations

from typing import Any

import msgpack

from peerprog.errors import VerificationError


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


def pack(obj: Any) -> bytes:
    """Encode ``obj`` canonically (``TypeError`` on a float or an unsupported value)."""
    out: bytes = msgpack.packb(_canon(obj, "$"), use_bin_type=True)
    return out


def unpack(data: bytes, what: str = "message", *, canonical: bool = False) -> Any:
    """Decode untrusted msgpack with size limits; :class:`VerificationError` if malformed.

    With ``canonical``, also refuse data that is not in canonical form.
    """
    try:
        # Bounds on what an untrusted message may allocate.
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
