"""Trap: a task written without the request parameter, ``@task def hello(name)``.

A seed-API task's first parameter receives the CloudTaskRequest. Every way of getting that
wrong is told where it can first be seen: at declaration, when the call is built, or (for a call
with no arguments, which fits) by system check cloudtask.W003.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

import pytest
from django.core.checks import Warning, run_checks
from django.core.handlers.wsgi import WSGIRequest
from django.http import HttpRequest
from django.test import Client

from cloudtask import CloudTaskRequest, InvalidTaskCall, TaskRegistrationError, task
from cloudtask.encoding import encode_message

if TYPE_CHECKING:
    # Not imported at run time: the annotation cannot be resolved there, and proves nothing.
    from cloudtask.request import CloudTaskRequest as TypeCheckingOnly

pytestmark = pytest.mark.usefixtures("declared")
FIRST = "A task's first parameter receives the CloudTaskRequest"


def test_positional_argument_for_the_request_parameter() -> None:
    @task
    def hello(name):
        return name

    with pytest.raises(InvalidTaskCall) as info:
        hello("x")  # type: ignore[call-arg]  # mypy sees it too
    assert str(info.value) == (
        f"hello(): too many positional arguments. {FIRST}, so 'name' is not one of hello()'s "
        "arguments: write def hello(request, name)."
    )


def test_keyword_argument_for_the_request_parameter() -> None:
    @task
    def hello(name, greeting="hi"):
        return name

    with pytest.raises(InvalidTaskCall) as info:
        hello(name="x")  # type: ignore[call-arg]
    assert str(info.value) == (
        f"hello(): got an unexpected keyword argument 'name'. {FIRST}, so 'name' is not one of "
        "hello()'s arguments: write def hello(request, name, greeting='hi')."
    )


def test_a_request_named_as_such_gets_the_plain_message() -> None:
    @task
    def add(req, a):
        return a

    with pytest.raises(InvalidTaskCall) as info:
        add(1, 2)  # type: ignore[call-arg]
    assert str(info.value) == "add(): too many positional arguments"


def test_no_arguments_fit_and_the_check_warns() -> None:
    @task
    def hello(name):
        return name

    hello()  # fits: name would receive the request
    assert [m for m in run_checks(tags=["cloudtask"]) if m.id == "cloudtask.W003"] == [
        Warning(
            f"Task {hello.name}: its first parameter 'name' receives the CloudTaskRequest, not "
            "an argument of the call.",
            hint="If 'name' is an argument, write def hello(request, name); if it is the "
            "request, name it request or annotate it CloudTaskRequest.",
            id="cloudtask.W003",
        )
    ]


@pytest.mark.parametrize("first", ["request", "req", "r", "_", "rquest", "task_request", "ctx"])
def test_request_like_names_pass_the_check(first: str) -> None:
    namespace: dict[str, Any] = {}
    exec(f"def hello({first}): pass", namespace)  # noqa: S102 - a fixed parameter name
    task(namespace["hello"])
    assert [m for m in run_checks(tags=["cloudtask"]) if m.id == "cloudtask.W003"] == []


def annotated_request(name: CloudTaskRequest) -> None:
    pass


def annotated_any(name: Any) -> None:
    pass


def annotated_object(name: object) -> None:
    pass


def annotated_for_type_checkers_only(name: TypeCheckingOnly) -> None:
    pass


def annotated_like_a_view(request: HttpRequest, x: int) -> None:
    pass


def annotated_with_a_subclass(name: WSGIRequest) -> None:
    pass


def named_as_the_request(request: dict[str, Any]) -> None:
    pass


@pytest.mark.parametrize(
    "func",
    [
        annotated_request,
        annotated_any,
        annotated_object,
        annotated_for_type_checkers_only,
        annotated_like_a_view,
        annotated_with_a_subclass,
        named_as_the_request,
    ],
)
def test_annotations_the_request_fits_pass(func: Any) -> None:
    task(func)
    assert [m for m in run_checks(tags=["cloudtask"]) if m.id == "cloudtask.W003"] == []


def no_parameters() -> None:
    pass


def keyword_only(*, name: str) -> None:
    pass


def keywords(**options: Any) -> None:
    pass


@pytest.mark.parametrize(
    ("func", "says"),
    [
        (
            no_parameters,
            "no_parameters() has no positional parameter to take it. Write "
            "def no_parameters(request).",
        ),
        (
            keyword_only,
            "keyword_only(*, name) has no positional parameter to take it. Write "
            "def keyword_only(request, *, name).",
        ),
        (
            keywords,
            "keywords(**options) has no positional parameter to take it. Write "
            "def keywords(request, **options).",
        ),
    ],
)
def test_no_parameter_for_the_request(func: Any, says: str) -> None:
    with pytest.raises(TaskRegistrationError) as info:
        task(func)
    assert str(info.value) == (
        f"@task on {__name__}.{func.__name__}: a task's first parameter receives the "
        f"CloudTaskRequest, and {says}"
    )


def test_a_default_on_the_first_parameter_is_refused_at_declaration() -> None:
    def hello(name="world"):
        return name

    with pytest.raises(TaskRegistrationError) as info:
        task(hello)
    assert str(info.value).endswith(
        "a task's first parameter receives the CloudTaskRequest, but hello()'s first parameter "
        "'name' has a default (name='world'). Write def hello(request, name='world')."
    )


def test_an_annotation_the_request_is_not_is_refused_at_declaration() -> None:
    def hello(name: str, times: int = 1) -> str:
        return name * times

    with pytest.raises(TaskRegistrationError) as info:
        task(hello)  # type: ignore[arg-type]  # mypy sees it too
    assert str(info.value).endswith(
        "a task's first parameter receives the CloudTaskRequest, but hello()'s first parameter "
        "'name' is annotated str. Write def hello(request, name, times=1)."
    )


@pytest.mark.django_db
def test_a_task_written_like_a_view_runs_with_the_request(settings: Any) -> None:
    seen: list[Any] = []

    # Type checkers still want CloudTaskRequest (not an HttpRequest subclass); at run time
    # the view's habit is accepted.
    @task  # type: ignore[arg-type]
    def remember(request: HttpRequest, x: int) -> None:
        seen.append((request, x))

    settings.CLOUDTASK = {**settings.CLOUDTASK, "TRANSPORT": "immediate"}
    remember(x=3).delay()

    ((request, x),) = seen
    assert x == 3
    assert isinstance(request, CloudTaskRequest)
    assert request.method == "POST"  # the wrapped HttpRequest's, through the CloudTaskRequest


def test_a_delivery_from_other_code_is_rejected_with_the_hint(caplog: Any) -> None:
    # What an older deploy that still had hello(name) without a request would have sent.
    @task
    def hello(name):
        return name

    message = encode_message(hello.name, "default", None, ("x",), {}, label="hello")
    with caplog.at_level(logging.WARNING, logger="cloudtask"):
        response = Client().post(
            "/_tasks/", data=message.body, content_type="application/json", headers=message.headers
        )
    assert response.status_code == 400
    assert [r.getMessage() for r in caplog.records if r.name == "cloudtask"] == [
        f"Arguments do not fit task {hello.name}: too many positional arguments. {FIRST}, so "
        "'name' is not one of hello()'s arguments: write def hello(request, name)."
    ]
