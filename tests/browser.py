"""A real headless browser for the results page: Debian's chromium + chromium-driver, driven by Selenium.

`make tools` installs both; their absence is a failure of the setup, not a reason to skip (as with promtool).
"""

from __future__ import annotations

import os
from pathlib import Path

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# the machine's network is closed: without these, chromium waits on connections it will never get
FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--disable-default-apps", "--disable-extensions", "--disable-dev-shm-usage", "--hide-scrollbars",
         "--force-device-scale-factor=1")


def missing() -> str | None:
    """What is missing for a browser test, or None."""
    for path in (CHROMIUM, CHROMEDRIVER):
        if not os.access(path, os.X_OK):
            return f"{path} not installed: run `make tools` (Debian packages chromium, chromium-driver)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "selenium not installed: run `make install` (the project's test extra)"
    return None


def chromium(profile: str, width: int = 1280, height: int = 900):
    """A headless Chromium WebDriver with a fresh profile in the folder ``profile``; the caller quits it."""
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not try to download anything
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = str(CHROMIUM)
    for flag in FLAGS:
        opts.add_argument(flag)
    opts.add_argument(f"--user-data-dir={profile}")
    opts.add_argument(f"--window-size={width},{height}")
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(executable_path=str(CHROMEDRIVER)), options=opts)
    driver.set_page_load_timeout(30)
    # the page's viewport exactly width x height (the window's own size includes what headless counts as chrome)
    driver.execute_cdp_cmd("Emulation.setDeviceMetricsOverride",
                           {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": False})
    return driver
