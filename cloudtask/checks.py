"""System checks (cloudtask.E000-E014, E020-E021, E023-E034, I001, W001-W003, W006, W008; the
django.tasks backend checks its own options, E101-E102, in cloudtask.backends):
configuration mistakes caught at start-up, and what was detected on Cloud Run."""

from __future__ import annotations

import inspect
import sys
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import urlsplit

from django.apps import AppConfig
from django.conf import settings as django_settings
from django.core.checks import CheckMessage, Error, Info, Warning, register
from django.db import DEFAULT_DB_ALIAS, connections
from django.db.migrations.recorder import MigrationRecorder
from django.http.request import validate_host
from django.urls import NoReverseMatch, Resolver404, resolve, reverse

from . import cloudrun, registry, schedules
from .conf import TRANSPORT_ALIASES, CloudTaskSettings, build_settings, read_queues
from .emulator import cron
from .exceptions import ConfigurationError, InvalidTaskCall, UnknownTask
from .message import queue_id_error, task_id_error
from .models import OutboxMessage
from .outbox import outbox_aliases
from .serialization import encode_arguments
from .tasks import Task, looks_like_request, request_first
from .transports import load_transport_class
from .transports.cloudtasks import CloudTasksTransport
from .transports.emulator import EmulatorTransport
from .transports.local import ENDPOINT_URL_NAME


