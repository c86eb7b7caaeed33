"""``manage.py demo``: run the sample shop on a real HTTP server with the embedded Cloud Tasks
emulator, play a scripted scenario end to end and print what happened, in order.

``manage.py demo --serve`` starts the same server and keeps it running for clicking around,
on a database emptied of earlier runs' orders and task rows unless ``--keep-data`` says otherwise.
Nothing here needs a Google account or a network: the emulator is a gRPC server inside this
process and delivers tasks over HTTP to the server below, on 127.0.0.1.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import date, timedelta
from decimal import Decimal
from enum import Enum
from typing import Any

from django.conf import settings
from django.contrib.staticfiles.handlers import StaticFilesHandler
from django.core.handlers.wsgi import WSGIHandler
from django.core.management import call_command
from django.core.management.base import BaseCommand, CommandError, CommandParser, OutputWrapper
from django.core.management.color import no_style
from django.core.servers.basehttp import ThreadedWSGIServer, WSGIRequestHandler
from django.db import connection, models, transaction
from django.test.utils import override_settings
from django.utils import timezone

from cloudtask import TaskAlreadyExists, signals
from cloudtask.models import DeadLetter, OutboxMessage, TaskExecution
from cloudtask.transports import get_transport

from ... import services
from ...models import Order, TaskLog
from ...tasks import (
    charge_payment,
    order_status_changed,
    rebuild_daily_report,
    send_confirmation,
)

#: The queue the shop's tasks use, created with a short retry backoff so the demo's retried
#: failure comes back within a second instead of Cloud Tasks' usual backoff.
DEMO_RETRY = {"max_attempts": 5, "min_backoff": 0.5, "max_backoff": 2.0, "max_doublings": 2}

#: What ``--serve`` empties at start (unless --keep-data): the shop's rows and the task state
#: cloudtask keeps about them. User accounts stay, so an admin login survives a restart.
SESSION_MODELS: tuple[type[models.Model], ...] = (
    Order,
    TaskLog,
    TaskExecution,
    DeadLetter,
    OutboxMessage,
)


class Timeline:
    """Prints lines stamped with the seconds since the demo started; safe from any thread."""

    def __init__(self, out: OutputWrapper) -> None:
        self.out = out
        self.start = time.monotonic()
        self.lock = threading.Lock()
        self.failures: list[str] = []
        self.checks = 0
        #: Short task id -> what was sent, to name deliveries in the log.
        self.sent: dict[str, str] = {}
        self.sent_changed = threading.Condition()

    def name_task(self, task_id: str, label: str) -> None:
        with self.sent_changed:
            self.sent[task_id] = label
            self.sent_changed.notify_all()

    def label_of(self, task_id: str) -> str:
        """What task_id is. The emulator may deliver a task before the sending thread has
        reported it sent (task_enqueued runs after create_task returns): wait a moment."""
        with self.sent_changed:
            self.sent_changed.wait_for(lambda: task_id in self.sent, timeout=2.0)
            return self.sent.get(task_id, f"task {task_id}")

    def say(self, text: str, *, mark: str = " ") -> None:
        with self.lock:
            self.out.write(f"{time.monotonic() - self.start:7.2f}s {mark} {text}")
            self.out.flush()

    def step(self, title: str) -> None:
        with self.lock:
            self.out.write(f"\n== {title}")
            self.out.flush()

    def expect(self, ok: bool, what: str) -> bool:
        self.checks += 1
        if ok:
            self.say(f"ok: {what}", mark="✓")
        else:
            self.failures.append(what)
            self.say(f"FAILED: {what}", mark="✗")
        return ok

    def wait_for(self, condition: Callable[[], bool], what: str, timeout: float) -> bool:
        """Poll condition until true or timeout; an expectation either way."""
        deadline = time.monotonic() + timeout
        while True:
            if condition():
                return self.expect(True, what)
            if time.monotonic() > deadline:
                return self.expect(False, f"{what} (not within {timeout:g} s)")
            time.sleep(0.05)


class _TimelineLogHandler(logging.Handler):
    """Puts log records on the timeline as one line each (the timeline already tells the story;
    a traceback for the scenario's deliberate failure would only bury it)."""

    def __init__(self, timeline: Timeline) -> None:
        super().__init__(logging.WARNING)
        self.timeline = timeline

    def emit(self, record: logging.LogRecord) -> None:
        self.timeline.say(f"log {record.levelname} {record.name}: {record.getMessage()}", mark="!")


@contextmanager
def logs_on(timeline: Timeline, *names: str) -> Iterator[None]:
    handler = _TimelineLogHandler(timeline)
    saved = []
    for name in names:
        logger = logging.getLogger(name)
        saved.append((logger, logger.handlers[:], logger.propagate))
        logger.handlers = [handler]
        logger.propagate = False
    try:
        yield
    finally:
        for logger, handlers, propagate in saved:
            logger.handlers = handlers
            logger.propagate = propagate


class _DeliveryLoggingHandler(WSGIRequestHandler):
    """Logs each delivery to /_tasks/ on the timeline; page requests stay quiet."""

    timeline: Timeline | None = None

    def log_request(self, code: int | str = "-", size: int | str = "-") -> None:
        timeline = self.timeline
        if timeline is None or "/_tasks/" not in self.path:
            return
        task_id = self.headers.get("X-CloudTasks-TaskName", "?")
        attempt = int(self.headers.get("X-CloudTasks-TaskRetryCount", "0") or 0) + 1
        what = timeline.label_of(task_id)
        agent = self.headers.get("User-Agent", "?")
        timeline.say(
            f"HTTP {self.command} {self.path} from {agent}: {what}, attempt {attempt} -> {code}",
            mark="<",
        )

    def log_message(self, format: str, *args: Any) -> None:
        pass


class SampleServer:
    """The sample project's WSGI app on a threaded HTTP server: deliveries and page requests
    are served concurrently, each on its own thread."""

    def __init__(self, host: str, port: int, timeline: Timeline | None) -> None:
        handler = type("Handler", (_DeliveryLoggingHandler,), {"timeline": timeline})
        self.host = host
        self.httpd = ThreadedWSGIServer((host, port), handler, allow_reuse_address=False)
        # Static files too (the admin's), as runserver serves them.
        self.httpd.set_app(StaticFilesHandler(WSGIHandler()))
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.httpd.server_port}/"

    def start(self) -> SampleServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


