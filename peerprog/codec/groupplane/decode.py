"""Decoding one tensor: any prefix of its levels, from scratch or from the tensor at an
earlier level, in one pass of the kernels.

:func:`decode_tensor` returns the tensor at level ``n = len(pieces) - 1`` as an array of its
storage dtype (bfloat16: uint16 bit patterns) and shape. ``prior`` is the result for level
``prior_level`` (default n-1), or None: then levels 0..n are all decoded. Either way every
level still to decode goes through the kernels in one pass (the exact level from scratch
too: scales, every plane step, the remainder). With a prior only level 0's scales and the
pieces after the prior's level are read, so adding levels costs about their size plus one
pass over the tensor. When no level after the prior's refines the tensor, ``prior`` itself is
returned. :func:`decode_levels` gives every level in turn.

Malformed pieces raise :class:`peerprog.errors.FormatError` naming the tensor and the level;
nothing is allocated beyond the tensor's own size (known from the manifest) and the lengths
the pieces must have. Levels decoded in one pass hold their symbols at once only while their
zstd frames together declare at most the tensor's size; past that they are decoded level by
level.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence

import numpy as np

from peerprog.codec.dtypes import dtype
from peerprog.codec.groupplane import classes, format, rans
from peerprog.codec.groupplane.format import Array, Buffer, Geometry, RemainderFrames
from peerprog.codec.groupplane.kernels import Kernels, Remainder, Step
from peerprog.codec.groupplane.params import settings, tensor_settings
from peerprog.codec.groupplane.selection import default_kernels
from peerprog.codec.layout import ParamValue
from peerprog.errors import FormatError


def decode_tensor(
    params: Mapping[str, ParamValue],
    dtype_name: str,
    shape: Sequence[int],
    tensor_params: Mapping[str, ParamValue],
    pieces: Sequence[Buffer],
    prior: Array | None = None,
    name: str = "",
    kernels: Kernels | None = None,
    prior_level: int | None = None,
) -> Array:
    """The tensor at level ``len(pieces) - 1`` (see the module docstring). ``prior_level``:
    the level ``prior`` is at (default: the level before). ``kernels``: those to use
    (default: :func:`~peerprog.codec.groupplane.selection.default_kernels`)."""
    s = settings(params)
    dt = dtype(dtype_name)
    shape = tuple(int(d) for d in shape)
    if any(d < 0 for d in shape) or math.prod(shape) * dt.itemsize > 1 << 46:
        raise FormatError(f"tensor {name!r}: bad shape {shape}")
    nlevels = s.levels or 1
    n = len(pieces) - 1
    if not 0 <= n < nlevels:
        raise FormatError(f"tensor {name!r}: {len(pieces)} pieces, the model has {nlevels} levels")
    if "rows" in tensor_params:
        return _decode_classes(
            params, dtype_name, shape, tensor_params, pieces, prior, name, kernels, prior_level
        )
    ts = tensor_settings(s, dt, shape, tensor_params, name)
    what = f"tensor {name!r} level {n}"
    if ts.whole:
        if prior is not None and n > 0:
            if any(len(memoryview(p)) for p in pieces[1:]):
                raise FormatError(f"{what}: a whole tensor has data only in level 0")
            return prior
        return format.decode_whole(dt, shape, pieces[0], what, s.layout)
    t = _Tensor(name, format.geometry(dt, s.max_planes), shape, ts.group, ts.planes, s.layout)
    k = kernels or default_kernels()
    if prior is None:
        return t.levels(k, pieces, None, 0, n)
    if n == 0:
        raise FormatError(f"{what}: level 0 has no prior")
    m = n - 1 if prior_level is None else prior_level
    if not 0 <= m < n:
        raise ValueError(f"tensor {name!r}: a prior of level {m} for level {n}")
    if not isinstance(prior, np.ndarray) or prior.dtype != dt.storage or prior.size != t.numel:
        raise ValueError(f"prior of tensor {name!r} is not a {dt.name} array of {t.numel}")
    return t.levels(k, pieces, prior, m + 1, n)


def decode_levels(
    params: Mapping[str, ParamValue],
    dtype_name: str,
    shape: Sequence[int],
    tensor_params: Mapping[str, ParamValue],
    pieces: Sequence[Buffer],
    name: str = "",
    kernels: Kernels | None = None,
) -> Iterator[Array]:
    """The tensor at every level ``0 .. len(pieces) - 1`` in turn: the arrays that
    :func:`decode_tensor` gives level by level, each from the one before (the same checks
    and errors), with the tensor's settings and scales read once rather than per level
    (the quality figures of a publish decode every level of the tensors they measure)."""
    if not pieces:
        return
    prior = decode_tensor(params, dtype_name, shape, tensor_params, pieces[:1], None, name, kernels)
    yield prior
    if "rows" in tensor_params:  # row classes: each level from the one before
        for m in range(1, len(pieces)):
            prior = decode_tensor(
                params, dtype_name, shape, tensor_params, pieces[: m + 1], prior, name, kernels
            )
            yield prior
        return
    s = settings(params)
    dt = dtype(dtype_name)
    shp = tuple(int(d) for d in shape)
    ts = tensor_settings(s, dt, shp, tensor_params, name)  # checked above
    nlevels = s.levels or 1
    t = (
        None
        if ts.whole
        else _Tensor(name, format.geometry(dt, s.max_planes), shp, ts.group, ts.planes, s.layout)
    )
    k = kernels or default_kernels()
    scales = None
    for m in range(1, len(pieces)):
        if m >= nlevels:
            raise FormatError(f"tensor {name!r}: {m + 1} pieces, the model has {nlevels} levels")
        if t is None:  # a whole tensor: the same array at every level
            if len(memoryview(pieces[m])):
                raise FormatError(
                    f"tensor {name!r} level {m}: a whole tensor has data only in level 0"
                )
        else:
            if scales is None:
                scales = t.scales(pieces[0])
            prior = t.levels(k, pieces, prior, m, m, scales)
        yield prior


def _decode_classes(
    params: Mapping[str, ParamValue],
    dtype_name: str,
    shape: tuple[int, ...],
    tensor_params: Mapping[str, ParamValue],
    pieces: Sequence[Buffer],
    prior: Array | None,
    name: str,
    kernels: Kernels | None,
    prior_level: int | None,
) -> Array:
    """A tensor planed by row classes (:mod:`.classes`): each class decoded as a tensor of
    its own, from its rows of ``prior`` if given, and put back in place."""
    ladders = classes.ladders(tensor_params, name)
    if len(shape) < 2:
        raise FormatError(f"tensor {name!r}: row classes need a tensor of two dimensions")
    cls, per_class = classes.split(shape, len(ladders), pieces, name)
    dt = dtype(dtype_name)
    out = np.empty((shape[0], math.prod(shape[1:])), dt.storage)
    flat_prior = None
    if prior is not None:
        if not isinstance(prior, np.ndarray) or prior.dtype != dt.storage or prior.size != out.size:
            raise ValueError(f"prior of tensor {name!r} is not a {dt.name} array of {out.size}")
        flat_prior = prior.reshape(out.shape)
    counts = np.bincount(cls, minlength=len(ladders))
    for c, ladder in enumerate(ladders):
        sub_shape = classes.class_shape(shape, int(counts[c]))
        tp = {"group": tensor_params["group"], "planes": list[ParamValue](ladder)}
        sub_prior = None if flat_prior is None else classes.rows_of(flat_prior, cls, c)
        rows = decode_tensor(
            params,
            dtype_name,
            sub_shape,
            tp,
            per_class[c],
            None if sub_prior is None else sub_prior.reshape(sub_shape),
            name,
            kernels,
            prior_level,
        )
        classes.scatter(out, cls, c, rows)
    return out.reshape(shape)


class _Tensor:
    """A planed tensor being decoded."""

    def __init__(
        self,
        name: str,
        geo: Geometry,
        shape: tuple[int, ...],
        gsize: int,
        planes: tuple[int, ...],
        layout: int,
    ) -> None:
        self.name, self.geo, self.shape, self.gsize, self.planes = name, geo, shape, gsize, planes
        self.layout = layout
        self.numel = math.prod(shape)
        self.total = -(-self.numel // gsize) * gsize
        """Words padded to whole groups."""

    def what(self, m: int, n: int | None = None) -> str:
        return f"tensor {self.name!r} level {m}" + ("" if n in (None, m) else f"..{n}")

    def scales(self, piece0: Buffer) -> Array:
        what = self.what(0)
        frame = format.scales_frame(piece0, what)
        return format.scale_bytes(self.geo, frame, self.total // self.gsize, what, self.layout)

    def levels(
        self,
        k: Kernels,
        pieces: Sequence[Buffer],
        prior: Array | None,
        m0: int,
        n: int,
        scales: Array | None = None,
    ) -> Array:
        """Levels ``m0 .. n`` from ``prior`` (the tensor at level ``m0 - 1``; None when
        ``m0`` is 0) in one pass, or level by level if their frames are too large."""
        size = self.geo.word.itemsize
        read = [
            format.read_level(self.planes, pieces[m], m, self.what(m), self.layout, size)
            for m in range(m0, n + 1)
        ]
        if prior is not None and not any(read):  # no level refines the tensor
            return prior
        budget = self.total * size
        for m, r in zip(range(m0, n + 1), read, strict=True):
            if m0 == n:  # one level: its frames are bounded one by one
                break
            if isinstance(r, RemainderFrames):
                budget -= format.remainder_declared(r, self.total, size, self.what(m))
                continue
            for f in r:
                limit = format.symbol_limit(self.total, f.r)
                budget -= rans.declared(f.symbols, limit, self.what(m))
        if scales is None:
            scales = self.scales(pieces[0])
        if budget < 0 and m0 < n:  # hold one level's symbols at a time
            out = prior
            for m in range(m0, n + 1):
                out = self.levels(k, pieces, out, m, m, scales)
            assert out is not None
            return out
        steps: list[Step] = []
        rem = None
        for m, r in zip(range(m0, n + 1), read, strict=True):
            what = self.what(m)
            if isinstance(r, RemainderFrames):
                rest = format.rest_bytes(r, self.total, size, what)
                rem = Remainder(rest, r.low, format.low_bytes(r, self.total, what))
                continue
            for f in r:
                limit = format.symbol_limit(self.total, f.r)
                codes = rans.decode_symbols(f.symbols, f.r, limit, what, self.layout == 2)
                steps.append(Step(f.k1, f.r, f.first, codes, f.refine))
        out = np.empty(self.total, self.geo.word)
        pw = None if prior is None else np.ascontiguousarray(prior).reshape(-1).view(self.geo.word)
        try:
            k.decode(self.geo, out, self.numel, self.gsize, scales, pw, steps, rem)
        except FormatError as e:
            raise FormatError(f"{self.what(m0, n)}: {e}") from None
        return out[: self.numel].view(self.geo.dt.storage).reshape(self.shape)
