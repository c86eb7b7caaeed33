"""``manage.py cloudtask_emulator``: run the Cloud Tasks emulator with queues from settings.

Queues: CLOUDTASK["QUEUE"], CLOUDTASK["EMULATOR"]["QUEUES"], every registered task's queue,
and any --queue given. PROJECT/LOCATION and the EMULATOR options (HOST, PORT, DEDUP_WINDOW,
MAX_TASK_SIZE, LOG) come from settings unless given on the command line.
"""

from __future__ import annotations

import sys
from typing import Any

from django.conf import settings
from django.core.management.base import BaseCommand, CommandParser

from cloudtask import registry
from cloudtask.emulator import Emulator
from cloudtask.emulator.cli import DEFAULT_PORT, add_arguments, certs_port, serve


def _registered_queues() -> list[str]:
    # A task without queue= goes to the default queue, created anyway.
    return [t.queue for t in registry.all_tasks() if isinstance(getattr(t, "queue", None), str)]


class Command(BaseCommand):
    help = "Run a local Cloud Tasks emulator (gRPC) with the queues your settings and tasks use."

    def add_arguments(self, parser: CommandParser) -> None:
        add_arguments(parser)

    def handle(self, *args: Any, **options: Any) -> None:
        serve(self.build_emulator(options), self.stdout)  # type: ignore[arg-type]

    def build_emulator(self, options: dict[str, Any]) -> Emulator:
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
        return Emulator(
            options["host"] or emulator_config.get("HOST") or "127.0.0.1",
            port,
            certs_port=certs_port(port, options["certs_port"]),
            queues=list(dict.fromkeys(queues)),
            project=options["project"] or config.get("PROJECT") or "local-project",
            location=options["location"] or config.get("LOCATION") or "local",
            auto_create_queues=bool(options["auto_create_queues"]),
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
        )
