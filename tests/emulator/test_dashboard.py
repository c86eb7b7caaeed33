"""The emulator's dashboard: its page in headless Chromium driving the real gRPC API, its JSON
endpoint, and the guards that keep other web pages from reading or changing it."""

from __future__ import annotations

import datetime as dt
import http.client
import json
import re
import signal
import sys
from typing import Any
from urllib.parse import urlsplit

import pytest
from google.api_core.exceptions import NotFound
from google.cloud import tasks_v2
from selenium import webdriver
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as ec

from cloudtask.emulator import Emulator
from cloudtask.emulator.dashboard import CSRF_HEADER, Dashboard, loopback_host, relative
from tests.browser import click, console_errors, wait
from tests.waiting import poll

from .conftest import Target
from .test_running import Process, env

Response = tuple[int, dict[str, str], bytes]


def call(
    emulator: Emulator,
    method: str,
    path: str,
    *,
    body: object = None,
    headers: dict[str, str] | None = None,
) -> Response:
    """One HTTP request to the dashboard; ``headers`` may replace Host."""
    url = urlsplit(emulator.dashboard_url)
    conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=10)
    try:
        data = json.dumps(body).encode() if body is not None else None
        sent = {"Content-Type": "application/json"} if data is not None else {}
        conn.request(method, path, body=data, headers={**sent, **(headers or {})})
        response = conn.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        conn.close()


def token_of(emulator: Emulator) -> str:
    status, _, page = call(emulator, "GET", "/")
    assert status == 200
    match = re.search(r'<meta name="dashboard-token" content="([^"]+)">', page.decode())
    assert match, "the page carries its token"
    return match.group(1)


def queue_state(client: tasks_v2.CloudTasksClient, queue: str) -> tasks_v2.Queue.State:
    return client.get_queue(name=queue).state


def in_an_hour() -> dt.datetime:
    return (dt.datetime.now(dt.UTC) + dt.timedelta(hours=1)).replace(microsecond=0)


def iso(when: dt.datetime) -> str:
    return when.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def text_of(browser: webdriver.Chrome, css: str) -> str:
    """The element's text, read again if a refresh replaced the element meanwhile."""
    text: str = wait(browser).until(lambda d: d.find_element(By.CSS_SELECTOR, css).text)
    return text


def shown_time(browser: webdriver.Chrome, css: str) -> dt.datetime:
    """The time a ``<time datetime=...>`` element of the page shows."""
    stamp: str = wait(browser).until(
        lambda d: d.find_element(By.CSS_SELECTOR, f"{css} time").get_attribute("datetime")
    )
    return dt.datetime.fromisoformat(stamp)


def create(
    client: tasks_v2.CloudTasksClient,
    queue: str,
    task_id: str,
    url: str,
    schedule_time: dt.datetime | None = None,
) -> tasks_v2.Task:
    task: dict[str, Any] = {"name": f"{queue}/tasks/{task_id}", "http_request": {"url": url}}
    if schedule_time is not None:
        task["schedule_time"] = schedule_time
    return client.create_task(request={"parent": queue, "task": task})


def update_queue(
    client: tasks_v2.CloudTasksClient, queue: str, **fields: dict[str, Any]
) -> tasks_v2.Queue:
    """UpdateQueue of just the given sub-fields, e.g. ``retry_config={"max_attempts": 3}``."""
    paths = [f"{field}.{sub}" for field, values in fields.items() for sub in values]
    return client.update_queue(
        request={"queue": {"name": queue, **fields}, "update_mask": {"paths": paths}}
    )


# -- in the browser ----------------------------------------------------------------------------


