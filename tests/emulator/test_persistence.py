"""Emulator(state_path=...): queues, tasks and tombstones survive a restart; hold_unreachable;
idle_timeout."""

from __future__ import annotations

import datetime as dt
import io
import json
import threading
from collections.abc import Iterator
from http.server import ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from google.api_core import exceptions
from google.cloud import scheduler_v1, tasks_v2

from cloudtask.emulator import Emulator, ManualClock, persist
from cloudtask.emulator.state import Store
from tests.waiting import poll

from .conftest import Target, wait_until
from .test_dashboard import call

START = 1_800_000_000.0


def seconds(value: float) -> dt.timedelta:
    return dt.timedelta(seconds=value)


def saved(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text())  # type: ignore[no-any-return]


def saved_task_names(path: Path) -> set[str]:
    """Short ids of the tasks the state file holds (empty while it is not written yet)."""
    if not path.exists():
        return set()
    return {task["name"].rsplit("/", 1)[1] for q in saved(path)["queues"] for task in q["tasks"]}


def received_on(target: Target, path: str) -> list[Any]:
    return [r for r in target.received if r.path == path]


@pytest.fixture
def state_path(tmp_path: Path) -> Path:
    return tmp_path / "state.json"


def test_scheduled_retrying_paused_and_configured_survive_a_restart(
    state_path: Path, target: Target
) -> None:
    clock = ManualClock(start=START)
    first = Emulator(queues=["default"], log=None, clock=clock, state_path=state_path).start()
    try:
        client = first.client()
        queue = first.ensure_queue("default")
        client.update_queue(
            request={
                "queue": {
                    "name": queue,
                    "rate_limits": {"max_dispatches_per_second": 7, "max_burst_size": 3},
                    "retry_config": {
                        "max_attempts": 5,
                        "min_backoff": seconds(10),
                        "max_backoff": seconds(300),
                        "max_doublings": 3,
                    },
                }
            }
        )
        paused = first.ensure_queue("paused")
        client.pause_queue(name=paused)
        client.create_task(
            request={
                "parent": paused,
                "task": {
                    "name": f"{paused}/tasks/waits",
                    "http_request": {"url": target.url("/p")},
                },
            }
        )
        client.create_task(
            request={
                "parent": queue,
                "task": {
                    "name": f"{queue}/tasks/later",
                    "schedule_time": dt.datetime.fromtimestamp(START + 100, dt.UTC),
                    "http_request": {"url": target.url("/later"), "body": b"kept"},
                },
            }
        )
        target.script("/retry", 503)
        client.create_task(
            request={
                "parent": queue,
                "task": {
                    "name": f"{queue}/tasks/retrying",
                    "http_request": {"url": target.url("/retry")},
                },
            }
        )
        client.create_task(
            request={
                "parent": queue,
                "task": {
                    "name": f"{queue}/tasks/done",
                    "http_request": {"url": target.url("/done")},
                },
            }
        )
        target.wait_for(1, path="/retry")
        target.wait_for(1, path="/done")
        wait_until(lambda: len(first.dispatches) == 2, what="both results recorded")
        assert first.pending() == 3  # later, retrying, and the one in the paused queue
    finally:
        first.stop()

    second = Emulator(queues=["default"], log=None, clock=clock, state_path=state_path).start()
    try:
        client = second.client()
        assert second.pending() == 3
        config = client.get_queue(name=queue)
        assert config.rate_limits.max_dispatches_per_second == 7
        assert config.rate_limits.max_burst_size == 3
        assert config.retry_config.max_attempts == 5
        assert config.retry_config.min_backoff == seconds(10)
        assert config.retry_config.max_doublings == 3
        assert client.get_queue(name=paused).state == tasks_v2.Queue.State.PAUSED
        retrying = client.get_task(name=f"{queue}/tasks/retrying")
        assert retrying.dispatch_count == 1
        assert retrying.last_attempt.response_status.code == 14  # UNAVAILABLE for HTTP 503
        assert retrying.schedule_time.timestamp() == START + 10  # min_backoff after attempt 1
        # Named-task dedup: a name in use, or used before the restart, is still taken.
        for name in ("later", "done"):
            with pytest.raises(exceptions.AlreadyExists):
                client.create_task(
                    request={
                        "parent": queue,
                        "task": {
                            "name": f"{queue}/tasks/{name}",
                            "http_request": {"url": target.url()},
                        },
                    }
                )

        target.script("/retry", 200)
        clock.set(START + 10)
        request = target.wait_for(2, path="/retry")[1]
        assert request.header("X-CloudTasks-TaskName") == "retrying"
        assert request.header("X-CloudTasks-TaskRetryCount") == "1"
        assert request.header("X-CloudTasks-TaskExecutionCount") == "0"  # a 503 is not counted
        assert request.header("X-CloudTasks-TaskPreviousResponse") == "503"
        assert request.header("X-CloudTasks-TaskRetryReason") == "HTTP 503"

        assert not received_on(target, "/later")
        clock.set(START + 100)
        (request,) = target.wait_for(1, path="/later")
        assert request.body == b"kept"
        assert request.header("X-CloudTasks-TaskRetryCount") == "0"
        assert float(request.header("X-CloudTasks-TaskETA") or 0) == START + 100

        assert not received_on(target, "/p")
        client.resume_queue(name=paused)
        (request,) = target.wait_for(1, path="/p")
        assert request.header("X-CloudTasks-QueueName") == "paused"
        assert second.wait_idle(10)
    finally:
        second.stop()


