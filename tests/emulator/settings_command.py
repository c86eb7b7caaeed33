"""Settings for the management-command test: the suite's settings plus emulator queues."""

from tests import settings as _base

globals().update({name: value for name, value in vars(_base).items() if name.isupper()})

CLOUDTASK: dict[str, object] = {
    **_base.CLOUDTASK,
    "QUEUE": "main-queue",
    # PERSIST off: the command runs a plain emulator, its state in memory (with PERSIST it
    # would take over the project's state directory, beside the suite's database).
    "EMULATOR": {"LOG": True, "PERSIST": False},
}
