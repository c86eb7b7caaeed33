"""The three ways to run the emulator: in process, ``python -m``, ``manage.py``; and its log."""

from __future__ import annotations

import ast
import io
import os
import queue as queue_module
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.cloud import tasks_v2
from google.cloud.tasks_v2.services.cloud_tasks.transports import CloudTasksGrpcTransport

from cloudtask.emulator import Emulator
from cloudtask.emulator.cli import certs_port
from cloudtask.management.commands.cloudtask_emulator import Command

from .conftest import Target

ROOT = Path(__file__).resolve().parents[2]


class Process:
    """A subprocess whose stdout lines are read by a thread, so waiting has a deadline."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.popen = subprocess.Popen(  # noqa: S603 - our own interpreter and arguments
            args,
            cwd=ROOT,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue_module.Queue[str] = queue_module.Queue()
        self.stderr: list[str] = []
        threading.Thread(
            target=self._pump, args=(self.popen.stdout, self.lines.put), daemon=True
        ).start()
        threading.Thread(
            target=self._pump, args=(self.popen.stderr, self.stderr.append), daemon=True
        ).start()

    @staticmethod
    def _pump(stream: io.TextIOWrapper | None, sink: object) -> None:
        assert stream is not None
        for line in stream:
            sink(line)  # type: ignore[operator]

    def wait_line(self, prefix: str, timeout: float = 30) -> str:
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue_module.Empty:
                raise AssertionError(
                    f"no line starting {prefix!r}; stderr: {''.join(self.stderr)}"
                ) from None
            if line.startswith(prefix):
                return line.strip()

    def terminate(self, signum: int = signal.SIGTERM) -> int:
        self.popen.send_signal(signum)
        return self.popen.wait(timeout=20)


def client_for(address: str) -> tuple[tasks_v2.CloudTasksClient, grpc.Channel]:
    channel = grpc.insecure_channel(address)
    return tasks_v2.CloudTasksClient(transport=CloudTasksGrpcTransport(channel=channel)), channel


def env(**extra: str) -> dict[str, str]:
    result = {k: v for k, v in os.environ.items() if k != "DJANGO_SETTINGS_MODULE"}
    result["PYTHONPATH"] = str(ROOT)
    result.update(extra)
    return result


@pytest.fixture
def cli_process() -> Iterator[Process]:
    process = Process(
        [
            sys.executable,
            "-m",
            "cloudtask.emulator",
            "--port",
            "0",
            "--queue",
            "jobs",
            "--queue",
            "reports",
            "--project",
            "cli-project",
            "--location",
            "europe-west1",
            "--dedup-window",
            "5",
            "--max-task-size",
            "5000",
        ],
        env(),
    )
    yield process
    if process.popen.poll() is None:
        process.popen.kill()
        process.popen.wait()


@pytest.mark.parametrize("stop_signal", [signal.SIGTERM, signal.SIGINT])
def test_python_m_cloudtask_emulator(
    cli_process: Process, target: Target, stop_signal: signal.Signals
) -> None:
    line = cli_process.wait_line("Cloud Tasks emulator listening on ")
    address = line.rsplit(" ", 1)[1]
    assert address.startswith("127.0.0.1:")  # loopback unless --host says otherwise
    client, channel = client_for(address)
    try:
        parent = "projects/cli-project/locations/europe-west1"
        assert sorted(q.name for q in client.list_queues(parent=parent)) == [
            f"{parent}/queues/jobs",
            f"{parent}/queues/reports",
        ]
        with pytest.raises(Exception, match="Task size too large"):
            client.create_task(
                request={
                    "parent": f"{parent}/queues/jobs",
                    "task": {"http_request": {"url": target.url(), "body": b"x" * 6000}},
                }
            )
        client.create_task(
            request={
                "parent": f"{parent}/queues/jobs",
                "task": {"http_request": {"url": target.url()}},
            }
        )
        (request,) = target.wait_for(1)
        assert request.header("X-CloudTasks-QueueName") == "jobs"
    finally:
        channel.close()
    assert cli_process.terminate(stop_signal) == 0
    assert cli_process.wait_line("Cloud Tasks emulator stopped")
    stderr = "".join(cli_process.stderr)
    assert "queue=jobs" in stderr and "status=200" in stderr


def test_management_command(target: Target) -> None:
    process = Process(
        [
            sys.executable,
            "-m",
            "django",
            "cloudtask_emulator",
            "--port",
            "0",
            "--queue",
            "extra-queue",
        ],
        env(DJANGO_SETTINGS_MODULE="tests.emulator.settings_command"),
    )
    try:
        line = process.wait_line("Cloud Tasks emulator listening on ")
        client, channel = client_for(line.rsplit(" ", 1)[1])
        try:
            # PROJECT and LOCATION from the suite's settings; QUEUE, the queues registered tasks
            # name, and --queue.
            parent = "projects/test-project/locations/europe-west6"
            names = {q.name.rsplit("/", 1)[1] for q in client.list_queues(parent=parent)}
            assert {"main-queue", "extra-queue", "default", "other-queue"} <= names
            client.create_task(
                request={
                    "parent": f"{parent}/queues/extra-queue",
                    "task": {"http_request": {"url": target.url()}},
                }
            )
            target.wait_for(1)
        finally:
            channel.close()
        assert process.terminate() == 0
    finally:
        if process.popen.poll() is None:
            process.popen.kill()
            process.popen.wait()


def test_management_command_reads_emulator_settings(settings: Any) -> None:
    settings.CLOUDTASK = {
        **settings.CLOUDTASK,
        "QUEUE": "main-queue",
        "EMULATOR": {"QUEUES": ["extra-1", "extra-2"], "DEDUP_WINDOW": 60, "LOG": False},
    }
    command = Command()
    parser = command.create_parser("manage.py", "cloudtask_emulator")
    with command.build_emulator(vars(parser.parse_args(["--port", "0"]))) as emu:
        assert emu.store.dedup_window == 60
        parent = "projects/test-project/locations/europe-west6"
        names = {q.name.rsplit("/", 1)[1] for q in emu.client().list_queues(parent=parent)}
        assert {"main-queue", "extra-1", "extra-2", "other-queue"} <= names


def test_in_process_start_stop_and_context_manager(target: Target) -> None:
    emu = Emulator(queues=["a", "projects/p2/locations/l2/queues/b"], log=None).start()
    try:
        client = emu.client()
        assert client is emu.client()  # one client, reused
        assert emu.address.startswith("127.0.0.1:")
        names = sorted(
            q.name for q in client.list_queues(parent="projects/local-project/locations/local")
        )
        assert names == ["projects/local-project/locations/local/queues/a"]
        assert client.get_queue(name="projects/p2/locations/l2/queues/b")
    finally:
        emu.stop()
    assert not emu.running

    with Emulator(log=None) as emu2:
        name = emu2.ensure_queue("c", project="p3", location="l3")
        assert name == "projects/p3/locations/l3/queues/c"
        emu2.client().create_task(
            request={"parent": name, "task": {"http_request": {"url": target.url()}}}
        )
        target.wait_for(1)
        assert emu2.wait_idle(5)
    assert not emu2.running


def test_one_log_line_per_dispatch(target: Target) -> None:
    log = io.StringIO()
    target.script("/task", 500, 200)
    with Emulator(queues=["default"], log=log) as emu:
        queue = emu.ensure_queue("default")
        emu.client().create_task(
            request={
                "parent": queue,
                "task": {"name": f"{queue}/tasks/logged", "http_request": {"url": target.url()}},
            }
        )
        target.wait_for(2)
        assert emu.wait_idle(5)
    lines = log.getvalue().splitlines()
    assert len(lines) == 2
    first, second = lines
    assert "queue=default task=logged attempt=1 status=500 latency=" in first
    assert "ms" in first and "retry in 0.1 s" in first
    assert "attempt=2 status=200" in second


def test_emulator_package_never_imports_django() -> None:
    # The emulator runs without Django (python -m cloudtask.emulator): its own modules must not
    # import it, and neither may the parent package's __init__ on the way in.
    loaded = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, cloudtask.emulator.cli; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'django'))",
        ],
        capture_output=True,
        text=True,
        check=True,
        cwd=ROOT,
    )
    assert loaded.stdout.strip() == "[]"
    for path in (ROOT / "cloudtask" / "emulator").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            assert not any(n == "django" or n.startswith("django.") for n in names), path


def test_binds_loopback_by_default() -> None:
    with Emulator(log=None) as emu:
        assert emu.address.split(":")[0] == "127.0.0.1"
        assert emu.certs_url.startswith("http://127.0.0.1:")


def test_a_taken_port_is_a_clear_error(emulator: Emulator) -> None:
    with pytest.raises(OSError, match=r"cannot listen on 127\.0\.0\.1"):
        Emulator(port=emulator.port, log=None).start()
    # Certificates on any free port: beside a fixed gRPC port they would go on the next one,
    # which another server of a parallel test may hold, and that refusal would come first.
    result = subprocess.run(  # noqa: S603 - our own interpreter and arguments
        [
            sys.executable,
            "-m",
            "cloudtask.emulator",
            "--port",
            str(emulator.port),
            "--certs-port",
            "0",
        ],
        cwd=ROOT,
        env=env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert result.returncode == 1
    assert "choose another port" in result.stderr


def test_certs_port_sits_beside_a_fixed_grpc_port() -> None:
    # So a separately run emulator's OIDC_CERTS_URL can be written into settings.
    assert certs_port(8123, None) == 8124
    assert certs_port(0, None) == 0
    assert certs_port(8123, 9000) == 9000


def _free_ports(count: int) -> list[int]:
    """Ports nobody listens on, all different (held together while chosen)."""
    sockets = [socket.socket() for _ in range(count)]
    try:
        for sock in sockets:
            sock.bind(("127.0.0.1", 0))
        return [int(sock.getsockname()[1]) for sock in sockets]
    finally:
        for sock in sockets:
            sock.close()


def test_a_failed_start_leaves_no_port_taken() -> None:
    grpc_port, certs = _free_ports(2)
    bad = Emulator(port=grpc_port, certs_port=certs, queues=["projects/p/queues"], log=None)
    with pytest.raises(Exception, match="queue name 'projects/p/queues' is not"):
        bad.start()
    assert not bad.running and bad.wait_stopped(0)
    # Fixing the mistake and starting again on the same ports works.
    with Emulator(port=grpc_port, certs_port=certs, log=None) as emu:
        assert emu.port == grpc_port
        assert emu.certs_url == f"http://127.0.0.1:{certs}/certs"


def test_a_taken_certs_port_leaves_the_grpc_port_free() -> None:
    grpc_port, certs = _free_ports(2)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", certs))
        taken.listen()
        with pytest.raises(OSError, match="cannot serve OIDC certificates"):
            Emulator(port=grpc_port, certs_port=certs, log=None).start()
    with Emulator(port=grpc_port, log=None) as emu:
        assert emu.port == grpc_port
