"""Every Python code block of the seed README, verbatim, runs unchanged.

The blocks use relative imports (``from .tasks import add``), so they run as modules of a small
package, ``seedapp``, made here; the tasks blocks form ``seedapp.tasks``.
"""

from __future__ import annotations

import contextlib
import sys
import types
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from django.urls import resolve
from django.utils.timezone import now
from google.api_core.exceptions import NotFound

from cloudtask import TaskAlreadyExists, registry
from cloudtask.conf import build_settings

pytestmark = pytest.mark.django_db(transaction=True)

SETTINGS_BLOCK = """\
INSTALLED_APPS: list = [
    'cloudtask',
]

CLOUDTASK: dict = {
    'PROJECT': 'project',
    'LOCATION': 'europe-west6',
    'SAE': 'user@project.iam.gserviceaccount.com',
    'URL': 'https://handler.com/_tasks/',
    'QUEUE': 'default',
    'SECRET': 'my-very-secrete-key'
}
"""

URLS_BLOCK = """\
from django.urls import path, include

urlpatterns: list = [
    path('_tasks/', include('cloudtask.urls'))
]
"""

CREATE_TASKS_BLOCK = """\
from cloudtask import (
    CloudTaskRequest,
    task)

@task(queue='default')
def add(request: CloudTaskRequest, a: int = 5, b: int = 4) -> None:
    print(f'Running task with args {a=} and {b=}')
    print(a + b)
"""

RUN_TASKS_BLOCK = """\
from .tasks import add

add(a=10, b=30).delay()
# or use the alias push
add(a=30, b=10).push()
"""

URL_TASK_BLOCK = """\
from cloudtask import task

@task(queue='emails', url='https://mysite.com/emails-tasks')
def send_email(request, to: str):
    pass
"""

CHANGE_URL_BLOCK = """\
from .tasks import send_email

task = send_email(to='a@a.com')
task.url = 'https://mysite.com/tasks'
task.push()
"""

QUEUE_BLOCK = """\
from cloudtask import task

@task(queue='default')
def send_email(request, to: str):
    pass
"""

CREATE_AND_PUSH_BLOCK = """\
from cloudtask import (
    CloudTaskRequest,
    task)

@task()
def say_yes(rquest) -> None:
    print('Yes')

@task(queue='default', named=True)
def add(request: CloudTaskRequest, a: int = 5, b: int = 4) -> None:
    print(f'Running task with args {a=} and {b=}')
    print(a + b)

# Pushing to Cloud Task

say_yes().delay() # or with push
add().push()
"""

EXECUTE_BLOCK = """\

from .tasks import add
add(a=5, b=3).__call__()
# or using the alias
add(a=5, b=3)()
# or using the execute method
add(a=5, b=3).execute()
"""

SCHEDULE_BLOCK = """\
from datetime import timedelta
from django.utils.timezone import now
from .tasks import add

at = now() + timedelta(days=2)
add(a=3, b=6).schedule(at=at)
"""

REPEAT_BLOCK = """\
from .tasks import add

add(a=3, b=6).delay()
add(a=3, b=6).delay()
add(a=3, b=6).delay()
"""

NAMED_BLOCK = """\
from cloudtask import task

@task(named=True)
def clean_expired(request):
    pass

clean_expired().delay()
clean_expired().delay() # this line will raise an entity error by Cloud Task
"""


def run_block(source: str, module: str) -> dict[str, Any]:
    """Execute source as the module seedapp.<module> (so relative imports work)."""
    full = f"seedapp.{module}"
    mod = sys.modules.get(full) or types.ModuleType(full)
    mod.__package__ = "seedapp"
    sys.modules[full] = mod
    exec(compile(source, f"<seed README: {full}>", "exec"), mod.__dict__)  # noqa: S102
    return mod.__dict__


@pytest.fixture
def seedapp() -> Iterator[None]:
    package = types.ModuleType("seedapp")
    package.__path__ = []
    sys.modules["seedapp"] = package
    before = {t.name for t in registry.all_tasks()}
    yield
    for t in registry.all_tasks():
        if t.name not in before:
            registry.unregister(t.name)
    for name in [n for n in sys.modules if n == "seedapp" or n.startswith("seedapp.")]:
        del sys.modules[name]