@contextmanager
def tasks_delivered_to(url: str, *, emulator_log: bool) -> Iterator[None]:
    """Point CLOUDTASK["URL"] at the server that really listens (its port is known only now).

    Without emulator_log the emulator stays quiet: the scenario's timeline reports deliveries.
    The emulator runs inside this process (PERSIST False), new for each run: the scenario counts
    on a queue no other process shares (nothing left to deliver, a named task sent once), and
    the command leaves nothing running when it exits.
    """
    cloudtask: dict[str, Any] = dict(settings.CLOUDTASK)
    cloudtask["URL"] = url
    cloudtask["EMULATOR"] = {
        **cloudtask.get("EMULATOR", {}),
        "LOG": emulator_log,
        "PERSIST": False,
    }
    with override_settings(CLOUDTASK=cloudtask):
        yield


def embedded_emulator() -> Any:
    """The Emulator the "emulator" backend runs in this process."""
    backend = get_transport()
    emulator = getattr(backend, "emulator", None)
    if emulator is None:
        raise CommandError(
            f'The demo needs CLOUDTASK["TRANSPORT"] = "emulator"; the backend is {backend!r}.'
        )
    return emulator


def dashboard_url() -> str | None:
    """The emulator's dashboard page, if this cloudtask's transport serves one."""
    method = getattr(get_transport(), "dashboard_url", None)
    url = method() if callable(method) else None
    return url if isinstance(url, str) else None


def start_clean(*, keep: bool) -> str:
    """Empty SESSION_MODELS unless keep; one line saying which, for --serve's banner."""
    database = settings.DATABASES["default"]["NAME"]
    if keep:
        return (
            f"Database {database}: kept as earlier runs left it (--keep-data), "
            f"{Order.objects.count()} orders."
        )
    removed = sum(model._default_manager.count() for model in SESSION_MODELS)
    # What manage.py flush does, for these tables only: the rows go and the ids start again,
    # so the first order of the session is #1.
    tables = [model._meta.db_table for model in SESSION_MODELS]
    connection.ops.execute_sql_flush(
        connection.ops.sql_flush(no_style(), tables, reset_sequences=True)
    )
    return (
        f"Database {database}: started clean ({removed} rows of earlier runs removed; "
        "user accounts kept). --keep-data (make demo-serve KEEP_DATA=1) keeps them."
    )


