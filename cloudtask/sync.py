"""Make Cloud Tasks queues and Cloud Scheduler jobs match CLOUDTASK["QUEUES"] and ["SCHEDULES"].

``plan(prune=...)`` reads what exists and lists one :class:`Change` per resource (create,
update field by field, delete, unchanged); ``apply(plan)`` makes the changes. ``manage.py
cloudtask_sync`` prints the plan and applies it; the local emulator gets the same, pruning
included, each time a process connects to it (:func:`apply_on_connect`, connected in apps.py).

What is managed: the settings' keys and nothing else. A key a queue entry leaves out keeps the
queue's own value (Google's default on a queue created here); a queue's state (paused or
running) is never touched. Cloud Tasks' v2 API gives a queue no labels or description, so
cloudtask_sync marks the queues it creates or adopts with a queue-level header override,
``X-Cloudtask-Managed: cloudtask_sync`` (every task the queue delivers carries it); jobs carry
the marker cloudtask.schedules puts in their description. ``--prune`` deletes marked resources
the settings no longer name, never others.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any, Literal

import grpc
from google.api_core import exceptions as api_exceptions
from google.auth import exceptions as google_auth_exceptions
from google.cloud import tasks_v2
from google.protobuf import field_mask_pb2

from . import schedules
from .conf import QUEUE_RATE_KEYS, QueueConfig, get_settings
from .exceptions import CloudTaskError, ConfigurationError
from .transports import get_transport
from .transports.cloudtasks import CloudTasksTransport, make_client

__all__ = [
    "MANAGED_HEADER",
    "MANAGED_VALUE",
    "Applied",
    "Change",
    "FieldChange",
    "Plan",
    "SyncError",
    "Target",
    "apply",
    "apply_on_connect",
    "default_target",
    "is_managed_queue",
    "plan",
]

logger = logging.getLogger("cloudtask.sync")

#: The queue-level header override that marks a queue as cloudtask_sync's to update and prune.
MANAGED_HEADER = "X-Cloudtask-Managed"
MANAGED_VALUE = "cloudtask_sync"

Kind = Literal["queue", "job"]
Action = Literal["create", "update", "delete", "unchanged"]

#: Headers Cloud Scheduler adds to a job by itself: never a difference from the settings.
_SCHEDULER_OWN_HEADERS = frozenset({"user-agent"})


class SyncError(CloudTaskError):
    """cloudtask_sync could not read, or not fully apply, the changes; the message says which
    and what was done."""


# -- the plan -------------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldChange:
    """One field of a resource: its current value and the settings' value (rendered)."""

    name: str
    old: str | None
    new: str | None

    def __str__(self) -> str:
        if self.old is None:
            return f"{self.name}: {self.new}"
        return f"{self.name}: {self.old} -> {self.new}"


@dataclass(frozen=True)
class Change:
    """What cloudtask_sync does to one queue or job."""

    kind: Kind
    #: The short id: the queue id, or the job id (the schedule's name).
    id: str
    #: The full resource name.
    name: str
    action: Action
    fields: tuple[FieldChange, ...] = ()
    #: The message written (create, update): a tasks_v2.Queue or a scheduler_v1.Job.
    desired: Any = field(default=None, repr=False, compare=False)
    #: UpdateQueue / UpdateJob field mask paths.
    update_mask: tuple[str, ...] = ()
    #: Said after the id (a paused queue stays paused, ...).
    note: str = ""

    @property
    def pending(self) -> bool:
        return self.action != "unchanged"

    def lines(self) -> list[str]:
        head = f"  {self.action:<9} {self.kind} {self.id}"
        if self.note:
            head += f" ({self.note})"
        return [head, *(f"              {f}" for f in self.fields)]


@dataclass
class Target:
    """Where plan() reads and apply() writes: a project and location of Cloud Tasks (or an
    emulator of it) and of Cloud Scheduler."""

    tasks: Any
    project: str
    location: str
    #: host:port of an emulator (plain gRPC); None: Google's APIs.
    emulator_host: str | None = None
    #: Close the clients after use (clients made for this target, not the transport's).
    owns_clients: bool = False
    _scheduler: Any = field(default=None, repr=False)

    @property
    def parent(self) -> str:
        return f"projects/{self.project}/locations/{self.location}"

    def scheduler(self) -> Any:
        """The CloudSchedulerClient (made on first use)."""
        if self._scheduler is None:
            self._scheduler = schedules.make_scheduler_client(self.emulator_host)
        return self._scheduler

    def close(self) -> None:
        if self.owns_clients:
            self.tasks.transport.close()
        if self._scheduler is not None:
            self._scheduler.transport.close()
            self._scheduler = None


