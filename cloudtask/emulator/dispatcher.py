"""Delivery of due tasks over HTTP: scheduling, rate limits, concurrency, deadlines, retries.

One scheduler thread picks due tasks from every running queue (honouring the token bucket and
max_concurrent_dispatches) and hands them to a pool of worker threads. Each worker keeps one
keep-alive HTTP connection per target host, so a queue's tasks go out concurrently and one slow
handler holds up only its own worker.
"""

from __future__ import annotations

import datetime as dt
import email.utils
import heapq
import http.client
import queue as queue_module
import threading
import time
from dataclasses import dataclass
from typing import TextIO
from urllib.parse import urlsplit

from .log import write_line
from .oidc import TokenIssuer
from .state import AttemptRecord, Store, TaskRecord

# Worker threads are started on demand up to this many; it bounds concurrent deliveries across
# all queues (each queue is further bounded by its own max_concurrent_dispatches).
MAX_WORKERS = 64
USER_AGENT = "Google-Cloud-Tasks"
# Emulator.dispatches keeps at most this many records (the most recent).
MAX_RECORDS = 100_000
# With hold_unreachable, a site that refuses connections is tried again after this many clock
# seconds, twice as long after each refused try up to HOLD_RETRY_MAX (a site stopped for the
# night is not knocked on every second), and at once again when it answers.
HOLD_RETRY_INITIAL = 1.0
HOLD_RETRY_MAX = 30.0
_RECONNECT_ERRORS = (http.client.RemoteDisconnected, BrokenPipeError, ConnectionResetError)


@dataclass(frozen=True)
class DispatchRecord:
    """One delivery attempt, as seen by the emulator."""

    when: float  # dispatch time, seconds since the epoch on the emulator's clock
    queue: str  # queue id
    task: str  # task id
    attempt: int  # 1 for the first attempt
    status: int | None  # HTTP status, None when no response (refused, timed out)
    latency: float  # seconds from sending the request to the end of the response
    error: str | None  # why there was no response


@dataclass
class HttpResult:
    status: int | None
    retry_after: float | None
    error: str | None
    # No connection at all: nothing listens at the target (the site is down or restarting).
    refused: bool = False


@dataclass
class _HeldSite:
    """A target URL that refused connections, and when its held tasks try it again."""

    delay: float
    retry_at: float


@dataclass
class _Job:
    task: TaskRecord
    attempt: AttemptRecord
    number: int
    headers: dict[str, str]
    # The task's attempt records before this attempt, put back if it is held (not counted).
    previous_first: AttemptRecord | None
    previous_last: AttemptRecord | None


class HttpSender:
    """Sends one request per call on a per-thread keep-alive connection to the target host."""

    def __init__(self) -> None:
        self._local = threading.local()

    def _connections(self) -> dict[tuple[str, str], http.client.HTTPConnection]:
        conns: dict[tuple[str, str], http.client.HTTPConnection] | None = getattr(
            self._local, "conns", None
        )
        if conns is None:
            conns = {}
            self._local.conns = conns
        return conns

    def close_thread_connections(self) -> None:
        for conn in self._connections().values():
            conn.close()
        self._connections().clear()

    def send(
        self, method: str, url: str, headers: dict[str, str], body: bytes | None, timeout: float
    ) -> HttpResult:
        parts = urlsplit(url)
        key = (parts.scheme, parts.netloc)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        conns = self._connections()
        deadline = time.monotonic() + timeout
        for _ in range(2):
            conn = conns.get(key)
            reused = conn is not None
            if conn is None:
                cls = (
                    http.client.HTTPSConnection
                    if parts.scheme == "https"
                    else http.client.HTTPConnection
                )
                conn = cls(parts.netloc, timeout=timeout)
                conns[key] = conn
            else:
                conn.timeout = timeout
                if conn.sock is not None:
                    conn.sock.settimeout(timeout)
            try:
                conn.request(method, path, body=body, headers=headers)
                # The deadline bounds the whole attempt, not each socket operation.
                _remaining(conn, deadline)
                response = conn.getresponse()
                _remaining(conn, deadline)
                response.read()
            except _RECONNECT_ERRORS as exc:
                conn.close()
                del conns[key]
                if reused:
                    continue  # the server closed an idle keep-alive connection: reconnect once
                return HttpResult(None, None, f"UNAVAILABLE: {exc.__class__.__name__}: {exc}")
            except TimeoutError:
                conn.close()
                del conns[key]
                return HttpResult(
                    None, None, f"DEADLINE_EXCEEDED: no response within {timeout:g} s"
                )
            except ConnectionRefusedError:
                conn.close()
                del conns[key]
                return HttpResult(
                    None, None, f"UNAVAILABLE: connection refused by {url}", refused=True
                )
            except (OSError, http.client.HTTPException) as exc:
                conn.close()
                del conns[key]
                return HttpResult(None, None, f"UNAVAILABLE: {exc.__class__.__name__}: {exc}")
            if response.will_close:
                conn.close()
                del conns[key]
            return HttpResult(
                response.status, _retry_after(response.getheader("Retry-After")), None
            )
        raise AssertionError("unreachable")  # pragma: no cover


