"""A second process for the outbox fault tests, on the test run's database.

    python -m tests.outbox.fault_child '{"mode": ..., "database": ..., "cloudtask": {...}}'

``database`` is the test database's name (pytest-django's, which the parent passes), and
``cloudtask`` the CLOUDTASK setting to use. Modes:

* ``commit``: in one transaction, create ``count`` orders, each with an on-commit read_order
  task, then mark them paid; print ``committed`` once the commit returned. With Cloud Tasks
  hung and a long OUTBOX_FLUSH_TIMEOUT, it is killed before that line.
* ``relay``: print ``ready``, wait for ``go`` on stdin, then relay (``limit`` rows a pass) until
  a pass finds nothing due; print the totals as JSON.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "tests.settings")

import django
from django.conf import settings


def configure(config: dict[str, Any]) -> None:
    settings.DATABASES["default"]["NAME"] = config["database"]
    settings.CLOUDTASK = config["cloudtask"]
    django.setup()


def commit(count: int) -> None:
    from django.db import transaction

    from tests.models import Order
    from tests.oncommit.jobs import read_order

    with transaction.atomic():
        orders = [Order.objects.create(status=Order.Status.NEW) for _ in range(count)]
        for order in orders:
            read_order(order.pk).delay()
        # Written after the calls were made: a task must see the committed state, not this one.
        Order.objects.filter(pk__in=[o.pk for o in orders]).update(status=Order.Status.PAID)
    print("committed", flush=True)


def relay(limit: int) -> None:
    from django.db import connection

    from cloudtask.outbox import RelayResult
    from cloudtask.outbox import relay as relay_pass

    connection.ensure_connection()
    print("ready", flush=True)
    if sys.stdin.readline().strip() != "go":
        raise SystemExit("expected 'go'")
    total = RelayResult()
    passes = skipped = 0
    while True:
        result = relay_pass(limit=limit, aliases=["default"])
        passes += 1
        total += result
        if result.skipped:
            skipped += 1  # the database was busy (SQLite: the other relay writing): again
            if skipped > 100:
                break
            continue
        if not (result.sent or result.failed or result.duplicates):
            break
    print(
        json.dumps(
            {
                "sent": total.sent,
                "failed": total.failed,
                "duplicates": total.duplicates,
                "passes": passes,
                "skipped": skipped,
                "errors": sorted(set(total.skipped.values())),
            }
        ),
        flush=True,
    )


def main() -> None:
    config = json.loads(sys.argv[1])
    configure(config)
    if config["mode"] == "commit":
        commit(config["count"])
    elif config["mode"] == "relay":
        relay(config["limit"])
    else:
        raise SystemExit(f"unknown mode {config['mode']!r}")


if __name__ == "__main__":
    main()