def test_a_task_due_while_stopped_goes_out_at_start(state_path: Path, target: Target) -> None:
    clock = ManualClock(start=START)
    with Emulator(queues=["default"], log=None, clock=clock, state_path=state_path) as first:
        queue = first.ensure_queue("default")
        first.client().create_task(
            request={
                "parent": queue,
                "task": {
                    "schedule_time": dt.datetime.fromtimestamp(START + 60, dt.UTC),
                    "http_request": {"url": target.url()},
                },
            }
        )
    clock.advance(3600)  # time passes while nothing runs
    with Emulator(queues=["default"], log=None, clock=clock, state_path=state_path) as second:
        (request,) = target.wait_for(1)
        assert float(request.header("X-CloudTasks-TaskETA") or 0) == START + 60
        assert second.wait_idle(10)


def test_changes_are_written_while_running(state_path: Path, target: Target) -> None:
    with Emulator(queues=["default"], log=None, state_path=state_path) as emu:
        client = emu.client()
        queue = emu.ensure_queue("default")
        client.pause_queue(name=queue)
        client.create_task(
            request={
                "parent": queue,
                "task": {"name": f"{queue}/tasks/one", "http_request": {"url": target.url()}},
            }
        )
        # No stop(): the writer thread saves changes within moments.
        poll(lambda: saved_task_names(state_path) == {"one"}, what="the task in the state file")
        client.delete_task(name=f"{queue}/tasks/one")
        poll(lambda: not saved_task_names(state_path), what="the deletion in the state file")
        assert "one" in {n.rsplit("/", 1)[1] for n in saved(state_path)["tombstones"]}
        assert emu.pending() == 0
        saved_at = saved(state_path)["saved"]
        emu.save()  # at once, changed or not
        assert saved(state_path)["saved"] >= saved_at
    assert saved(state_path)["version"] == 1


def test_a_corrupt_state_file_is_set_aside(state_path: Path, target: Target) -> None:
    state_path.write_text('{"format": "cloudtask-emulator-state", "version": 1, "queues": [')
    log = io.StringIO()
    with Emulator(queues=["default"], log=log, state_path=state_path) as emu:
        assert emu.pending() == 0
        (aside,) = state_path.parent.glob("state.json.corrupt-*")
        assert aside.read_text().endswith('"queues": [')
        (line,) = log.getvalue().splitlines()
        assert str(aside) in line and "started empty" in line
        # It works as usual, and writes a good file again.
        queue = emu.ensure_queue("default")
        emu.client().create_task(
            request={"parent": queue, "task": {"http_request": {"url": target.url()}}}
        )
        target.wait_for(1)
    assert saved(state_path)["version"] == 1


