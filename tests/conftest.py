"""Test profiles: the quick one runs in ``make test``; the long one (``--runslow``, or
``PEERPROG_FAULTS=long`` in the environment) adds the ``@pytest.mark.slow`` tests, more
SIGKILL moments and more hypothesis examples."""

from __future__ import annotations

import os

import pytest
from hypothesis import settings


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--runslow",
        action="store_true",
        default=False,
        help="run the long profile: slow tests, 20 crash moments, more fuzzing examples",
    )


def long_profile(config: pytest.Config) -> bool:
    return bool(config.getoption("--runslow")) or os.environ.get("PEERPROG_FAULTS") == "long"


def pytest_configure(config: pytest.Config) -> None:
    settings.register_profile("long", max_examples=1000, deadline=None)
    if long_profile(config):
        settings.load_profile("long")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if long_profile(config):
        return
    skip = pytest.mark.skip(reason="long profile only (--runslow or PEERPROG_FAULTS=long)")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(scope="session")
def long_run(pytestconfig: pytest.Config) -> bool:
    """True in the long profile (scale repetitions with it)."""
    return long_profile(pytestconfig)
