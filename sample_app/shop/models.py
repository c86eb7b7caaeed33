"""The sample shop: orders whose life drives tasks, and the log those tasks leave behind."""

from __future__ import annotations

from typing import ClassVar

from django.db import models
from model_utils import FieldTracker


class Order(models.Model):
    class Status(models.TextChoices):
        NEW = "new", "New"
        PAID = "paid", "Paid"
        SHIPPED = "shipped", "Shipped"
        CANCELLED = "cancelled", "Cancelled"

    customer = models.CharField(max_length=100)
    total = models.DecimalField(max_digits=10, decimal_places=2)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.NEW)
    created = models.DateTimeField(auto_now_add=True)
    #: Set by the send_confirmation task once the order's transaction committed.
    confirmed_at = models.DateTimeField(null=True, blank=True)
    #: Set by the scheduled send_reminder task.
    reminded_at = models.DateTimeField(null=True, blank=True)

    # The status binding fires only when this field really changed (see shop/tasks.py).
    tracker = FieldTracker(fields=["status"])

    # Declared so type checkers see the manager whichever settings module they load.
    objects: ClassVar[models.Manager[Order]] = models.Manager()

    class Meta:
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"order #{self.pk} ({self.customer}, {self.status})"


class TaskLog(models.Model):
    """One row per task attempt the endpoint ran: the live log on the page and in the demo."""

    class Outcome(models.TextChoices):
        SUCCEEDED = "succeeded", "Succeeded"
        RETRYING = "retrying", "Failed, will retry"
        FAILED = "failed", "Failed for good"

    task = models.CharField(max_length=200)
    task_id = models.CharField(max_length=500, blank=True)
    queue = models.CharField(max_length=100, blank=True)
    attempt = models.PositiveIntegerField()
    outcome = models.CharField(max_length=20, choices=Outcome.choices)
    started_at = models.DateTimeField()
    duration_ms = models.FloatField()
    #: Whether the run came over HTTP from Cloud Tasks (the emulator) or inline (.execute()).
    delivered = models.CharField(max_length=20, default="http")
    detail = models.TextField(blank=True)

    objects: ClassVar[models.Manager[TaskLog]] = models.Manager()

    class Meta:
        ordering = ["-started_at", "-id"]

    def __str__(self) -> str:
        return f"{self.task} attempt {self.attempt}: {self.outcome}"