def test_a_state_file_of_another_version_is_set_aside(state_path: Path) -> None:
    state_path.write_text(json.dumps({"format": "cloudtask-emulator-state", "version": 99}))
    log = io.StringIO()
    with Emulator(log=log, state_path=state_path):
        assert len(list(state_path.parent.glob("state.json.corrupt-*"))) == 1
    assert "format version 99" in log.getvalue()


def free_port() -> int:
    """A port nobody listens on (a Target's, closed)."""
    probe = Target()
    port = probe.server.server_address[1]
    probe.close()
    return int(port)


@pytest.fixture
def site_down() -> Iterator[tuple[Target, Any]]:
    """A Target whose server is down; call the second item to bring it up on the same port."""
    target = Target()
    port = target.server.server_address[1]
    target.close()
    servers: list[ThreadingHTTPServer] = []

    def bring_up() -> None:
        server = ThreadingHTTPServer(("127.0.0.1", port), target.server.RequestHandlerClass)
        server.daemon_threads = True
        servers.append(server)
        threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()

    yield target, bring_up
    for server in servers:
        server.shutdown()
        server.server_close()


def test_hold_unreachable_waits_for_the_site_without_counting(
    site_down: tuple[Target, Any],
) -> None:
    target, bring_up = site_down
    log = io.StringIO()
    with Emulator(queues=["default"], log=log, hold_unreachable=True) as emu:
        client = emu.client()
        queue = emu.ensure_queue("default")
        client.create_task(
            request={
                "parent": queue,
                "task": {"name": f"{queue}/tasks/held", "http_request": {"url": target.url()}},
            }
        )
        poll(lambda: "holding" in log.getvalue(), what="the holding log line")
        # (Then, should the test be slow, a line per try while it backs off.)
        assert log.getvalue().splitlines()[0] == (
            f"[cloudtask emulator] site at {target.url()} not answering (connection refused): "
            "holding 1 task(s) until it is up"
        )
        task = client.get_task(name=f"{queue}/tasks/held")
        assert task.dispatch_count == 0
        assert not task.first_attempt
        assert emu.dispatches == []

        bring_up()
        (request,) = target.wait_for(1)
        assert request.header("X-CloudTasks-TaskRetryCount") == "0"
        assert request.header("X-CloudTasks-TaskPreviousResponse") is None
        assert emu.wait_idle(10)
        assert [(r.attempt, r.status) for r in emu.dispatches] == [(1, 200)]
        assert f"site at {target.url()} answers again" in log.getvalue()


def test_without_hold_unreachable_a_refused_connection_is_an_attempt() -> None:
    url = f"http://127.0.0.1:{free_port()}/task"
    log = io.StringIO()
    with Emulator(queues=["default"], log=log) as emu:
        client = emu.client()
        queue = emu.ensure_queue("default")
        client.update_queue(
            request={"queue": {"name": queue, "retry_config": {"min_backoff": seconds(60)}}}
        )
        client.create_task(
            request={
                "parent": queue,
                "task": {"name": f"{queue}/tasks/t", "http_request": {"url": url}},
            }
        )
        wait_until(lambda: emu.dispatches, what="the refused attempt")
        (record,) = emu.dispatches
        assert record.status is None
        assert record.error == f"UNAVAILABLE: connection refused by {url}"
        assert client.get_task(name=f"{queue}/tasks/t").dispatch_count == 1
        poll(lambda: "retry in 60 s" in log.getvalue(), what="the dispatch log line")
        assert f"(UNAVAILABLE: connection refused by {url})" in log.getvalue()


