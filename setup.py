"""Build of groupplane's optional C kernels; everything else is in pyproject.toml.

``pip install -e .`` (or a wheel build) compiles ``peerprog/codec/_groupplane.c`` with the
CPython headers only (no numpy headers). Without a working C compiler the extension is
skipped with a warning and :mod:`peerprog.codec.groupplane` uses its numpy kernels.
"""

import sys

from setuptools import Extension, setup

# No fast-math: the kernels' float arithmetic must round exactly as numpy's float32 does
# (and no contraction into FMA, which would round once instead of twice).
_FLAGS = [] if sys.platform == "win32" else ["-O3", "-ffp-contract=off", "-fno-strict-aliasing"]

setup(
    ext_modules=[
        Extension(
            "peerprog.codec._groupplane",
            ["peerprog/codec/_groupplane.c"],
            extra_compile_args=_FLAGS,
            optional=True,
        )
    ]
)
