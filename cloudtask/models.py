"""cloudtask's tables: the transactional outbox of task calls waiting to reach Cloud Tasks."""

from __future__ import annotations

from datetime import datetime

from django.db import models


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
