"""The ``google.cloud.scheduler.v1.CloudScheduler`` gRPC service: cron jobs that fire over HTTP.

Served on the emulator's gRPC port beside Cloud Tasks, built like :mod:`.server` on the official
client's proto-plus message classes with generic method handlers. Jobs fire at their cron times
in their time zones on the emulator's clock, and each firing is delivered like Cloud Scheduler
delivers it: the job's method, headers and body, ``X-CloudScheduler`` headers, ``User-Agent:
Google-Cloud-Scheduler``, an OIDC token from the emulator's issuer, ``attempt_deadline`` as the
HTTP timeout, and the job's ``retry_config`` when an attempt fails.

As Cloud Scheduler does, a job never has two executions outstanding: a cron time that comes while
the previous execution (with its retries) is still going starts when it ends. When the clock
passes several cron times of a job at once (a ManualClock jump, a machine waking from sleep), the
job fires once, for the latest of them; firings missed while the emulator was not running are not
replayed. Only HTTP target jobs are supported.

Needs google-cloud-scheduler (``dj-cloud-task[scheduler]``); without it the emulator serves Cloud
Tasks alone.
"""

from __future__ import annotations

import datetime as dt
import itertools
import json
import re
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TextIO

import grpc

from . import cron
from .clock import Clock
from .dispatcher import HttpResult, HttpSender
from .log import write_line
from .oidc import TokenIssuer
from .policy import RetryPolicy
from .server import Method, _empty, generic_handler
from .state import _HTTP_TO_RPC, ApiError, invalid, paginate

if TYPE_CHECKING:
    from google.cloud import scheduler_v1

SERVICE = "google.cloud.scheduler.v1.CloudScheduler"
USER_AGENT = "Google-Cloud-Scheduler"
MAX_URL_LENGTH = 2083
DEFAULT_PAGE_SIZE = 500
#: Attempts kept in Scheduler.attempts (the most recent).
MAX_RECORDS = 10_000

_PROJECT = r"[A-Za-z0-9\-:.]+"
_LOCATION = r"[A-Za-z0-9-]+"
PARENT_RE = re.compile(rf"projects/({_PROJECT})/locations/({_LOCATION})")
JOB_NAME_RE = re.compile(rf"(projects/{_PROJECT}/locations/{_LOCATION})/jobs/([^/]*)")
NOT_FOUND = "Job not found."
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})
# Headers the emulator sets itself (as Cloud Scheduler does); a job's own values are replaced.
_RESERVED = frozenset({"host", "content-length", "user-agent"})


def _ts(seconds: float) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, tz=dt.UTC)


def rfc3339(seconds: float) -> str:
    """A time as X-CloudScheduler-ScheduleTime carries it: RFC 3339, UTC, "Z"."""
    return _ts(seconds).isoformat(timespec="auto").replace("+00:00", "Z")


@dataclass(frozen=True)
class AttemptRecord:
    """One delivery attempt of a job, as the emulator saw it."""

    when: float  # when it was sent, on the emulator's clock
    job: str  # job id
    schedule_time: float  # the firing it belongs to
    attempt: int  # 1 for a firing's first attempt
    status: int | None  # HTTP status, None without a response
    error: str | None


@dataclass(eq=False)
class _Execution:
    """One firing of a job and its retries."""

    job: _JobRecord
    schedule_time: float
    cron: bool  # False: started by RunJob, outside the cron cycle
    due: float
    attempts: int = 0
    first_attempt: float | None = None
    in_flight: bool = False
    cancelled: bool = False


@dataclass(eq=False)
class _JobRecord:
    job: scheduler_v1.Job  # as created or updated, validated, defaults filled in
    short: str
    paused: bool = False
    next_time: float | None = None
    current: _Execution | None = None  # the cron execution going on
    status: Any = None  # google.rpc.Status of the last attempt
    last_attempt_time: float | None = None
    user_update_time: float = 0.0
    retry: RetryPolicy = field(default_factory=RetryPolicy)

    @property
    def name(self) -> str:
        return str(self.job.name)

    def to_proto(self) -> scheduler_v1.Job:
        v1 = cron.scheduler_v1
        job = v1.Job(self.job)
        state = v1.Job.State
        job.state = state(state.PAUSED if self.paused else state.ENABLED)
        job.user_update_time = _ts(self.user_update_time)
        if self.next_time is not None:
            job.schedule_time = _ts(self.next_time)
        if self.last_attempt_time is not None:
            job.last_attempt_time = _ts(self.last_attempt_time)
        if self.status is not None:
            v1.Job.pb(job).status.CopyFrom(self.status)
        return job


