"""A URLconf that forgot include("cloudtask.urls")."""

from django.http import HttpRequest, HttpResponse
from django.urls import path


def home(request: HttpRequest) -> HttpResponse:
    return HttpResponse("home")


urlpatterns = [path("", home)]