def test_idle_timeout_stops_and_saves(state_path: Path, target: Target) -> None:
    emu = Emulator(queues=["default"], log=None, state_path=state_path, idle_timeout=0.5).start()
    try:
        client = emu.client()
        queue = emu.ensure_queue("default")
        client.pause_queue(name=queue)
        client.create_task(
            request={
                "parent": queue,
                "task": {"name": f"{queue}/tasks/last", "http_request": {"url": target.url()}},
            }
        )
        # A task held keeps it up, however long nobody calls.
        assert not emu.wait_stopped(2.0)
        client.resume_queue(name=queue)
        target.wait_for(1)
        assert emu.wait_stopped(15)
        assert not emu.running
    finally:
        emu.stop()
    assert "last" in {n.rsplit("/", 1)[1] for n in saved(state_path)["tombstones"]}


def test_bad_idle_timeout() -> None:
    with pytest.raises(ValueError, match="idle_timeout must be positive seconds or None, got 0"):
        Emulator(idle_timeout=0)


def test_cloud_scheduler_jobs_survive_a_restart_and_fire_after_it(
    state_path: Path, target: Target
) -> None:
    clock = ManualClock(start=START)  # 2027-01-15 08:00 UTC
    first = Emulator(log=None, clock=clock, state_path=state_path).start()
    try:
        client = first.scheduler_client()
        name = f"{first.location_path}/jobs/nightly"
        client.create_job(
            parent=first.location_path,
            job=scheduler_v1.Job(
                name=name,
                schedule="0 9 * * *",
                time_zone="Europe/Zurich",
                http_target=scheduler_v1.HttpTarget(uri=target.url("/nightly"), body=b"{}"),
            ),
        )
        paused = f"{first.location_path}/jobs/paused"
        client.create_job(
            parent=first.location_path,
            job=scheduler_v1.Job(
                name=paused,
                schedule="0 9 * * *",
                http_target=scheduler_v1.HttpTarget(uri=target.url("/paused")),
            ),
        )
        client.pause_job(name=paused)
        poll(
            lambda: state_path.exists() and len(saved(state_path).get("jobs", [])) == 2,
            what="the jobs saved",
        )
    finally:
        first.stop()

    second = Emulator(log=None, clock=clock, state_path=state_path).start()
    try:
        client = second.scheduler_client()
        jobs = {job.name: job for job in client.list_jobs(parent=second.location_path)}
        assert set(jobs) == {name, paused}
        assert (jobs[name].schedule, jobs[name].time_zone) == ("0 9 * * *", "Europe/Zurich")
        assert jobs[paused].state == scheduler_v1.Job.State.PAUSED
        # 09:00 in Zurich is 08:00 UTC in winter: the restored job fires at the next one.
        clock.advance(24 * 3600)
        poll(lambda: received_on(target, "/nightly"), what="the restored job fired")
        assert received_on(target, "/paused") == []
    finally:
        second.stop()
    # A restart of the same emulator object keeps its jobs too (no state file needed).
    third = Emulator(log=None, clock=clock)
    third.start()
    try:
        created = third.scheduler_client().create_job(
            parent=third.location_path,
            job=scheduler_v1.Job(
                name=f"{third.location_path}/jobs/kept",
                schedule="* * * * *",
                http_target=scheduler_v1.HttpTarget(uri=target.url("/kept")),
            ),
        )
        third.stop()
        third.start()
        assert [
            job.name for job in third.scheduler_client().list_jobs(parent=third.location_path)
        ] == [created.name]
    finally:
        third.stop()


