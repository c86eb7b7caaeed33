from django.apps import AppConfig


class CloudTaskConfig(AppConfig):
    name = "cloudtask"
    verbose_name = "Cloud Tasks"

    def ready(self) -> None:
        # Importing every app's tasks module registers its tasks, so the endpoint can route any
        # task name it is sent without ever importing a path taken from a request.
        from . import bindings, checks, registry  # noqa: F401 - checks registers on import

        registry.autodiscover()
        bindings.connect_all()
