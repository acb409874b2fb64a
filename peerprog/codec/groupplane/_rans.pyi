"""Type stub of the C extension built from ``c_rans/rans.c`` (see rans.py)."""

from typing import Any

VERSION: int

def encode(data: Any, freq: Any, cum: Any, lanes: int, /) -> tuple[bytes, list[int]]: ...
def decode(payload: Any, lengths: Any, freq: Any, cum: Any, sym: Any, n: int, /) -> bytes: ...