@pytest.mark.browser
def test_the_page_shows_the_emulator_and_its_buttons_call_the_api(
    browser: webdriver.Chrome,
    emulator: Emulator,
    client: tasks_v2.CloudTasksClient,
    queue: str,
    target: Target,
) -> None:
    # Retries a minute apart: the failed attempt's next retry stays on the page, due later.
    update_queue(client, queue, retry_config={"min_backoff": dt.timedelta(seconds=60)})
    target.script("/fail", 500)
    create(client, queue, "fails", target.url("/fail"))
    target.wait_for(1, path="/fail")
    later_at = in_an_hour()
    create(client, queue, "later", target.url("/later"), later_at)

    browser.get(emulator.dashboard_url)
    assert browser.title == "cloudtask emulator"
    row = 'tr[data-queue="default"]'
    wait(browser).until(ec.presence_of_element_located((By.CSS_SELECTOR, row)))
    queue_text = text_of(browser, row)
    assert "running" in queue_text
    assert "500/s, burst 100" in queue_text  # the queue's rate limits
    assert "backoff 60 s to 3600 s" in queue_text  # and its retry config
    later = text_of(browser, 'tr[data-task="later"]')
    assert target.url("/later") in later
    assert f"{iso(later_at)} in " in later  # the schedule time, UTC, and how far ahead
    assert "not attempted" in later

    # The failed attempt: its status, and when its retry is due.
    failed = 'tr[data-task="fails"][data-attempt="1"][data-status="500"]'
    wait(browser).until(ec.presence_of_element_located((By.CSS_SELECTOR, failed)))
    assert text_of(browser, f"{failed} .outcome") == "HTTP 500"
    assert text_of(browser, f"{failed} .next").startswith("due ")
    retry_at = shown_time(browser, f"{failed} .next")
    # The retry GetTask reports, min_backoff (60 s) after the attempt went out.
    assert iso(retry_at) == iso(client.get_task(name=f"{queue}/tasks/fails").schedule_time)
    assert retry_at >= shown_time(browser, f"{failed} td:first-child") + dt.timedelta(seconds=60)

    click(browser, f'{row} button[data-action="pause"]')
    wait(browser).until(
        ec.presence_of_element_located((By.CSS_SELECTOR, f'{row}[data-state="paused"]'))
    )
    assert queue_state(client, queue) == tasks_v2.Queue.State.PAUSED
    wait(browser).until(
        ec.text_to_be_present_in_element((By.ID, "message"), "Paused queue default")
    )

    click(browser, f'{row} button[data-action="resume"]')
    wait(browser).until(
        ec.presence_of_element_located((By.CSS_SELECTOR, f'{row}[data-state="running"]'))
    )
    assert queue_state(client, queue) == tasks_v2.Queue.State.RUNNING

    # Run now: the task scheduled an hour ahead reaches its target at once.
    click(browser, 'tr[data-task="later"] button[data-action="run"]')
    [received] = target.wait_for(1, path="/later")
    assert received.header("X-CloudTasks-TaskName") == "later"
    wait(browser).until(
        ec.presence_of_element_located(
            (By.CSS_SELECTOR, 'tr[data-task="later"][data-attempt="1"][data-status="200"]')
        )
    )

    create(client, queue, "purged", target.url("/purged"), in_an_hour())
    wait(browser).until(ec.presence_of_element_located((By.CSS_SELECTOR, 'tr[data-task="purged"]')))
    # Purge asks first: cancelled, it deletes nothing.
    click(browser, f'{row} button[data-action="purge"]')
    wait(browser).until(ec.alert_is_present()).dismiss()
    held = sorted(t.name.rsplit("/", 1)[1] for t in client.list_tasks(parent=queue))
    assert held == ["fails", "purged"]
    click(browser, f'{row} button[data-action="purge"]')
    confirm = wait(browser).until(ec.alert_is_present())
    assert confirm.text == "Delete every task in queue default?"
    confirm.accept()
    poll(lambda: not list(client.list_tasks(parent=queue)), what="the purge empties the queue")
    wait(browser).until(ec.text_to_be_present_in_element((By.ID, "tasks"), "No tasks."))
    wait(browser).until(
        ec.text_to_be_present_in_element((By.ID, "message"), "Purged queue default")
    )
    assert not any(r.path == "/purged" for r in target.received)

    assert console_errors(browser) == []


# -- over plain HTTP ----------------------------------------------------------------------------


