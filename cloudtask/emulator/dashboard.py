"""A small web dashboard for a running emulator, served on loopback only.

It shows the queues (state, tasks held, in flight, rate limits, retry config, observed dispatch
rate), the tasks (target, schedule time, attempts, last status) and the recent dispatch log
(status or error, latency, next retry). Its pause, resume, purge and run-now buttons call the
emulator's own gRPC API through the real client, so they behave exactly as gcloud would.

Security: the page is for the developer's own browser, and any web page that browser opens
could try to reach it.

* It listens on a loopback address only, whatever address the gRPC server binds.
* Every request must carry a loopback ``Host`` header: a DNS-rebinding page (``evil.example``
  resolving to 127.0.0.1) sends its own host name, so it can read nothing, not even the token.
* State-changing requests are POST only and need the per-dashboard random token, which only the
  page itself (same origin) can read, in the ``X-Dashboard-Token`` header. A cross-site form
  cannot set a header, and a cross-site ``fetch`` with one needs a CORS pre-flight the dashboard
  never grants.
* Everything the page shows is escaped (task URLs are user data), and a Content-Security-Policy
  allows only the page's own inline script and style.
"""

from __future__ import annotations

import datetime as dt
import heapq
import hmac
import html
import ipaddress
import json
import secrets
import socket
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.api_core.exceptions import GoogleAPICallError
from google.cloud.tasks_v2 import CloudTasksClient

from .dispatcher import DispatchRecord
from .state import QueueRecord, Store, TaskRecord

#: Rows of the task table (the tasks due first); the page says how many more there are.
MAX_TASKS = 200
#: Rows of the dispatch log (the most recent attempts).
MAX_DISPATCHES = 100
#: The observed dispatch rate is averaged over this many seconds of the emulator's clock...
RATE_WINDOW = 10.0
#: ...read from at most this many recent attempts (500/s, a queue's highest rate, for 10 s).
RATE_RECORDS = 5000
CSRF_HEADER = "X-Dashboard-Token"
#: Timeout of the gRPC calls the buttons make, seconds.
RPC_TIMEOUT = 10.0
#: Largest request body a button sends (a JSON object with one resource name).
MAX_BODY = 4096


def loopback_host(host: str) -> str:
    """The address to bind for ``host``, which must be a loopback address or ``localhost``."""
    bare = host.strip("[]")
    if bare == "localhost":
        return "127.0.0.1"
    try:
        loopback = ipaddress.ip_address(bare).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        raise ValueError(
            f"The emulator dashboard listens on a loopback address only (127.0.0.1 or ::1), "
            f"not {host!r}: it can pause, purge and run tasks, so it is never exposed to a "
            "network; pass dashboard=False to run without it"
        )
    return bare


def _is_loopback_authority(authority: str | None) -> bool:
    """True for a ``Host``/``Origin`` authority naming a loopback address (any port)."""
    if not authority:
        return False
    if authority.startswith("["):
        host = authority[1 : authority.find("]")] if "]" in authority else ""
    else:
        host = authority.rsplit(":", 1)[0] if authority.count(":") == 1 else authority
    try:
        loopback_host(host)
    except ValueError:
        return False
    return True


# -- the state shown -------------------------------------------------------------------------


@dataclass(frozen=True)
class QueueRow:
    name: str
    queue_id: str
    state: str  # "running" or "paused"
    tasks: int
    in_flight: int
    dispatch_rate: float  # attempts per second over the last RATE_WINDOW seconds
    max_dispatches_per_second: float
    max_burst_size: int
    max_concurrent_dispatches: int
    max_attempts: int
    max_retry_duration: float
    min_backoff: float
    max_backoff: float
    max_doublings: int


@dataclass(frozen=True)
class TaskRow:
    name: str
    task_id: str
    queue_id: str
    method: str
    url: str
    schedule_time: float
    dispatch_count: int
    response_count: int
    in_flight: bool
    last_status: int | None  # HTTP status of the last attempt
    last_error: str | None  # why the last attempt got no response
    held_by: str | None  # the URL refusing connections it waits for (hold_unreachable)


@dataclass(frozen=True)
class DispatchRow:
    when: float
    queue_id: str
    task_id: str
    attempt: int
    status: int | None
    error: str | None
    latency: float
    # When the next attempt went out or is due; None when there is none (done, gave up, deleted).
    next_attempt: float | None
    next_note: str  # what next_attempt means, or why there is none


