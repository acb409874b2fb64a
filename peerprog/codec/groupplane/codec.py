"""The ``groupplane`` codec behind the :class:`~peerprog.codec.base.Codec` interface: the
two-pass protocol publish needs (every tensor is shown to a :class:`GroupplanePlanner` first,
which allocates the rate over the whole model), the per-tensor encode and decode, and the
whole-model conveniences.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

from peerprog.codec.base import Encoded, EncodedTensor, RawTensor
from peerprog.codec.common import Array, PriorDecoder, join_levels
from peerprog.codec.dtypes import dtype
from peerprog.codec.groupplane import classes, decode, encode, format, rate
from peerprog.codec.groupplane.params import NAME, default_params, flat_array, is_whole, settings
from peerprog.codec.layout import ParamValue, TensorLayout
from peerprog.codec.sensitivity import Sensitivity, matrix_shape
from peerprog.errors import FormatError


class GroupplanePlanner:
    """Collects every tensor's statistics, then allocates the rate
    (:func:`~peerprog.codec.groupplane.rate.plan`), weighing errors by ``sensitivity`` when
    given; then, with the codec param ``row_classes``, a tensor whose rows differ in worth
    is planed by row classes (:mod:`~peerprog.codec.groupplane.classes`), and its plan
    carries its rows' classes (``row_classes``, bytes for the encoder; not a manifest
    param)."""

    def __init__(
        self, params: Mapping[str, ParamValue], sensitivity: Sensitivity | None = None
    ) -> None:
        self._params = dict(params)
        self._settings = settings(params)
        self._sensitivity = sensitivity
        self._stats: list[rate.TensorStats] = []
        self._classes: dict[str, bytes] = {}

    def add(self, name: str, tensor: RawTensor) -> None:
        if self._sensitivity is None:
            self._stats.append(rate.analyse(name, tensor, self._params))
            return
        shape = tensor.array.shape
        weights = self._sensitivity.of(name, shape)
        dt = dtype(tensor.dtype)
        cls = None
        if (
            self._settings.row_classes
            and not is_whole(dt, shape, self._settings)
            and len(shape) >= 2
        ):
            weights = classes.floored(weights)
            geo = format.geometry(dt, self._settings.max_planes)
            matrix = flat_array(name, dt, tensor).reshape(matrix_shape(shape))
            cls = classes.choose(classes.row_worth(geo, matrix, weights), matrix.shape[1])
        if cls is None:
            self._stats.append(rate.analyse(name, tensor, self._params, weights))
            return
        self._classes[name] = cls.tobytes()
        for c in range(int(cls.max()) + 1):
            sub = RawTensor(tensor.dtype, classes.rows_of(tensor.array, cls, c))
            w = weights[cls == c] if weights.shape[0] > 1 else weights
            stats = rate.analyse(name, sub, self._params, w)
            self._stats.append(dataclasses.replace(stats, row_class=c))

    def finish(self) -> tuple[dict[str, ParamValue], dict[str, dict[str, ParamValue]]]:
        planned = rate.plan(self._params, self._stats)
        self._stats = []  # (a few hundred bytes a tensor, not needed any more)
        plans = planned.tensors
        for name, cls in self._classes.items():
            plans[name] = {**plans[name], "row_classes": cls}
        return planned.params, plans


class GroupplaneCodec:
    """Per-group power-of-two scales, entropy-coded bit planes, a rate-allocated ladder,
    the exact bits last (lossless)."""

    name = NAME
    lossless = True

    def default_params(self) -> dict[str, ParamValue]:
        """The settings of :func:`~peerprog.codec.groupplane.params.default_params`
        (``levels`` is added by the plan)."""
        return default_params()

    def check_params(self, params: Mapping[str, ParamValue] | None) -> dict[str, ParamValue]:
        merged = {**default_params(), **dict(params or {})}
        settings(merged)
        return {k: list(v) if isinstance(v, list) else v for k, v in merged.items()}

    def levels(self, params: Mapping[str, ParamValue]) -> int:
        levels = settings(params).levels
        if levels is None:
            raise FormatError("groupplane: codec params lack 'levels' (the plan sets them)")
        return levels

    def planner(
        self, params: Mapping[str, ParamValue], sensitivity: Sensitivity | None = None
    ) -> GroupplanePlanner:
        return GroupplanePlanner(params, sensitivity)

    def encode_tensor(
        self,
        params: Mapping[str, ParamValue],
        name: str,
        tensor: RawTensor,
        plan: Mapping[str, ParamValue] | None = None,
    ) -> EncodedTensor:
        if plan is None:
            raise FormatError(f"groupplane: tensor {name!r} has no plan")
        tparams, pieces = encode.encode_tensor(tensor, plan, params, name)
        return EncodedTensor(tparams, tuple([p] for p in pieces))

    def decode_tensor(
        self,
        params: Mapping[str, ParamValue],
        layout: TensorLayout,
        pieces: Sequence[Any],
        prior: Array | None = None,
        prior_level: int | None = None,
    ) -> Array:
        """The tensor at level ``len(pieces) - 1``: from ``prior`` (at ``prior_level``,
        default the level before) every later level in one pass, or from scratch."""
        return decode.decode_tensor(
            params, layout.dtype, layout.shape, layout.params, pieces, prior, layout.name,
            prior_level=prior_level,
        )  # fmt: skip

    def decode_levels(
        self, params: Mapping[str, ParamValue], layout: TensorLayout, pieces: Sequence[Any]
    ) -> Iterator[Array]:
        """:meth:`decode_tensor` of every level of ``pieces`` in turn, each from the one
        before (the same arrays), the tensor's settings and scales read once."""
        return decode.decode_levels(
            params, layout.dtype, layout.shape, layout.params, pieces, layout.name
        )

    def encode(
        self, tensors: Mapping[str, RawTensor], params: Mapping[str, ParamValue] | None = None
    ) -> Encoded:
        """A whole (small) model: planned, then every tensor encoded."""
        planner = self.planner(self.check_params(params))
        for name, tensor in tensors.items():
            planner.add(name, tensor)
        merged, plans = planner.finish()
        encoded = [(n, t, self.encode_tensor(merged, n, t, plans[n])) for n, t in tensors.items()]
        return join_levels(self.name, merged, self.levels(merged), encoded)

    def decoder(
        self, params: Mapping[str, ParamValue], tensors: Sequence[TensorLayout]
    ) -> PriorDecoder:
        return PriorDecoder(self, params, tensors)
