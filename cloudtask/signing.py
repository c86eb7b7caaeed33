"""HMAC-SHA256 body signatures: the sender signs, the endpoint checks; the secret never travels."""

from __future__ import annotations

import hashlib
import hmac

from .conf import CloudTaskSettings

HEADER = "X-CloudTask-Signature"
#: The same header as Django exposes it in request.META.
META_KEY = "HTTP_X_CLOUDTASK_SIGNATURE"
PREFIX = "sha256="
_PREFIX_LENGTH = len(PREFIX)

#: The standard library's HMAC-SHA256 keyed once with each configured secret, copied for each
#: body. Every .delay() signs and every delivery is checked: a copy of a keyed HMAC skips keying
#: again, where the one-shot hmac.digest() keys anew (and on OpenSSL 3 also looks up its MAC and
#: digest) on each call, about twice the cost. Only configured secrets are keys here, so it
#: stays as small as CLOUDTASK["SECRET"].
_keyed: dict[bytes, hmac.HMAC] = {}


def _mac(key: bytes, body: bytes) -> str:
    keyed = _keyed.get(key)
    if keyed is None:
        keyed = _keyed[key] = hmac.new(key, digestmod=hashlib.sha256)
    mac = keyed.copy()
    mac.update(body)
    return mac.hexdigest()


def sign(body: bytes, settings: CloudTaskSettings) -> str | None:
    """The signature header value for body, made with the first secret; None with no secret."""
    keys = settings.secret_keys
    if not keys:
        return None
    return PREFIX + _mac(keys[0], body)


def verify(body: bytes, signature: str | None, settings: CloudTaskSettings) -> bool:
    """True when signature matches body under any configured secret (rotation)."""
    if not signature or not signature.startswith(PREFIX):
        return False
    given = signature[_PREFIX_LENGTH:]
    if not given.isascii():
        return False  # a hex digest is ASCII (and compare_digest takes no other str)
    ok = False
    for key in settings.secret_keys:
        # Check every key (no early exit) so timing says nothing about which secret matched.
        ok |= hmac.compare_digest(_mac(key, body), given)
    return ok
