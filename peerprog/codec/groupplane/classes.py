"""Row classes: a tensor's rows split by how much their bits matter, each class with its own
plane ladder, so that the rate allocation can reach inside a tensor.

With the publisher's sensitivity a row's next plane is worth ``s_r · mean(x_r²)`` per weight
(its sensitivity times its squared scale): rows that differ in it by 4× are a bit apart in
the best allocation (:func:`row_worth`). :func:`choose` sorts the rows of a tensor into up to
:data:`MAX_CLASSES` classes two bits of that value wide; the plan treats each class as a
tensor of its own (:func:`rows_of` gathers it), and the tensor's params become
``{"group": g, "rows": [ladder of class 0, ladder of class 1, ...]}``.

The bytes (:func:`encode`, :func:`decode`): level 0 is ``[u32][zstd frame: one byte per
row, its class][u32][class 0's level-0 piece][u32][class 1's]…``; a later level is each
class's piece of that level framed the same way, or nothing at all when no class has data
in it. Each class's pieces are a plain planed tensor's (:mod:`.format`) of the shape
``(rows of the class, *shape[1:])``. Only with the codec param ``row_classes`` and a
sensitivity, and only where a tensor's rows fall in more than one class, is a tensor planed
so; else it is planed as a whole. (Measured with Fisher sensitivity: the byte-level LM gains
up to 5 points of agreement at 3 bits/weight, EfficientNet-Lite1 loses, so it is off by
default; BENCHMARKS.md.)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np

from peerprog.codec import zstd
from peerprog.codec.groupplane import format
from peerprog.codec.groupplane.format import Array, Buffer, Geometry, to_f32
from peerprog.codec.layout import ParamValue
from peerprog.errors import FormatError

MAX_CLASSES = 4
CLASS_WIDTH = 2.0
"""log2 of the ratio of plane values spanned by one class (4×: one bit of allocation)."""
MIN_CLASS_ELEMENTS = 1 << 14
"""A class smaller than this joins the one above it (its own ladder would not pay)."""
FLOOR = 1 / 16
"""A row's sensitivity counts as at least this share of its tensor's mean: a row the
calibration data happened not to reach is not starved (at most two classes below its
tensor's mean for that)."""


def floored(sensitivity: Array) -> Array:
    """A tensor's sensitivity with every entry at least :data:`FLOOR` of their mean."""
    out: Array = np.maximum(sensitivity, FLOOR * float(sensitivity.mean()))
    return out


def row_worth(geo: Geometry, words: Array, sensitivity: Array) -> Array:
    """Each row's worth of a plane, ``s_r · mean(x_r²)`` (``s_r`` the row's mean
    sensitivity), of a tensor seen as a matrix
    ``words`` (rows × cols of the dtype's storage; NaN and ±Inf count as 0) and its
    sensitivity (broadcastable to it), a block of rows at a time (no copy of the tensor)."""
    rows, cols = words.shape
    out = np.empty(rows)
    per_row = np.broadcast_to(sensitivity, (rows, sensitivity.shape[1])).mean(axis=1)
    step = max(1, (1 << 20) // max(cols, 1))
    for r0 in range(0, rows, step):
        block = to_f32(geo, words[r0 : r0 + step].reshape(-1)).astype(np.float64)
        block = block.reshape(-1, cols)
        block = np.where(np.isfinite(block), block, 0.0)
        out[r0 : r0 + step] = per_row[r0 : r0 + step] * np.mean(block * block, axis=1)
    return out


def choose(worth: Array, cols: int) -> Array | None:
    """Each row's class (uint8, 0 = the rows worth most) from the rows' :func:`row_worth`
    (``cols`` weights a row), or None when all rows fall in one class."""
    rows = len(worth)
    if rows < 2 or rows * cols < 2 * MIN_CLASS_ELEMENTS:
        return None
    positive = worth > 0
    if not positive.any():
        return None
    top = np.log2(np.quantile(worth[positive], 0.95))
    depth = np.full(rows, float(MAX_CLASSES - 1))
    depth[positive] = (top - np.log2(worth[positive])) / CLASS_WIDTH
    cls = np.clip(np.floor(depth), 0, MAX_CLASSES - 1).astype(np.int64)
    counts = np.bincount(cls, minlength=MAX_CLASSES) * cols
    for c in range(MAX_CLASSES - 1, 0, -1):  # small classes join the class above
        if 0 < counts[c] < MIN_CLASS_ELEMENTS:
            cls[cls == c] = c - 1
            counts[c - 1] += counts[c]
            counts[c] = 0
    used = np.flatnonzero(counts)
    if len(used) < 2:
        return None
    out: Array = np.searchsorted(used, cls).astype(np.uint8)  # classes 0..n-1, no gaps
    return out


def rows_of(array: Array, classes: Array, c: int) -> Array:
    """The rows of class ``c`` of a tensor's array, as a tensor of shape (rows, *rest)."""
    out: Array = np.ascontiguousarray(array[classes == c])
    return out


def encode(
    array: Array,
    classes: Array,
    ladders: Sequence[Sequence[int]],
    encode_class: Callable[[Array, list[int]], list[Any]],
) -> list[bytes]:
    """A classed tensor's pieces, one per level: ``encode_class(rows, ladder)`` gives each
    class's plain pieces."""
    per_class = [encode_class(rows_of(array, classes, c), list(k)) for c, k in enumerate(ladders)]
    nlevels = len(per_class[0])
    pieces = [format.frame([zstd.compress(classes.tobytes()), *(p[0] for p in per_class)])]
    for m in range(1, nlevels):
        parts = [p[m] for p in per_class]
        pieces.append(format.frame(parts) if any(len(memoryview(x)) for x in parts) else b"")
    return pieces


def ladders(tp: Mapping[str, ParamValue], name: str) -> list[list[int]]:
    """The class ladders of a classed tensor's params (``{"group", "rows"}``), their shape
    checked (each ladder is then checked as a plain tensor's ``planes``)."""
    if set(tp) != {"group", "rows"}:
        raise FormatError(f"tensor {name!r}: params must be exactly 'group' and 'rows'")
    rows = tp["rows"]
    if not isinstance(rows, list) or not 2 <= len(rows) <= MAX_CLASSES:
        raise FormatError(f"tensor {name!r}: 'rows' must list 2..{MAX_CLASSES} ladders")
    out = []
    for ladder in rows:
        if not isinstance(ladder, list) or not all(
            isinstance(k, int) and not isinstance(k, bool) for k in ladder
        ):
            raise FormatError(f"tensor {name!r}: each of 'rows' must be a list of integers")
        out.append([int(k) for k in ladder])  # type: ignore[arg-type]
    return out


def split(
    shape: Sequence[int], nclasses: int, pieces: Sequence[Buffer], name: str
) -> tuple[Array, list[list[Buffer]]]:
    """A classed tensor's pieces of levels 0..n read back: each row's class, and each
    class's own pieces of those levels. FormatError on malformed framing or classes."""
    rows = int(shape[0])
    what = f"tensor {name!r} level 0"
    head = format.read_parts(pieces[0], 1 + nclasses, what)
    classes = zstd.decompress_exact(head[0], rows, f"{what} (row classes)")
    counts = np.bincount(classes, minlength=nclasses)
    if len(counts) > nclasses or not counts.all():
        raise FormatError(f"{what}: row classes must be 0..{nclasses - 1}, each used")
    per_class: list[list[Buffer]] = [[p] for p in head[1:]]
    for m in range(1, len(pieces)):
        if not len(memoryview(pieces[m])):
            parts: Sequence[Buffer] = [b""] * nclasses
        else:
            parts = format.read_parts(pieces[m], nclasses, f"tensor {name!r} level {m}")
        for c in range(nclasses):
            per_class[c].append(parts[c])
    return classes, per_class


def class_shape(shape: Sequence[int], count: int) -> tuple[int, ...]:
    """The shape of a class of ``count`` rows."""
    return (count, *(int(d) for d in shape[1:]))


def scatter(out: Array, classes: Array, c: int, rows: Array) -> None:
    """Put the decoded rows of class ``c`` back in their places of ``out`` (rows × rest)."""
    out[classes == c] = rows.reshape(-1, math.prod(out.shape[1:]))