def _remaining(conn: http.client.HTTPConnection, deadline: float) -> None:
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("dispatch deadline exceeded")
    if conn.sock is not None:
        conn.sock.settimeout(left)


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=dt.UTC)
    return max(0.0, when.timestamp() - time.time())


class Dispatcher:
    def __init__(
        self,
        store: Store,
        issuer: TokenIssuer,
        log: TextIO | None,
        records: list[DispatchRecord],
        *,
        hold_unreachable: bool = False,
    ) -> None:
        self.store = store
        self.issuer = issuer
        self.log = log
        self.records = records
        self.hold_unreachable = hold_unreachable
        self._held: dict[str, _HeldSite] = {}  # targets refusing connections (store.cond)
        self._sender = HttpSender()
        self._jobs: queue_module.SimpleQueue[_Job | None] = queue_module.SimpleQueue()
        self._workers: list[threading.Thread] = []
        self._idle_workers = 0
        self._stopping = False
        self._scheduler = threading.Thread(
            target=self._schedule_loop, name="cloudtask-emulator-scheduler", daemon=True
        )

    def start(self) -> None:
        self.store.clock.subscribe(self.wake)
        self._scheduler.start()

    def stop(self, grace: float) -> None:
        self.store.clock.unsubscribe(self.wake)
        with self.store.cond:
            self._stopping = True
            self.store.cond.notify_all()
            workers = list(self._workers)
        for _ in workers:
            self._jobs.put(None)
        deadline = time.monotonic() + grace
        self._scheduler.join(max(0.0, deadline - time.monotonic()))
        for worker in workers:
            worker.join(max(0.0, deadline - time.monotonic()))

    def wake(self) -> None:
        with self.store.cond:
            self.store.cond.notify_all()

    # -- scheduling (under store.cond) ----------------------------------------------------------

    def _schedule_loop(self) -> None:
        store = self.store
        with store.cond:
            while not self._stopping:
                try:
                    timeout = self._dispatch_due()
                except Exception as exc:  # keep dispatching whatever one bad task did
                    self._write(
                        f"[cloudtask emulator] scheduler error: {exc.__class__.__name__}: {exc}"
                    )
                    timeout = 0.1
                store.cond.wait(timeout)

    def _dispatch_due(self) -> float | None:
        """Start every attempt that may start now; returns how long to sleep (None: until woken)."""
        store = self.store
        clock = store.clock
        now = clock.now()
        next_wake = float("inf")
        for q in list(store.queues.values()):
            if q.paused:
                continue
            heap = q.heap
            while heap:
                when, seq, task = heap[0]
                if task.removed or task.in_flight or task.seq != seq:
                    heapq.heappop(heap)  # stale entry: deleted, running, or rescheduled
                    continue
                if when > now:
                    next_wake = min(next_wake, when)
                    break
                if q.in_flight >= q.max_concurrent or store.in_flight >= MAX_WORKERS:
                    break  # a finishing attempt wakes us
                if not q.bucket.take(now):
                    next_wake = min(next_wake, q.bucket.next_token_at(now))
                    break
                heapq.heappop(heap)
                self.start_attempt(task, now)
        return None if next_wake == float("inf") else clock.wait_timeout(next_wake - now)

    def start_attempt(self, task: TaskRecord, now: float) -> None:
        """Send ``task`` now (called under store.cond; RunTask calls it directly)."""
        store = self.store
        q = task.queue
        task.in_flight = True
        q.in_flight += 1
        store.in_flight += 1
        attempt = AttemptRecord(schedule_time=task.schedule_time, dispatch_time=now)
        previous_first, previous_last = task.first_attempt, task.last_attempt
        if task.first_attempt is None:
            task.first_attempt = AttemptRecord(task.schedule_time, now)
            task.first_attempt_time = now
        task.last_attempt = attempt
        headers = dict(task.headers)
        headers["User-Agent"] = USER_AGENT
        headers["X-CloudTasks-QueueName"] = q.short
        headers["X-CloudTasks-TaskName"] = task.short
        headers["X-CloudTasks-TaskRetryCount"] = str(task.dispatch_count)
        headers["X-CloudTasks-TaskExecutionCount"] = str(task.execution_count)
        headers["X-CloudTasks-TaskETA"] = f"{task.schedule_time:.6f}"
        if task.dispatch_count:
            if task.previous_response is not None:
                headers["X-CloudTasks-TaskPreviousResponse"] = str(task.previous_response)
            if task.retry_reason is not None:
                headers["X-CloudTasks-TaskRetryReason"] = task.retry_reason
        task.dispatch_count += 1
        job = _Job(task, attempt, task.dispatch_count, headers, previous_first, previous_last)
        if self._idle_workers == 0 and len(self._workers) < MAX_WORKERS:
            worker = threading.Thread(
                target=self._work,
                name=f"cloudtask-emulator-worker-{len(self._workers)}",
                daemon=True,
            )
            self._workers.append(worker)
            self._idle_workers += 1
            worker.start()
        self._idle_workers -= 1
        self._jobs.put(job)

    # -- delivery (worker threads) ---------------------------------------------------------------

    def _work(self) -> None:
        try:
            while True:
                job = self._jobs.get()
                if job is None:
                    return
                try:
                    self._deliver(job)
                finally:
                    with self.store.cond:
                        self._idle_workers += 1
        finally:
            self._sender.close_thread_connections()

    def _deliver(self, job: _Job) -> None:
        task = job.task
        headers = job.headers
        if task.oidc_email is not None and task.oidc_audience is not None:
            # Real time, not the emulator's clock: verifiers check iat/exp against real time.
            token = self.issuer.token(task.oidc_email, task.oidc_audience, time.time())
            headers["Authorization"] = f"Bearer {token}"
        started = time.perf_counter()
        try:
            result = self._sender.send(
                task.method, task.url, headers, task.body or None, task.dispatch_deadline
            )
        except Exception as exc:  # never lose the in-flight bookkeeping
            result = HttpResult(None, None, f"INTERNAL: {exc.__class__.__name__}: {exc}")
        latency = time.perf_counter() - started
        holding: str | None = None
        answered_again = False
        record: DispatchRecord | None = None
        with self.store.cond:
            if result.refused and self.hold_unreachable and not task.removed:
                holding = self._hold(job)
            else:
                task.held_by = None
                if not result.refused and task.url in self._held:
                    self._release(task.url)
                    answered_again = True
                outcome = self._finish(task, job.attempt, result)
                record = DispatchRecord(
                    when=job.attempt.dispatch_time,
                    queue=task.queue.short,
                    task=task.short,
                    attempt=job.number,
                    status=result.status,
                    latency=latency,
                    error=result.error,
                )
                self.records.append(record)
                if len(self.records) > MAX_RECORDS:
                    del self.records[: MAX_RECORDS // 10]  # a long-running emulator stays bounded
            self.store.cond.notify_all()
        if holding is not None:
            self._write(f"[cloudtask emulator] {holding}")
        if answered_again:
            self._write(f"[cloudtask emulator] site at {task.url} answers again")
        if record is not None:
            self._log(record, outcome)

    def _hold(self, job: _Job) -> str | None:
        """Undo a refused attempt and try the site again later (under store.cond).

        Returns a line for the log when the site just went down, or its next try is later.
        """
        store = self.store
        task = job.task
        task.in_flight = False
        task.queue.in_flight -= 1
        store.in_flight -= 1
        # Not an attempt: the counts, attempt records and retry state stay as they were.
        task.dispatch_count -= 1
        task.first_attempt, task.last_attempt = job.previous_first, job.previous_last
        if task.first_attempt is None:
            task.first_attempt_time = None
        now = store.clock.now()
        site = self._held.get(task.url)
        went_down = site is None
        line = None
        if site is None:
            site = self._held[task.url] = _HeldSite(HOLD_RETRY_INITIAL, now + HOLD_RETRY_INITIAL)
        elif job.attempt.dispatch_time >= site.retry_at:
            # A retry of the site, not a task sent to it meanwhile: back off (once per round,
            # however many of its tasks were tried together).
            previous, site.delay = site.delay, min(site.delay * 2, HOLD_RETRY_MAX)
            site.retry_at = now + site.delay
            if site.delay != previous:  # said until the longest wait: then it stays quiet
                then = f" (and then every {site.delay:g} s)" if site.delay == HOLD_RETRY_MAX else ""
                line = (
                    f"site at {task.url} still not answering: "
                    f"trying it again in {site.delay:g} s{then}"
                )
        task.held_by = task.url
        # The schedule time stays (X-CloudTasks-TaskETA, the state file); only the heap moves.
        store.push(task, at=site.retry_at)
        if went_down:
            held = sum(1 for t in store.all_tasks() if t.url == task.url)
            line = (
                f"site at {task.url} not answering (connection refused): "
                f"holding {held} task(s) until it is up"
            )
        return line

    def _release(self, url: str) -> None:
        """``url`` answers again: its held tasks go now, not at their backed-off retry."""
        del self._held[url]
        store = self.store
        now = store.clock.now()
        for task in list(store.all_tasks()):
            if task.held_by == url and not task.in_flight:
                task.held_by = None
                store.push(task, at=max(now, task.schedule_time))

    def _finish(self, task: TaskRecord, attempt: AttemptRecord, result: HttpResult) -> str:
        """Record the attempt's outcome (under store.cond); returns a note for the log."""
        store = self.store
        now = store.clock.now()
        task.in_flight = False
        task.queue.in_flight -= 1
        store.in_flight -= 1
        attempt.response_time = now
        status = result.status
        if status is not None:
            task.response_count += 1
            attempt.http_status = status
            if status < 500:
                task.execution_count += 1
        else:
            attempt.error = result.error
        if task.removed:
            return "task deleted"
        if status is not None and 200 <= status < 300:
            store.remove(task)
            return "done"
        task.previous_response = status
        task.retry_reason = f"HTTP {status}" if status is not None else result.error
        since_first = now - (task.first_attempt_time or now)
        retry = task.queue.retry
        if retry.exhausted(task.dispatch_count, since_first):
            store.remove(task)
            return f"gave up after {task.dispatch_count} attempts"
        delay = retry.backoff(task.dispatch_count)
        if status in (429, 503) and result.retry_after is not None:
            delay = max(delay, result.retry_after)
        task.schedule_time = now + delay
        store.push(task)
        return f"retry in {delay:g} s"

    def _log(self, record: DispatchRecord, outcome: str) -> None:
        if self.log is None:
            return
        when = dt.datetime.fromtimestamp(record.when, tz=dt.UTC).strftime("%H:%M:%S.%f")[:-3]
        status = record.status if record.status is not None else "-"
        line = (
            f"[cloudtask emulator] {when} queue={record.queue} task={record.task} "
            f"attempt={record.attempt} status={status} latency={record.latency * 1000:.1f}ms "
            f"{outcome}"
        )
        if record.error:
            line += f" ({record.error})"
        self._write(line)

    def _write(self, line: str) -> None:
        write_line(self.log, line)