@dataclass(frozen=True)
class Plan:
    """The changes that make the target match the settings, queues first."""

    target: Target = field(repr=False)
    prune: bool
    queues: tuple[Change, ...]
    #: None: the jobs half was not looked at (no SCHEDULES, and nothing to prune).
    jobs: tuple[Change, ...] | None
    #: Resources the settings do not name that cloudtask_sync did not create: never touched.
    left_alone: tuple[str, ...] = ()
    #: Resources cloudtask_sync made that the settings no longer name, without --prune.
    orphans: tuple[str, ...] = ()
    #: Schedules left out of the plan, with why (plan(skip_bad_schedules=True) only): their
    #: jobs are left as they are. The name is None for CLOUDTASK["SCHEDULES"] as a whole.
    skipped: tuple[tuple[str | None, str], ...] = ()

    @property
    def changes(self) -> list[Change]:
        return [c for c in (*self.queues, *(self.jobs or ())) if c.pending]

    def render(self) -> str:
        lines: list[str] = []
        for title, changes in (("Queues", self.queues), ("Scheduler jobs", self.jobs)):
            if changes is None:
                continue
            lines.append(f"{title} in {self.target.parent}:")
            if not changes:
                lines.append("  (none in the settings)")
            for change in changes:
                lines.extend(change.lines())
        if self.orphans:
            lines.append(
                "No longer in the settings (--prune deletes them): " + ", ".join(self.orphans) + "."
            )
        if self.left_alone:
            lines.append(
                "Not created by cloudtask_sync, left alone: " + ", ".join(self.left_alone) + "."
            )
        return "\n".join(lines)

    def nothing_to_change(self) -> str:
        """The one line a run that changes nothing prints."""
        counts = [(sum(1 for c in self.queues if not c.pending), "queue")]
        if self.jobs is not None:
            counts.append((sum(1 for c in self.jobs if not c.pending), "job"))
        verb = "matches" if [n for n, _ in counts] == [1] else "match"
        matched = " and ".join(_count(n, noun) for n, noun in counts)
        return f"Nothing to change: {matched} {verb} the settings."


def _count(number: int, noun: str) -> str:
    return f"{number} {noun}{'' if number == 1 else 's'}"


@dataclass
class _Half:
    """The queues' or the jobs' part of a plan, while it is made."""

    changes: list[Change] = field(default_factory=list)
    left_alone: list[str] = field(default_factory=list)
    orphans: list[str] = field(default_factory=list)

    def unnamed(self, delete: Change, managed: bool, prune: bool) -> None:
        """A resource that exists and that the settings do not name."""
        label = f"{delete.kind} {delete.id}"
        if not managed:
            self.left_alone.append(label)
        elif prune:
            self.changes.append(delete)
        else:
            self.orphans.append(label)


# -- queues ---------------------------------------------------------------------------------


def _rendered(key: str, value: Any) -> str:
    if isinstance(value, timedelta):
        text = f"{value.total_seconds():g}s"
        return f"{text} (unlimited)" if key == "max_retry_duration" and not value else text
    if key == "max_dispatches_per_second":
        return f"{value:g}/s"
    if key == "max_attempts" and value == -1:
        return "-1 (unlimited)"
    return str(value)


def _queue_values(config: QueueConfig) -> list[tuple[str, str, Any]]:
    """(settings key, Queue field path, value) of every key the entry sets."""
    return [
        (key, f"{'rate_limits' if key in QUEUE_RATE_KEYS else 'retry_config'}.{key}", value)
        for key, value in vars(config).items()
        if value is not None
    ]


def _read(message: Any, path: str) -> Any:
    for part in path.split("."):
        message = getattr(message, part)
    return message


def _write(message: Any, path: str, value: Any) -> None:
    group, key = path.split(".")
    setattr(getattr(message, group), key, value)


def _marker() -> Any:
    header = tasks_v2.HttpTarget.Header(key=MANAGED_HEADER, value=MANAGED_VALUE)
    return tasks_v2.HttpTarget.HeaderOverride(header=header)


