from django.apps import AppConfig
from django.core.checks import register


class CloudTaskConfig(AppConfig):
    name = "cloudtask"
    verbose_name = "Cloud Tasks"

    def ready(self) -> None:
        # Imported here, as Django apps do: these modules reach cloudtask's models, which exist
        # only once the app registry is ready.
        from . import bindings, checks, dispatch, outbox, registry

        # Importing every app's tasks module registers its tasks, so the endpoint can route any
        # task name it is sent without ever importing a path taken from a request.
        registry.autodiscover()
        bindings.connect_all()
        register(checks.check_settings, "cloudtask")
        register(checks.check_outbox_table, "cloudtask")
        register(checks.check_deploy, "cloudtask", deploy=True)
        dispatch.set_dispatcher(outbox.OutboxDispatcher())
