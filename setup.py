"""Build of groupplane's optional C extensions; everything else is in pyproject.toml.

``pip install -e .`` (or a wheel build) compiles ``peerprog/codec/groupplane/c/*.c`` into
the extension ``peerprog.codec.groupplane._kernels`` and ``c_rans/rans.c`` into
``peerprog.codec.groupplane._rans`` (the rANS coder of the symbol bytes), with the CPython
headers only (no numpy headers). Without a working C compiler each is skipped with a
warning and :mod:`peerprog.codec.groupplane` uses its numpy implementation instead.
"""

import sys
from pathlib import Path

from setuptools import Extension, setup

# No fast-math: the kernels' float arithmetic must round exactly as numpy's float32 does
# (and no contraction into FMA, which would round once instead of twice). No -march: the
# SIMD paths are compiled per function and chosen at run time by the CPU's features.
_FLAGS = [] if sys.platform == "win32" else ["-O3", "-ffp-contract=off", "-fno-strict-aliasing"]
_C = Path("peerprog/codec/groupplane/c")
_RANS = Path("peerprog/codec/groupplane/c_rans")

setup(
    ext_modules=[
        Extension(
            "peerprog.codec.groupplane._kernels",
            sorted(str(p) for p in _C.glob("*.c")),
            depends=sorted(str(p) for p in _C.glob("*.h")),
            extra_compile_args=_FLAGS,
            optional=True,
        ),
        Extension(
            "peerprog.codec.groupplane._rans",
            sorted(str(p) for p in _RANS.glob("*.c")),
            extra_compile_args=_FLAGS,
            optional=True,
        ),
    ]
)