def is_managed_queue(queue: Any) -> bool:
    """Whether the queue carries cloudtask_sync's header override (it created or adopted it)."""
    return any(
        o.header.key.lower() == MANAGED_HEADER.lower() and o.header.value == MANAGED_VALUE
        for o in queue.http_target.header_overrides
    )


def _queue_change(queue_id: str, name: str, config: QueueConfig, existing: Any) -> Change:
    values = _queue_values(config)
    if existing is None:
        desired = tasks_v2.Queue(name=name)
        for _, path, value in values:
            _write(desired, path, value)
        desired.http_target = tasks_v2.HttpTarget(header_overrides=[_marker()])
        fields = [FieldChange(key, None, _rendered(key, value)) for key, _, value in values]
        return Change("queue", queue_id, name, "create", tuple(fields), desired)

    desired = tasks_v2.Queue(name=name)
    fields, mask = [], []
    for key, path, value in values:
        old = _read(existing, path)
        if old != value:
            fields.append(FieldChange(key, _rendered(key, old), _rendered(key, value)))
            mask.append(path)
            _write(desired, path, value)
    if not is_managed_queue(existing):
        # Adopted: the marker joins the queue's own header overrides. The whole http_target is
        # sent (a copy of the queue's, under the mask path "http_target"), so the rest of it
        # stays as it was.
        target = tasks_v2.HttpTarget(existing.http_target)
        target.header_overrides = [
            o
            for o in existing.http_target.header_overrides
            if o.header.key.lower() != MANAGED_HEADER.lower()
        ] + [_marker()]
        desired.http_target = target
        fields.append(FieldChange(f"{MANAGED_HEADER} header", "(none)", MANAGED_VALUE))
        mask.append("http_target")
    note = ""
    if existing.state == tasks_v2.Queue.State.PAUSED:
        note = "paused; cloudtask_sync leaves a queue's state alone"
    if not mask:
        return Change("queue", queue_id, name, "unchanged", note=note)
    return Change("queue", queue_id, name, "update", tuple(fields), desired, tuple(mask), note)


def _plan_queues(target: Target, configured: Mapping[str, QueueConfig], prune: bool) -> _Half:
    existing = {q.name: q for q in target.tasks.list_queues(parent=target.parent)}
    half = _Half()
    for queue_id, config in sorted(configured.items()):
        name = f"{target.parent}/queues/{queue_id}"
        half.changes.append(_queue_change(queue_id, name, config, existing.pop(name, None)))
    for name, queue in sorted(existing.items()):
        half.unnamed(
            Change("queue", name.rsplit("/", 1)[-1], name, "delete"), is_managed_queue(queue), prune
        )
    return half


# -- jobs -----------------------------------------------------------------------------------


def _duration(value: timedelta) -> str:
    return f"{value.total_seconds():g}s"


def _body(value: bytes) -> str:
    digest = hashlib.sha256(value).hexdigest()[:12]
    return f"{len(value)} bytes (sha256 {digest})" if value else "(empty)"


def _oidc(target: Any) -> str:
    if "oidc_token" not in target:
        return "(none)"
    token = target.oidc_token
    return f"{token.service_account_email} for {token.audience or '(the uri)'}"


def _headers(target: Any) -> dict[str, str]:
    return {
        k: v for k, v in dict(target.headers).items() if k.lower() not in _SCHEDULER_OWN_HEADERS
    }


#: The job fields the settings control: (label, update mask path, reader, compared only when
#: the desired job sets the mask path). Output-only fields (state, status, user_update_time,
#: schedule_time, last_attempt_time) are not here.
_JOB_FIELDS: tuple[tuple[str, str, Callable[[Any], str], bool], ...] = (
    ("schedule", "schedule", lambda j: str(j.schedule), False),
    ("time_zone", "time_zone", lambda j: str(j.time_zone or "UTC"), False),
    ("uri", "http_target", lambda j: str(j.http_target.uri), False),
    (
        "http_method",
        "http_target",
        lambda j: schedules.scheduler_v1.HttpMethod(j.http_target.http_method).name,
        False,
    ),
    ("body", "http_target", lambda j: _body(bytes(j.http_target.body)), False),
    ("oidc_token", "http_target", lambda j: _oidc(j.http_target), False),
    ("attempt_deadline", "attempt_deadline", lambda j: _duration(j.attempt_deadline), True),
    ("retry_count", "retry_config", lambda j: str(j.retry_config.retry_count), True),
    (
        "max_retry_duration",
        "retry_config",
        lambda j: _duration(j.retry_config.max_retry_duration),
        True,
    ),
    ("min_backoff", "retry_config", lambda j: _duration(j.retry_config.min_backoff_duration), True),
    ("max_backoff", "retry_config", lambda j: _duration(j.retry_config.max_backoff_duration), True),
    ("max_doublings", "retry_config", lambda j: str(j.retry_config.max_doublings), True),
    ("description", "description", lambda j: str(j.description), False),
)


