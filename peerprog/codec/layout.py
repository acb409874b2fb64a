"""Where each tensor's data sits in each level: the codec's output, kept in the manifest.

Pure data, no numpy, so that :mod:`peerprog.manifest` can hold it without importing the codec.
"""

from __future__ import annotations

from dataclasses import dataclass, field

# Values a codec may put in per-tensor or codec params: canonical msgpack, so no floats.
# (A float parameter is stored as the integer bit pattern of its float64.)
ParamValue = int | str | bytes | bool | list["ParamValue"] | dict[str, "ParamValue"] | None


@dataclass(frozen=True)
class Segment:
    """A byte range of one level's stream (offset and length)."""

    offset: int
    length: int


@dataclass(frozen=True)
class TensorLayout:
    """One tensor: its name, dtype, shape, and its segment in every level.

    ``segments[n]`` is the byte range of this tensor's data in level ``n`` (length 0 when
    the level does not refine this tensor). ``params`` are codec-specific (e.g. the
    ``paper`` codec's min/max, or compressed field lengths).
    """

    name: str
    dtype: str
    shape: tuple[int, ...]
    segments: tuple[Segment, ...]
    params: dict[str, ParamValue] = field(default_factory=dict)

    @property
    def numel(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n
