"""tests.settings as a newcomer writes it before reading about INSTALLED_APPS: no "cloudtask"."""

from tests.settings import *  # noqa: F403
from tests.settings import INSTALLED_APPS

INSTALLED_APPS = [app for app in INSTALLED_APPS if app not in ("cloudtask", "tests")] + [
    "tests.traps.shop"
]
ROOT_URLCONF = "tests.traps.urls"
DATABASES = {"default": {"ENGINE": "django.db.backends.sqlite3", "NAME": ":memory:"}}
