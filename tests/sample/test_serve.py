"""``make demo-serve`` runs ``manage.py demo --serve``: the shop for clicking around. It starts
on a clean database unless told to keep it, says which, prints its links, and an order's
deliberately failing payment logs one WARNING line, not an ERROR with a traceback."""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Callable
from http.cookiejar import CookieJar
from pathlib import Path
from typing import Any

from tests.waiting import poll

from .conftest import SampleServer, run_manage

#: Longest wait for the emulator to deliver and retry: a hang guard, not a timing assertion.
WAIT = 30.0


class Visitor:
    """A person at the page: keeps the CSRF cookie and sends the buttons' POSTs."""

    def __init__(self, server: SampleServer) -> None:
        self.url = server.url
        self.opener = urllib.request.build_opener(urllib.request.HTTPCookieProcessor(CookieJar()))
        page = self.get("")
        match = re.search(r'name="csrf-token" content="([^"]+)"', page)
        assert match, page
        self.token = match.group(1)

    def get(self, path: str) -> str:
        with self.opener.open(self.url + path, timeout=WAIT) as response:
            text: str = response.read().decode()
            return text

    def state(self) -> dict[str, Any]:
        state: dict[str, Any] = json.loads(self.get("api/state/"))
        return state

    def post(self, path: str) -> dict[str, Any]:
        request = urllib.request.Request(
            self.url + path, data=b"", method="POST", headers={"X-CSRFToken": self.token}
        )
        with self.opener.open(request, timeout=WAIT) as response:
            answer: dict[str, Any] = json.loads(response.read())
            return answer


def banner_line(server: SampleServer, pattern: str) -> re.Match[str]:
    for line in server.banner:
        match = re.search(pattern, line)
        if match:
            return match
    raise AssertionError(f"{pattern!r} not in the banner: {server.banner}")


def test_create_order_logs_the_intended_retry_as_one_warning(sample_server: SampleServer) -> None:
    visitor = Visitor(sample_server)
    answer = visitor.post("orders/")
    assert "committed" in answer["message"]

    def paid() -> bool:
        outcomes = {(row["task"], row["attempt"], row["outcome"]) for row in visitor.state()["log"]}
        return ("shop.tasks.charge_payment", 2, "succeeded") in outcomes

    poll(paid, WAIT, "charge_payment succeeded on its retry")
    log = sample_server.log.read_text()
    assert re.search(
        r"^WARNING cloudtask: Task shop\.tasks\.charge_payment \(\w+\) asked for a retry on "
        r"attempt 1: PaymentGatewayTimeout: payment gateway timed out charging order #1$",
        log,
        re.MULTILINE,
    ), log
    assert "Traceback" not in log, log
    assert not re.search(r"^ERROR", log, re.MULTILINE), log


def test_serve_starts_clean_and_prints_where_everything_is(
    tmp_path: Path, start_sample_server: Callable[..., SampleServer]
) -> None:
    demo = run_manage(tmp_path, "demo")  # leaves orders and task rows in the database
    assert demo.returncode == 0, demo.stdout + demo.stderr

    server = start_sample_server()
    clean = banner_line(server, r"started clean \((\d+) rows of earlier runs removed")
    assert int(clean.group(1)) > 0
    assert Visitor(server).state() == {"orders": [], "log": [], "executions": []}
    banner_line(server, r"^Cloud Tasks emulator \(gRPC\) at 127\.0\.0\.1:\d+, queue orders$")
    banner_line(server, r"^Times are shown in UTC \(settings\.TIME_ZONE\)\.$")
    # The emulator's dashboard is linked right under the site.
    assert server.banner[0] == f"Serving the sample shop at {server.url}"
    dashboard = re.fullmatch(r"Emulator dashboard at (http://\S+)", server.banner[1])
    assert dashboard, server.banner
    with urllib.request.urlopen(dashboard.group(1), timeout=WAIT) as page:
        assert page.status == 200


def test_keep_data_keeps_the_earlier_orders(
    tmp_path: Path, start_sample_server: Callable[..., SampleServer]
) -> None:
    demo = run_manage(tmp_path, "demo")
    assert demo.returncode == 0, demo.stdout + demo.stderr

    server = start_sample_server("--keep-data")
    banner_line(server, r"kept as earlier runs left it \(--keep-data\), 1 orders\.$")
    (order,) = Visitor(server).state()["orders"]
    assert (order["customer"], order["status"]) == ("Ada", "shipped")
