"""cloudtask's tables: the transactional outbox, the execution records and the dead letters."""

from __future__ import annotations

from datetime import datetime

from django.db import models

from .conf import require_installed

# Before the classes: without cloudtask in INSTALLED_APPS, Django would refuse them with advice
# about app_label; this says what is actually wrong.
require_installed()


class OutboxMessage(models.Model):
    """One encoded task call, written in the transaction that made it, deleted once Cloud Tasks
    accepted it. A row that is still here after its commit is sent by the relay.

    The task id is fixed when the row is written, so however often the row is sent (a crash
    between Cloud Tasks' answer and the delete, two relays, a retry after a timeout), Cloud Tasks
    creates the task once and answers ALREADY_EXISTS to the rest.
    """

    created_at = models.DateTimeField(db_index=True)
    #: Registered name of the task.
    task_name = models.CharField(max_length=500)
    queue = models.CharField(max_length=100)
    url = models.CharField(max_length=2083)
    body = models.BinaryField()
    headers = models.JSONField(default=dict)
    #: Cloud Tasks task id: the caller's, or one generated when the row was written.
    task_id = models.CharField(max_length=500)
    #: True when the caller chose task_id (a named task); False when cloudtask generated it.
    named = models.BooleanField(default=False)
    schedule_time = models.DateTimeField(null=True, blank=True)
    dispatch_deadline = models.DurationField(null=True, blank=True)
    oidc_service_account = models.CharField(max_length=254, blank=True, default="")
    oidc_audience = models.CharField(max_length=2083, blank=True, default="")
    #: Send attempts that failed.
    attempts = models.PositiveIntegerField(default=0)
    #: The relay leaves the row alone until then (the committing process sends it first; a
    #: failed send backs off exponentially).
    next_attempt_at = models.DateTimeField(db_index=True)
    last_attempt_at = models.DateTimeField(null=True, blank=True)
    last_error = models.TextField(blank=True, default="")
    #: A relay that claimed the row sends it until then; another relay skips it meanwhile.
    lease_until = models.DateTimeField(null=True, blank=True)
    lease_owner = models.CharField(max_length=32, blank=True, default="")

    class Meta:
        verbose_name = "outbox message"
        verbose_name_plural = "outbox"
        ordering = ("next_attempt_at", "pk")

    def __str__(self) -> str:
        return f"{self.task_name} ({self.task_id})"

    def age(self, now: datetime) -> float:
        """Seconds since the row was written."""
        return (now - self.created_at).total_seconds()


class TaskExecution(models.Model):
    """What became of one Cloud Tasks task: one row per task id, written by the executor in
    short transactions of its own (CLOUDTASK["RECORDS"]).

    It makes delivery idempotent: a delivery of a task id that already succeeded (or was
    discarded, or dead-lettered) is answered 2xx without running the function again, and a
    delivery that arrives while the same id runs under a live lease is asked to come back later.
    """

    class Status(models.TextChoices):
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        DISCARDED = "discarded"
        DEAD = "dead"

    #: Short Cloud Tasks task id (unique: see Meta.constraints).
    task_id = models.CharField(max_length=500)
    #: Registered name of the task.
    task_name = models.CharField(max_length=500)
    queue = models.CharField(max_length=100, blank=True, default="")
    status = models.CharField(max_length=16, choices=Status.choices)
    #: The first attempt's X-CloudTasks-TaskETA: a first attempt of this id with another ETA is a
    #: new task that reuses the id (a named task, once Cloud Tasks' dedup window let the name
    #: go), not a duplicate (see cloudtask.records.claim).
    eta = models.DateTimeField(null=True, blank=True)
    #: Attempts that started (deliveries that ran the function).
    attempts = models.PositiveIntegerField(default=0)
    first_started_at = models.DateTimeField()
    last_started_at = models.DateTimeField()
    finished_at = models.DateTimeField(null=True, blank=True)
    #: Seconds the last attempt ran.
    duration = models.FloatField(null=True, blank=True)
    #: While running: another delivery of this id before then is answered "come back later".
    lease_until = models.DateTimeField(null=True, blank=True)
    #: The function's return value, when JSON can hold it (else None and return_repr).
    return_value = models.JSONField(null=True, blank=True)
    return_repr = models.TextField(blank=True, default="")
    #: The last failure.
    error_type = models.CharField(max_length=500, blank=True, default="")
    error_message = models.TextField(blank=True, default="")
    traceback = models.TextField(blank=True, default="")
    #: Every failed attempt: {"attempt", "at", "exception_class", "message", "traceback"}.
    errors = models.JSONField(default=list, blank=True)

    class Meta:
        verbose_name = "task execution"
        ordering = ("-last_started_at", "-pk")
        # Every delivery inserts a row and settles it, so each index is paid for on each
        # delivery: only the ones a query needs. task_id's uniqueness is a constraint rather
        # than unique=True, which on PostgreSQL adds a second, LIKE-only index (as db_index does
        # on a CharField). last_started_at serves the ordering, the date filter and pruning;
        # task_name the admin's filter. No column the settling UPDATE changes (status, the
        # outcome, the lease) is indexed, so on PostgreSQL that UPDATE is a heap-only tuple
        # update that touches no index; a filter by status reads rows in last_started_at
        # order instead.
        constraints = (
            models.UniqueConstraint(fields=("task_id",), name="cloudtask_execution_task_id"),
        )
        indexes = (
            models.Index(fields=("last_started_at",), name="cloudtask_execution_started"),
            models.Index(fields=("task_name", "last_started_at"), name="cloudtask_execution_task"),
        )

    def __str__(self) -> str:
        return f"{self.task_name} ({self.task_id}): {self.status}"


class DeadLetter(models.Model):
    """A delivery that failed for good, kept with everything needed to look at it and replay it:
    max_attempts reached, a signed body that can never decode, a task no process knows."""

    class Reason(models.TextChoices):
        EXHAUSTED = "exhausted", "max_attempts reached"
        UNDECODABLE = "undecodable", "body can never decode"
        UNKNOWN_TASK = "unknown_task", "no task registered under the name"

    created_at = models.DateTimeField(db_index=True)
    reason = models.CharField(max_length=16, choices=Reason.choices, db_index=True)
    #: Short Cloud Tasks task id of the delivery.
    task_id = models.CharField(max_length=500, db_index=True)
    #: Registered name, when the body said one.
    task_name = models.CharField(max_length=500, blank=True, default="", db_index=True)
    queue = models.CharField(max_length=100, blank=True, default="")
    #: The raw request: body and headers, exactly as delivered.
    body = models.BinaryField()
    headers = models.JSONField(default=dict)
    attempts = models.PositiveIntegerField(default=0)
    #: Every error known for it (the execution record's, plus the last one).
    errors = models.JSONField(default=list, blank=True)
    #: Set when an operator replayed it: the task id of the new task.
    replayed_as = models.CharField(max_length=500, blank=True, default="")

    class Meta:
        verbose_name = "dead letter"
        ordering = ("-created_at", "-pk")

    def __str__(self) -> str:
        return f"{self.task_name or '?'} ({self.task_id}): {self.get_reason_display()}"
