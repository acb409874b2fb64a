"""Build of groupplane's optional C kernels; everything else is in pyproject.toml.

``pip install -e .`` (or a wheel build) compiles ``peerprog/codec/groupplane/c/*.c`` into
the one extension ``peerprog.codec.groupplane._kernels``, with the CPython headers only (no
numpy headers). Without a working C compiler the extension is skipped with a warning and
:mod:`peerprog.codec.groupplane` uses its numpy kernels.
"""

import sys
from pathlib import Path

from setuptools import Extension, setup

# No fast-math: the kernels' float arithmetic must round exactly as numpy's float32 does
# (and no contraction into FMA, which would round once instead of twice). No -march: the
# SIMD paths are compiled per function and chosen at run time by the CPU's features.
_FLAGS = [] if sys.platform == "win32" else ["-O3", "-ffp-contract=off", "-fno-strict-aliasing"]
_C = Path("peerprog/codec/groupplane/c")

setup(
    ext_modules=[
        Extension(
            "peerprog.codec.groupplane._kernels",
            sorted(str(p) for p in _C.glob("*.c")),
            depends=sorted(str(p) for p in _C.glob("*.h")),
            extra_compile_args=_FLAGS,
            optional=True,
        )
    ]
)
