"""The README's URLconf: the endpoint under /_tasks/."""

from django.urls import include, path

urlpatterns = [path("_tasks/", include("cloudtask.urls"))]