def create_queue(queue_id: str) -> str:
    """Create the shop's queue in the embedded emulator, with the demo's short retry backoff."""
    from google.cloud import tasks_v2
    from google.protobuf import duration_pb2

    emulator = embedded_emulator()
    cfg = settings.CLOUDTASK
    name: str = emulator.ensure_queue(queue_id, project=cfg["PROJECT"], location=cfg["LOCATION"])

    def duration(seconds: float) -> duration_pb2.Duration:
        return duration_pb2.Duration(seconds=int(seconds), nanos=int(seconds % 1 * 1e9))

    queue = tasks_v2.Queue(
        name=name,
        retry_config=tasks_v2.RetryConfig(
            max_attempts=DEMO_RETRY["max_attempts"],
            min_backoff=duration(DEMO_RETRY["min_backoff"]),
            max_backoff=duration(DEMO_RETRY["max_backoff"]),
            max_doublings=int(DEMO_RETRY["max_doublings"]),
        ),
    )
    emulator.client().update_queue(queue=queue)
    return name


class Command(BaseCommand):
    help = (
        "Run the sample shop with the embedded Cloud Tasks emulator and play a scripted scenario "
        "(exit status 0 when every expectation holds); --serve keeps the server running instead."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--serve", action="store_true", help="Serve the shop until interrupted (no scenario)."
        )
        parser.add_argument("--host", default="127.0.0.1", help="Address to bind (127.0.0.1).")
        parser.add_argument(
            "--port",
            type=int,
            default=None,
            help="Port to bind: 0 picks a free one. Default 8000 with --serve, else 0.",
        )
        parser.add_argument(
            "--keep-data",
            action="store_true",
            help="With --serve: keep earlier runs' orders and task rows (default: remove them).",
        )
        parser.add_argument(
            "--timeout",
            type=float,
            default=20.0,
            help="Seconds to wait for each expected effect before calling it failed.",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        call_command("migrate", interactive=False, verbosity=0)
        serve: bool = options["serve"]
        if options["keep_data"] and not serve:
            raise CommandError(
                "--keep-data goes with --serve: the scenario always keeps earlier runs' rows "
                "(it looks only at its own)."
            )
        database = start_clean(keep=options["keep_data"]) if serve else ""
        port: int = options["port"] if options["port"] is not None else (8000 if serve else 0)
        timeline = Timeline(self.stdout)
        try:
            # In --serve mode the emulator's own log line reports each delivery.
            server = SampleServer(options["host"], port, None if serve else timeline)
        except OSError as exc:
            raise CommandError(f"Cannot listen on {options['host']}:{port}: {exc}") from exc
        server.start()
        try:
            with tasks_delivered_to(f"{server.url}_tasks/", emulator_log=serve):
                queue = create_queue(str(settings.CLOUDTASK["QUEUE"]))
                emulator = embedded_emulator()
                if serve:
                    self.serve(server, emulator, queue, database)
                else:
                    with logs_on(timeline, "cloudtask", "django.request"):
                        Scenario(timeline, emulator, options["timeout"]).play(server, queue)
        finally:
            server.stop()
        if not serve:
            if timeline.failures:
                raise CommandError(
                    f"{len(timeline.failures)} of {timeline.checks} expectations failed: "
                    + "; ".join(timeline.failures)
                )
            self.stdout.write(f"\nAll {timeline.checks} expectations met.")

    def serve(self, server: SampleServer, emulator: Any, queue: str, database: str) -> None:
        dashboard = dashboard_url()
        lines = [
            f"Serving the sample shop at {server.url}",
            *([f"Emulator dashboard at {dashboard}"] if dashboard else []),
            f"Cloud Tasks emulator (gRPC) at {emulator.address}, queue {queue.rsplit('/', 1)[-1]}",
            database,
            f"Times are shown in {timezone.get_current_timezone_name()} (settings.TIME_ZONE).",
            "Deliveries to /_tasks/ are logged below. Press Ctrl-C to stop.",
        ]
        self.stdout.write("\n".join(lines))
        self.stdout.flush()
        try:
            while server.thread.is_alive():
                server.thread.join(timeout=0.5)
        except KeyboardInterrupt:
            self.stdout.write("\nStopping.")


class Scenario:
    """The scripted walk through every feature; each step states what it expects."""

    def __init__(self, timeline: Timeline, emulator: Any, timeout: float) -> None:
        self.t = timeline
        self.emulator = emulator
        self.timeout = timeout
        self.enqueued = 0
        self.lock = threading.Lock()
        #: Rows logged before this run (an earlier demo on the same database) are left out.
        self.started = timezone.now()
        #: The handle of step 1's charge_payment call, read again in step 2.
        self.payment: Any = None

    # -- helpers -------------------------------------------------------------------------------

    def _on_enqueued(self, sender: Any, call: Any, handle: Any, **kwargs: Any) -> None:
        with self.lock:
            self.enqueued += 1
        args = ", ".join(
            [*map(_short, call.args), *(f"{k}={_short(v)}" for k, v in call.kwargs.items())]
        )
        label = f"{sender.name.rsplit('.', 1)[-1]}({args})"
        if handle.id:
            self.t.name_task(handle.id, label)
        when = ""
        if handle.message.schedule_time is not None:
            at = timezone.localtime(handle.message.schedule_time)
            zone = timezone.get_current_timezone_name()
            when = f", scheduled for {at:%H:%M:%S}.{at.microsecond // 1000:03d} {zone}"
        task_id = handle.id if len(handle.id or "") <= 24 else f"{handle.id[:20]}..."
        self.t.say(f"enqueued {label} as task {task_id} on queue {handle.queue}{when}", mark=">")

    def log_rows(self, task: Any, **filters: Any) -> list[TaskLog]:
        rows = TaskLog.objects.filter(task=task.name, started_at__gte=self.started, **filters)
        return list(rows.order_by("started_at", "id"))

    def idle(self) -> bool:
        return bool(self.emulator.wait_idle(timeout=self.timeout))

    # -- the scenario --------------------------------------------------------------------------

    def play(self, server: SampleServer, queue: str) -> None:
        t = self.t
        t.say(f"sample shop serving at {server.url} (threaded WSGI server)")
        t.say(f"embedded Cloud Tasks emulator at {self.emulator.address}; tasks POST to /_tasks/")
        t.say(
            f"queue {queue.rsplit('/', 1)[-1]}: max_attempts {DEMO_RETRY['max_attempts']}, "
            f"min_backoff {DEMO_RETRY['min_backoff']} s"
        )
        signals.task_enqueued.connect(self._on_enqueued, dispatch_uid="shop.demo.enqueued")
        try:
            order = self.order_committed()
            self.retried_failure(order)
            self.status_binding(order)
            self.rollback()
            self.named_duplicate()
            self.scheduled(order)
            self.cron_schedule()
            self.summary()
        finally:
            signals.task_enqueued.disconnect(dispatch_uid="shop.demo.enqueued")

    def order_committed(self) -> Order:
        t = self.t
        t.step("1. Create an order in a transaction: its tasks leave at the commit")
        t.say(
            "note: charge_payment fails on purpose on its first attempt to show a retry (a "
            "simulated payment gateway timeout, raised as cloudtask.Retry): expect one WARNING "
            "line and a 503 for attempt 1, then attempt 2 succeeds (step 2)"
        )
        with transaction.atomic():
            order = Order.objects.create(customer="Ada", total=Decimal("42.00"))
            confirmation = send_confirmation(order).delay()
            payment = self.payment = charge_payment(order).delay_on_commit()
            t.say(f"created order #{order.pk} inside atomic(); nothing sent yet")
            t.expect(
                confirmation.state == "pending" and payment.state == "pending",
                "inside the transaction both task handles are still pending",
            )
        t.say("transaction committed")
        t.expect(
            confirmation.state == "sent" and payment.state == "sent",
            "after the commit both tasks were sent to the emulator",
        )
        t.wait_for(
            lambda: Order.objects.filter(pk=order.pk, confirmed_at__isnull=False).exists(),
            f"send_confirmation ran over HTTP and set order #{order.pk}.confirmed_at",
            self.timeout,
        )
        # The log row is written just after the task returns (task_succeeded): wait for it too.
        t.wait_for(
            lambda: bool(self.log_rows(send_confirmation)),
            "the task log recorded the run",
            self.timeout,
        )
        rows = self.log_rows(send_confirmation)
        t.expect(
            len(rows) == 1
            and rows[0].delivered == "http"
            and rows[0].attempt == 1
            and rows[0].outcome == TaskLog.Outcome.SUCCEEDED,
            "one HTTP delivery of send_confirmation, attempt 1, succeeded",
        )
        return order

    def retried_failure(self, order: Order) -> None:
        t = self.t
        t.step("2. A task that fails once and succeeds when Cloud Tasks retries it")
        t.wait_for(
            lambda: bool(self.log_rows(charge_payment, outcome=TaskLog.Outcome.SUCCEEDED)),
            "charge_payment eventually succeeded",
            self.timeout,
        )
        outcomes = [(row.attempt, row.outcome) for row in self.log_rows(charge_payment)]
        t.say(f"charge_payment attempts: {outcomes}")
        t.expect(
            outcomes == [(1, "retrying"), (2, "succeeded")],
            "attempt 1 asked for a retry (HTTP 503, retried after the queue's backoff), "
            "attempt 2 succeeded",
        )
        order.refresh_from_db()
        t.expect(order.status == Order.Status.PAID, f"order #{order.pk} is now paid")
        # cloudtask's own execution record of the task id: both attempts in one row.
        t.wait_for(
            lambda: _status(self.payment.get_result()) == TaskExecution.Status.SUCCEEDED,
            "its execution record (handle.get_result()) says succeeded",
            self.timeout,
        )
        record = self.payment.get_result()
        errors = [e["exception_class"].rsplit(".", 1)[-1] for e in record.errors]
        t.say(
            f"execution record of task {record.task_id}: {record.status}, "
            f"{record.attempts} attempts, errors {errors}, returned {record.return_value!r}"
        )
        t.expect(
            record.attempts == 2 and errors == ["PaymentGatewayTimeout"],
            "one record for the task id: 2 attempts, the first one's PaymentGatewayTimeout kept",
        )

    def status_binding(self, order: Order) -> None:
        t = self.t
        t.step("3. A post_save binding sends a task when the status field changes")
        t.wait_for(
            lambda: len(self.log_rows(order_status_changed)) >= 1,
            "order_status_changed ran after charge_payment saved status new -> paid",
            self.timeout,
        )
        services.change_status(order, Order.Status.SHIPPED)
        t.say(f"saved order #{order.pk} with status shipped")
        t.wait_for(
            lambda: len(self.log_rows(order_status_changed)) >= 2,
            "order_status_changed ran for paid -> shipped",
            self.timeout,
        )
        order.refresh_from_db()
        with transaction.atomic():
            order.save()
        t.say(f"saved order #{order.pk} again without changing its status")
        self.idle()
        rows = self.log_rows(order_status_changed)
        t.expect(len(rows) == 2, "an unchanged status sends nothing (still 2 binding runs)")
        for row in rows:
            t.say(f"binding run: {row.detail}")

    def rollback(self) -> None:
        t = self.t
        t.step("4. A rolled-back transaction sends nothing")
        orders_before = Order.objects.count()
        log_before = TaskLog.objects.count()
        enqueued_before = self.enqueued
        handles = services.place_order_and_roll_back(customer="Grace", total=Decimal("9.99"))
        t.say("created an order and called two tasks inside atomic(), then raised: rolled back")
        t.expect(
            all(h.state == "dropped" and h.resource_name is None for h in handles),
            "neither task handle was ever sent",
        )
        self.idle()
        t.expect(
            Order.objects.count() == orders_before
            and self.enqueued == enqueued_before
            and TaskLog.objects.count() == log_before,
            "no order row, no task enqueued, no task ran",
        )

    def named_duplicate(self) -> None:
        t = self.t
        t.step("5. A named task: the same name twice is refused (Cloud Tasks' dedup)")
        day = timezone.localdate()
        first = services.request_daily_report(day)
        t.expect(first.state == "sent", f"rebuild_daily_report({day}) queued as task {first.id}")
        try:
            services.request_daily_report(day)
        except TaskAlreadyExists as exc:
            t.say(f"second call refused: TaskAlreadyExists: {exc}")
            t.expect(True, "the duplicate name was refused")
        else:
            t.expect(False, "the duplicate name was refused")
        # On a database an earlier demo used today, the task id has a "succeeded" execution
        # record; this emulator is new and created the task again: a new task reusing the id
        # (its first attempt brings a new ETA), which runs, where a redelivery would not.
        t.wait_for(
            lambda: len(self.log_rows(rebuild_daily_report)) == 1,
            "the report task ran exactly once",
            self.timeout,
        )
        self.idle()
        t.expect(len(self.log_rows(rebuild_daily_report)) == 1, "and never a second time")

    def scheduled(self, order: Order) -> None:
        t = self.t
        t.step("6. A scheduled task waits in the queue until its time")
        delay = 2.0
        handle = services.schedule_reminder(order, seconds=delay)
        due = handle.schedule_time
        t.expect(
            due is not None and not Order.objects.get(pk=order.pk).reminded_at,
            f"send_reminder scheduled {delay:g} s ahead and not delivered yet",
        )
        t.wait_for(
            lambda: Order.objects.filter(pk=order.pk, reminded_at__isnull=False).exists(),
            "send_reminder was delivered",
            self.timeout + delay,
        )
        order.refresh_from_db()
        # A few milliseconds of slack: the emulator's timer and this clock read time separately.
        t.expect(
            due is not None
            and order.reminded_at is not None
            and order.reminded_at >= due - timedelta(milliseconds=50),
            "it was delivered at or after its schedule time, not before",
        )

    def cron_schedule(self) -> None:
        """A CLOUDTASK["SCHEDULES"] entry as a job in the emulator's Cloud Scheduler, fired now
        (as `gcloud scheduler jobs run` does: cron granularity is a minute, the demo does not
        wait for it) and delivered to the site like Cloud Scheduler delivers it."""
        from zoneinfo import ZoneInfo

        from google.api_core.exceptions import AlreadyExists

        from cloudtask import schedules

        t = self.t
        t.step("7. A cron schedule from the settings, fired by the emulator's Cloud Scheduler")
        entry = schedules.get_schedules()["nightly-digest"]
        fire = schedules.next_run(entry)
        local = timezone.localtime(fire, ZoneInfo(entry.time_zone))
        t.say(
            f"schedule {entry.name}: {entry.task.rsplit('.', 1)[-1]} at '{entry.cron}' in "
            f"{entry.time_zone}; next run {local:%Y-%m-%d %H:%M %Z} ({fire:%H:%M} UTC)"
        )
        client = self.emulator.scheduler_client()
        desired = schedules.job_for(entry, parent=self.emulator.location_path)
        try:
            job = client.create_job(parent=self.emulator.location_path, job=desired)
        except AlreadyExists:  # applied when the site connected to the emulator
            job = client.update_job(job=desired)
        t.expect(
            job.schedule_time == fire and schedules.is_managed(job),
            "the job is in the emulator, due at that next run, marked as cloudtask's",
        )
        client.run_job(name=job.name)
        t.say(f"ran job {entry.name} now (RunJob)")
        name = "shop.tasks.nightly_digest"
        t.wait_for(
            lambda: TaskLog.objects.filter(task=name, started_at__gte=self.started).exists(),
            "Cloud Scheduler's POST reached the site and the task ran",
            self.timeout,
        )
        row = TaskLog.objects.filter(task=name, started_at__gte=self.started).get()
        t.say(f"{row.detail}")
        t.expect(
            row.outcome == TaskLog.Outcome.SUCCEEDED and entry.name in row.detail,
            "the task knew which schedule fired it",
        )

    def summary(self) -> None:
        t = self.t
        t.expect(self.idle(), "the emulator has nothing left to deliver")
        t.step("Task log (what the page shows)")
        rows = TaskLog.objects.filter(started_at__gte=self.started).order_by("started_at", "id")
        for row in rows:
            t.say(
                f"{row.task.rsplit('.', 1)[-1]:<22} attempt {row.attempt}  {row.outcome:<9} "
                f"{row.duration_ms:7.1f} ms  via {row.delivered:<6} {row.detail}",
                mark="|",
            )
        t.say('execution records (the page\'s "Recent executions"; the admin lists them too):')
        executions = TaskExecution.objects.filter(first_started_at__gte=self.started).order_by(
            "first_started_at", "pk"
        )
        for record in executions:
            duration = f"{record.duration * 1000:7.1f} ms" if record.duration is not None else ""
            t.say(
                f"{record.task_name.rsplit('.', 1)[-1]:<22} {record.status:<9} "
                f"{record.attempts} attempt{'s' if record.attempts != 1 else ' '}  {duration}",
                mark="|",
            )
        logged_ids = set(rows.values_list("task_id", flat=True))
        t.expect(
            {r.task_id for r in executions} == logged_ids
            and all(r.status == TaskExecution.Status.SUCCEEDED for r in executions),
            f"one execution record per task id that ran ({len(logged_ids)}), each succeeded",
        )


def _status(record: TaskExecution | None) -> str | None:
    return record.status if record is not None else None


def _short(value: Any) -> str:
    """A task argument as a person would write it in the timeline."""
    if isinstance(value, Order):
        return f"order #{value.pk}"
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, Enum):
        return repr(value.value)
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {_short(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list | tuple):
        return "[" + ", ".join(map(_short, value)) + "]"
    return repr(value)
