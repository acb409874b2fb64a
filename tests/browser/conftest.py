"""The browser tests need Debian's Chromium and chromedriver, and selenium: where one is
missing, every test here is skipped, and the summary says why in one line."""

from __future__ import annotations

import pytest

from tests.browser.chromium import missing

_REASON = missing()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if _REASON is None:
        return
    skip = pytest.mark.skip(reason=f"browser tests need Chromium: {_REASON}")
    for item in items:
        if "tests/browser/" in item.nodeid.replace("\\", "/"):
            item.add_marker(skip)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if _REASON is not None:
        terminalreporter.write_line(f"browser tests skipped: {_REASON}", yellow=True)
