"""groupplane's C kernels are optional only where there is no C compiler: where setup.py's
compiler exists, the extension must have been built and must import (and be of the
interface version the Python side expects), so that CI always tests the C path."""

from __future__ import annotations

import shutil
import sysconfig

import pytest

from peerprog.codec import groupplane as gp
from peerprog.codec.groupplane import c_kernels


def test_the_extension_is_built_where_a_compiler_is() -> None:
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(cc) is None:
        pytest.skip(f"no C compiler ({cc})")
    assert c_kernels.ext is not None, c_kernels.error
    assert "c" in gp.backends()
