from django.apps import AppConfig
from django.core.checks import register

from . import bindings, checks, registry


class CloudTaskConfig(AppConfig):
    name = "cloudtask"
    verbose_name = "Cloud Tasks"

    def ready(self) -> None:
        # Importing every app's tasks module registers its tasks, so the endpoint can route any
        # task name it is sent without ever importing a path taken from a request.
        registry.autodiscover()
        bindings.connect_all()
        register(checks.check_settings, "cloudtask")
        register(checks.check_deploy, "cloudtask", deploy=True)
        # The outbox defines a model: importable only once the app registry is ready.
        from . import dispatch, outbox

        dispatch.set_dispatcher(outbox.OutboxDispatcher())