@dataclass(frozen=True)
class Snapshot:
    now: float
    queues: list[QueueRow]
    tasks: list[TaskRow]
    tasks_total: int
    dispatches: list[DispatchRow]  # newest first


def _task_row(task: TaskRecord) -> TaskRow:
    last = task.last_attempt
    return TaskRow(
        name=task.name,
        task_id=task.short,
        queue_id=task.queue.short,
        method=task.method,
        url=task.url,
        schedule_time=task.schedule_time,
        dispatch_count=task.dispatch_count,
        response_count=task.response_count,
        in_flight=task.in_flight,
        last_status=last.http_status if last is not None else None,
        last_error=last.error if last is not None else None,
        held_by=task.held_by,
    )


def _queue_row(queue: QueueRecord, dispatch_rate: float) -> QueueRow:
    retry = queue.retry
    return QueueRow(
        name=queue.name,
        queue_id=queue.short,
        state="paused" if queue.paused else "running",
        tasks=len(queue.tasks),
        in_flight=queue.in_flight,
        dispatch_rate=dispatch_rate,
        max_dispatches_per_second=queue.rate,
        max_burst_size=queue.burst,
        max_concurrent_dispatches=queue.max_concurrent,
        max_attempts=retry.max_attempts,
        max_retry_duration=retry.max_retry_duration,
        min_backoff=retry.min_backoff,
        max_backoff=retry.max_backoff,
        max_doublings=retry.max_doublings,
    )


def _next_attempt(
    record: DispatchRecord,
    later: Mapping[tuple[str, str, int], float],
    held: Sequence[TaskRecord],
) -> tuple[float | None, str]:
    """When the attempt after ``record`` went out or is due (called under store.cond)."""
    if record.status is not None and 200 <= record.status < 300:
        return None, "done"
    sent = later.get((record.queue, record.task, record.attempt + 1))
    if sent is not None:
        return sent, "sent"
    for task in held:
        if task.dispatch_count == record.attempt and not task.in_flight:
            return task.schedule_time, "due"
        if task.dispatch_count > record.attempt and task.last_attempt is not None:
            return task.last_attempt.dispatch_time, "sent"
    return None, "none"  # retries exhausted, or the task was deleted or purged


def snapshot(store: Store, records: list[DispatchRecord]) -> Snapshot:
    """What the page shows, read in two short holds of ``store.cond``.

    The dispatcher and every RPC wait on that lock, so the first hold only copies references
    (C-speed list copies, even for 100,000 tasks); the tasks to show are chosen outside it, and
    the second hold reads the fields of those few tasks, consistently with the queues.
    """
    with store.cond:
        queues = list(store.queues.values())
        held = [list(q.tasks.values()) for q in queues]
        recent = records[-RATE_RECORDS:]
    every = [task for tasks in held for task in tasks]
    # Racy reads of schedule_time only pick the rows; the rows themselves are read under the lock.
    shown = heapq.nsmallest(MAX_TASKS, every, key=lambda t: t.schedule_time)
    log = recent[-MAX_DISPATCHES:]
    # The attempt after a logged one, if it finished too: (queue, task, attempt) -> sent at.
    later = {(r.queue, r.task, r.attempt): r.when for r in recent}
    now = store.clock.now()
    counts: dict[str, int] = {}
    for record in recent:
        if record.when >= now - RATE_WINDOW:
            counts[record.queue] = counts.get(record.queue, 0) + 1
    with store.cond:
        queue_rows = [
            _queue_row(q, counts.get(q.short, 0) / RATE_WINDOW)
            for q in sorted(queues, key=lambda q: q.name)
            if store.queues.get(q.name) is q  # not deleted in between
        ]
        task_rows = [_task_row(t) for t in shown if not t.removed]
        dispatch_rows = []
        for record in reversed(log):
            # A dispatch record names its queue by id only: look in every queue of that id.
            same = [
                task
                for q in queues
                if q.short == record.queue
                and (task := q.tasks.get(f"{q.name}/tasks/{record.task}")) is not None
            ]
            when, note = _next_attempt(record, later, same)
            dispatch_rows.append(
                DispatchRow(
                    when=record.when,
                    queue_id=record.queue,
                    task_id=record.task,
                    attempt=record.attempt,
                    status=record.status,
                    error=record.error,
                    latency=record.latency,
                    next_attempt=when,
                    next_note=note,
                )
            )
    return Snapshot(now, queue_rows, task_rows, len(every), dispatch_rows)


