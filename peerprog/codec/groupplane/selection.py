"""Which kernels groupplane uses when none are passed in: the C ones when the extension is
built (for this interface version), else numpy. The environment variable
``PEERPROG_GROUPPLANE`` (``c`` / ``numpy``) or :func:`set_backend` forces one."""

from __future__ import annotations

import os

from peerprog.codec.groupplane import c_kernels
from peerprog.codec.groupplane.c_kernels import CKernels
from peerprog.codec.groupplane.kernels import Kernels
from peerprog.codec.groupplane.numpy_kernels import NumpyKernels

_ALL: dict[str, Kernels] = {"numpy": NumpyKernels()}
if c_kernels.ext is not None:
    _ALL["c"] = CKernels()


def backends() -> tuple[str, ...]:
    """The kernels available here: ``"c"`` (when the extension is built) and ``"numpy"``."""
    return ("c", "numpy") if "c" in _ALL else ("numpy",)


def backend() -> str:
    """The name of the kernels in use."""
    return _current.name


def set_backend(name: str) -> None:
    """Use the ``"c"`` or the ``"numpy"`` kernels from now on (ValueError if unavailable)."""
    global _current
    if name not in _ALL:
        raise ValueError(f"groupplane backend {name!r} is not available (have {backends()})")
    _current = _ALL[name]


def default_kernels() -> Kernels:
    """The kernels in use when none are passed in."""
    return _current


def kernels_named(name: str) -> Kernels:
    """The ``"c"`` or the ``"numpy"`` kernels (ValueError if unavailable)."""
    if name not in _ALL:
        raise ValueError(f"groupplane backend {name!r} is not available (have {backends()})")
    return _ALL[name]


def _initial() -> Kernels:
    want = os.environ.get("PEERPROG_GROUPPLANE", "")
    if want in ("", "auto"):
        return _ALL[backends()[0]]
    if want not in _ALL:
        raise RuntimeError(f"PEERPROG_GROUPPLANE={want!r}: available are {backends()}")
    return _ALL[want]


_current = _initial()