def check_settings(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    configured = getattr(django_settings, "CLOUDTASK", None)
    if isinstance(configured, dict) and "BACKEND" in configured:
        return [
            Error(
                'CLOUDTASK["BACKEND"] was renamed CLOUDTASK["TRANSPORT"]: BACKEND now means a '
                "django.tasks backend (TASKS[...]['BACKEND']).",
                hint=f'Write "TRANSPORT": {configured["BACKEND"]!r} in CLOUDTASK instead of '
                '"BACKEND".',
                id="cloudtask.E011",
            )
        ]
    try:
        # A QUEUES mistake is check_queues' to report (E023-E027): check the rest without it.
        s = build_settings(_without_bad_queues(configured))
    except ConfigurationError as exc:
        return [Error(str(exc), id="cloudtask.E000")]

    values, undetected, messages = _cloud_run(s)
    transport_ok = True
    try:
        transport_cls = load_transport_class(s.transport)
    except ConfigurationError as exc:
        transport_ok = False
        messages.append(
            Error(
                str(exc),
                hint='Use "emulator", "cloudtasks", "immediate", "capture" or a dotted path.',
                id="cloudtask.E008",
            )
        )
    google = s.transport == "cloudtasks" or (
        transport_ok
        and s.transport not in TRANSPORT_ALIASES
        and issubclass(transport_cls, CloudTasksTransport)
        and not issubclass(transport_cls, EmulatorTransport)
    )
    # An emulator named by EMULATOR_HOST has a project and location of its own and signs its
    # own tokens: none of the three is needed to talk to it.
    if google and not s.emulator_host:
        for key, number in (("PROJECT", 1), ("LOCATION", 2), ("SAE", 3)):
            if not values[key]:
                messages.append(
                    undetected.pop(
                        key,
                        Error(
                            f'CLOUDTASK["{key}"] is required by the "cloudtasks" transport.',
                            hint=_not_on_cloud_run(key),
                            id=f"cloudtask.E00{number}",
                        ),
                    )
                )

    tasks = sorted(registry.all_tasks(), key=lambda t: t.name)
    if s.transport not in ("immediate", "capture") and not values["URL"]:
        without = [t.name for t in tasks if not t.url]
        if without:
            messages.append(
                undetected.pop(
                    "URL",
                    Error(
                        'CLOUDTASK["URL"] is not set and these tasks have no url=: '
                        + ", ".join(without)
                        + ".",
                        hint='Set CLOUDTASK["URL"] to the endpoint\'s full URL, e.g. '
                        '"https://example.com/_tasks/". ' + _not_on_cloud_run("URL"),
                        id="cloudtask.E004",
                    ),
                )
            )
    if err := queue_id_error(s.queue):
        messages.append(Error(f'CLOUDTASK["QUEUE"]: {err}.', id="cloudtask.E005"))
    for t in tasks:
        if t.queue is not None and (err := queue_id_error(t.queue)):
            messages.append(Error(f"Task {t.name}: {err}.", id="cloudtask.E006"))
        fixed = t.fixed_id
        if fixed is not None and (err := task_id_error(fixed)):
            messages.append(Error(f"Task {t.name}: {err}.", id="cloudtask.E007"))
    if s.oidc_verify:
        if not values["SAE"]:
            messages.append(
                undetected.pop(
                    "SAE",
                    Error(
                        'CLOUDTASK["OIDC_VERIFY"] needs CLOUDTASK["SAE"]: the service account '
                        "whose tokens the endpoint accepts.",
                        id="cloudtask.E009",
                    ),
                )
            )
        if not s.oidc_audience and not values["URL"] and not any(t.url for t in tasks):
            messages.append(
                undetected.pop(
                    "URL",
                    Error(
                        'CLOUDTASK["OIDC_VERIFY"] needs an audience: set '
                        'CLOUDTASK["OIDC_AUDIENCE"] or CLOUDTASK["URL"].',
                        id="cloudtask.E010",
                    ),
                )
            )
    if not s.authenticated:
        messages.append(
            Warning(
                "The cloudtask endpoint has no authentication: anyone who can reach it can run "
                "any task.",
                hint='Set CLOUDTASK["SECRET"] (HMAC body signatures) and/or '
                'CLOUDTASK["OIDC_VERIFY"] = True. Without them the endpoint refuses requests '
                'while DEBUG is off unless CLOUDTASK["ALLOW_UNAUTHENTICATED"] is True.',
                id="cloudtask.W001",
            )
        )
    messages.extend(_check_endpoint(s, in_process=transport_ok and transport_cls.in_process))
    messages.extend(_check_request_parameters(tasks))
    return messages


#: The account Cloud Run runs as when none is chosen: Compute Engine's default, with the
#: project-wide Editor role unless an administrator removed it.
_COMPUTE_DEFAULT_SA = "-compute@developer.gserviceaccount.com"


def _cloud_run(
    s: CloudTaskSettings,
) -> tuple[dict[str, str | None], dict[str, CheckMessage], list[CheckMessage]]:
    """PROJECT, LOCATION, SAE and URL as configured or detected on Cloud Run; the error of each
    one that could not be detected (E020, E021: reported where it is needed, in place of the
    plain "missing" error); and what was detected (I001, W006)."""
    values: dict[str, str | None] = {
        "PROJECT": s.configured_project,
        "LOCATION": s.configured_location,
        "SAE": s.configured_sae,
        "URL": s.configured_url,
    }
    undetected: dict[str, CheckMessage] = {}
    found: dict[str, cloudrun.Detected] = {}
    for key, detection in s.detections().items():
        if isinstance(detection, cloudrun.Detected):
            values[key] = detection.value
            found[key] = detection
        else:
            undetected[key] = Error(
                str(detection), id="cloudtask.E021" if key == "URL" else "cloudtask.E020"
            )
    messages: list[CheckMessage] = []
    if found:
        messages.append(
            Info(
                "Detected on Cloud Run: "
                + ", ".join(f"{key}={d.value!r} ({d.source})" for key, d in found.items()),
                hint="A value set in CLOUDTASK wins over a detected one. Set URL when Cloud "
                "Tasks must reach the service by another address (a custom domain, a load "
                "balancer).",
                id="cloudtask.I001",
            )
        )
    sae = found.get("SAE")
    if sae is not None and sae.value.endswith(_COMPUTE_DEFAULT_SA):
        messages.append(
            Warning(
                f"Tasks carry OIDC tokens of {sae.value}, the Compute Engine default service "
                "account this Cloud Run service runs as (detected): whoever may act as it may "
                "call the endpoint, and it usually holds the project-wide Editor role.",
                hint="Create a service account only for Cloud Tasks' calls, grant it "
                'roles/run.invoker on the service, and set CLOUDTASK["SAE"] to it.',
                id="cloudtask.W006",
            )
        )
    return values, undetected, messages


def _not_on_cloud_run(key: str) -> str:
    """The hint of E001-E004, which are reported only where nothing is detected."""
    return (
        f'Inside a Cloud Run container CLOUDTASK["{key}"] is detected when left unset; this '
        "process is not in one, so set it here. manage.py cloudtask_sync run from a laptop or "
        "CI needs it set too (e.g. from an environment variable)."
    )


def check_deploy(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """`manage.py check --deploy`: the zero-config default must not reach production unnoticed."""
    configured = getattr(django_settings, "CLOUDTASK", None)
    try:
        s = build_settings(configured)
    except ConfigurationError:
        return []  # check_settings reports it (cloudtask.E000, E011)
    if s.transport != "emulator":
        return []
    default = "" if configured and "TRANSPORT" in configured else " (the default)"
    where = (
        "a local background process, with its state on this machine's disk"
        if s.emulator["PERSIST"] and not s.emulator_host
        else "this process, and are lost when it stops"
        if not s.emulator_host
        else s.emulator_host
    )
    return [
        Warning(
            f'CLOUDTASK["TRANSPORT"] is "emulator"{default}: tasks go to a Cloud Tasks emulator '
            f"in {where}, not to Google Cloud Tasks.",
            hint='Set CLOUDTASK["TRANSPORT"] = "cloudtasks" (with PROJECT, LOCATION and SAE) in '
            "production settings.",
            id="cloudtask.W002",
        )
    ]


#: Commands that make or inspect migrations: the outbox table may rightly be missing while they
#: run, and Django runs every check before `migrate`, so E012 would block the command it asks for.
_MIGRATION_COMMANDS = frozenset(
    {
        "migrate",
        "makemigrations",
        "showmigrations",
        "sqlmigrate",
        "squashmigrations",
        "optimizemigration",
    }
)


def check_outbox_table(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """cloudtask.E012: the outbox is on, but its table is missing on a database it writes to."""
    try:
        s = build_settings(getattr(django_settings, "CLOUDTASK", None))
    except ConfigurationError:
        return []  # check_settings reports it (cloudtask.E000, E011)
    if not s.outbox or _running_migrations():
        return []
    table = OutboxMessage._meta.db_table
    messages: list[CheckMessage] = []
    for alias in outbox_aliases():
        try:
            tables = connections[alias].introspection.table_names()
        except Exception:  # noqa: S112 - unreachable or refused: another check's business
            continue
        if MigrationRecorder.Migration._meta.db_table not in tables:
            # Never migrated at all: every app's tables are missing, Django's own "unapplied
            # migrations" notice says so, and the first migrate creates this one too.
            continue
        if table not in tables:
            messages.append(
                Error(
                    f"The cloudtask outbox table is missing on database {alias!r}: run "
                    f'"python manage.py migrate cloudtask{_database_option(alias)}".',
                    hint='Or turn the transactional outbox off with CLOUDTASK["OUTBOX"] = False '
                    "(on-commit calls are then sent at commit and lost if that send fails).",
                    id="cloudtask.E012",
                )
            )
    return messages


def _database_option(alias: str) -> str:
    return "" if alias == DEFAULT_DB_ALIAS else f" --database {alias}"


def _running_migrations() -> bool:
    """Whether this process is `manage.py migrate` (or another migration command)."""
    return len(sys.argv) > 1 and sys.argv[1] in _MIGRATION_COMMANDS


#: The check id of each kind of CLOUDTASK["QUEUES"] mistake (conf.QueueSettingError.rule).
QUEUE_CHECK_IDS = {
    "shape": "cloudtask.E023",
    "unknown": "cloudtask.E024",
    "rate": "cloudtask.E025",
    "retry": "cloudtask.E026",
    "backoff": "cloudtask.E027",
}


def _without_bad_queues(configured: object) -> object:
    """CLOUDTASK without its QUEUES key when that key holds a mistake (check_queues says which)."""
    if (
        isinstance(configured, Mapping)
        and "QUEUES" in configured
        and read_queues(configured["QUEUES"])[1]
    ):
        return {k: v for k, v in configured.items() if k != "QUEUES"}
    return configured


def check_queues(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """cloudtask.E023-E027 and W008: CLOUDTASK["QUEUES"] against Cloud Tasks' own bounds, and the
    queues tasks and schedules use that it leaves out."""
    configured = getattr(django_settings, "CLOUDTASK", None)
    if not isinstance(configured, Mapping) or "QUEUES" not in configured:
        return []
    queues, problems = read_queues(configured["QUEUES"])
    messages: list[CheckMessage] = [
        Error(str(problem), id=QUEUE_CHECK_IDS[problem.rule]) for problem in problems
    ]
    if isinstance(configured["QUEUES"], Mapping):
        for queue_id in configured["QUEUES"]:
            if isinstance(queue_id, str) and (err := queue_id_error(queue_id)):
                messages.append(Error(f'CLOUDTASK["QUEUES"]: {err}.', id="cloudtask.E023"))
    if messages or not queues:
        return messages
    try:
        s = build_settings(configured)
    except ConfigurationError:
        return messages  # check_settings reports it
    used: dict[str, list[str]] = {}
    for t in registry.all_tasks():
        used.setdefault(getattr(t, "queue", None) or s.queue, []).append(f"task {t.name}")
    for name, entry in schedules.collect(s)[0].items():
        if entry.queue is not None:
            used.setdefault(entry.queue, []).append(f"schedule {name}")
    for queue_id, users in sorted(used.items()):
        if queue_id not in queues:
            shown = ", ".join(sorted(users)[:3]) + (", ..." if len(users) > 3 else "")
            messages.append(
                Warning(
                    f"Queue {queue_id!r} is used ({shown}) but is not in "
                    'CLOUDTASK["QUEUES"]: manage.py cloudtask_sync will not create it.',
                    hint=f'Add {queue_id!r} to CLOUDTASK["QUEUES"] ({{}} keeps Google\'s '
                    "defaults), or create the queue yourself.",
                    id="cloudtask.W008",
                )
            )
    return messages


#: Hosts that are this site whatever ALLOWED_HOSTS says: the development server's and Django's
#: test client's.
_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "testserver"})


def _is_this_site(url: str) -> bool:
    """Whether url is served by this site: relative, a local host, or a host ALLOWED_HOSTS
    names exactly. A pattern proves nothing: with ALLOWED_HOSTS = ["*"] or [".run.app"] (common
    on Cloud Run), the tasks may go to another service under the same domain."""
    parts = urlsplit(url)
    if not parts.netloc:
        return True
    host = parts.hostname
    if host is None:
        return False
    if host in _LOCAL_HOSTS or host.endswith(".localhost"):
        return True
    exact = [h for h in django_settings.ALLOWED_HOSTS if h != "*" and not h.startswith(".")]
    return validate_host(host, exact)


def _site_path(url: str) -> str:
    """url's path as the URLconf sees it (FORCE_SCRIPT_NAME taken off)."""
    path = urlsplit(url).path or "/"
    script = (django_settings.FORCE_SCRIPT_NAME or "").rstrip("/")
    if script and path.startswith(script + "/"):
        path = path[len(script) :]
    return path


def _check_endpoint(s: CloudTaskSettings, *, in_process: bool) -> list[CheckMessage]:
    """cloudtask.E013, E014: tasks are delivered to this site (CLOUDTASK["URL"] is this site's,
    or the transport delivers in-process), but the URLconf does not route them to the
    endpoint. Without these, every delivery is a 404 that Cloud Tasks retries until it gives up.
    """
    url = s.configured_url
    local_url = url is not None and _is_this_site(url)
    if not (local_url or in_process):
        return []
    urlconf = django_settings.ROOT_URLCONF
    route = _site_path(url).lstrip("/") if url is not None and local_url else "_tasks/"
    include = f'path("{route}", include("cloudtask.urls"))'
    try:
        mounted = reverse(ENDPOINT_URL_NAME)
    except NoReverseMatch:
        delivered = (
            f'CLOUDTASK["URL"] = {url!r} is this site'
            if local_url
            else f'the "{s.transport}" transport delivers tasks in this process'
        )
        return [
            Error(
                f"cloudtask's endpoint is not in the URLconf {urlconf!r}, but {delivered}: "
                "every task delivery would be answered 404.",
                hint=f"Add {include} to urlpatterns in {urlconf}.",
                id="cloudtask.E014",
            )
        ]
    if url is None or not local_url:
        return []
    path = _site_path(url)
    try:
        match = resolve(path)
    except Resolver404:
        match = None
    if match is not None and match.url_name == "endpoint" and "cloudtask" in match.app_names:
        return []
    return [
        Error(
            f'CLOUDTASK["URL"] = {url!r} is this site, but its path {path!r} does not reach '
            f"cloudtask's endpoint in the URLconf {urlconf!r}, which serves it at {mounted!r}: "
            "every task delivery would miss it.",
            hint=f'Set CLOUDTASK["URL"] to end in {mounted!r}, or route the path to it with '
            f"{include} in {urlconf}.",
            id="cloudtask.E013",
        )
    ]


def _check_request_parameters(tasks: Sequence[Any]) -> list[CheckMessage]:
    """cloudtask.W003: a task whose first parameter reads like an argument of its own
    (``@task def hello(name)``): that parameter receives the CloudTaskRequest, and a call with
    no arguments, hello(), fits the task and runs it with name=the request. A call with
    arguments is refused when it is made; this one can only be told from the name."""
    messages: list[CheckMessage] = []
    for t in tasks:
        if not isinstance(t, Task):
            continue  # a django.tasks task: no request parameter
        first = next(iter(t.signature.parameters.values()))
        if (
            first.kind is inspect.Parameter.VAR_POSITIONAL
            or first.annotation is not inspect.Parameter.empty
            or looks_like_request(first.name)
        ):
            continue
        messages.append(
            Warning(
                f"Task {t.name}: its first parameter {first.name!r} receives the "
                "CloudTaskRequest, not an argument of the call.",
                hint=f"If {first.name!r} is an argument, write "
                f"{request_first(t.func.__name__, t.signature)}; if it is the request, name it "
                "request or annotate it CloudTaskRequest.",
                id="cloudtask.W003",
            )
        )
    return messages


#: The check id of each kind of mistake in a schedule (ScheduleSettingError.rule).
SCHEDULE_CHECK_IDS = {
    "shape": "cloudtask.E028",
    "cron": "cloudtask.E029",
    "time_zone": "cloudtask.E030",
    "option": "cloudtask.E031",
}


# Registered here rather than in apps.ready(): importing this module (which ready() does)
# registers it.
@register("cloudtask")
def check_schedules(
    app_configs: Sequence[AppConfig] | None = None, **kwargs: Any
) -> list[CheckMessage]:
    """cloudtask.E028-E034: CLOUDTASK["SCHEDULES"] and @schedule against Cloud Scheduler's
    rules (E028-E031), the task registry (E032: the task exists; E033: the arguments fit it and
    serialize) and the client library (E034)."""
    try:
        s = build_settings(_without_bad_queues(getattr(django_settings, "CLOUDTASK", None)))
    except ConfigurationError:
        return []  # check_settings reports it (cloudtask.E000, E011)
    found, problems = schedules.collect(s)
    messages: list[CheckMessage] = [
        Error(str(problem), id=SCHEDULE_CHECK_IDS[problem.rule]) for problem in problems
    ]
    written = s.schedules_setting if isinstance(s.schedules_setting, Mapping) else {}
    for name, entry in sorted(found.items()):
        where = f'CLOUDTASK["SCHEDULES"][{name!r}]' if name in written else f"@schedule {name!r}"
        if entry.queue is not None and (err := queue_id_error(entry.queue)):
            messages.append(Error(f'{where}["queue"]: {err}.', id="cloudtask.E031"))
        try:
            task = registry.get(entry.task)
        except UnknownTask:
            messages.append(
                Error(
                    f'{where}["task"]: no task is registered as {entry.task!r}.',
                    hint="Use a task's registered name (manage.py cloudtask_tasks lists them); "
                    "its module must be an installed app's tasks.py, or imported by one.",
                    id="cloudtask.E032",
                )
            )
            continue
        key = '["kwargs"]' if entry.kwargs else '["args"]'
        mismatch = task.arguments_error(entry.args, dict(entry.kwargs))
        if mismatch is not None:
            messages.append(
                Error(
                    f"{where}{key}: the arguments do not fit task {entry.task}: {mismatch}.",
                    id="cloudtask.E033",
                )
            )
            continue
        try:
            encode_arguments(
                entry.task,
                entry.args,
                dict(entry.kwargs),
                label=entry.task,
                param_names=getattr(task, "param_names", None),
            )
        except InvalidTaskCall as exc:
            messages.append(Error(f"{where}: {exc}", id="cloudtask.E033"))
    if found and not cron.HAVE_SCHEDULER:
        messages.append(
            Error(
                "Schedules are declared but google-cloud-scheduler is not installed: "
                f"install the extra, pip install '{cron.EXTRA}'.",
                hint="Without it cloudtask cannot build Cloud Scheduler jobs, and the emulator "
                "cannot fire them.",
                id="cloudtask.E034",
            )
        )
    return messages