# -- rendering -------------------------------------------------------------------------------


def iso(seconds: float) -> str:
    """UTC ISO 8601 with milliseconds, such as ``2026-11-28T16:08:31.123Z``."""
    stamp = dt.datetime.fromtimestamp(seconds, tz=dt.UTC).isoformat(timespec="milliseconds")
    return stamp.replace("+00:00", "Z")


def relative(seconds: float, now: float) -> str:
    """``in 3 s``, ``2 min ago``, ``now``: how far ``seconds`` is from ``now``."""
    delta = seconds - now
    size = abs(delta)
    if size < 1:
        return "now"
    for limit, unit, length in ((120, "s", 1), (7200, "min", 60), (172800, "h", 3600)):
        if size < limit:
            amount = f"{int(size // length)} {unit}"
            break
    else:
        amount = f"{int(size // 86400)} d"
    return f"in {amount}" if delta > 0 else f"{amount} ago"


def _e(value: object) -> str:
    return html.escape(str(value), quote=True)


def _time(seconds: float, now: float) -> str:
    stamp = iso(seconds)
    return f'<time datetime="{stamp}">{stamp}</time> <small>{relative(seconds, now)}</small>'


def _seconds(value: float) -> str:
    return f"{value:g} s"


def render_queues(snap: Snapshot) -> str:
    if not snap.queues:
        return '<tr><td colspan="9" class="empty">No queues.</td></tr>'
    rows = []
    for q in snap.queues:
        toggle = "resume" if q.state == "paused" else "pause"
        attempts = "unlimited" if q.max_attempts == -1 else str(q.max_attempts)
        duration = "unlimited" if q.max_retry_duration <= 0 else _seconds(q.max_retry_duration)
        rows.append(
            f'<tr data-queue="{_e(q.queue_id)}" data-state="{q.state}">'
            f'<td title="{_e(q.name)}">{_e(q.queue_id)}</td>'
            f'<td class="state-{q.state}">{q.state}</td>'
            f"<td>{q.tasks}</td><td>{q.in_flight}</td>"
            f"<td>{q.dispatch_rate:g}/s</td>"
            f"<td>{q.max_dispatches_per_second:g}/s, burst {q.max_burst_size}</td>"
            f"<td>{q.max_concurrent_dispatches}</td>"
            f"<td>max attempts {attempts}, max duration {duration}, "
            f"backoff {_seconds(q.min_backoff)} to {_seconds(q.max_backoff)}, "
            f"{q.max_doublings} doublings</td>"
            f'<td class="actions"><button type="button" data-action="{toggle}" '
            f'data-name="{_e(q.name)}">'
            f"{toggle}</button> "
            f'<button type="button" data-action="purge" data-name="{_e(q.name)}" '
            f'data-confirm="Delete every task in queue {_e(q.queue_id)}?">purge</button>'
            "</td></tr>"
        )
    return "".join(rows)


def _task_status(task: TaskRow) -> str:
    if task.held_by is not None:
        # Before "in flight": trying the site again is not an attempt, and the page would
        # otherwise show "not attempted" for a task that is waiting for its site.
        return f"held: connection refused by {task.held_by}"
    if task.in_flight:
        return "in flight"
    if task.last_status is not None:
        return f"HTTP {task.last_status}"
    if task.last_error is not None:
        return task.last_error
    return "not attempted"


def render_tasks(snap: Snapshot) -> str:
    if not snap.tasks:
        return '<tr><td colspan="8" class="empty">No tasks.</td></tr>'
    rows = []
    for t in snap.tasks:
        disabled = " disabled" if t.in_flight else ""
        rows.append(
            f'<tr data-task="{_e(t.task_id)}" data-queue="{_e(t.queue_id)}">'
            f'<td title="{_e(t.name)}">{_e(t.task_id)}</td><td>{_e(t.queue_id)}</td>'
            f'<td class="url">{_e(t.method)} {_e(t.url)}</td>'
            f"<td>{_time(t.schedule_time, snap.now)}</td>"
            f"<td>{t.dispatch_count}</td><td>{t.response_count}</td>"
            f'<td class="status">{_e(_task_status(t))}</td>'
            f'<td class="actions"><button type="button" data-action="run" '
            f'data-name="{_e(t.name)}"{disabled}>'
            "run now</button></td></tr>"
        )
    if snap.tasks_total > len(snap.tasks):
        rows.append(
            f'<tr><td colspan="8" class="empty">The first {len(snap.tasks)} of '
            f"{snap.tasks_total} tasks, by schedule time.</td></tr>"
        )
    return "".join(rows)