def _job_change(job_id: str, desired: Any, existing: Any) -> Change:
    if existing is None:
        fields = [
            FieldChange(label, None, read(desired))
            for label, path, read, optional in _JOB_FIELDS
            if not optional or path in desired
        ]
        return Change("job", job_id, desired.name, "create", tuple(fields), desired)
    fields, mask = [], []
    for label, path, read, optional in _JOB_FIELDS:
        if optional and path not in desired:
            continue  # the settings leave it out: the job keeps its own value
        old, new = read(existing), read(desired)
        if old != new:
            fields.append(FieldChange(label, old, new))
            if path not in mask:
                mask.append(path)
    old_headers, new_headers = _headers(existing.http_target), _headers(desired.http_target)
    for key in sorted(set(old_headers) | set(new_headers)):
        old_value, new_value = old_headers.get(key), new_headers.get(key)
        if old_value != new_value:
            fields.append(
                FieldChange(f"headers[{key}]", old_value or "(none)", new_value or "(none)")
            )
            if "http_target" not in mask:
                mask.append("http_target")
    note = ""
    if existing.state == schedules.scheduler_v1.Job.State.PAUSED:
        note = "paused; cloudtask_sync leaves a job's state alone"
    if not mask:
        return Change("job", job_id, desired.name, "unchanged", note=note)
    return Change("job", job_id, desired.name, "update", tuple(fields), desired, tuple(mask), note)


def _plan_jobs(
    target: Target, prune: bool, skipped: list[tuple[str | None, str]] | None = None
) -> _Half | None:
    """The jobs half of a plan (None: not looked at). With ``skipped`` (a list), a schedule
    that cannot become a job is added there (its name, or None for the whole setting, and
    why) instead of raised, and its existing job is neither updated nor pruned."""
    if skipped is None:
        configured = schedules.get_schedules()
    else:
        configured, problems = schedules.collect()
        skipped.extend((problem.schedule, str(problem)) for problem in problems)
    if not configured and not prune:
        return None
    if not configured and not schedules.scheduler_available():
        return None  # nothing to create, and without the client nothing to list for pruning
    client = target.scheduler()  # a ConfigurationError naming the extra when it is missing
    try:
        existing = {j.name: j for j in client.list_jobs(parent=target.parent)}
    except api_exceptions.MethodNotImplemented:
        if configured:
            raise
        return None  # an emulator without the Cloud Scheduler API holds no jobs
    half = _Half()
    for job_id, schedule in sorted(configured.items()):
        try:
            desired = schedules.job_for(schedule, parent=target.parent)
        except CloudTaskError as exc:  # arguments that do not serialize, no URL, ...
            if skipped is None:
                raise
            skipped.append((job_id, str(exc)))
            continue
        half.changes.append(_job_change(job_id, desired, existing.pop(desired.name, None)))
    # A schedule the settings name with a mistake keeps the job it had; a mistake in the
    # setting as a whole hides which jobs it names, so none is pruned.
    kept = {name for name, _ in skipped or ()}
    for name, job in sorted(existing.items()):
        if kept and (None in kept or name.rsplit("/", 1)[-1] in kept):
            continue
        half.unnamed(
            Change("job", name.rsplit("/", 1)[-1], name, "delete"), schedules.is_managed(job), prune
        )
    return half


# -- plan and apply -------------------------------------------------------------------------

# Set while default_target() connects the transport: the emulator's on-connect sync is then
# skipped, since the caller is the sync (and --dry-run must change nothing).
_connecting = threading.local()


