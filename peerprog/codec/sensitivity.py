"""The publisher's sensitivity: how much each weight's error matters, for the rate allocation.

A sensitivity file (``peerprog publish --sensitivity FILE``; :mod:`peerprog.calibrate` writes
one) maps tensor names, as the model names them, to non-negative float arrays. A tensor is
seen as a matrix of ``rows = shape[0]`` (1 for a vector) by ``cols = numel / rows``, and its
entry may be any array broadcastable to it:

* ``[]`` or ``[1]`` — one weight for the whole tensor;
* ``[rows]`` or ``[rows, 1]`` — one per row (an output channel, a token of an embedding);
* ``[1, cols]`` — one per column (an input channel: AWQ's activation statistics);
* ``[rows, cols]`` or the tensor's own shape — one per weight (a Fisher diagonal).

With sensitivity, a codec that allocates its rate (groupplane) weighs each weight's squared
error by its entry, summed as is over the whole model: the allocation minimises
``Σ s_i (x̂_i - x_i)²``, the second-order estimate of the loss a Fisher diagonal gives.
Tensors the file does not name get the mean weight of those it does (per weight). The file
only steers the publisher: decoders never see it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from peerprog.errors import InputError

Array = np.ndarray[Any, np.dtype[Any]]


def matrix_shape(shape: Sequence[int]) -> tuple[int, int]:
    """The ``(rows, cols)`` a tensor of ``shape`` is seen as."""
    numel = math.prod(shape)
    rows = int(shape[0]) if len(shape) >= 2 else 1
    return rows, (numel // rows if rows else 0)


def as_matrix(name: str, shape: Sequence[int], weights: Array) -> Array:
    """``weights`` as a float64 array of 2 dimensions broadcastable to the tensor's
    ``(rows, cols)``; InputError naming the tensor if it does not fit or holds NaN, ±Inf or
    negative values."""
    rows, cols = matrix_shape(shape)
    w = np.asarray(weights)
    if w.dtype.kind != "f":
        raise InputError(f"sensitivity of {name!r}: {w.dtype} values, floats are needed")
    wshape = tuple(w.shape)
    if wshape in ((), (1,)):
        out = w.reshape(1, 1)
    elif wshape == tuple(shape) or wshape == (rows, cols):
        out = w.reshape(rows, cols)
    elif wshape == (rows,) and len(shape) >= 2:
        out = w.reshape(rows, 1)
    elif len(wshape) == 2 and wshape[0] in (1, rows) and wshape[1] in (1, cols):
        out = w
    else:
        raise InputError(
            f"sensitivity of {name!r}: shape {list(wshape)} does not fit the tensor's "
            f"{list(shape)} (seen as {rows} rows × {cols} columns: give [], [rows], "
            "[rows, 1], [1, cols], [rows, cols] or the tensor's shape)"
        )
    out = out.astype(np.float64)
    if not np.isfinite(out).all():
        raise InputError(f"sensitivity of {name!r}: NaN or infinite values")
    if (out < 0).any():
        raise InputError(f"sensitivity of {name!r}: negative values")
    return out


@dataclass(frozen=True)
class Sensitivity:
    """Checked sensitivity of a model's tensors: each named tensor's weights as a matrix
    (:func:`as_matrix`), and ``fill``, the weight of every tensor not named."""

    matrices: Mapping[str, Array]
    fill: float
    source: str = ""

    def of(self, name: str, shape: Sequence[int]) -> Array:
        """The weights of tensor ``name`` as a matrix broadcastable to its ``(rows, cols)``."""
        hit = self.matrices.get(name)
        return hit if hit is not None else np.full((1, 1), self.fill)


def check(
    weights: Mapping[str, Array], shapes: Mapping[str, Sequence[int]], source: str = ""
) -> Sensitivity:
    """Check a sensitivity file's arrays against the model's tensor shapes (by name).

    InputError (naming ``source``) for a name the model lacks, an array that does not fit
    its tensor, NaN, infinite or negative values, or weights that are all zero."""
    where = f"{source}: " if source else ""
    unknown = [k for k in weights if k not in shapes]
    if unknown:
        near = ", ".join(repr(k) for k in unknown[:5])
        more = f" and {len(unknown) - 5} more" if len(unknown) > 5 else ""
        example = next(iter(shapes), "")
        raise InputError(
            f"{where}{len(unknown)} name(s) the model does not have: {near}{more} "
            f"(names are the model's tensor names, e.g. {example!r})"
        )
    matrices: dict[str, Array] = {}
    total = 0.0
    count = 0
    for name, w in weights.items():
        try:
            m = as_matrix(name, shapes[name], w)
        except InputError as e:
            raise InputError(f"{where}{e}") from None
        rows, cols = matrix_shape(shapes[name])
        matrices[name] = m
        total += float(np.broadcast_to(m, (rows, cols)).sum()) if rows * cols else 0.0
        count += rows * cols
    if not matrices or total <= 0:
        raise InputError(f"{where}no tensor has a positive sensitivity")
    return Sensitivity(matrices, total / count, source)
