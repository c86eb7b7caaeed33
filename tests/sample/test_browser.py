"""The sample shop in a real browser: headless Chromium clicks the buttons and watches the
task log fill in as the embedded emulator delivers tasks to the server over HTTP."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from typing import Any

import pytest
from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec
from selenium.webdriver.support.ui import WebDriverWait

from .conftest import SampleServer

pytestmark = pytest.mark.browser

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


@pytest.fixture
def browser() -> Iterator[webdriver.Chrome]:
    # Debian's chromium and chromedriver (make browser-deps installs them). Naming both paths
    # keeps Selenium Manager, which would download a browser, out of the way.
    chromium = shutil.which("chromium")
    chromedriver = shutil.which("chromedriver")
    assert chromium and chromedriver, "install chromium and chromium-driver (make browser-deps)"
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for flag in CHROMIUM_FLAGS:
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(chromedriver), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def log_row(task: str, outcome: str, attempt: int = 1) -> tuple[str, str]:
    return (
        By.CSS_SELECTOR,
        f'#task-log tr[data-task="shop.tasks.{task}"][data-outcome="{outcome}"]'
        f'[data-attempt="{attempt}"]',
    )


def wait(driver: webdriver.Chrome) -> WebDriverWait[Any]:
    # The page re-renders its tables every second: an element found just before a refresh can
    # go stale, so a condition that meets one simply tries again.
    return WebDriverWait(
        driver, WAIT, poll_frequency=0.1, ignored_exceptions=[StaleElementReferenceException]
    )


def click(driver: webdriver.Chrome, css: str) -> None:
    """Click the element, finding it again if a refresh replaced it in between."""
    wait(driver).until(lambda d: d.find_element(By.CSS_SELECTOR, css).click() is None)


def log_tasks(driver: webdriver.Chrome) -> list[str]:
    """The task column of the log, read in one go (one consistent render)."""
    tasks: list[str] = driver.execute_script(
        "return [...document.querySelectorAll('#task-log tbody tr')].map(r => r.dataset.task)"
    )
    return tasks


def test_clicking_create_order_shows_its_tasks_run(
    browser: webdriver.Chrome, sample_server: SampleServer
) -> None:
    browser.get(sample_server.url)
    assert browser.title == "cloudtask sample shop"
    assert log_tasks(browser) == []

    browser.find_element(By.ID, "create-order").click()

    wait(browser).until(ec.text_to_be_present_in_element((By.ID, "message"), "committed"))
    # The on-commit confirmation, delivered over HTTP by the emulator, shows up in the log...
    wait(browser).until(ec.presence_of_element_located(log_row("send_confirmation", "succeeded")))
    # ...and so does the payment's failed first attempt, then its successful retry...
    wait(browser).until(ec.presence_of_element_located(log_row("charge_payment", "retrying")))
    wait(browser).until(ec.presence_of_element_located(log_row("charge_payment", "succeeded", 2)))
    # ...whose status change fired the binding, while the order row turned paid.
    wait(browser).until(
        ec.presence_of_element_located(log_row("order_status_changed", "succeeded"))
    )
    order_id = wait(browser).until(
        lambda d: d.execute_script(
            "const row = document.querySelector('#orders tr[data-status=\"paid\"]');"
            "return row && row.querySelector('.confirmed').textContent.startsWith('yes')"
            " ? row.id : null"
        )
    )

    # Marking it shipped sends the status binding again, with the change it saw.
    click(browser, f'#{order_id} button[data-status="shipped"]')
    wait(browser).until(
        ec.text_to_be_present_in_element(
            (By.CSS_SELECTOR, "#task-log tbody"), "went paid -> shipped"
        )
    )
    wait(browser).until(
        ec.presence_of_element_located((By.CSS_SELECTOR, f'#{order_id}[data-status="shipped"]'))
    )


def test_rollback_and_named_task_buttons(
    browser: webdriver.Chrome, sample_server: SampleServer
) -> None:
    browser.get(sample_server.url)

    browser.find_element(By.ID, "create-rolled-back").click()
    wait(browser).until(ec.text_to_be_present_in_element((By.ID, "message"), "rolled back"))
    assert (
        browser.execute_script("return document.querySelectorAll('#orders tbody tr').length") == 0
    )

    browser.find_element(By.ID, "rebuild-report").click()
    wait(browser).until(ec.text_to_be_present_in_element((By.ID, "message"), "queued"))
    wait(browser).until(
        ec.presence_of_element_located(log_row("rebuild_daily_report", "succeeded"))
    )
    browser.find_element(By.ID, "rebuild-report").click()
    wait(browser).until(ec.text_to_be_present_in_element((By.ID, "message"), "refused"))
    # Nothing ran for the refused duplicate, and the rolled-back order sent nothing at all.
    assert log_tasks(browser) == ["shop.tasks.rebuild_daily_report"]
