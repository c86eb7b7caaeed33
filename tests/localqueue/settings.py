"""A tiny project on the shared local emulator (TRANSPORT "emulator", PERSIST by default): the
settings of the processes these tests start (senders, runserver, cloudtask_emulator).

The test says where things are through the environment: LOCALQUEUE_STATE_DIR (the emulator's
state directory, one per test), LOCALQUEUE_URL (where tasks go), LOCALQUEUE_PERSIST ("0": an
emulator inside each process), LOCALQUEUE_WATCH (a module to import, which the runserver
test touches to make the autoreloader restart) and LOCALQUEUE_NOTES (a file: a schedule runs
localqueue.note into it).
"""

import importlib
import os

SECRET_KEY = "cloudtask-localqueue-tests"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
INSTALLED_APPS = ["cloudtask", "tests.localqueue"]
ROOT_URLCONF = "tests.localqueue.urls"
# The endpoint needs no table here (no outbox, no records): the site below is only a target.
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

CLOUDTASK = {
    "TRANSPORT": "emulator",
    "PROJECT": "localqueue-project",
    "LOCATION": "local",
    "URL": os.environ.get("LOCALQUEUE_URL", "http://127.0.0.1:9/_tasks/"),
    # The suite's secret: the suite's live server verifies these tasks' signatures too.
    "SECRET": "test-secret",
    "OUTBOX": False,
    "RECORDS": False,
    "OUTBOX_RELAY_INTERVAL": 0,
    "EMULATOR": {
        "STATE_DIR": os.environ["LOCALQUEUE_STATE_DIR"],
        "PERSIST": os.environ.get("LOCALQUEUE_PERSIST", "1") == "1",
    },
}

if os.environ.get("LOCALQUEUE_NOTES"):
    CLOUDTASK["SCHEDULES"] = {
        "nightly-note": {
            "task": "localqueue.note",
            "cron": "30 2 * * *",
            "time_zone": "Europe/Zurich",
            "kwargs": {"path": os.environ["LOCALQUEUE_NOTES"], "text": "fired by cron"},
        }
    }

if os.environ.get("LOCALQUEUE_WATCH"):
    importlib.import_module(os.environ["LOCALQUEUE_WATCH"])
