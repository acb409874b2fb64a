"""Headless Debian Chromium driven by Selenium, for the browser tests and the screenshots.

    driver = start_chromium(tmp_path / "profile")
    driver.get(url)
    ...
    driver.quit()

:func:`missing` says why no browser can be started here (None when one can): the tests
skip with that message. Selenium is pointed at the Debian binaries, so it never looks for
(or downloads) a browser or a driver of its own.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

CHROMIUM = Path(os.environ.get("PEERPROG_CHROMIUM", "/usr/bin/chromium"))
CHROMEDRIVER_NAMES = ("chromedriver", "chromium.chromedriver")
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-default-apps",
    "--disable-extensions",
    "--no-first-run",
    "--no-default-browser-check",
    "--hide-scrollbars",
    "--force-device-scale-factor=1",
)


def chromedriver() -> Path | None:
    """The chromedriver on ``$PATH`` (Debian's ``chromium-driver``), if any."""
    for name in CHROMEDRIVER_NAMES:
        found = shutil.which(name)
        if found:
            return Path(found)
    return None


def missing() -> str | None:
    """Why no browser test can run here, or None."""
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium is not installed (pip install selenium; it is in the test extra)"
    if not CHROMIUM.exists():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium chromium-driver)"
    if chromedriver() is None:
        return "no chromedriver on PATH (apt-get install chromium-driver)"
    return None


def start_chromium(profile: Path, *, width: int = 1280, height: int = 900) -> Any:
    """A headless Chromium with a fresh profile in ``profile`` (a folder to create)."""
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    profile.mkdir(parents=True, exist_ok=True)
    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={profile}")
    options.add_argument(f"--window-size={width},{height}")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver_path = chromedriver()
    assert driver_path is not None, missing()
    service = Service(executable_path=str(driver_path))
    driver = webdriver.Chrome(options=options, service=service)
    driver.set_script_timeout(60)
    return driver


def console_errors(driver: Any) -> list[str]:
    """The page's console messages of level SEVERE so far (and clears them)."""
    return [e["message"] for e in driver.get_log("browser") if e.get("level") == "SEVERE"]
