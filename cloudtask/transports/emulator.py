"""The zero-config default: an embedded Cloud Tasks emulator started in this process on first use.

Tasks go through the real google-cloud-tasks client (the cloudtasks transport's code) over gRPC to
cloudtask.emulator, which POSTs them to CLOUDTASK["URL"] like Cloud Tasks would: the same
signatures, OIDC tokens, retries and named-task dedup as production, on a laptop.
"""

from __future__ import annotations

import atexit
import sys
import threading
from typing import Any

from ..emulator import Emulator
from .cloudtasks import CloudTasksTransport

_emulators: dict[tuple[Any, ...], Emulator] = {}
_lock = threading.Lock()


def _key(options: dict[str, Any], project: str | None, location: str | None) -> tuple[Any, ...]:
    return (*sorted(options.items()), project, location)


def embedded_emulator(
    options: dict[str, Any], project: str | None = None, location: str | None = None
) -> Emulator:
    """The process's embedded emulator for these CLOUDTASK["EMULATOR"] options (started once)."""
    key = _key(options, project, location)
    emu = _emulators.get(key)
    if emu is not None:
        return emu
    with _lock:
        emu = _emulators.get(key)
        if emu is None:
            extra: dict[str, Any] = {}
            if project:
                extra["project"] = project
            if location:
                extra["location"] = location
            emu = Emulator(
                host=options["HOST"],
                port=options["PORT"],
                auto_create_queues=True,
                dedup_window=float(options["DEDUP_WINDOW"]),
                max_task_size=int(options["MAX_TASK_SIZE"]),
                log=sys.stderr if options["LOG"] else None,
                queues=tuple(options["QUEUES"]),
                **extra,
            ).start()
            _emulators[key] = emu
        return emu


@atexit.register
def _stop_all() -> None:
    with _lock:
        emulators = list(_emulators.values())
        _emulators.clear()
    for emu in emulators:
        emu.stop(grace=0.2)


class EmulatorTransport(CloudTasksTransport):
    """The cloudtasks transport pointed at the embedded emulator (started on first use)."""

    @property
    def emulator(self) -> Emulator:
        s = self.settings
        return embedded_emulator(dict(s.emulator), s.project, s.location)

    def emulator_host(self) -> str | None:
        return str(self.emulator.address)

    def oidc_certs_url(self) -> str | None:
        # The emulator signs its OIDC tokens with its own key and serves the certificate.
        s = self.settings
        emu = _emulators.get(_key(dict(s.emulator), s.project, s.location))
        return emu.certs_url if emu is not None else None
