"""Include under any prefix: ``path("_tasks/", include("cloudtask.urls"))``."""

from django.urls import path

from . import views

app_name = "cloudtask"

urlpatterns = [
    path("", views.task_endpoint, name="endpoint"),
    path("outbox/drain/", views.outbox_drain, name="outbox-drain"),
]
