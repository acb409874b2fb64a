"""Type stub of the C extension built from ``_groupplane.c`` (see groupplane_native.py)."""

from collections.abc import Sequence
from typing import Any

FORMAT: int

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
def decode_planes(
    prior: Any | None,
    n_in: int,
    out: Any,
    scales: Any,
    e_floor: int,
    gsize: int,
    size: int,
    ebits: int,
    mbits: int,
    k1: int,
    r: int,
    codes: Any,
    refine: Any,
) -> None: ...
def simd(enable: bool = ..., /) -> bool: ...
def decode_remainder(
    prior: Any, n_in: int, out: Any, raw: Any, low: Any, size: int, ebits: int, mbits: int
) -> None: ...
