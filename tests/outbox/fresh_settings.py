"""tests.settings on a database of its own (CLOUDTASK_FRESH_DB, an SQLite file), plus one that
cannot be reached: what `manage.py check` and `migrate` meet on a new or upgraded site."""

import os

from tests.settings import *  # noqa: F403

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ["CLOUDTASK_FRESH_DB"],
    },
    # Nothing listens on port 1: connecting fails at once.
    "down": {
        "ENGINE": "django.db.backends.postgresql",
        "NAME": "nowhere",
        "HOST": "127.0.0.1",
        "PORT": "1",
        "USER": "nobody",
    },
}
