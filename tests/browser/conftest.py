"""Real headless Chromium (Debian's chromium + chromium-driver) for the dashboard's tests; D19 on every log."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.chrome.options import Options
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.chrome.webdriver import WebDriver

from tests.api.conftest import no_clear_personal_data_in_logs  # noqa: F401  (autouse: D19 checked here too)

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
# Run as root on a machine with no network: no sandbox, no GPU, and nothing that calls home.
CHROMIUM_FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,1800",
)


@pytest.fixture(scope="session")
def chromium() -> Path:
    """The browser's binary; skips (or with CI=true fails) when Debian's chromium is not installed."""
    missing = [str(path) for path in (CHROMIUM, CHROMEDRIVER) if not path.is_file()]
    if missing:
        message = (f"{' and '.join(missing)} not installed: `make test-browser` installs Debian's chromium and "
                   "chromium-driver (scripts/ensure_chromium.sh)")
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}; CI=true requires the browser tests")
        pytest.skip(f"{message}; browser tests skipped")
    return CHROMIUM


@pytest.fixture
def browser(chromium: Path, tmp_path: Path) -> Iterator[WebDriver]:
    """A fresh headless Chromium with its own profile, driven by the system chromedriver (never downloaded)."""
    options = Options()
    options.binary_location = str(chromium)
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    options.add_argument(f"--user-data-dir={tmp_path / 'chromium-profile'}")
    service = Service(str(CHROMEDRIVER), log_output=str(tmp_path / "chromedriver.log"))
    driver = webdriver.Chrome(service=service, options=options)
    driver.set_page_load_timeout(20)
    try:
        yield driver
    finally:
        driver.quit()