def test_the_json_endpoint(
    emulator: Emulator, client: tasks_v2.CloudTasksClient, queue: str, target: Target
) -> None:
    update_queue(
        client,
        queue,
        rate_limits={"max_dispatches_per_second": 5, "max_concurrent_dispatches": 2},
        retry_config={"max_attempts": 3},
    )
    when = in_an_hour()
    create(client, queue, "report", target.url("/report"), when)

    status, headers, body = call(emulator, "GET", "/api/state")

    assert status == 200
    assert headers["Content-Type"] == "application/json"
    state = json.loads(body)
    [default] = state["queues"]
    assert default["name"] == queue
    assert default["state"] == "running"
    assert (default["tasks"], default["in_flight"]) == (1, 0)
    assert default["max_dispatches_per_second"] == 5
    assert default["max_concurrent_dispatches"] == 2
    assert default["max_attempts"] == 3
    [task] = state["tasks"]
    assert task["task_id"] == "report"
    assert task["url"] == target.url("/report")
    assert task["schedule_time"] == iso(when)
    assert (task["dispatch_count"], task["response_count"]) == (0, 0)
    assert task["status"] == "not attempted"
    assert state["dispatches"] == []


def test_the_dispatch_log_in_json(
    emulator: Emulator, client: tasks_v2.CloudTasksClient, queue: str, target: Target
) -> None:
    update_queue(client, queue, retry_config={"max_attempts": 2})
    target.script("/flaky", 503, 500)
    create(client, queue, "flaky", target.url("/flaky"))
    assert emulator.wait_idle()

    dispatches = json.loads(call(emulator, "GET", "/api/state")[2])["dispatches"]

    # Newest first; the first attempt's next retry is when the second went out.
    second, first = dispatches
    assert (first["attempt"], first["status"], first["next_note"]) == (1, 503, "sent")
    assert first["next_attempt"] == second["when"]
    # Out of attempts: no retry after the second.
    assert (second["attempt"], second["status"]) == (2, 500)
    assert (second["next_attempt"], second["next_note"]) == (None, "none")


def test_a_post_without_the_token_is_refused_and_changes_nothing(
    emulator: Emulator, client: tasks_v2.CloudTasksClient, queue: str
) -> None:
    for headers in ({}, {CSRF_HEADER: "guessed"}):
        status, _, body = call(
            emulator, "POST", "/api/pause", body={"name": queue}, headers=headers
        )
        assert status == 403
        assert CSRF_HEADER in json.loads(body)["error"]
    assert queue_state(client, queue) == tasks_v2.Queue.State.RUNNING

    # A GET cannot change anything either.
    assert call(emulator, "GET", "/api/pause")[0] == 404
    assert queue_state(client, queue) == tasks_v2.Queue.State.RUNNING


def test_the_token_from_the_page_makes_the_same_calls_as_the_buttons(
    emulator: Emulator, client: tasks_v2.CloudTasksClient, queue: str
) -> None:
    token = {CSRF_HEADER: token_of(emulator)}

    status, _, body = call(emulator, "POST", "/api/pause", body={"name": queue}, headers=token)

    assert (status, json.loads(body)) == (200, {"message": "Paused queue default"})
    assert queue_state(client, queue) == tasks_v2.Queue.State.PAUSED
    # The API's own errors come back as they would to gcloud.
    missing = f"{queue}/tasks/missing"
    status, _, body = call(emulator, "POST", "/api/run", body={"name": missing}, headers=token)
    assert status == 404
    assert json.loads(body)["error"].startswith("NotFound: ")
    with pytest.raises(NotFound):
        client.get_task(name=missing)


@pytest.mark.parametrize("host", ["evil.example", "evil.example:8080", "10.0.0.1", "[::2]:80"])
def test_a_host_that_is_not_loopback_is_refused(
    emulator: Emulator, client: tasks_v2.CloudTasksClient, queue: str, host: str
) -> None:
    # A DNS-rebinding page names its own host: it can neither read the page (nor its token)...
    for path in ("/", "/api/state"):
        status, _, body = call(emulator, "GET", path, headers={"Host": host})
        assert status == 403
        assert b"not a loopback address" in body
        assert b"dashboard-token" not in body
    # ...nor change anything, even with the token.
    token = token_of(emulator)
    status, _, _ = call(
        emulator,
        "POST",
        "/api/pause",
        body={"name": queue},
        headers={"Host": host, CSRF_HEADER: token},
    )
    assert status == 403
    assert queue_state(client, queue) == tasks_v2.Queue.State.RUNNING


def test_loopback_hosts_are_served(emulator: Emulator) -> None:
    port = urlsplit(emulator.dashboard_url).port
    for host in (f"127.0.0.1:{port}", f"localhost:{port}", "localhost", f"[::1]:{port}"):
        assert call(emulator, "GET", "/api/state", headers={"Host": host})[0] == 200


