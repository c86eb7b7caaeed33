"""tests.settings for a `python -m django ...` subprocess of the outbox tests: the test run's
database (CLOUDTASK_CHILD_DATABASE: the name pytest-django gave it, which the parent passes) and
the parent test's CLOUDTASK (CLOUDTASK_CHILD_SETTINGS, JSON)."""

import json
import os

from tests.settings import *  # noqa: F403
from tests.settings import DATABASES

DATABASES["default"]["NAME"] = os.environ["CLOUDTASK_CHILD_DATABASE"]
CLOUDTASK = json.loads(os.environ["CLOUDTASK_CHILD_SETTINGS"])
