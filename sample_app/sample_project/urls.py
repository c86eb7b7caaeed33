from django.urls import include, path

urlpatterns = [
    # Cloud Tasks (here: the embedded emulator) POSTs every task to this one endpoint.
    path("_tasks/", include("cloudtask.urls")),
    path("", include("shop.urls")),
]
