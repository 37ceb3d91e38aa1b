"""What the browser tests share: Debian's chromium started headless through its chromedriver
(the test module skipped, with the reason, where either is missing or will not start), and
screenshots for the README, written only when ``$PYNOMALY_SCREENSHOTS`` names a folder:

    PYNOMALY_SCREENSHOTS=docs/screenshots pytest tests/api/test_web_browser.py tests/api/test_web_pages_browser.py
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

SIZE = (1100, 800)
PHONE = (390, 844)


def _find(*names):
    for n in names:
        p = shutil.which(n)
        if p:
            return p
    return None


def start_chromium(downloads: Path):
    """A headless chromium at ``SIZE`` downloading into ``downloads``; skips the calling test
    module when there is none."""
    from selenium import webdriver
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.chrome.service import Service

    chromium = _find("chromium", "chromium-browser", "google-chrome")
    driver_path = _find("chromedriver")
    if chromium is None or driver_path is None:
        pytest.skip("Chromium and its driver are not installed (Debian: apt-get install chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
              f"--window-size={SIZE[0]},{SIZE[1]}", "--hide-scrollbars", "--force-device-scale-factor=1"):
        opts.add_argument(a)
    opts.add_experimental_option("prefs", {"download.default_directory": str(downloads),
                                           "download.prompt_for_download": False})
    try:
        driver = webdriver.Chrome(service=Service(driver_path), options=opts)
    except WebDriverException as e:
        pytest.skip(f"Chromium did not start: {str(e).splitlines()[0][:200]}")
    driver.set_page_load_timeout(60)
    driver.downloads = downloads
    return driver


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    """One chromium for a test module (import this fixture into the module to use it)."""
    driver = start_chromium(tmp_path_factory.mktemp("downloads"))
    try:
        yield driver
    finally:
        driver.quit()


def shot(driver, name: str) -> None:
    """A screenshot ``name``.png into ``$PYNOMALY_SCREENSHOTS``, when it is set (never otherwise)."""
    folder = os.environ.get("PYNOMALY_SCREENSHOTS")
    if folder:
        Path(folder).mkdir(parents=True, exist_ok=True)
        path = Path(folder) / f"{name}.png"
        driver.save_screenshot(str(path))
        try:  # a 64-colour palette: a third of the bytes, and these pages use a few colours
            from PIL import Image
        except ImportError:
            return
        with Image.open(path) as im:
            small = im.convert("RGB").quantize(colors=64)
        small.save(path, optimize=True)


def wait(driver, cond, timeout: float = 30):
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, timeout).until(lambda d: cond(d))


def url(server, path: str) -> str:
    return f"http://{server.url}{path}"


def page_overflow(driver) -> int:
    """How far the page scrolls sideways (0: it does not; wide tables scroll in their box)."""
    return driver.execute_script("return document.documentElement.scrollWidth - window.innerWidth")