def _dispatch_outcome(d: DispatchRow) -> str:
    if d.status is not None:
        return f"HTTP {d.status}"
    return d.error or "no response"


def render_dispatches(snap: Snapshot) -> str:
    if not snap.dispatches:
        return '<tr><td colspan="7" class="empty">No dispatches yet.</td></tr>'
    rows = []
    for d in snap.dispatches:
        ok = d.status is not None and 200 <= d.status < 300
        if d.next_attempt is not None:
            following = f"{d.next_note} {_time(d.next_attempt, snap.now)}"
        else:
            following = "" if d.next_note == "done" else "no retry"
        rows.append(
            f'<tr data-task="{_e(d.task_id)}" data-attempt="{d.attempt}" '
            f'data-status="{d.status if d.status is not None else ""}">'
            f"<td>{_time(d.when, snap.now)}</td>"
            f"<td>{_e(d.queue_id)}</td><td>{_e(d.task_id)}</td><td>{d.attempt}</td>"
            f'<td class="outcome {"ok" if ok else "failed"}">{_e(_dispatch_outcome(d))}</td>'
            f'<td>{d.latency * 1000:.1f} ms</td><td class="next">{following}</td></tr>'
        )
    return "".join(rows)


def state_json(snap: Snapshot) -> dict[str, Any]:
    """The JSON of ``GET /api/state``: the data, plus the table rows rendered as HTML."""
    return {
        "now": iso(snap.now),
        "queues": [asdict(q) for q in snap.queues],
        "tasks": [
            {**asdict(t), "schedule_time": iso(t.schedule_time), "status": _task_status(t)}
            for t in snap.tasks
        ],
        "tasks_total": snap.tasks_total,
        "dispatches": [
            {
                **asdict(d),
                "when": iso(d.when),
                "next_attempt": iso(d.next_attempt) if d.next_attempt is not None else None,
            }
            for d in snap.dispatches
        ],
        # The page swaps these in: one renderer, in Python, escapes everything it shows.
        "html": {
            "queues": render_queues(snap),
            "tasks": render_tasks(snap),
            "dispatches": render_dispatches(snap),
        },
    }


