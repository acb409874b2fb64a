"""Type stub of the C extension built from ``c/*.c`` (see c_kernels.py and c/module.c)."""

from collections.abc import Sequence
from typing import Any

FORMAT: int

def tables(per: Sequence[int], /) -> None: ...
def encode(
    words: Any,
    gsize: int,
    size: int,
    ebits: int,
    mbits: int,
    e_floor: int,
    e_ceil: int,
    top: int,
    steps: Sequence[tuple[int, int]],
) -> tuple[bytes, list[tuple[bytes, bytes]], bytes, bytes]: ...
def decode(
    out: Any,
    numel: int,
    scales: Any,
    e_floor: int,
    gsize: int,
    size: int,
    ebits: int,
    mbits: int,
    prior: Any | None,
    steps: Sequence[tuple[int, int, bool, Any, Any]],
    remainder: tuple[Any, Any] | None,
) -> None: ...
def simd(enable: bool = ..., /) -> bool: ...
