"""A process that dies between a task's function and its "succeeded" record (tests/records).

    python -m tests.records.crash_child '{"database": ..., "body": ..., "headers": {...}}'

On the test run's database (``database``: pytest-django's name for it), it POSTs one delivery
(``body``, ``headers``) to the endpoint through Django's handler, with records.finish replaced
by a SIGKILL of its own process when it would record success: the function has returned (its
writes made, committed or not), the record is not written. Nothing after that point runs: no
exception handler, no rollback by Python, no atexit.
"""

from __future__ import annotations

import json
import os
import signal
import sys
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

import django
from django.conf import settings


def main() -> None:
    config = json.loads(sys.argv[1])
    settings.DATABASES["default"]["NAME"] = config["database"]
    django.setup()

    from django.test import Client

    from cloudtask import records

    real = records.finish

    def finish(held: records.Claim, status: str, **kwargs: Any) -> Any:
        if status == "succeeded":
            os.kill(os.getpid(), signal.SIGKILL)
        return real(held, status, **kwargs)

    records.finish = finish
    response = Client().post(
        "/_tasks/",
        data=config["body"].encode(),
        content_type="application/json",
        headers=config["headers"],
    )
    print(f"survived: {response.status_code}", flush=True)


if __name__ == "__main__":
    main()
