"""The sample shop in a real browser: headless Chromium clicks the buttons and watches the
task log fill in as the embedded emulator delivers tasks to the server over HTTP."""

from __future__ import annotations

import re
import sqlite3
from datetime import datetime
from pathlib import Path

import pytest
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec

from tests.browser import click, console_errors, wait

from .conftest import SampleServer

pytestmark = pytest.mark.browser

#: The browser's own time zone, far from the sample project's TIME_ZONE (UTC), half an hour
#: off included: a time the browser formatted itself would show.
BROWSER_TIME_ZONE = "Asia/Kolkata"
#: How the page shows every time (views.clock).
CLOCK = r"\d\d:\d\d:\d\d"


def log_row(task: str, outcome: str, attempt: int = 1) -> tuple[str, str]:
    return (
        By.CSS_SELECTOR,
        f'#task-log tr[data-task="shop.tasks.{task}"][data-outcome="{outcome}"]'
        f'[data-attempt="{attempt}"]',
    )


def log_tasks(driver: webdriver.Chrome) -> list[str]:
    """The task column of the log, read in one go (one consistent render)."""
    tasks: list[str] = driver.execute_script(
        "return [...document.querySelectorAll('#task-log tbody tr')].map(r => r.dataset.task)"
    )
    return tasks


def stored_clocks(database: Path, sql: str, *params: object) -> list[str]:
    """Times as the sample stored them (UTC, its TIME_ZONE), formatted as the page must show
    them: the page's times are checked against the database, not against the page's own code."""
    with sqlite3.connect(f"file:{database}?mode=ro", uri=True) as db:
        rows = db.execute(sql, params).fetchall()
    return [datetime.fromisoformat(value).strftime("%H:%M:%S") for row in rows for value in row]


def page_clocks(driver: webdriver.Chrome, css: str) -> list[str]:
    clocks: list[str] = driver.execute_script(
        "return [...document.querySelectorAll(arguments[0])].map(e => e.textContent)", css
    )
    return clocks


def test_clicking_create_order_shows_its_tasks_run(
    browser: webdriver.Chrome, sample_server: SampleServer
) -> None:
    browser.execute_cdp_cmd("Emulation.setTimezoneOverride", {"timezoneId": BROWSER_TIME_ZONE})
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

    # A reminder: its message names a time, and the order row shows when it came.
    click(browser, f'#{order_id} button[data-action="remind"]')
    wait(browser).until(ec.text_to_be_present_in_element((By.ID, "message"), "scheduled for"))
    message = browser.find_element(By.ID, "message").text
    scheduled = re.fullmatch(rf"Reminder for order #\d+ scheduled for ({CLOCK})\.", message)
    assert scheduled, message
    reminded = wait(browser).until(
        lambda d: d.find_element(By.CSS_SELECTOR, f"#{order_id} .reminded").text
    )

    # One zone on the whole page: the project's, named once, whatever the browser's own.
    # (The browser itself is 5:30 ahead of UTC, the offset JavaScript gives in minutes behind.)
    assert browser.execute_script("return new Date().getTimezoneOffset()") == -330
    assert browser.find_element(By.ID, "time-zone").text == "UTC"
    assert browser.find_element(By.TAG_NAME, "body").text.count("UTC") == 1
    database = sample_server.database
    pk = int(order_id.removeprefix("order-"))
    order_times = "SELECT confirmed_at, reminded_at FROM shop_order WHERE id = ?"
    confirmed_at, reminded_at = stored_clocks(database, order_times, pk)
    assert page_clocks(browser, f"#{order_id} .confirmed .clock") == [confirmed_at]
    assert reminded == reminded_at
    # The reminder came at or after the time the message named, so both are in one zone
    # (the message in the browser's zone would be 5.5 hours off).
    assert scheduled.group(1) <= reminded or reminded < "00:01:00", (scheduled.group(1), reminded)
    # Every time in the tables, against the rows it shows (the page may be a refresh behind).
    log_times = "SELECT started_at FROM shop_tasklog ORDER BY started_at DESC, id DESC"
    wait(browser).until(
        lambda d: page_clocks(d, "#task-log .clock") == stored_clocks(database, log_times)
    )
    execution_times = "SELECT last_started_at FROM cloudtask_taskexecution"
    wait(browser).until(
        lambda d: (
            sorted(page_clocks(d, "#executions .clock"))
            == sorted(stored_clocks(database, execution_times))
        )
    )
    # Nothing on the page looks like a time in another format (12-hour, ISO, unpadded).
    text = browser.find_element(By.TAG_NAME, "body").text
    assert not re.search(r"\b(AM|PM)\b|\d{4}-\d\d-\d\dT|\b\d:\d\d", text), text

    assert console_errors(browser) == []


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
    # The refusal is an answer the page shows, not a failed request in the console; nor is
    # there a request for a favicon the site does not have.
    assert console_errors(browser) == []
