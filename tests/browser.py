"""Drive Debian's headless Chromium (``apt-get install chromium chromium-driver``) from tests.

Selenium is imported lazily, so a test module can import this and skip when the browser is
absent. Nothing is downloaded: the driver path is given, so Selenium Manager never runs.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

if TYPE_CHECKING:
    from selenium.webdriver.remote.webdriver import WebDriver

CHROMIUM = Path("/usr/bin/chromium")
CHROMEDRIVER = Path("/usr/bin/chromedriver")
T = TypeVar("T")


@contextmanager
def chromium(size: tuple[int, int] = (1400, 1000), init_script: str = "") -> Iterator[WebDriver]:
    """One headless Chromium of ``size``, quit on exit; ``init_script`` runs in every new
    document before the page's own scripts (e.g. to seed localStorage)."""
    os.environ.setdefault("SE_OFFLINE", "true")  # belt and braces: the explicit driver path skips Selenium Manager
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = str(CHROMIUM)
    for arg in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
                "--disable-extensions", "--disable-background-networking", "--disable-component-update",
                "--renderer-process-limit=2", f"--window-size={size[0]},{size[1]}"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(str(CHROMEDRIVER)), options=options)
    try:
        if init_script:
            driver.execute_cdp_cmd("Page.addScriptToEvaluateOnNewDocument", {"source": init_script})
        yield driver
    finally:
        driver.quit()


def page_text(driver: WebDriver, limit: int = 1200) -> str:
    """The visible text of the page, lines joined by `` | ``, cut to ``limit`` characters."""
    text = driver.execute_script("return document.body ? document.body.innerText : ''") or ""
    return " | ".join(line for line in text.splitlines() if line.strip())[:limit]


def wait_for(driver: WebDriver, probe: Callable[[WebDriver], T], what: str,
             ok: Callable[[T], bool] = bool, timeout: float = 30.0) -> T:
    """Poll ``probe`` every 0.25 s until ``ok`` of its result holds, and return that result; after
    ``timeout`` s raise AssertionError naming ``what``, the last result, the URL and the page text."""
    deadline = time.monotonic() + timeout
    while True:
        last = probe(driver)
        if ok(last):
            return last
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}\nlast seen: {last!r}\n"
                                 f"URL: {driver.current_url}\npage text: {page_text(driver)}")
        time.sleep(0.25)
