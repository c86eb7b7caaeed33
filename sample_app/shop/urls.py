from django.urls import path

from . import views

app_name = "shop"

urlpatterns = [
    path("", views.index, name="index"),
    path("api/state/", views.state, name="state"),
    path("orders/", views.create_order, name="create-order"),
    path("orders/rolled-back/", views.create_order_rolled_back, name="create-order-rolled-back"),
    path("orders/<int:pk>/status/", views.change_status, name="change-status"),
    path("orders/<int:pk>/remind/", views.remind, name="remind"),
    path("report/", views.rebuild_report, name="rebuild-report"),
]
