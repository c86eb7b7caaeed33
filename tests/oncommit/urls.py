from django.urls import include, path

from . import views

urlpatterns = [
    path("_tasks/", include("cloudtask.urls")),
    path("orders/", views.create_order),
    path("orders/fail/", views.create_then_fail),
    path("parcels/<int:pk>/ship/", views.ship_parcel),
]
