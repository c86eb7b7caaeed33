"""Every Python block of docs/django-tasks.md runs as written (so the page cannot rot).

A block names its file on its first line (``# shop/tasks.py``). The ``shop`` blocks run as
modules of a package made here (under another name, so as not to meet the sample app's
``shop``); their relative imports work as in a real app. On Django 5.2 the blocks' imports are
changed as the page tells Django 5.2 users to: ``django.tasks`` becomes ``django_tasks``.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import django
import pytest
from django.core import mail
from django.test import RequestFactory
from django.urls import resolve
from google.api_core.exceptions import NotFound

from cloudtask import registry
from cloudtask.backends import CloudTasksBackend, InvalidTask
from cloudtask.conf import build_settings

from .conftest import poll

pytestmark = pytest.mark.django_db(transaction=True)

PAGE = Path(__file__).resolve().parents[2] / "docs" / "django-tasks.md"
PACKAGE = "djangotasks_docs_shop"
BACKEND = "cloudtask.backends.CloudTasksBackend"


def python_blocks() -> list[tuple[str, str]]:
    """(file name, source) of every ```python block of the page, in order."""
    found = []
    for source in re.findall(r"^```python\n(.*?)^```$", PAGE.read_text(), re.S | re.M):
        first = source.split("\n", 1)[0]
        assert first.startswith("# "), f"a block must name its file on its first line: {first}"
        if django.VERSION < (6,):
            source = source.replace("from django.tasks import", "from django_tasks import")
        found.append((first[2:], source))
    return found


def blocks(name: str) -> list[str]:
    return [source for file, source in python_blocks() if file == name]


def run_module(source: str, module: str) -> dict[str, Any]:
    """Execute source as the module PACKAGE.<module> (so relative imports work)."""
    full = f"{PACKAGE}.{module}"
    mod = sys.modules.get(full) or types.ModuleType(full)
    mod.__package__ = PACKAGE
    sys.modules[full] = mod
    exec(compile(source, f"<docs/django-tasks.md: {full}>", "exec"), mod.__dict__)  # noqa: S102
    return mod.__dict__


def run_settings(source: str) -> dict[str, Any]:
    namespace: dict[str, Any] = {}
    exec(source, namespace)  # noqa: S102
    return namespace


@pytest.fixture
def docs_app(settings: Any) -> Iterator[tuple[dict[str, Any], dict[str, Any]]]:
    """The quickstart's TASKS in force, and its shop/tasks.py and shop/views.py loaded."""
    settings.TASKS = run_settings(blocks("settings.py")[0])["TASKS"]
    package = types.ModuleType(PACKAGE)
    package.__path__ = []
    sys.modules[PACKAGE] = package
    try:
        (tasks_source,) = blocks("shop/tasks.py")
        (views_source,) = blocks("shop/views.py")
        yield run_module(tasks_source, "tasks"), run_module(views_source, "views")
    finally:
        for entry in registry.all_tasks():
            if entry.name.startswith(PACKAGE + "."):
                registry.unregister(entry.name)
        for name in [n for n in sys.modules if n == PACKAGE or n.startswith(PACKAGE + ".")]:
            del sys.modules[name]


def post(email: str) -> Any:
    return RequestFactory().post("/signup/", {"email": email})


def test_the_page_has_the_blocks_these_tests_run() -> None:
    assert [file for file, _ in python_blocks()] == [
        "settings.py",
        "urls.py",
        "shop/tasks.py",
        "shop/views.py",
        "settings.py",
        "settings.py (Django 5.2)",
    ]


@pytest.mark.parametrize("index", [0, 1])
def test_the_settings_blocks_configure_a_valid_backend(index: int) -> None:
    namespace = run_settings(blocks("settings.py")[index])
    for alias, params in namespace["TASKS"].items():
        assert params["BACKEND"] == BACKEND
        assert CloudTasksBackend(alias, params).check() == []
    if "CLOUDTASK" in namespace:
        configured = build_settings(namespace["CLOUDTASK"])
        assert configured.url == "http://127.0.0.1:8000/_tasks/"
        assert configured.secrets == ("a-long-random-string",)
        assert "cloudtask" in namespace["INSTALLED_APPS"]


def test_the_django_5_2_settings_block_installs_the_backport() -> None:
    (source,) = blocks("settings.py (Django 5.2)")
    apps = run_settings(source)["INSTALLED_APPS"]
    assert apps.index("django_tasks") < apps.index("cloudtask")


def test_the_urls_block_routes_to_the_endpoint() -> None:
    (source,) = blocks("urls.py")
    (pattern,) = run_settings(source)["urlpatterns"]
    assert str(pattern.pattern) == "_tasks/"
    assert resolve("/_tasks/").view_name == "cloudtask:endpoint"


def test_the_quickstart_on_the_immediate_transport(
    docs_app: tuple[dict[str, Any], dict[str, Any]], capsys: pytest.CaptureFixture[str]
) -> None:
    tasks, views = docs_app
    entry = registry.get(f"{PACKAGE}.tasks.send_welcome_email")
    assert entry.func is tasks["send_welcome_email"].func

    response = views["signup"](post("ada@example.com"))
    assert re.fullmatch(rb"queued as [0-9a-f]{32}", response.content)
    response = asyncio.run(views["async_signup"](post("grace@example.com")))
    assert re.fullmatch(rb"queued as [0-9a-f]{32}", response.content)
    assert [m.to for m in mail.outbox] == [["ada@example.com"], ["grace@example.com"]]
    assert mail.outbox[0].subject == "Welcome!"

    result = tasks["rebuild_report"].enqueue(7)
    assert capsys.readouterr().out == f"report 7: attempt 1 of task {result.id}\n"

    # The immediate transport runs each task when it is sent: it cannot honour run_after.
    with pytest.raises(InvalidTask, match="Backend does not support run_after"):
        views["schedule_report"](post("-"))


def test_the_quickstart_through_the_emulator(
    docs_app: tuple[dict[str, Any], dict[str, Any]],
    via_emulator: Any,
    capsys: pytest.CaptureFixture[str],
) -> None:
    tasks, views = docs_app

    response = views["signup"](post("ada@example.com"))
    assert re.fullmatch(rb"queued as [0-9a-f]{32}", response.content)
    poll(lambda: mail.outbox)
    assert [m.to for m in mail.outbox] == [["ada@example.com"]]

    result = tasks["rebuild_report"].enqueue(7)
    expected = f"report 7: attempt 1 of task {result.id}\n"
    output = ""

    def printed() -> bool:
        nonlocal output
        output += capsys.readouterr().out
        return output == expected

    poll(printed)

    response = views["schedule_report"](post("-"))
    task_id = re.fullmatch(rb"report task ([0-9a-f]{32}) runs in an hour", response.content)
    assert task_id is not None
    client = via_emulator.client()
    name = f"{via_emulator.queue_path('default')}/tasks/{task_id[1].decode()}"
    try:
        assert client.get_task(name=name).schedule_time is not None  # waiting in the queue
    finally:
        with contextlib.suppress(NotFound):
            client.delete_task(name=name)


README = PAGE.parents[1] / "README.md"


def test_the_readme_variant_is_the_pages_executed_code() -> None:
    """The README's "with Django's tasks framework" quickstart shows blocks this module runs."""
    section = README.read_text().split("### Quickstart with Django's tasks framework", 1)[1]
    section = section.split("\n## ", 1)[0]
    shown = re.findall(r"^```python\n(.*?)^```$", section, re.S | re.M)
    assert len(shown) == 2
    page_text = PAGE.read_text()
    settings_block, tasks_block = shown
    assert tasks_block in page_text
    # The README's TASKS setting is the one of the page's (executed) settings block.
    assert settings_block.startswith("# settings.py\nTASKS = {")
    assert settings_block.split("\n", 1)[1] in page_text
