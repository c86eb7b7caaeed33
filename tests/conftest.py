"""Fixtures shared by every test module. Feature-specific fixtures live beside their tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from selenium import webdriver

from tests.browser import chromium


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    """Headless Chromium (tests/browser.py has its waits and console check); quit after the test."""
    with chromium() as driver:
        yield driver
