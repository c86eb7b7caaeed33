"""Settings of the cloudtask sample project: SQLite, the embedded Cloud Tasks emulator, no network.

Environment variables (all optional) let the demo, the tests and a person clicking around run
side by side:

- ``SAMPLE_DB``: path of the SQLite file (default ``sample_app/db.sqlite3``).
- ``SAMPLE_TASKS_URL``: where the emulator delivers tasks. The ``demo`` command sets it to the
  address its server really bound; the default suits ``manage.py runserver``.
- ``SAMPLE_DEBUG``: "0" turns DEBUG off.
"""

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent

SECRET_KEY = os.environ.get("SAMPLE_SECRET_KEY", "sample-app-not-secret")
DEBUG = os.environ.get("SAMPLE_DEBUG", "1") != "0"
ALLOWED_HOSTS = ["127.0.0.1", "localhost", "[::1]"]
USE_TZ = True
TIME_ZONE = "UTC"

INSTALLED_APPS = [
    # The admin shows cloudtask's execution records, dead letters and outbox at /admin/
    # (python sample_app/manage.py createsuperuser first).
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "cloudtask",
    "shop",
]

MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]

ROOT_URLCONF = "sample_project.urls"
WSGI_APPLICATION = "sample_project.wsgi.application"

TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "DIRS": [],
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.csrf",
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]

DATABASES = {
    "default": {
        "ENGINE": "django.db.backends.sqlite3",
        "NAME": os.environ.get("SAMPLE_DB", str(BASE_DIR / "db.sqlite3")),
        "OPTIONS": {
            # Page requests and task deliveries arrive on several server threads at once: WAL lets
            # readers run beside the writer, IMMEDIATE takes the write lock at BEGIN (no
            # lock-upgrade deadlocks), and the timeout makes writers queue instead of failing.
            "timeout": 20,
            "transaction_mode": "IMMEDIATE",
            "init_command": "PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;",
        },
    }
}

DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"
STATIC_URL = "static/"

CLOUDTASK = {
    # The embedded emulator: a real Cloud Tasks gRPC server inside this process, which delivers
    # tasks over HTTP to URL below. Deploying means switching to "cloudtasks" (see README).
    "TRANSPORT": os.environ.get("SAMPLE_CLOUDTASK_TRANSPORT", "emulator"),
    "PROJECT": "sample-project",
    "LOCATION": "local",
    "QUEUE": "orders",
    "URL": os.environ.get("SAMPLE_TASKS_URL", "http://127.0.0.1:8000/_tasks/"),
    "SECRET": os.environ.get("SAMPLE_TASKS_SECRET", "sample-signing-secret"),
    "EMULATOR": {"LOG": os.environ.get("SAMPLE_EMULATOR_LOG", "1") != "0"},
    # Cron jobs of tasks. Cloud Scheduler fires them in production (manage.py cloudtask_sync
    # makes the jobs); locally the embedded emulator does, while the site runs.
    "SCHEDULES": {
        "nightly-digest": {
            "task": "shop.tasks.nightly_digest",
            "cron": "0 3 * * *",
            "time_zone": "Europe/Zurich",
            "description": "The shop's nightly digest",
        },
    },
}

LOGGING = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {"plain": {"format": "%(levelname)s %(name)s: %(message)s"}},
    "handlers": {"console": {"class": "logging.StreamHandler", "formatter": "plain"}},
    "loggers": {
        "cloudtask": {"handlers": ["console"], "level": "WARNING"},
        "shop": {"handlers": ["console"], "level": "INFO"},
    },
}
