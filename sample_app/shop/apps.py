from django.apps import AppConfig


class ShopConfig(AppConfig):
    name = "shop"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # The task log is filled from cloudtask's signals, so the tasks stay plain business code.
        from . import tasklog

        tasklog.connect()
