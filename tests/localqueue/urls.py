from django.urls import include, path

urlpatterns = [path("_tasks/", include("cloudtask.urls"))]
