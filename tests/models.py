"""Every model the test suite uses."""

from django.db import models
from model_utils import FieldTracker


class Customer(models.Model):
    name = models.CharField(max_length=100)


class Tag(models.Model):
    label = models.CharField(max_length=50)


class Order(models.Model):
    class Status(models.TextChoices):
        NEW = "new"
        PAID = "paid"
        SHIPPED = "shipped"
        CANCELLED = "cancelled"

    customer = models.ForeignKey(Customer, null=True, blank=True, on_delete=models.SET_NULL)
    status = models.CharField(max_length=20, choices=Status.choices, default=Status.NEW)
    total = models.DecimalField(max_digits=10, decimal_places=2, default=0)
    note = models.TextField(blank=True)
    tags = models.ManyToManyField(Tag, blank=True)

    tracker = FieldTracker()


class Untracked(models.Model):
    """A model without a FieldTracker: a binding with fields= on it must fail at start-up."""

    name = models.CharField(max_length=100)


class TaskRecord(models.Model):
    """Written by tasks under test, so a test can see a side effect that crossed a commit."""

    label = models.CharField(max_length=200)
    payload = models.JSONField(default=dict)
    created = models.DateTimeField(auto_now_add=True)


# -- on-commit bindings (tests/oncommit) --


class Parcel(models.Model):
    """Bound at import by tests/oncommit/jobs.py only, so its bindings never fire elsewhere."""

    status = models.CharField(max_length=20, default="new")
    weight = models.DecimalField(max_digits=8, decimal_places=2, default=0)
    note = models.TextField(blank=True)
    tags = models.ManyToManyField(Tag, blank=True, related_name="parcels")

    tracker = FieldTracker(fields=["status", "weight"])
