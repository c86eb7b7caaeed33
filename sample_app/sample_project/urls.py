from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    # Cloud Tasks (here: the embedded emulator) POSTs every task to this one endpoint.
    path("_tasks/", include("cloudtask.urls")),
    # Execution records, dead letters (inspect, replay, delete) and the outbox.
    path("admin/", admin.site.urls),
    path("", include("shop.urls")),
]
