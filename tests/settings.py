"""Test settings: SQLite by default, PostgreSQL with CLOUDTASK_TEST_DATABASE=postgres."""

import os
import tempfile
from pathlib import Path

SECRET_KEY = "cloudtask-tests"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
TIME_ZONE = "UTC"

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.contenttypes",
    "django.contrib.auth",
    "django.contrib.sessions",
    "django.contrib.messages",
    "cloudtask",
    "tests",
]

# What Django's admin needs (the outbox's admin page is tested through it).
MIDDLEWARE: list[str] = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
ROOT_URLCONF = "tests.urls"
# pytest-django's live_server wraps the app in a static-files handler that needs a STATIC_URL.
STATIC_URL = "static/"

# Test databases are named per test run, so two suites running at once in one tree (two
# developers' shells, CI legs) never share one; subprocesses inherit the run's name.
RUN = os.environ.setdefault("CLOUDTASK_TEST_RUN", str(os.getpid()))

if os.environ.get("CLOUDTASK_TEST_DATABASE") == "postgres":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": os.environ.get("PGDATABASE", "test"),
            "USER": os.environ.get("PGUSER", "postgres"),
            "HOST": os.environ.get("PGHOST", "127.0.0.1"),
            "PORT": os.environ.get("PGPORT", "5432"),
            "TEST": {"NAME": f"cloudtask_test_{RUN}"},
        },
        "other": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": os.environ.get("PGDATABASE", "test"),
            "USER": os.environ.get("PGUSER", "postgres"),
            "HOST": os.environ.get("PGHOST", "127.0.0.1"),
            "PORT": os.environ.get("PGPORT", "5432"),
            "TEST": {"NAME": f"cloudtask_test_other_{RUN}"},
        },
    }
else:
    # File-backed test databases, so a live server thread and the test share one database; in
    # the temporary directory, so that no run (or its pytest-xdist workers' copies, suffixed
    # _gw0...) leaves files in the checkout.
    SQLITE_DIR = Path(tempfile.gettempdir())
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(SQLITE_DIR / f"cloudtask-tests-{RUN}.sqlite3"),
            "TEST": {"NAME": str(SQLITE_DIR / f"cloudtask-tests-{RUN}.sqlite3")},
        },
        "other": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": str(SQLITE_DIR / f"cloudtask-tests-other-{RUN}.sqlite3"),
            "TEST": {"NAME": str(SQLITE_DIR / f"cloudtask-tests-other-{RUN}.sqlite3")},
        },
    }

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
# Django 6.1's mail settings (the docs' examples send email; the test runner makes every mailer
# the in-memory one). Django 5.2 ignores the name.
MAILERS: dict[str, dict[str, str]] = {"default": {}}

CLOUDTASK = {
    "TRANSPORT": "immediate",
    "PROJECT": "test-project",
    "LOCATION": "europe-west6",
    "SAE": "tasks@test-project.iam.gserviceaccount.com",
    "URL": "http://testserver/_tasks/",
    "QUEUE": "default",
    "SECRET": "test-secret",
    # No background relay threads racing the tests' own database work; the relay's tests run
    # it explicitly (and tests/outbox turns the opportunistic one on where it is the subject).
    "OUTBOX_RELAY_INTERVAL": 0,
}

# Django's tasks framework (django.tasks, or the django-tasks backport on Django 5.2) on
# cloudtask: the module-level tasks of tests/djangotasks are validated against it when imported.
TASKS = {
    "default": {
        "BACKEND": "cloudtask.backends.CloudTasksBackend",
        "QUEUES": ["default", "emails"],
    }
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "handlers": {"null": {"class": "logging.NullHandler"}},
    "loggers": {"cloudtask": {"handlers": ["null"], "level": "DEBUG", "propagate": True}},
}
