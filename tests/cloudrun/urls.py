"""A site that mounts cloudtask's endpoint somewhere else than /_tasks/."""

from django.urls import include, path

urlpatterns = [path("queue/in/", include("cloudtask.urls"))]
