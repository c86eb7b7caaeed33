"""``manage.py cloudtask_emulator``: run the project's Cloud Tasks emulator, or look after it.

Without options it runs the project's emulator in the foreground, on the state directory the
transport's shared background emulator uses (CLOUDTASK["EMULATOR"]["STATE_DIR"]): a background
one that runs is stopped first and its tasks taken over, so the two never fight over a port or a
state file, and every process of the project sends to the foreground one while it runs. With
CLOUDTASK["EMULATOR"]["PERSIST"] = False it runs a plain emulator with its state in memory.
``--status``, ``--stop`` and ``--reset`` look after the background one.

Queues: CLOUDTASK["QUEUE"], CLOUDTASK["EMULATOR"]["QUEUES"], every registered task's queue,
and any --queue given. PROJECT/LOCATION and the EMULATOR options (HOST, PORT, DEDUP_WINDOW,
MAX_TASK_SIZE, LOG) come from settings unless given on the command line.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandError, CommandParser

from cloudtask import registry
from cloudtask.conf import get_settings
from cloudtask.emulator import Emulator
from cloudtask.emulator.cli import DEFAULT_PORT, add_arguments, certs_port, serve
from cloudtask.emulator.persist import (
    LOG_FILE,
    STATE_FILE,
    AlreadyRunning,
    StateDirLock,
    lock_state_dir,
    stop_running,
)
from cloudtask.transports.cloudtasks import make_client
from cloudtask.transports.emulator import LocalEmulator, find_running, state_dir

#: Times --reset and the foreground emulator stop a background emulator that is started again
#: before they hold its directory.
STOP_ATTEMPTS = 5


def _registered_queues() -> list[str]:
    # A task without queue= goes to the default queue, created anyway.
    return [t.queue for t in registry.all_tasks() if isinstance(getattr(t, "queue", None), str)]


def held_tasks(running: LocalEmulator) -> dict[str, int]:
    """Tasks the emulator holds, per queue id, asked through its real API (ListQueues and
    ListTasks in its project and location)."""
    client = make_client(running.address)
    try:
        parent = f"projects/{running.project}/locations/{running.location}"
        return {
            queue.name.rsplit("/", 1)[1]: sum(1 for _ in client.list_tasks(parent=queue.name))
            for queue in client.list_queues(parent=parent, timeout=5.0)
        }
    finally:
        client.transport.close()


class Command(BaseCommand):
    help = (
        "Run the project's Cloud Tasks emulator (gRPC) in the foreground, taking over the "
        "background one; --status, --stop and --reset look after the background one."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        add_arguments(parser)
        action = parser.add_mutually_exclusive_group()
        action.add_argument(
            "--status",
            action="store_true",
            help="say whether the project's emulator runs: address, pid, files, held tasks",
        )
        action.add_argument(
            "--stop",
            action="store_true",
            help="stop the background emulator (its tasks stay in its state file)",
        )
        action.add_argument(
            "--reset",
            action="store_true",
            help="stop the background emulator and delete its state (every task it holds)",
        )
        parser.add_argument(
            "--no-input",
            "--noinput",
            action="store_false",
            dest="interactive",
            help="--reset without asking for confirmation",
        )

    def handle(self, *args: Any, **options: Any) -> None:
        given = options["state_dir"]
        directory = Path(given).absolute() if given else state_dir(get_settings().emulator)
        if options["status"]:
            self.status(directory)
        elif options["stop"]:
            self.stop(directory)
        elif options["reset"]:
            self.reset(directory, interactive=options["interactive"])
        elif not get_settings().emulator["PERSIST"] and not given:
            serve(self.build_emulator(options), self.stdout)  # type: ignore[arg-type]
        else:
            self.foreground(directory, options)

    # -- the background emulator ----------------------------------------------------------------

    def status(self, directory: Path) -> None:
        running = find_running(directory)
        state = directory / STATE_FILE
        if running is None:
            self.stdout.write("The project's Cloud Tasks emulator is not running.")
        else:
            self.stdout.write(
                f"The project's Cloud Tasks emulator is running at {running.address} "
                f"(pid {running.pid}, project {running.project}, location {running.location})."
            )
            if running.dashboard_url:
                self.stdout.write(f"Dashboard: {running.dashboard_url}")
            held = held_tasks(running)
            total = sum(held.values())
            self.stdout.write(
                f"Held tasks: {total}"
                + (f" ({', '.join(f'{q}: {n}' for q, n in held.items() if n)})" if total else "")
            )
        self.stdout.write(f"State file: {state}{'' if state.exists() else ' (none yet)'}")
        self.stdout.write(f"Log file: {directory / LOG_FILE}")

    def stop(self, directory: Path) -> None:
        running = find_running(directory)
        if running is None or not self._stop(directory):
            self.stdout.write("The project's Cloud Tasks emulator is not running.")
            return
        self.stdout.write(
            f"Stopped the Cloud Tasks emulator (pid {running.pid}); the tasks it held stay in "
            f"{directory / STATE_FILE} and are delivered when it runs again."
        )

    def reset(self, directory: Path, *, interactive: bool) -> None:
        state = directory / STATE_FILE
        if interactive:
            answer = input(
                f"This stops the project's Cloud Tasks emulator and deletes its state ({state}): "
                "every task it holds is lost. Type 'yes' to continue: "
            )
            if answer.strip().lower() != "yes":
                raise CommandError("Reset cancelled.")
        removed: list[Path] = []
        if directory.is_dir():
            # Held while deleting: a site's keep_up, or a sender, may start the emulator again
            # right after the stop, and it would load the old state.
            stopped, lock = self._stop_and_lock(directory)
            try:
                # The state file and what was set aside beside it (corrupt files, temporary
                # writes).
                removed = [path for path in directory.glob(f"{STATE_FILE}*") if path.is_file()]
                for path in removed:
                    path.unlink()
            finally:
                lock.release()
        else:
            stopped = False
        self.stdout.write(
            ("Stopped the Cloud Tasks emulator; " if stopped else "")
            + (f"deleted {state}." if removed else f"no state to delete in {directory}.")
        )

    def _stop(self, directory: Path) -> bool:
        try:
            return stop_running(directory, timeout=10.0)
        except TimeoutError as exc:
            raise CommandError(str(exc)) from exc

    def _stop_and_lock(self, directory: Path) -> tuple[bool, StateDirLock]:
        """Stop the emulator serving ``directory`` and take its lock, with no gap for another
        one to start in between: one that started anyway (the project's processes start it on
        demand) is stopped too. (whether one was stopped, the lock)."""
        stopped = False
        for _ in range(STOP_ATTEMPTS):
            stopped = self._stop(directory) or stopped
            try:
                return stopped, lock_state_dir(directory)
            except AlreadyRunning:
                continue  # started again between the stop and the lock
        raise CommandError(
            f"The project's Cloud Tasks emulator for {directory} keeps being started again "
            f"(tried {STOP_ATTEMPTS} times): stop the processes that use it (runserver, "
            "workers) and run this command again."
        )

    # -- the foreground emulator ----------------------------------------------------------------

    def foreground(self, directory: Path, options: dict[str, Any]) -> None:
        emulator = self.build_emulator(options, state_path=directory / STATE_FILE)
        running = find_running(directory)
        # Locked before serving: a background emulator that a sender starts again right after
        # the stop would otherwise win the directory, and this command would exit with 3.
        stopped, lock = self._stop_and_lock(directory)
        if stopped:
            self.stdout.write(
                f"Stopped the background Cloud Tasks emulator"
                f"{f' (pid {running.pid})' if running is not None else ''}; taking over "
                f"its tasks from {directory / STATE_FILE}."
            )
        self.stdout.write(
            f"The project's emulator, on {directory}: every process of this project sends to it "
            "while it runs."
        )
        serve(emulator, self.stdout, state_dir=directory, lock=lock)  # type: ignore[arg-type]

    def build_emulator(self, options: dict[str, Any], state_path: Path | None = None) -> Emulator:
        """The (unstarted) emulator that settings plus command-line ``options`` describe."""
        config: dict[str, Any] = dict(getattr(settings, "CLOUDTASK", {}) or {})
        emulator_config: dict[str, Any] = dict(config.get("EMULATOR") or {})
        queues: list[str] = [config.get("QUEUE") or "default"]
        extra = emulator_config.get("QUEUES") or []
        queues += [extra] if isinstance(extra, str) else list(extra)
        queues += _registered_queues()
        queues += options["queue"]
        port = options["port"]
        if port is None:
            port = int(emulator_config.get("PORT") or DEFAULT_PORT)
        log = None if options["quiet"] or not emulator_config.get("LOG", True) else sys.stderr
        auto_create = options["auto_create_queues"]
        return Emulator(
            options["host"] or emulator_config.get("HOST") or "127.0.0.1",
            port,
            certs_port=certs_port(port, options["certs_port"]),
            queues=list(dict.fromkeys(queues)),
            project=options["project"] or config.get("PROJECT") or "local-project",
            location=options["location"] or config.get("LOCATION") or "local",
            # The project's emulator creates queues on first use, as the background one does:
            # every process of the project sends to it while it runs.
            auto_create_queues=bool(auto_create or (auto_create is None and state_path)),
            dedup_window=float(
                options["dedup_window"]
                if options["dedup_window"] is not None
                else emulator_config.get("DEDUP_WINDOW", 3600.0)
            ),
            max_task_size=int(
                options["max_task_size"]
                if options["max_task_size"] is not None
                else emulator_config.get("MAX_TASK_SIZE", 1_048_576)
            ),
            log=log,
            state_path=state_path,
            # A site that is down (restarting) does not use up the attempts of what it holds.
            hold_unreachable=bool(
                options.get("hold_unreachable")
                or (options.get("hold_unreachable") is None and state_path)
            ),
            idle_timeout=options.get("idle_timeout"),
        )
