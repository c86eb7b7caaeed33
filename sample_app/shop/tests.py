"""The sample shop's own tests: how a project tests its tasks with cloudtask.testing.

Run them with ``python sample_app/manage.py test shop`` (the main suite does, in
tests/sample/test_sample_app.py). No emulator and no network: capture_tasks() records what the
shop sends, and each captured task runs through the real endpoint code when the test says so.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

from django.test import TestCase, override_settings
from django.utils import timezone

from cloudtask import TaskAlreadyExists
from cloudtask.models import TaskExecution
from cloudtask.testing import capture_tasks, send_on_commit_tasks

from . import services
from .models import Order, TaskLog
from .tasks import (
    charge_payment,
    order_status_changed,
    rebuild_daily_report,
    send_confirmation,
    send_reminder,
)


class PlaceOrderTests(TestCase):
    def test_tasks_leave_only_at_the_commit(self) -> None:
        with capture_tasks() as outbox, send_on_commit_tasks():
            order = services.place_order("Ada", Decimal("10.00"))
            self.assertEqual(outbox, [], "nothing is sent before the commit")
        # Sent concurrently at the commit: compare without order.
        self.assertCountEqual(outbox.task_names, [send_confirmation.name, charge_payment.name])
        (confirmation,) = outbox.for_task(send_confirmation)
        self.assertEqual(confirmation.args, (order,))
        self.assertEqual(confirmation.queue, "orders")

        self.assertEqual(confirmation.run().status_code, 200)
        order.refresh_from_db()
        self.assertIsNotNone(order.confirmed_at)

    def test_a_rolled_back_order_sends_nothing(self) -> None:
        with capture_tasks() as outbox, send_on_commit_tasks():
            handles = services.place_order_and_roll_back("Grace", Decimal("1.00"))
        self.assertEqual(outbox, [])
        self.assertEqual([h.state for h in handles], ["dropped", "dropped"])
        self.assertFalse(Order.objects.exists())


class PaymentTests(TestCase):
    def test_payment_is_retried_and_its_status_change_fires_the_binding(self) -> None:
        with capture_tasks() as outbox:
            with send_on_commit_tasks():
                order = services.place_order("Linus", Decimal("25.50"))
            (payment,) = outbox.for_task(charge_payment)

            # First attempt: the simulated gateway times out, on purpose. The task raises a
            # Retry, answered 503 (Cloud Tasks retries) and logged as one WARNING line.
            with self.assertLogs("cloudtask", "WARNING") as logs:
                self.assertEqual(payment.run().status_code, 503)
            (warning,) = logs.records
            self.assertEqual(warning.levelname, "WARNING")
            self.assertIn("asked for a retry on attempt 1: PaymentGatewayTimeout", warning.message)
            self.assertIsNone(warning.exc_info)
            order.refresh_from_db()
            self.assertEqual(order.status, Order.Status.NEW)

            # The retry succeeds; its save() changes the status, so the binding sends
            # order_status_changed when that save's transaction commits.
            with send_on_commit_tasks():
                self.assertEqual(payment.run().status_code, 200)
            order.refresh_from_db()
            self.assertEqual(order.status, Order.Status.PAID)

            (changed,) = outbox.for_task(order_status_changed)
            self.assertEqual(changed.kwargs["changes"], {"status": ["new", "paid"]})
            self.assertEqual(changed.run().status_code, 200)

        attempts = TaskLog.objects.filter(task=charge_payment.name).order_by("attempt")
        self.assertEqual(
            [(row.attempt, row.outcome) for row in attempts],
            [(1, TaskLog.Outcome.RETRYING), (2, TaskLog.Outcome.SUCCEEDED)],
        )
        log = TaskLog.objects.get(task=order_status_changed.name)
        self.assertIn("new -> paid", log.detail)

        # cloudtask's execution record of the payment's task id holds both attempts.
        record = TaskExecution.objects.get(task_name=charge_payment.name)
        self.assertEqual((record.status, record.attempts), ("succeeded", 2))
        self.assertEqual(
            [e["exception_class"] for e in record.errors], ["shop.tasks.PaymentGatewayTimeout"]
        )

    def test_saving_without_a_status_change_sends_nothing(self) -> None:
        order = Order.objects.create(customer="Ken", total=Decimal("3.00"))
        with capture_tasks() as outbox, send_on_commit_tasks():
            order.total = Decimal("4.00")
            order.save()
        self.assertEqual(outbox, [])


class ScheduledAndNamedTests(TestCase):
    def test_reminder_is_scheduled_ahead(self) -> None:
        order = Order.objects.create(customer="Barbara", total=Decimal("8.00"))
        before = timezone.now()
        with capture_tasks() as outbox:
            services.schedule_reminder(order, seconds=60)
        (reminder,) = outbox.for_task(send_reminder)
        assert reminder.schedule_time is not None
        self.assertGreaterEqual(reminder.schedule_time, before + timedelta(seconds=60))
        # A test need not wait for the schedule: run() delivers now.
        self.assertEqual(reminder.run().status_code, 200)
        order.refresh_from_db()
        self.assertIsNotNone(order.reminded_at)

    def test_one_report_per_day(self) -> None:
        today = timezone.localdate()
        with capture_tasks() as outbox:
            services.request_daily_report(today)
            with self.assertRaises(TaskAlreadyExists):
                services.request_daily_report(today)
            services.request_daily_report(today - timedelta(days=1))
        self.assertEqual(len(outbox.for_task(rebuild_daily_report)), 2)
        self.assertTrue(all(c.named for c in outbox))


class PageTests(TestCase):
    def test_buttons_change_the_state_the_page_polls(self) -> None:
        page = self.client.get("/")
        self.assertContains(page, 'id="create-order"')
        with capture_tasks() as outbox:
            with send_on_commit_tasks():
                created = self.client.post("/orders/")
            self.assertEqual(created.status_code, 200)
            with self.assertLogs("cloudtask", "WARNING"):  # the payment's first attempt fails
                outbox.run_all(check=False)

        state = self.client.get("/api/state/").json()
        (order,) = state["orders"]
        self.assertIsNotNone(order["confirmed_at"])
        self.assertEqual(
            {(row["task"], row["outcome"]) for row in state["log"]},
            {
                (send_confirmation.name, "succeeded"),
                (charge_payment.name, "retrying"),
            },
        )

        # The recent executions, from cloudtask's records: one row per task id.
        self.assertEqual(
            {(row["task"], row["status"], row["attempts"]) for row in state["executions"]},
            {
                (send_confirmation.name, "succeeded", 1),
                (charge_payment.name, "failed", 1),  # waiting for Cloud Tasks' retry
            },
        )
        (failed,) = [row for row in state["executions"] if row["status"] == "failed"]
        self.assertEqual(failed["error"], "PaymentGatewayTimeout")
        self.assertContains(page, 'id="executions"')

        changed = self.client.post(f"/orders/{order['id']}/status/", {"status": "cancelled"})
        self.assertEqual(changed.status_code, 200)
        self.assertEqual(Order.objects.get().status, Order.Status.CANCELLED)
        refused = self.client.post(f"/orders/{order['id']}/status/", {"status": "lost"})
        self.assertEqual(refused.status_code, 400)

        # A second report the same day is refused: an expected answer the page shows, not an
        # HTTP error (which the browser console would report).
        with capture_tasks():
            self.assertIn("queued", self.client.post("/report/").json()["message"])
            again = self.client.post("/report/")
        self.assertEqual(again.status_code, 200)
        self.assertIn("refused", again.json()["message"])


class TimesOnThePageTests(TestCase):
    @override_settings(TIME_ZONE="Asia/Kolkata")
    def test_every_time_is_hh_mm_ss_in_the_projects_time_zone(self) -> None:
        moment = datetime(2026, 11, 28, 16, 8, 48, 900000, tzinfo=UTC)  # 21:38:48 in Kolkata
        order = Order.objects.create(customer="Ada", total=Decimal("1.00"))
        Order.objects.filter(pk=order.pk).update(created=moment, confirmed_at=moment)
        TaskLog.objects.create(
            task=send_confirmation.name,
            attempt=1,
            outcome=TaskLog.Outcome.SUCCEEDED,
            started_at=moment,
            duration_ms=1.0,
        )

        page = self.client.get("/")
        self.assertContains(page, '<strong id="time-zone">Asia/Kolkata</strong>', html=False)
        state = self.client.get("/api/state/").json()
        (shown,) = state["orders"]
        self.assertEqual(
            (shown["created"], shown["confirmed_at"], shown["reminded_at"]),
            ("21:38:48", "21:38:48", None),
        )
        self.assertEqual([row["when"] for row in state["log"]], ["21:38:48"])

        # The buttons' messages use the same clock.
        with capture_tasks() as outbox:
            message = self.client.post(f"/orders/{order.pk}/remind/").json()["message"]
        (reminder,) = outbox
        assert reminder.schedule_time is not None
        due = timezone.localtime(reminder.schedule_time)  # in TIME_ZONE, as the page shows
        self.assertEqual(message, f"Reminder for order #{order.pk} scheduled for {due:%H:%M:%S}.")
