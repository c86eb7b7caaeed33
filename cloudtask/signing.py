"""HMAC-SHA256 body signatures: the sender signs, the endpoint checks; the secret never travels."""

from __future__ import annotations

import hmac

from .conf import CloudTaskSettings

HEADER = "X-CloudTask-Signature"
#: The same header as Django exposes it in request.META.
META_KEY = "HTTP_X_CLOUDTASK_SIGNATURE"
PREFIX = "sha256="


def _hexdigest(key: bytes, body: bytes) -> str:
    # The standard library's one-shot HMAC runs in C (OpenSSL) and needs no per-key state.
    return hmac.digest(key, body, "sha256").hex()


def sign(body: bytes, settings: CloudTaskSettings) -> str | None:
    """The signature header value for body, made with the first secret; None with no secret."""
    if not settings.secret_keys:
        return None
    return PREFIX + _hexdigest(settings.secret_keys[0], body)


def verify(body: bytes, signature: str | None, settings: CloudTaskSettings) -> bool:
    """True when signature matches body under any configured secret (rotation)."""
    if not signature or not signature.startswith(PREFIX):
        return False
    given = signature[len(PREFIX) :].encode("ascii", "replace")
    ok = False
    for key in settings.secret_keys:
        # Check every key (no early exit) so timing says nothing about which secret matched.
        ok |= hmac.compare_digest(_hexdigest(key, body).encode(), given)
    return ok