def default_target() -> Target:
    """The transport's Cloud Tasks (Google's, or the emulator it talks to), with its client."""
    transport = get_transport()
    if not isinstance(transport, CloudTasksTransport):
        raise ConfigurationError(
            f"cloudtask_sync talks to Cloud Tasks or an emulator of it, and CLOUDTASK"
            f'["TRANSPORT"] is {get_settings().transport!r}: use "cloudtasks" (with PROJECT and '
            'LOCATION) or "emulator", or set CLOUDTASK["EMULATOR_HOST"].'
        )
    project, location = transport.project_location()
    _connecting.active = True
    try:
        host = transport.emulator_host()
        client = transport.client
    finally:
        _connecting.active = False
    return Target(tasks=client, project=project, location=location, emulator_host=host)


def plan(*, prune: bool, target: Target | None = None, skip_bad_schedules: bool = False) -> Plan:
    """What makes target (default: the transport's Cloud Tasks) match the settings.

    ``skip_bad_schedules``: a schedule that cannot become a job (a mistake in it, or the jobs
    cannot be read at all) is left out and listed in ``Plan.skipped`` instead of raised; the
    queues are planned (and their errors raised) all the same.
    """
    skipped: list[tuple[str | None, str]] | None = [] if skip_bad_schedules else None
    try:
        target = target or default_target()
        queues = _plan_queues(target, get_settings().queues, prune)
        if skipped is None:
            jobs = _plan_jobs(target, prune)
        else:
            try:
                jobs = _plan_jobs(target, prune, skipped)
            except (CloudTaskError, api_exceptions.GoogleAPIError, grpc.RpcError) as exc:
                skipped.append((None, f"the Cloud Scheduler jobs could not be planned: {exc}"))
                jobs = None
    except google_auth_exceptions.DefaultCredentialsError as exc:
        raise SyncError(
            "No Google credentials to call Cloud Tasks with: run `gcloud auth application-default "
            f"login`, or run where a service account is attached ({exc})."
        ) from exc
    except api_exceptions.GoogleAPIError as exc:
        where = target.parent if target is not None else "Cloud Tasks"
        raise SyncError(f"Could not read the queues and jobs in {where}: {exc}") from exc
    halves = [queues] if jobs is None else [queues, jobs]
    return Plan(
        target=target,
        prune=prune,
        queues=tuple(queues.changes),
        jobs=None if jobs is None else tuple(jobs.changes),
        # Listed with --prune only: what it does not delete, and why.
        left_alone=tuple(x for h in halves for x in h.left_alone) if prune else (),
        orphans=tuple(x for h in halves for x in h.orphans),
        skipped=tuple(skipped or ()),
    )


@dataclass
class Applied:
    """What apply() did, and what failed (with why)."""

    done: list[Change] = field(default_factory=list)
    failed: list[tuple[Change, str]] = field(default_factory=list)

    def summary(self) -> str:
        """What was done, e.g. "1 queue created, 2 jobs updated" ("nothing changed")."""
        counts: dict[tuple[str, str], int] = {}
        for change in self.done:
            key = (change.action, change.kind)
            counts[key] = counts.get(key, 0) + 1
        done = [f"{_count(n, kind)} {action}d" for (action, kind), n in counts.items()]
        return ", ".join(done) or "nothing changed"

    def error(self) -> SyncError | None:
        """The SyncError naming every failure and what was done (None if nothing failed)."""
        if not self.failed:
            return None
        lines = [f"{_count(len(self.failed), 'change')} failed; done: {self.summary()}."]
        lines += [
            f"  {change.action} {change.kind} {change.id}: {why}" for change, why in self.failed
        ]
        return SyncError("\n".join(lines))


def _order(changes: Iterable[Change]) -> list[Change]:
    # Queues exist before the jobs that may feed them; jobs go before the queues they fed.
    rank = {
        ("queue", "create"): 0,
        ("queue", "update"): 0,
        ("job", "create"): 1,
        ("job", "update"): 1,
        ("job", "delete"): 2,
        ("queue", "delete"): 3,
    }
    return sorted(changes, key=lambda c: rank[(c.kind, c.action)])