def parse_parent(parent: str) -> None:
    if PARENT_RE.fullmatch(parent) is None:
        raise invalid(
            f"Invalid resource field value in the request: parent {parent!r} is not "
            "projects/PROJECT_ID/locations/LOCATION_ID"
        )


def parse_job_name(name: str) -> tuple[str, str]:
    """(parent, job id) of a full job name, both validated."""
    match = JOB_NAME_RE.fullmatch(name)
    if match is None:
        raise invalid(
            f"Invalid resource field value in the request: job name {name!r} is not "
            "projects/PROJECT_ID/locations/LOCATION_ID/jobs/JOB_ID"
        )
    parent, job_id = match.groups()
    if err := cron.job_id_error(job_id):
        raise invalid(f"Invalid {err}")
    return parent, job_id


def _seconds(value: dt.timedelta) -> float:
    return value.total_seconds()


def _validated(job: scheduler_v1.Job) -> tuple[scheduler_v1.Job, RetryPolicy]:
    """The job as stored (defaults filled in) and its retry policy; ApiError as Cloud Scheduler
    would refuse it."""
    v1 = cron.scheduler_v1
    if "pubsub_target" in job or "app_engine_http_target" in job:
        raise invalid(
            "This emulator runs HTTP target jobs only: set job.http_target (Pub/Sub and App "
            "Engine targets are not supported)"
        )
    if "http_target" not in job:
        raise invalid("A job needs a target: set job.http_target")
    target = job.http_target
    uri = target.uri
    if not uri.startswith(("http://", "https://")):
        raise invalid(f"http_target.uri must be an absolute http(s) URL, got {uri!r}")
    if len(uri) > MAX_URL_LENGTH:
        raise invalid(f"http_target.uri is {len(uri)} characters; the limit is 2083")
    if target.http_method == v1.HttpMethod.HTTP_METHOD_UNSPECIFIED:
        target.http_method = v1.HttpMethod(v1.HttpMethod.POST)
    method = v1.HttpMethod(target.http_method).name
    if target.body and method not in _BODY_METHODS:
        raise invalid(f"A body is only allowed with POST, PUT or PATCH, not {method}")
    if "oauth_token" in target:
        raise invalid("This emulator signs OIDC tokens only: use http_target.oidc_token")
    if "oidc_token" in target and not target.oidc_token.service_account_email:
        raise invalid("http_target.oidc_token.service_account_email is required")
    if not job.schedule:
        raise invalid("A job needs a schedule (unix-cron, e.g. '0 3 * * *')")
    if err := cron.cron_error(job.schedule):
        raise invalid(f"Schedule or time zone is invalid: {err}")
    if not job.time_zone:
        job.time_zone = "Etc/UTC"
    if err := cron.time_zone_error(job.time_zone):
        raise invalid(f"Schedule or time zone is invalid: {err}")
    if len(job.description) > cron.MAX_DESCRIPTION:
        raise invalid(f"description is {len(job.description)} characters; the limit is 500")
    if "attempt_deadline" in job:
        deadline = _seconds(job.attempt_deadline)
        if not cron.MIN_ATTEMPT_DEADLINE <= deadline <= cron.MAX_ATTEMPT_DEADLINE:
            raise invalid(
                "attempt_deadline must be between 15 seconds and 30 minutes for HTTP targets, "
                f"got {deadline:g} s"
            )
    else:
        job.attempt_deadline = dt.timedelta(seconds=cron.DEFAULT_ATTEMPT_DEADLINE)
    config = job.retry_config
    if not 0 <= config.retry_count <= cron.MAX_RETRY_COUNT:
        raise invalid(f"retry_config.retry_count must be 0 to 5, got {config.retry_count}")
    # Unset fields take Google's defaults (proto3 cannot tell 0 from unset for max_doublings).
    if "min_backoff_duration" not in config:
        config.min_backoff_duration = dt.timedelta(seconds=cron.DEFAULT_MIN_BACKOFF)
    if "max_backoff_duration" not in config:
        config.max_backoff_duration = dt.timedelta(seconds=cron.DEFAULT_MAX_BACKOFF)
    if not config.max_doublings:
        config.max_doublings = cron.DEFAULT_MAX_DOUBLINGS
    duration = _seconds(config.max_retry_duration)
    low, high = _seconds(config.min_backoff_duration), _seconds(config.max_backoff_duration)
    for label, value in (
        ("max_retry_duration", duration),
        ("min_backoff_duration", low),
        ("max_backoff_duration", high),
        ("max_doublings", config.max_doublings),
    ):
        if value < 0:
            raise invalid(f"retry_config.{label} must not be negative, got {value:g}")
    if low > high:
        raise invalid(
            f"retry_config.min_backoff_duration ({low:g} s) must not be greater than "
            f"retry_config.max_backoff_duration ({high:g} s)"
        )
    job.retry_config = config
    policy = RetryPolicy(
        # Cloud Scheduler's retry_count counts retries; the policy counts attempts.
        max_attempts=config.retry_count + 1,
        max_retry_duration=duration,
        min_backoff=low,
        max_backoff=high,
        max_doublings=config.max_doublings,
    )
    return job, policy


