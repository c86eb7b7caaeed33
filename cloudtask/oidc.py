"""Verify the OIDC bearer token Cloud Tasks attaches to a task's request (google-auth)."""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import google.auth.transport
import google.auth.transport.requests
from google.auth import exceptions as auth_exceptions
from google.oauth2 import id_token

from . import registry, transports
from .conf import CloudTaskSettings

GOOGLE_CERTS_URL = "https://www.googleapis.com/oauth2/v1/certs"
ISSUERS = frozenset({"accounts.google.com", "https://accounts.google.com"})
_MAX_AGE = re.compile(r"max-age=(\d+)")
#: Certificates are re-fetched after this long when the server sends no Cache-Control max-age.
DEFAULT_CERTS_TTL = 300.0
#: A token naming an unknown key id re-fetches the certificates (keys rotate), but at most this
#: often: otherwise every forged token with a made-up key id would cost an outbound fetch.
MIN_REFETCH_INTERVAL = 30.0


class CachingCertsRequest(google.auth.transport.Request):
    """A google-auth transport that caches GET responses (the signing certificates).

    google-auth fetches the certificates on every verify_token() call; Google serves them with a
    Cache-Control max-age of hours, so one fetch per max-age is enough.
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._inner = google.auth.transport.requests.Request()
        self.clock = clock
        #: url -> (expires at, fetched at, response)
        self._cache: dict[str, tuple[float, float, Any]] = {}
        self._lock = threading.Lock()

    def __call__(
        self,
        url: str,
        method: str = "GET",
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
        timeout: float | None = 10.0,
        **kwargs: Any,
    ) -> Any:
        if method != "GET":
            return self._inner(url, method=method, body=body, headers=headers, timeout=timeout)
        now = self.clock()
        cached = self._cache.get(url)
        if cached is not None and cached[0] > now:
            return cached[2]
        response = self._inner(url, method="GET", headers=headers, timeout=timeout)
        if response.status == 200:
            match = _MAX_AGE.search(response.headers.get("cache-control", ""))
            ttl = float(match.group(1)) if match else DEFAULT_CERTS_TTL
            with self._lock:
                self._cache[url] = (now + min(ttl, 86400.0), now, response)
        return response

    def forget(self, url: str) -> None:
        with self._lock:
            self._cache.pop(url, None)

    def forget_if_stale(self, url: str) -> bool:
        """Drop url's cached response if it is older than MIN_REFETCH_INTERVAL; True if dropped."""
        with self._lock:
            cached = self._cache.get(url)
            if cached is not None and self.clock() - cached[1] < MIN_REFETCH_INTERVAL:
                return False
            self._cache.pop(url, None)
            return True


_transport: CachingCertsRequest | None = None
_transport_lock = threading.Lock()


def get_transport() -> CachingCertsRequest:
    global _transport
    if _transport is None:
        with _transport_lock:
            if _transport is None:
                _transport = CachingCertsRequest()
    return _transport


def expected_audiences(settings: CloudTaskSettings) -> list[str]:
    """OIDC_AUDIENCE, else URL, else every task's own url (the audiences the sender uses)."""
    if settings.oidc_audience:
        return [settings.oidc_audience]
    if settings.url:
        return [settings.url]
    return sorted({t.url for t in registry.all_tasks() if t.url})


def certs_url(settings: CloudTaskSettings) -> str:
    if settings.oidc_certs_url:
        return settings.oidc_certs_url
    # A transport that signs its own tokens (the embedded emulator) says where its keys are.
    return transports.get_transport().oidc_certs_url() or GOOGLE_CERTS_URL


def verify_bearer(
    authorization: str | None,
    settings: CloudTaskSettings,
    transport: CachingCertsRequest | None = None,
) -> str | None:
    """None if the Authorization header holds a valid token from SAE, else why not."""
    if not authorization or not authorization.startswith("Bearer "):
        return "no OIDC bearer token (Authorization header)"
    token = authorization[len("Bearer ") :].strip()
    audiences = expected_audiences(settings)
    if not audiences:
        return 'no OIDC audience configured: set CLOUDTASK["OIDC_AUDIENCE"] or CLOUDTASK["URL"]'
    url = certs_url(settings)
    transport = transport or get_transport()
    try:
        try:
            claims = id_token.verify_token(token, transport, audience=audiences, certs_url=url)
        except ValueError as exc:
            if "key id" not in str(exc) or not transport.forget_if_stale(url):
                raise
            # The signing keys rotated since the certificates were cached: fetch them again.
            claims = id_token.verify_token(token, transport, audience=audiences, certs_url=url)
    except (ValueError, auth_exceptions.GoogleAuthError) as exc:
        return f"invalid OIDC token: {exc}"
    if claims.get("iss") not in ISSUERS:
        return f"OIDC token issuer {claims.get('iss')!r} is not Google's"
    if not settings.sae or claims.get("email") != settings.sae:
        return (
            f'OIDC token email {claims.get("email")!r} is not CLOUDTASK["SAE"] ({settings.sae!r})'
        )
    if claims.get("email_verified") is not True:
        return "OIDC token email is not verified"
    return None