def test_settings_block() -> None:
    namespace: dict[str, Any] = {}
    exec(SETTINGS_BLOCK, namespace)  # noqa: S102
    s = build_settings(namespace["CLOUDTASK"])
    assert (s.project, s.location, s.queue, s.url) == (
        "project",
        "europe-west6",
        "default",
        "https://handler.com/_tasks/",
    )
    assert s.secrets == ("my-very-secrete-key",)


def test_urls_block() -> None:
    namespace: dict[str, Any] = {}
    exec(URLS_BLOCK, namespace)  # noqa: S102
    (pattern,) = namespace["urlpatterns"]
    assert str(pattern.pattern) == "_tasks/"
    assert resolve("/_tasks/").view_name == "cloudtask:endpoint"


def test_task_blocks_on_the_immediate_backend(
    seedapp: None, capsys: pytest.CaptureFixture[str]
) -> None:
    run_block(CREATE_TASKS_BLOCK, "tasks")
    run_block(URL_TASK_BLOCK, "tasks")

    run_block(RUN_TASKS_BLOCK, "views")
    assert capsys.readouterr().out == (
        "Running task with args a=10 and b=30\n40\nRunning task with args a=30 and b=10\n40\n"
    )

    run_block(CHANGE_URL_BLOCK, "views")
    run_block(QUEUE_BLOCK, "emails")

    run_block(CREATE_AND_PUSH_BLOCK, "more")
    assert capsys.readouterr().out == "Yes\nRunning task with args a=5 and b=4\n9\n"

    run_block(EXECUTE_BLOCK, "views")
    assert capsys.readouterr().out == "Running task with args a=5 and b=3\n8\n" * 3

    run_block(SCHEDULE_BLOCK, "views")  # the immediate backend runs scheduled tasks at once
    assert capsys.readouterr().out == "Running task with args a=3 and b=6\n9\n"

    run_block(REPEAT_BLOCK, "views")
    assert capsys.readouterr().out == "Running task with args a=3 and b=6\n9\n" * 3

    with pytest.raises(TaskAlreadyExists):
        run_block(NAMED_BLOCK, "named")  # "this line will raise an entity error"


def test_task_blocks_through_the_emulator(
    seedapp: None, via_emulator: Any, capsys: pytest.CaptureFixture[str]
) -> None:
    run_block(CREATE_TASKS_BLOCK, "tasks")
    run_block(URL_TASK_BLOCK, "tasks")
    namespace = run_block(CHANGE_URL_BLOCK, "views")
    assert namespace["task"].queue == "emails"
    with pytest.raises(AttributeError):
        namespace["task"].queue = "other"  # the queue cannot change per call

    run_block(RUN_TASKS_BLOCK, "views")
    run_block(SCHEDULE_BLOCK, "views")
    assert via_emulator.wait_idle(timeout=0.01) is False  # the scheduled one waits two days

    output = ""

    def both_ran() -> bool:
        nonlocal output
        output += capsys.readouterr().out
        return output.count("\n40\n") == 2

    from .conftest import poll

    poll(both_ran)
    assert "Running task with args a=10 and b=30\n40\n" in output
    assert "Running task with args a=30 and b=10\n40\n" in output
    assert "a=3 and b=6" not in output

    with pytest.raises(TaskAlreadyExists):
        run_block(NAMED_BLOCK, "named")
    # Drop the task scheduled two days ahead, so it cannot run in a later test.
    client = via_emulator.client()
    for task in client.list_tasks(parent=via_emulator.queue_path("default")):
        if task.schedule_time > now() + timedelta(days=1):
            with contextlib.suppress(NotFound):
                client.delete_task(name=task.name)


def test_the_module_names_the_seed_prose_uses() -> None:
    # The seed's prose says "decorate a function with cloudtask.decorators.task" and calls the
    # request "cloudtask.tasks.CloudTaskRequest": both names lead to the real objects.
    import cloudtask
    from cloudtask import decorators, tasks

    assert decorators.task is cloudtask.task
    assert decorators.on_commit_task is cloudtask.on_commit_task
    assert tasks.CloudTaskRequest is cloudtask.CloudTaskRequest


def test_every_public_name_resolves() -> None:
    import cloudtask
    from cloudtask import exceptions

    for name in cloudtask.__all__:
        assert getattr(cloudtask, name) is not None, name
    assert set(cloudtask.__all__) <= set(dir(cloudtask))
    assert cloudtask.Retry is exceptions.Retry
    with pytest.raises(AttributeError, match="no attribute 'nonexistent'"):
        getattr(cloudtask, "nonexistent")  # noqa: B009 - mypy rightly refuses the attribute
