"""Include under any prefix: ``path("_tasks/", include("cloudtask.urls"))``."""

from django.urls import path

from .views import task_endpoint

app_name = "cloudtask"

urlpatterns = [
    path("", task_endpoint, name="endpoint"),
]
