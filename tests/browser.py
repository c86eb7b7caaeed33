"""Headless Chromium for the browser tests (the ``browser`` fixture in tests/conftest.py), and
waits that survive pages which re-render themselves every second."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

#: Longest wait for a DOM condition: a hang guard, not a timing assertion.
WAIT = 30.0

CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--window-size=1280,900",
]


@contextmanager
def chromium() -> Iterator[webdriver.Chrome]:
    # Debian's chromium and chromedriver (make browser-deps installs them). Naming both paths
    # keeps Selenium Manager, which would download a browser, out of the way.
    binary = shutil.which("chromium")
    chromedriver = shutil.which("chromedriver")
    assert binary and chromedriver, "install chromium and chromium-driver (make browser-deps)"
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    # Keeps the page's console messages for console_errors().
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver: webdriver.Chrome) -> WebDriverWait[Any]:
    # A page that re-renders its tables every second can replace an element found just before
    # a refresh: a condition that meets a stale one simply tries again.
    return WebDriverWait(
        driver, WAIT, poll_frequency=0.1, ignored_exceptions=[StaleElementReferenceException]
    )


def click(driver: webdriver.Chrome, css: str) -> None:
    """Click the element, finding it again if a refresh replaced it in between."""
    wait(driver).until(lambda d: d.find_element(By.CSS_SELECTOR, css).click() is None)


def console_errors(driver: webdriver.Chrome) -> list[str]:
    """The page's console errors since the last call (failed loads and uncaught exceptions)."""
    entries: list[dict[str, Any]] = driver.get_log("browser")  # type: ignore[no-untyped-call]
    return [entry["message"] for entry in entries if entry["level"] == "SEVERE"]
