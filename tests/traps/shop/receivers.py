"""A model-signal binding, declared at import time as bindings are."""

from django.contrib.auth.models import User

from cloudtask import bind

from .tasks import ping

bind(task=ping, sender=User)
