"""In-process delivery: a TaskMessage handed to this site's endpoint as Cloud Tasks would POST it.

The immediate and capture transports deliver through here. The message's URL is resolved in
this site's URLconf, the same way a real delivery reaches the endpoint, so a site whose URLconf
lacks ``include("cloudtask.urls")`` fails here as it would in production. No cloudtask module
above the transports is imported: the endpoint is found through Django's URL resolver.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from django.core.handlers.wsgi import WSGIRequest
from django.http import HttpRequest, HttpResponse
from django.urls import NoReverseMatch, Resolver404, resolve, reverse

from ..exceptions import ConfigurationError
from ..message import TaskMessage

#: WSGI environ key set on requests built in this process: they never crossed a network. HTTP
#: headers arrive as HTTP_* keys, so a client cannot forge a dotted key.
IN_PROCESS_KEY = "cloudtask.in_process"
#: The endpoint's URL name (cloudtask/urls.py): app_name "cloudtask", path name "endpoint".
ENDPOINT_URL_NAME = "cloudtask:endpoint"
#: The endpoint attaches the exception a task raised to its response under this attribute, so an
#: in-process caller can re-raise it with its traceback (it never crosses HTTP).
ERROR_ATTRIBUTE = "cloudtask_error"


def build_request(message: TaskMessage, cloudtasks_headers: Mapping[str, str]) -> HttpRequest:
    """A Django request carrying message as Cloud Tasks would deliver it."""
    parts = urlsplit(message.url or "http://localhost/")
    environ: dict[str, Any] = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": parts.path or "/",
        "QUERY_STRING": parts.query,
        "SERVER_NAME": parts.hostname or "localhost",
        "SERVER_PORT": str(parts.port or (443 if parts.scheme == "https" else 80)),
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": "127.0.0.1",
        "wsgi.url_scheme": parts.scheme or "http",
        "wsgi.input": io.BytesIO(message.body),
        "CONTENT_LENGTH": str(len(message.body)),
        "HTTP_USER_AGENT": "Google-Cloud-Tasks",
    }
    for key, value in {**message.headers, **cloudtasks_headers}.items():
        meta = key.upper().replace("-", "_")
        if meta in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            environ[meta] = value
        else:
            environ["HTTP_" + meta] = value
    environ[IN_PROCESS_KEY] = True
    return WSGIRequest(environ)


def _endpoint_view(message: TaskMessage) -> Callable[..., HttpResponse]:
    """The view the message's URL reaches in this site, else the cloudtask endpoint's."""
    path = urlsplit(message.url).path if message.url else ""
    if path:
        try:
            match = resolve(path)
        except Resolver404:
            pass
        else:
            if match.view_name == ENDPOINT_URL_NAME:
                view: Callable[..., HttpResponse] = match.func
                return view
    # The URL points at another site (a task's url= for a different service): this process
    # runs it through its own endpoint, where the task is registered too.
    try:
        own = reverse(ENDPOINT_URL_NAME)
    except NoReverseMatch:
        raise ConfigurationError(
            f"Cannot deliver task {message.task_name!r} in-process: this site's URLconf does "
            "not include the task endpoint. Add path('_tasks/', include('cloudtask.urls')) "
            "to urlpatterns."
        ) from None
    endpoint: Callable[..., HttpResponse] = resolve(own).func
    return endpoint


def deliver(
    message: TaskMessage, cloudtasks_headers: Mapping[str, str], *, propagate: bool = False
) -> HttpResponse:
    """POST message to this site's endpoint in-process and return its response.

    With propagate=True the exception a task raised is raised here, traceback and all, instead
    of coming back as a 5xx response.
    """
    response = _endpoint_view(message)(build_request(message, cloudtasks_headers))
    error = getattr(response, ERROR_ATTRIBUTE, None)
    if propagate and isinstance(error, BaseException):
        raise error
    return response
