from django.contrib import admin
from django.urls import include, path

urlpatterns = [
    path("_tasks/", include("cloudtask.urls")),
    path("admin/", admin.site.urls),
]