def test_a_bad_job_in_the_state_file_is_dropped_and_the_rest_kept(
    state_path: Path, target: Target
) -> None:
    with Emulator(log=None, state_path=state_path, dashboard=False) as first:
        client = first.scheduler_client()
        for job_id in ("good", "bad"):
            client.create_job(
                parent=first.location_path,
                job=scheduler_v1.Job(
                    name=f"{first.location_path}/jobs/{job_id}",
                    schedule="0 9 * * *",
                    http_target=scheduler_v1.HttpTarget(uri=target.url()),
                ),
            )
        good, bad = (f"{first.location_path}/jobs/{job_id}" for job_id in ("good", "bad"))
    # Edited by hand, or written by another version: one job no longer valid, one not a job.
    data = saved(state_path)
    (entry,) = (job for job in data["jobs"] if job["job"]["name"] == bad)
    entry["job"]["schedule"] = "every day at nine"
    data["jobs"].append({"paused": False})
    state_path.write_text(json.dumps(data))

    log = io.StringIO()
    with Emulator(log=log, state_path=state_path, dashboard=False) as second:
        client = second.scheduler_client()
        assert [job.name for job in client.list_jobs(parent=second.location_path)] == [good]
    first_line, second_line = log.getvalue().splitlines()
    assert first_line.startswith(
        f"[cloudtask emulator] dropped Cloud Scheduler job {bad!r} of {state_path}: ApiError: "
        "Schedule or time zone is invalid: "
    )
    assert "'every day at nine'" in first_line
    assert second_line == (
        "[cloudtask emulator] dropped Cloud Scheduler job {'paused': False} of "
        f"{state_path}: KeyError: 'job'"
    )
    # The rest of the file was used, not set aside, and what is written back is what runs.
    assert not list(state_path.parent.glob("state.json.corrupt-*"))
    assert [job["job"]["name"] for job in saved(state_path)["jobs"]] == [good]


def test_tasks_held_for_a_site_that_is_down_let_an_idle_emulator_stop(
    state_path: Path, site_down: tuple[Target, Any]
) -> None:
    target, _ = site_down
    log = io.StringIO()
    emu = Emulator(
        queues=["default"],
        log=log,
        state_path=state_path,
        hold_unreachable=True,
        idle_timeout=0.5,
        dashboard=False,
    ).start()
    try:
        queue = emu.ensure_queue("default")
        emu.client().create_task(
            request={
                "parent": queue,
                "task": {"name": f"{queue}/tasks/waits", "http_request": {"url": target.url()}},
            }
        )
        poll(lambda: "holding 1 task(s)" in log.getvalue(), what="the task held")
        # The site is stopped for the night: the emulator does not wait up for it. The task
        # is in the state file, and the site starts the emulator again when it runs.
        assert emu.wait_stopped(15)
    finally:
        emu.stop()
    assert saved_task_names(state_path) == {"waits"}


def test_a_site_that_stays_down_is_tried_less_and_less_often(
    site_down: tuple[Target, Any],
) -> None:
    target, bring_up = site_down
    clock = ManualClock(start=START)
    log = io.StringIO()

    def lines() -> list[str]:
        return log.getvalue().splitlines()

    with Emulator(queues=["default"], log=log, clock=clock, hold_unreachable=True) as emu:
        client = emu.client()
        queue = emu.ensure_queue("default")
        client.create_task(
            request={
                "parent": queue,
                "task": {"name": f"{queue}/tasks/held", "http_request": {"url": target.url()}},
            }
        )
        poll(lambda: len(lines()) == 1, what="the task held")
        for delay in (1, 2, 4, 8, 16):  # each try comes when the previous line said
            seen = len(lines())
            clock.advance(delay)
            poll(lambda: len(lines()) > seen, what=f"the try after {delay} s")  # noqa: B023
        prefix = f"[cloudtask emulator] site at {target.url()} still not answering: trying it"
        assert lines()[1:] == [
            f"{prefix} again in 2 s",
            f"{prefix} again in 4 s",
            f"{prefix} again in 8 s",
            f"{prefix} again in 16 s",
            f"{prefix} again in 30 s (and then every 30 s)",
        ]
        # The dashboard says what the task waits for.
        status, _, body = call(emu, "GET", "/api/state")
        assert status == 200
        (task,) = json.loads(body)["tasks"]
        assert task["status"] == f"held: connection refused by {target.url()}"
        assert client.get_task(name=f"{queue}/tasks/held").dispatch_count == 0

        # The site is up again, 30 s before its next try: the first task that reaches it
        # sends the held one at once, without waiting for the clock.
        bring_up()
        client.create_task(
            request={
                "parent": queue,
                "task": {"name": f"{queue}/tasks/fresh", "http_request": {"url": target.url()}},
            }
        )
        received = target.wait_for(2)
        assert {r.header("X-CloudTasks-TaskName") for r in received} == {"held", "fresh"}
        assert {r.header("X-CloudTasks-TaskRetryCount") for r in received} == {"0"}
        assert emu.wait_idle(10)
        assert f"site at {target.url()} answers again" in log.getvalue()


