"""The ``groupplane`` codec (lossless, the default): per-group power-of-two scales,
fixed-point magnitude bit planes most significant first, entropy-coded, a rate-allocated
ladder of levels, and the exact bits last. Streams one tensor at a time.

Where to find what:

* :mod:`.format` — the byte format, every rule about the bytes written once: framing, plane
  steps, the symbols-per-byte rule, what each piece holds, whole tensors.
* :mod:`.params` — the codec params and tensor params the manifest holds, checked.
* :mod:`.rate` — the plan: :func:`analyse` each tensor cheaply, then :func:`plan` the rate
  over all of them.
* :mod:`.classes` — row classes: with the publisher's sensitivity, a tensor's rows split by
  worth, each class with its own plane ladder (tensor params ``{"group", "rows"}``).
* :mod:`.encode`, :mod:`.decode` — one tensor's pieces, and any prefix of them back.
* :mod:`.kernels` — the interface of the numeric passes; :mod:`.c_kernels` (the extension
  built from ``c/*.c``) and :mod:`.numpy_kernels` (the reference) implement it, byte for byte
  alike; :mod:`.selection` picks the default (:func:`backends`, :func:`backend`,
  :func:`set_backend`, ``PEERPROG_GROUPPLANE``).
* :mod:`.codec` — :class:`GroupplaneCodec`, the :class:`~peerprog.codec.base.Codec` that
  publish and the store use.

API (pure functions)::

    analyse(name, tensor, params=None, sensitivity=None) -> TensorStats
    plan(params, stats) -> Plan
    encode_tensor(tensor, tensor_params, params, name="", kernels=None) -> (tensor_params, pieces)
    decode_tensor(params, dtype, shape, tensor_params, pieces, prior=None, name="",
                  kernels=None) -> ndarray
    decode_levels(params, dtype, shape, tensor_params, pieces, name="", kernels=None)
"""

from __future__ import annotations

from peerprog.codec.groupplane.codec import GroupplaneCodec, GroupplanePlanner
from peerprog.codec.groupplane.decode import decode_levels, decode_tensor
from peerprog.codec.groupplane.encode import encode_tensor
from peerprog.codec.groupplane.params import (
    NAME,
    PLANE_DTYPES,
    Settings,
    default_params,
    group_size,
    is_whole,
    settings,
)
from peerprog.codec.groupplane.rate import SAMPLE_ELEMENTS, Plan, TensorStats, analyse, plan
from peerprog.codec.groupplane.selection import backend, backends, set_backend

__all__ = [
    "NAME",
    "PLANE_DTYPES",
    "SAMPLE_ELEMENTS",
    "GroupplaneCodec",
    "GroupplanePlanner",
    "Plan",
    "Settings",
    "TensorStats",
    "analyse",
    "backend",
    "backends",
    "decode_levels",
    "decode_tensor",
    "default_params",
    "encode_tensor",
    "group_size",
    "is_whole",
    "plan",
    "set_backend",
    "settings",
]