_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5rem; color: #222; }
h1 { font-size: 1.3rem; margin: 0 0 .25rem; } h2 { font-size: 1.1rem; margin: 1.5rem 0 .5rem; }
table { border-collapse: collapse; width: 100%; }
th, td { text-align: left; padding: .25rem .5rem; border-bottom: 1px solid #ddd; }
td { vertical-align: top; }
th { background: #f4f4f4; } small { color: #666; } .empty { color: #666; font-style: italic; }
.url { word-break: break-all; max-width: 30rem; } .actions, time, small { white-space: nowrap; }
.state-paused, .failed { color: #b00; } .ok { color: #070; }
#message[data-ok="0"], #status[data-ok="0"] { color: #b00; }
header p { margin: 0; color: #555; }
"""

_SCRIPT = """
"use strict";
const token = document.querySelector('meta[name="dashboard-token"]').content;
const message = document.getElementById("message");
const status = document.getElementById("status");
const shown = {};
async function refresh() {
  try {
    const response = await fetch("/api/state", {cache: "no-store"});
    if (!response.ok) throw new Error("HTTP " + response.status);
    const state = await response.json();
    for (const [id, rows] of Object.entries(state.html)) {
      if (shown[id] !== rows) {
        document.getElementById(id).innerHTML = rows;  // rendered and escaped by the server
        shown[id] = rows;
      }
    }
    status.textContent = "updated " + state.now;
    status.dataset.ok = "1";
  } catch (error) {
    status.textContent = "cannot reach the emulator (" + error.message + ")";
    status.dataset.ok = "0";
  }
}
async function poll() {
  await refresh();
  setTimeout(poll, 1000);
}
document.addEventListener("click", async (event) => {
  const button = event.target.closest("button[data-action]");
  if (!button) return;
  if (button.dataset.confirm && !window.confirm(button.dataset.confirm)) return;
  button.disabled = true;
  try {
    const response = await fetch("/api/" + button.dataset.action, {
      method: "POST",
      headers: {"Content-Type": "application/json", "X-Dashboard-Token": token},
      body: JSON.stringify({name: button.dataset.name}),
    });
    const answer = await response.json();
    message.textContent = response.ok ? answer.message : "Refused: " + answer.error;
    message.dataset.ok = response.ok ? "1" : "0";
  } catch (error) {
    message.textContent = "Failed: " + error.message;
    message.dataset.ok = "0";
  }
  await refresh();
});
setTimeout(poll, 1000);
"""


def render_page(snap: Snapshot, *, token: str, nonce: str, grpc_address: str) -> str:
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<meta name="dashboard-token" content="{_e(token)}">
<title>cloudtask emulator</title>
<link rel="icon" href="data:,">
<style nonce="{nonce}">{_STYLE}</style>
</head>
<body>
<header>
<h1>cloudtask emulator</h1>
<p>gRPC on <code>{_e(grpc_address)}</code>. Times are UTC.
<span id="status">updated {iso(snap.now)}</span></p>
<p id="message" role="status"></p>
</header>
<h2>Queues</h2>
<table>
<thead><tr><th>queue</th><th>state</th><th>tasks</th><th>in flight</th>
<th title="attempts per second over the last {RATE_WINDOW:g} s">dispatch rate</th>
<th title="max_dispatches_per_second, max_burst_size">max rate</th>
<th title="max_concurrent_dispatches">max concurrent</th><th>retry</th><th></th></tr></thead>
<tbody id="queues">{render_queues(snap)}</tbody>
</table>
<h2>Tasks</h2>
<table>
<thead><tr><th>task</th><th>queue</th><th>target</th><th>schedule time</th><th>dispatches</th>
<th>responses</th><th>last status</th><th></th></tr></thead>
<tbody id="tasks">{render_tasks(snap)}</tbody>
</table>
<h2>Recent dispatches</h2>
<table>
<thead><tr><th>time</th><th>queue</th><th>task</th><th>attempt</th><th>status</th>
<th>latency</th><th>next retry</th></tr></thead>
<tbody id="dispatches">{render_dispatches(snap)}</tbody>
</table>
<script nonce="{nonce}">{_SCRIPT}</script>
</body>
</html>
"""


# -- the server ------------------------------------------------------------------------------

# Button -> the RPC it makes (gcloud tasks queues pause/resume/purge, gcloud tasks run).
_ACTIONS: dict[str, tuple[str, str]] = {
    "pause": ("pause_queue", "Paused queue"),
    "resume": ("resume_queue", "Resumed queue"),
    "purge": ("purge_queue", "Purged queue"),
    "run": ("run_task", "Sent task"),
}


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    dashboard: Dashboard


class _IPv6Server(_Server):
    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    server: _Server
    # A connection the browser opened and never used must not hold a thread for ever.
    timeout = 30

    def log_message(self, format: str, *args: object) -> None:
        pass  # page refreshes every second: the emulator's log is for dispatches

    def _send(
        self,
        status: int,
        body: bytes,
        content_type: str,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.send_header("Referrer-Policy", "no-referrer")
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, status: int, payload: object) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json")

    def _refuse_foreign_host(self) -> bool:
        host = self.headers.get("Host")
        if _is_loopback_authority(host):
            return False
        # A DNS-rebinding page sends its own host name: it must not even read the token.
        self._send(
            403,
            f"Refused: Host {host!r} is not a loopback address; open the dashboard "
            "at http://127.0.0.1:PORT/ or http://localhost:PORT/\n".encode(),
            "text/plain; charset=utf-8",
        )
        return True

    def do_GET(self) -> None:
        if self._refuse_foreign_host():
            return
        path = self.path.split("?", 1)[0]
        dashboard = self.server.dashboard
        if path == "/":
            nonce = secrets.token_urlsafe(16)
            page = render_page(
                dashboard.snapshot(),
                token=dashboard.token,
                nonce=nonce,
                grpc_address=dashboard.grpc_address,
            )
            csp = (
                f"default-src 'none'; script-src 'nonce-{nonce}'; style-src 'nonce-{nonce}'; "
                "connect-src 'self'; img-src data:; base-uri 'none'; form-action 'none'; "
                "frame-ancestors 'none'"
            )
            self._send(
                200, page.encode(), "text/html; charset=utf-8", {"Content-Security-Policy": csp}
            )
        elif path == "/api/state":
            self._json(200, state_json(dashboard.snapshot()))
        elif path == "/favicon.ico":
            self._send(204, b"", "image/x-icon")
        else:
            self._json(404, {"error": f"No page at {path!r}"})

    def do_POST(self) -> None:
        if self._refuse_foreign_host():
            return
        dashboard = self.server.dashboard
        origin = self.headers.get("Origin")
        if origin is not None and not _is_loopback_authority(origin.partition("://")[2]):
            self._json(403, {"error": f"Refused: Origin {origin!r} is not a loopback address"})
            return
        given = self.headers.get(CSRF_HEADER, "")
        if not hmac.compare_digest(given.encode(), dashboard.token.encode()):
            self._json(
                403,
                {"error": f"Refused: a missing or wrong {CSRF_HEADER} header (reload the page)"},
            )
            return
        action = self.path.split("?", 1)[0].removeprefix("/api/")
        if action not in _ACTIONS:
            self._json(404, {"error": f"Unknown action {action!r}"})
            return
        try:
            length = int(self.headers.get("Content-Length") or 0)
        except ValueError:
            length = -1
        if not 0 < length <= MAX_BODY:
            self._json(400, {"error": f"Send a JSON body of 1 to {MAX_BODY} bytes"})
            return
        try:
            payload = json.loads(self.rfile.read(length))
        except ValueError:
            payload = None
        name = payload.get("name") if isinstance(payload, dict) else None
        if not isinstance(name, str) or not name:
            self._json(400, {"error": 'Send {"name": "<queue or task resource name>"}'})
            return
        status, answer = dashboard.act(action, name)
        self._json(status, answer)


class Dashboard:
    """The dashboard of one emulator, on ``host`` (loopback only) and ``port`` (0: any free).

    ``store`` and ``records`` are the emulator's (read under ``store.cond``); ``client`` returns
    the emulator's CloudTasksClient, through which every button acts.
    """

    def __init__(
        self,
        store: Store,
        records: list[DispatchRecord],
        client: Callable[[], CloudTasksClient],
        *,
        grpc_address: str,
        host: str = "127.0.0.1",
        port: int = 0,
    ) -> None:
        self.host = loopback_host(host)
        self.grpc_address = grpc_address
        # Only the page, read by the same origin, knows it: see the module docstring.
        self.token = secrets.token_urlsafe(32)
        self._store = store
        self._records = records
        self._client = client
        self._requested_port = port
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None

    def start(self) -> Dashboard:
        if self._server is not None:
            raise RuntimeError("The emulator dashboard is already running")
        server_class = _IPv6Server if ":" in self.host else _Server
        try:
            server = server_class((self.host, self._requested_port), _Handler)
        except OSError as exc:
            raise OSError(
                f"The emulator dashboard cannot listen on {self.host}:{self._requested_port} "
                f"({exc.strerror}): choose another dashboard_port, or 0 for any free one"
            ) from exc
        server.dashboard = self
        # A short poll interval keeps stop() quick (shutdown() waits for the next poll).
        thread = threading.Thread(
            target=server.serve_forever,
            args=(0.05,),
            name="cloudtask-emulator-dashboard",
            daemon=True,
        )
        thread.start()
        self._server, self._thread = server, thread
        return self

    def stop(self) -> None:
        server, thread = self._server, self._thread
        self._server = self._thread = None
        if server is None or thread is None:
            return
        server.shutdown()
        server.server_close()
        thread.join()

    @property
    def port(self) -> int:
        if self._server is None:
            raise RuntimeError("The emulator dashboard is not started")
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/"

    def snapshot(self) -> Snapshot:
        return snapshot(self._store, self._records)

    def act(self, action: str, name: str) -> tuple[int, dict[str, str]]:
        """Make the RPC of button ``action`` on resource ``name``: (HTTP status, JSON answer)."""
        method, done = _ACTIONS[action]
        try:
            getattr(self._client(), method)(name=name, timeout=RPC_TIMEOUT)
        except GoogleAPICallError as exc:
            # The emulator's own answer (NOT_FOUND, INVALID_ARGUMENT...), as gcloud would show it.
            return exc.code or 500, {"error": f"{exc.__class__.__name__}: {exc.message}"}
        except Exception as exc:  # the emulator stopping under a click, say
            return 503, {"error": f"{exc.__class__.__name__}: {exc}"}
        return 200, {"message": f"{done} {name.rsplit('/', 1)[-1]}"}