def test_a_post_from_another_origin_is_refused(
    emulator: Emulator, client: tasks_v2.CloudTasksClient, queue: str
) -> None:
    headers = {CSRF_HEADER: token_of(emulator), "Origin": "https://evil.example"}

    status, _, _ = call(emulator, "POST", "/api/pause", body={"name": queue}, headers=headers)

    assert status == 403
    assert queue_state(client, queue) == tasks_v2.Queue.State.RUNNING


def test_task_urls_are_escaped(
    emulator: Emulator, client: tasks_v2.CloudTasksClient, queue: str, target: Target
) -> None:
    url = target.url('/x?<script>alert("owned")</script>&a=1')
    create(client, queue, "xss", url, in_an_hour())

    status, headers, page = call(emulator, "GET", "/")
    state = json.loads(call(emulator, "GET", "/api/state")[2])

    assert status == 200
    text = page.decode()
    assert "<script>alert" not in text
    assert "&lt;script&gt;alert(&quot;owned&quot;)&lt;/script&gt;&amp;a=1" in text
    assert "<script>alert" not in state["html"]["tasks"]
    assert state["tasks"][0]["url"] == url  # the data itself, unchanged
    # Belt and braces: only the page's own inline script may run.
    assert "script-src 'nonce-" in headers["Content-Security-Policy"]


def test_favicon_and_unknown_paths(emulator: Emulator) -> None:
    assert call(emulator, "GET", "/favicon.ico")[0] == 204
    assert call(emulator, "GET", "/nothing-here")[0] == 404


# -- where it listens --------------------------------------------------------------------------


def test_it_listens_on_loopback_only(emulator: Emulator) -> None:
    assert emulator.dashboard_url.startswith("http://127.0.0.1:")
    for host in ("0.0.0.0", "::", "192.168.1.20", "example.com"):  # noqa: S104 - refused
        with pytest.raises(ValueError, match="loopback address only"):
            loopback_host(host)
        with pytest.raises(ValueError, match=re.escape(repr(host))):
            Dashboard(emulator.store, [], emulator.client, grpc_address="x", host=host)
    assert loopback_host("::1") == "::1"
    assert loopback_host("localhost") == "127.0.0.1"


def test_dashboard_off_and_a_taken_port() -> None:
    with Emulator(log=None, dashboard=False) as emulator:
        with pytest.raises(RuntimeError, match="dashboard=False"):
            _ = emulator.dashboard_url
        with Emulator(log=None) as first:
            taken = urlsplit(first.dashboard_url).port
            assert taken is not None
            second = Emulator(log=None, dashboard_port=taken)
            with pytest.raises(OSError, match=f"dashboard cannot listen on 127.0.0.1:{taken}"):
                second.start()
            assert not second.running  # nothing left half-started
        with pytest.raises(ValueError, match="dashboard_port"):
            Emulator(dashboard_port=70000)


def test_stopping_the_emulator_stops_the_dashboard() -> None:
    with Emulator(log=None) as emulator:
        url = urlsplit(emulator.dashboard_url)
    conn = http.client.HTTPConnection(url.hostname or "", url.port, timeout=5)
    with pytest.raises(ConnectionRefusedError):
        conn.request("GET", "/api/state")
    conn.close()


def test_the_command_line_prints_the_dashboard_url() -> None:
    process = Process([sys.executable, "-m", "cloudtask.emulator", "--port", "0", "--quiet"], env())
    try:
        url = process.wait_line("Dashboard: ").split(" ", 1)[1]
        assert url.startswith("http://127.0.0.1:")
        parts = urlsplit(url)
        conn = http.client.HTTPConnection(parts.hostname or "", parts.port, timeout=10)
        conn.request("GET", "/")
        response = conn.getresponse()
        assert response.status == 200
        assert b"<title>cloudtask emulator</title>" in response.read()
        conn.close()
    finally:
        assert process.terminate(signal.SIGINT) == 0


def test_relative_times() -> None:
    now = 1_800_000_000.0
    assert relative(now + 0.4, now) == "now"
    assert relative(now + 3.2, now) == "in 3 s"
    assert relative(now - 150, now) == "2 min ago"
    assert relative(now + 3 * 3600, now) == "in 3 h"
    assert relative(now + 3 * 86400, now) == "in 3 d"