def _write_change(target: Target, change: Change) -> None:
    mask = field_mask_pb2.FieldMask(paths=list(change.update_mask))
    if change.kind == "queue":
        client = target.tasks
        if change.action == "create":
            client.create_queue(parent=target.parent, queue=change.desired)
        elif change.action == "update":
            client.update_queue(queue=change.desired, update_mask=mask)
        else:
            client.delete_queue(name=change.name)
        return
    client = target.scheduler()
    if change.action == "create":
        client.create_job(parent=target.parent, job=change.desired)
    elif change.action == "update":
        client.update_job(job=change.desired, update_mask=mask)
    else:
        client.delete_job(name=change.name)


def _why(change: Change, exc: api_exceptions.GoogleAPIError) -> str:
    text = getattr(exc, "message", None) or str(exc)
    if (
        change.kind == "queue"
        and change.action == "create"
        and isinstance(exc, api_exceptions.FailedPrecondition)
    ):
        return (
            f"a queue named {change.id!r} was deleted recently, and Cloud Tasks refuses to create "
            "one of the same name for a while (up to 7 days): wait, or use another queue id in "
            f'CLOUDTASK["QUEUES"] and in the tasks that use it ({text})'
        )
    if isinstance(exc, api_exceptions.PermissionDenied):
        role = (
            "roles/cloudtasks.queueAdmin"
            if change.kind == "queue"
            else "roles/cloudscheduler.admin"
        )
        return f"permission denied (the credentials need e.g. {role}): {text}"
    if isinstance(exc, api_exceptions.NotFound) and change.action != "create":
        return f"it no longer exists (changed meanwhile? run cloudtask_sync again): {text}"
    if isinstance(exc, api_exceptions.Conflict):
        return f"it exists already (created meanwhile? run cloudtask_sync again): {text}"
    return f"{type(exc).__name__}: {text}"


def apply(plan: Plan, *, progress: Callable[[Change], None] | None = None) -> Applied:
    """Make plan's changes (each change on its own: one failing does not stop the others).
    progress, if given, is called after each change that succeeded."""
    applied = Applied()
    for change in _order(plan.changes):
        try:
            _write_change(plan.target, change)
        except api_exceptions.GoogleAPIError as exc:
            applied.failed.append((change, _why(change, exc)))
            continue
        applied.done.append(change)
        if progress is not None:
            progress(change)
    return applied


# -- the local emulator ---------------------------------------------------------------------


def apply_on_connect(*, address: str, project: str, location: str, **kwargs: Any) -> None:
    """emulator_connected receiver: the emulator gets the settings' queues and jobs, and loses
    the managed ones they no longer name (a removed schedule stops firing locally). One INFO
    line when it went well.

    A queue decides whether a send can work: a queue that cannot be read or applied is logged
    and raised (into the send). A schedule never stops tasks from being sent: one that cannot
    be applied is logged (ERROR, naming it and why) and left out; the others are applied."""
    if getattr(_connecting, "active", False):
        return  # cloudtask_sync itself is connecting: it plans and applies on its own
    target = Target(
        tasks=make_client(address),
        project=project,
        location=location,
        emulator_host=address,
        owns_clients=True,
    )
    try:
        todo = plan(prune=True, target=target, skip_bad_schedules=True)
        applied = apply(todo)
    except (CloudTaskError, api_exceptions.GoogleAPIError, grpc.RpcError) as exc:
        logger.error(
            "Could not apply CLOUDTASK QUEUES and SCHEDULES to the emulator at %s: %s", address, exc
        )
        raise
    finally:
        target.close()
    unapplied = [*todo.skipped, *((c.id, why) for c, why in applied.failed if c.kind == "job")]
    for name, why in unapplied:
        what = "CLOUDTASK SCHEDULES" if name is None else f"Schedule {name!r}"
        logger.error(
            "%s not applied to the emulator at %s (nothing fires for it there; tasks are "
            "sent all the same): %s",
            what,
            address,
            why,
        )
    queues = Applied(
        done=applied.done, failed=[(c, why) for c, why in applied.failed if c.kind == "queue"]
    )
    error = queues.error()
    if error is not None:
        logger.error(
            "Applying CLOUDTASK QUEUES and SCHEDULES to the emulator at %s: %s", address, error
        )
        raise error
    if applied.done:
        logger.info(
            "Applied CLOUDTASK QUEUES and SCHEDULES to the emulator at %s: %s.",
            address,
            applied.summary(),
        )
    elif not unapplied:
        logger.info("The emulator at %s matches CLOUDTASK QUEUES and SCHEDULES.", address)
