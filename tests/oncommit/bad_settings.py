"""tests.settings plus an app with a bad binding (used by a start-up test in a subprocess)."""

from tests.settings import *  # noqa: F403
from tests.settings import INSTALLED_APPS

INSTALLED_APPS = [*INSTALLED_APPS, "tests.oncommit.badapp"]