#: Fields UpdateJob may change (update_mask paths, or their first segment).
_UPDATABLE = frozenset(
    {
        "description",
        "http_target",
        "schedule",
        "time_zone",
        "retry_config",
        "attempt_deadline",
    }
)


class Scheduler:
    """The jobs, and the thread that fires them on the clock. Every method is thread-safe."""

    def __init__(
        self,
        clock: Clock,
        issuer: TokenIssuer,
        log: TextIO | None = None,
    ) -> None:
        self.clock = clock
        self.issuer = issuer
        self._log = log
        self.cond = threading.Condition(threading.RLock())
        self.jobs: dict[str, _JobRecord] = {}
        self._executions: list[_Execution] = []
        self._in_flight = 0
        self._scanned_at = float("-inf")  # clock time of the firing thread's last pass
        self._stopping = False
        self._sender = HttpSender()
        self._workers: set[threading.Thread] = set()
        self._seq = itertools.count(1)
        self._thread = threading.Thread(
            target=self._loop, name="cloudtask-emulator-cron", daemon=True
        )
        #: Delivery attempts so far, oldest first (the most recent MAX_RECORDS).
        self.attempts: list[AttemptRecord] = []
        #: Called (under self.cond) after every change to the jobs: a state file's hook.
        self.on_change: Callable[[], None] | None = None

    # -- lifecycle ---------------------------------------------------------------------------

    def start(self) -> None:
        self.clock.subscribe(self.wake)
        self._thread.start()

    def stop(self, grace: float) -> None:
        self.clock.unsubscribe(self.wake)
        with self.cond:
            self._stopping = True
            self.cond.notify_all()
            workers = list(self._workers)
        deadline = time.monotonic() + grace
        self._thread.join(max(0.0, deadline - time.monotonic()))
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))

    def wake(self) -> None:
        with self.cond:
            self.cond.notify_all()

    def wait_idle(self, timeout: float = 10.0) -> bool:
        """Wait until every firing due by the clock's present time has been delivered (retries
        scheduled later do not count); False on timeout."""
        target = self.clock.now()
        deadline = time.monotonic() + timeout
        with self.cond:
            self.cond.notify_all()
            while self._scanned_at < target or self._in_flight:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return False
                self.cond.wait(remaining)
            return True

    # -- the API -----------------------------------------------------------------------------

    def job(self, name: str) -> _JobRecord:
        parse_job_name(name)
        record = self.jobs.get(name)
        if record is None:
            raise ApiError(grpc.StatusCode.NOT_FOUND, NOT_FOUND)
        return record

    def create_job(self, parent: str, job: scheduler_v1.Job) -> scheduler_v1.Job:
        parse_parent(parent)
        job = cron.scheduler_v1.Job(job)
        if not job.name:
            job.name = f"{parent}/jobs/{secrets.token_hex(10)}"
        job_parent, short = parse_job_name(job.name)
        if job_parent != parent:
            raise invalid(f"Job name {job.name!r} is not in {parent!r}")
        for output in ("state", "status", "schedule_time", "last_attempt_time"):
            if output in job:
                delattr(job, output)
        stored, retry = _validated(job)
        with self.cond:
            if job.name in self.jobs:
                raise ApiError(grpc.StatusCode.ALREADY_EXISTS, "Job already exists.")
            now = self.clock.now()
            record = _JobRecord(stored, short, user_update_time=now, retry=retry)
            record.next_time = self._next(record, now)
            self.jobs[job.name] = record
            self._changed()
            return record.to_proto()

    def get_job(self, name: str) -> scheduler_v1.Job:
        with self.cond:
            return self.job(name).to_proto()

    def list_jobs(
        self, parent: str, page_size: int, page_token: str
    ) -> scheduler_v1.ListJobsResponse:
        parse_parent(parent)
        with self.cond:
            names = sorted(n for n in self.jobs if n.startswith(parent + "/jobs/"))
            start, end, token = paginate(len(names), page_size, page_token, DEFAULT_PAGE_SIZE)
            return cron.scheduler_v1.ListJobsResponse(
                jobs=[self.jobs[n].to_proto() for n in names[start:end]], next_page_token=token
            )

    def update_job(self, job: scheduler_v1.Job, paths: list[str]) -> scheduler_v1.Job:
        parse_job_name(job.name)
        with self.cond:
            record = self.job(job.name)
            merged = cron.scheduler_v1.Job(record.job)
            for path in paths or sorted(_UPDATABLE):
                top, _, sub = path.partition(".")
                if top not in _UPDATABLE:
                    raise invalid(f"update_mask path {path!r} cannot be updated")
                if sub:
                    setattr(getattr(merged, top), sub, getattr(getattr(job, top), sub))
                elif top in job:
                    setattr(merged, top, getattr(job, top))
                elif paths:
                    delattr(merged, top)  # named in the mask, absent: back to the default
            stored, retry = _validated(merged)
            timing = (stored.schedule, stored.time_zone) != (
                record.job.schedule,
                record.job.time_zone,
            )
            record.job, record.retry = stored, retry
            now = self.clock.now()
            record.user_update_time = now
            if timing and not record.paused:
                record.next_time = self._next(record, now)
            self._changed()
            return record.to_proto()

    def delete_job(self, name: str) -> None:
        with self.cond:
            record = self.job(name)
            del self.jobs[name]
            self._cancel(record)
            self._changed()

    def pause_job(self, name: str) -> scheduler_v1.Job:
        with self.cond:
            record = self.job(name)
            if record.paused:
                raise ApiError(
                    grpc.StatusCode.FAILED_PRECONDITION, "Job is already paused: resume it first."
                )
            record.paused = True
            record.next_time = None
            self._cancel(record)
            self._changed()
            return record.to_proto()

    def resume_job(self, name: str) -> scheduler_v1.Job:
        with self.cond:
            record = self.job(name)
            if not record.paused:
                raise ApiError(
                    grpc.StatusCode.FAILED_PRECONDITION,
                    "Job is not paused: only a paused job can be resumed.",
                )
            record.paused = False
            # Firings missed while paused are not replayed: the next one is after now.
            record.next_time = self._next(record, self.clock.now())
            self._changed()
            return record.to_proto()

    def run_job(self, name: str) -> scheduler_v1.Job:
        """Fire the job now, whatever its schedule or state (``gcloud scheduler jobs run``)."""
        with self.cond:
            record = self.job(name)
            now = self.clock.now()
            execution = _Execution(record, schedule_time=now, cron=False, due=now)
            self._executions.append(execution)
            self._start_attempt(execution, now)
            return record.to_proto()

    # -- persistence -------------------------------------------------------------------------

    def snapshot(self) -> list[dict[str, Any]]:
        """The jobs as JSON-able dicts (what a state file keeps): each job as GetJob would
        return it, minus its last result, plus whether it is paused."""
        with self.cond:
            return [
                {
                    "job": json.loads(cron.scheduler_v1.Job.to_json(record.job, indent=None)),
                    "paused": record.paused,
                    "user_update_time": record.user_update_time,
                }
                for record in self.jobs.values()
            ]

    def restore(self, saved: list[dict[str, Any]]) -> None:
        """Add the jobs of a snapshot (see :meth:`restore_job`)."""
        for item in saved:
            self.restore_job(item)

    def restore_job(self, item: dict[str, Any]) -> None:
        """Add one job of a snapshot (an exception, ApiError included, if it is not one). Its
        next firing is after now: firings missed while the emulator was not running are not
        replayed, as Cloud Scheduler does not."""
        job, retry = _validated(cron.scheduler_v1.Job.from_json(json.dumps(item["job"])))
        _, short = parse_job_name(job.name)
        record = _JobRecord(
            job,
            short,
            paused=bool(item["paused"]),
            user_update_time=float(item["user_update_time"]),
            retry=retry,
        )
        with self.cond:
            record.next_time = None if record.paused else self._next(record, self.clock.now())
            self.jobs[job.name] = record
            self.cond.notify_all()

    def _changed(self) -> None:
        self.cond.notify_all()
        if self.on_change is not None:
            self.on_change()

    # -- firing (under self.cond) ------------------------------------------------------------

    def _next(self, record: _JobRecord, after: float) -> float:
        job = record.job
        return cron.next_fire(job.schedule, job.time_zone, _ts(after)).timestamp()

    def _latest_due(self, record: _JobRecord, first: float, now: float) -> tuple[float, float]:
        """(the latest cron time at or before now, from ``first`` on; the one after it).

        Found directly, however many cron times the clock passed over (a laptop asleep for a
        week, a ManualClock jump): this runs under self.cond, which every RPC waits on."""
        job = record.job
        fire = max(first, cron.latest_fire(job.schedule, job.time_zone, _ts(now)).timestamp())
        return fire, self._next(record, fire)

    def _cancel(self, record: _JobRecord) -> None:
        """Drop the job's pending retries; an attempt in flight finishes unrecorded."""
        for execution in self._executions:
            if execution.job is record:
                execution.cancelled = True
        self._executions = [e for e in self._executions if not e.cancelled or e.in_flight]
        record.current = None

    def _loop(self) -> None:
        with self.cond:
            while not self._stopping:
                try:
                    timeout = self._fire_due()
                except Exception as exc:  # keep firing whatever one bad job did
                    self._write(f"[cloudtask emulator] cron error: {exc.__class__.__name__}: {exc}")
                    timeout = 0.1
                self.cond.notify_all()
                self.cond.wait(timeout)

    def _fire_due(self) -> float | None:
        now = self.clock.now()
        wake = float("inf")
        for execution in self._executions:
            if execution.in_flight or execution.cancelled:
                continue
            if execution.due <= now:
                self._start_attempt(execution, now)
            else:
                wake = min(wake, execution.due)
        for record in self.jobs.values():
            if record.paused or record.next_time is None or record.current is not None:
                continue
            if record.next_time > now:
                wake = min(wake, record.next_time)
                continue
            fire, record.next_time = self._latest_due(record, record.next_time, now)
            execution = _Execution(record, schedule_time=fire, cron=True, due=now)
            record.current = execution
            self._executions.append(execution)
            self._start_attempt(execution, now)
            wake = min(wake, record.next_time)
        self._scanned_at = now
        return None if wake == float("inf") else self.clock.wait_timeout(wake - now)

    def _start_attempt(self, execution: _Execution, now: float) -> None:
        record = execution.job
        job = record.job
        target = job.http_target
        execution.in_flight = True
        execution.attempts += 1
        if execution.first_attempt is None:
            execution.first_attempt = now
        record.last_attempt_time = now
        self._in_flight += 1
        headers = {k: v for k, v in target.headers.items() if k.lower() not in _RESERVED}
        headers["User-Agent"] = USER_AGENT
        headers["X-CloudScheduler"] = "true"
        headers["X-CloudScheduler-JobName"] = record.short
        headers["X-CloudScheduler-ScheduleTime"] = rfc3339(execution.schedule_time)
        oidc = None
        if "oidc_token" in target:
            token = target.oidc_token
            oidc = (token.service_account_email, token.audience or target.uri)
        request = (
            cron.scheduler_v1.HttpMethod(target.http_method).name,
            target.uri,
            headers,
            bytes(target.body) or None,
            _seconds(job.attempt_deadline),
        )
        worker = threading.Thread(
            target=self._deliver,
            args=(execution, now, request, oidc),
            name=f"cloudtask-emulator-cron-{next(self._seq)}",
            daemon=True,
        )
        self._workers.add(worker)
        worker.start()

    # -- delivery (worker threads) -----------------------------------------------------------

    def _deliver(
        self,
        execution: _Execution,
        sent: float,
        request: tuple[str, str, dict[str, str], bytes | None, float],
        oidc: tuple[str, str] | None,
    ) -> None:
        method, uri, headers, body, deadline = request
        try:
            if oidc is not None:
                # Real time, not the emulator's clock: verifiers check iat/exp against real time.
                token = self.issuer.token(oidc[0], oidc[1], time.time())
                headers["Authorization"] = f"Bearer {token}"
            result = self._sender.send(method, uri, headers, body, deadline)
        except Exception as exc:  # never lose the in-flight bookkeeping
            result = HttpResult(None, None, f"INTERNAL: {exc.__class__.__name__}: {exc}")
        finally:
            self._sender.close_thread_connections()
        with self.cond:
            self._workers.discard(threading.current_thread())
            outcome = self._finish(execution, result)
            record = AttemptRecord(
                when=sent,
                job=execution.job.short,
                schedule_time=execution.schedule_time,
                attempt=execution.attempts,
                status=result.status,
                error=result.error,
            )
            self.attempts.append(record)
            if len(self.attempts) > MAX_RECORDS:
                del self.attempts[: MAX_RECORDS // 10]
            self.cond.notify_all()
        status = record.status if record.status is not None else "-"
        line = (
            f"[cloudtask emulator] {_ts(sent):%H:%M:%S} job={record.job} "
            f"schedule_time={rfc3339(record.schedule_time)} attempt={record.attempt} "
            f"status={status} {outcome}"
        )
        self._write(line + (f" ({record.error})" if record.error else ""))

    def _finish(self, execution: _Execution, result: HttpResult) -> str:
        """Record an attempt's outcome (under self.cond); returns a note for the log."""
        now = self.clock.now()
        execution.in_flight = False
        self._in_flight -= 1
        record = execution.job
        status = result.status
        ok = status is not None and 200 <= status < 300
        if not execution.cancelled:
            record.status = _rpc_status(status, result.error)
        if execution.cancelled:
            outcome = "job deleted or paused"
        elif ok:
            outcome = "done"
        elif record.retry.exhausted(execution.attempts, now - (execution.first_attempt or now)):
            outcome = f"failed after {execution.attempts} attempts"
        else:
            delay = record.retry.backoff(execution.attempts)
            execution.due = now + delay
            return f"retry in {delay:g} s"
        self._executions.remove(execution)
        if record.current is execution:
            record.current = None
        return outcome

    def _write(self, line: str) -> None:
        write_line(self._log, line)


def _rpc_status(http_status: int | None, error: str | None) -> Any:
    """The google.rpc.Status of an attempt, as Job.status reports it."""
    pb = cron.scheduler_v1.Job.pb(cron.scheduler_v1.Job()).status
    if http_status is not None and 200 <= http_status < 300:
        return pb  # OK: code 0
    if http_status is not None:
        code = _HTTP_TO_RPC.get(http_status) or (
            grpc.StatusCode.INTERNAL if http_status >= 500 else grpc.StatusCode.FAILED_PRECONDITION
        )
        pb.code = code.value[0]
        pb.message = f"HTTP status code {http_status}"
    else:
        pb.code = grpc.StatusCode.UNAVAILABLE.value[0]
        pb.message = error or "no response"
    return pb


class CloudSchedulerService:
    """The gRPC face of a :class:`Scheduler`."""

    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler

    def handler(self) -> grpc.GenericRpcHandler:
        v1 = cron.scheduler_v1
        s = self.scheduler
        methods: dict[str, Method] = {
            "CreateJob": (
                lambda r: s.create_job(r.parent, r.job),
                v1.CreateJobRequest,
                v1.Job.serialize,
            ),
            "GetJob": (lambda r: s.get_job(r.name), v1.GetJobRequest, v1.Job.serialize),
            "ListJobs": (
                lambda r: s.list_jobs(r.parent, r.page_size, r.page_token),
                v1.ListJobsRequest,
                v1.ListJobsResponse.serialize,
            ),
            "UpdateJob": (
                lambda r: s.update_job(
                    r.job, list(r.update_mask.paths) if "update_mask" in r else []
                ),
                v1.UpdateJobRequest,
                v1.Job.serialize,
            ),
            "DeleteJob": (lambda r: s.delete_job(r.name), v1.DeleteJobRequest, _empty),
            "PauseJob": (lambda r: s.pause_job(r.name), v1.PauseJobRequest, v1.Job.serialize),
            "ResumeJob": (lambda r: s.resume_job(r.name), v1.ResumeJobRequest, v1.Job.serialize),
            "RunJob": (lambda r: s.run_job(r.name), v1.RunJobRequest, v1.Job.serialize),
        }
        return generic_handler(SERVICE, methods)