def test_the_state_writer_outlives_an_unexpected_error(
    state_path: Path, target: Target, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A fault no real part produces on demand: the snapshot fails once, with no OSError.
    real_snapshot = persist.snapshot
    calls: list[int] = []

    def failing_once(store: Any) -> Any:
        calls.append(1)
        if len(calls) == 1:
            raise RuntimeError("a bug in the snapshot")
        return real_snapshot(store)

    monkeypatch.setattr(persist, "snapshot", failing_once)
    log = io.StringIO()
    with Emulator(queues=["default"], log=log, state_path=state_path, dashboard=False) as emu:
        queue = emu.ensure_queue("default")
        emu.client().pause_queue(name=queue)
        emu.client().create_task(
            request={
                "parent": queue,
                "task": {"name": f"{queue}/tasks/kept", "http_request": {"url": target.url()}},
            }
        )
        # Written by the writer thread, still running: no stop() needed.
        poll(lambda: saved_task_names(state_path) == {"kept"}, what="the task in the file")
    assert log.getvalue().splitlines()[:2] == [
        f"[cloudtask emulator] cannot write {state_path}: RuntimeError: a bug in the snapshot",
        f"[cloudtask emulator] wrote {state_path} again",
    ]


def test_the_state_file_is_its_owners_only(state_path: Path) -> None:
    # It holds task bodies: personal data, tokens.
    with Emulator(queues=["default"], log=None, state_path=state_path, dashboard=False):
        poll(state_path.exists, what="the state file")
    assert state_path.stat().st_mode & 0o777 == 0o600


class _StopDuringClear(threading.Event):
    """The writer's wake-up Event, with stop() run at the one moment that lost its wake-up:
    after the writer looked at the closing flag, before it cleared this Event."""

    def __init__(self, state: persist.StateFile) -> None:
        super().__init__()
        self.state = state
        self.stopper: threading.Thread | None = None

    def clear(self) -> None:
        if self.stopper is None:
            self.stopper = threading.Thread(target=self.state.stop, daemon=True)
            self.stopper.start()
            # stop() has set both flags once it waits for the writer: then clear.
            poll(lambda: self.state._closing.is_set() and self.is_set(), what="stop()'s flags")
        super().clear()


def test_a_stop_while_the_writer_wakes_up_ends_and_saves(state_path: Path) -> None:
    # A thread interleaving no real part produces on demand (seen once in about twenty runs of
    # the suite, where the emulator then never stopped and kept its state directory).
    store = Store(ManualClock(start=START), dedup_window=60.0, max_task_size=1_000_000)
    state = persist.StateFile(store, state_path, log=None)
    wake_up = _StopDuringClear(state)
    state._dirty = wake_up
    state.start()  # its first write wakes the writer
    poll(lambda: wake_up.stopper is not None, what="the writer to wake up")
    assert wake_up.stopper is not None
    wake_up.stopper.join(timeout=10)
    assert not wake_up.stopper.is_alive(), "stop() waited for a writer that never woke up"
    assert saved(state_path)["version"] == 1
