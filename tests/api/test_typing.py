"""The decorators keep the function's signature for mypy: a wrong argument is a type error at the
call site, before anything runs (ParamSpec/Concatenate on @task and @on_commit_task)."""

from __future__ import annotations

import re
from pathlib import Path

from mypy import api

SNIPPET = """\
from cloudtask import CloudTaskRequest, on_commit_task, task

@task(queue="default", max_attempts=3)
def add(request: CloudTaskRequest, a: int, b: int = 4) -> int:
    return a + b

@on_commit_task(queue="emails", using="default")
def mail(request: CloudTaskRequest, to: str) -> None: ...

add(1, b=2).delay()
mail(to="ada@example.com").delay_on_commit()
total: int = add(1)()
add(a="x")
add(1, c=3)
mail(to=5)
wrong: str = add(1).execute()
@task(queu="x")
def typo(request: CloudTaskRequest) -> None: ...
from cloudtask import tsak
"""


def test_mypy_checks_task_arguments_and_options(tmp_path: Path) -> None:
    source = tmp_path / "uses_tasks.py"
    source.write_text(SNIPPET)
    stdout, stderr, _ = api.run(
        [
            "--no-error-summary",
            "--follow-imports=silent",
            "--python-version=3.11",
            f"--cache-dir={tmp_path / 'cache'}",
            str(source),
        ]
    )
    assert stderr == ""
    errors = set(re.findall(r":(\d+): error: .*\[([a-z-]+)\]", stdout))
    assert errors == {
        ("13", "arg-type"),  # add(a="x"): a is an int
        ("14", "call-arg"),  # add(1, c=3): no parameter c
        ("15", "arg-type"),  # mail(to=5): to is a str
        ("16", "assignment"),  # execute() returns the function's int
        ("17", "call-overload"),  # @task(queu=...): a misspelt option
        ("17", "untyped-decorator"),  # ...which leaves the function untyped
        ("19", "attr-defined"),  # a misspelt public name (the lazy loader is hidden from mypy)
    }, stdout
