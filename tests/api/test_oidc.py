"""OIDC bearer tokens checked by the endpoint: every claim that matters, and certificate caching.

Tokens are signed here with a key whose certificate a local HTTP server publishes in Google's
format, so each claim can be varied (the emulator only mints valid ones).
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID
from google.auth import crypt, jwt

from cloudtask.conf import build_settings
from cloudtask.oidc import MIN_REFETCH_INTERVAL, CachingCertsRequest, verify_bearer

SAE = "tasks@test-project.iam.gserviceaccount.com"
URL = "https://example.com/_tasks/"


class KeyPair:
    def __init__(self, kid: str) -> None:
        self.kid = kid
        key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        ).decode()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, kid)])
        now = dt.datetime.now(dt.UTC)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=1))
            .sign(key, hashes.SHA256())
        )
        self.cert = cert.public_bytes(serialization.Encoding.PEM).decode()

    def token(self, **overrides: Any) -> str:
        now = int(time.time())
        claims = {
            "iss": "https://accounts.google.com",
            "aud": URL,
            "email": SAE,
            "email_verified": True,
            "sub": "1234",
            "iat": now,
            "exp": now + 600,
            **overrides,
        }
        signer = crypt.RSASigner.from_string(self.pem, key_id=self.kid)  # type: ignore[no-untyped-call]
        return str(jwt.encode(signer, claims).decode())  # type: ignore[no-untyped-call]


class CertsServer:
    """Serves {kid: PEM} like https://www.googleapis.com/oauth2/v1/certs, counting fetches."""

    def __init__(self) -> None:
        self.keys: list[KeyPair] = [KeyPair("k1")]
        self.fetches = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                outer.fetches += 1
                body = json.dumps({k.kid: k.cert for k in outer.keys}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Cache-Control", "public, max-age=3600")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/certs"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def certs() -> Iterator[CertsServer]:
    server = CertsServer()
    yield server
    server.close()


def settings_for(certs: CertsServer, **extra: Any) -> Any:
    return build_settings(
        {
            "SAE": SAE,
            "URL": URL,
            "OIDC_VERIFY": True,
            "OIDC_CERTS_URL": certs.url,
            **extra,
        }
    )


def test_a_valid_token_passes(certs: CertsServer) -> None:
    assert verify_bearer("Bearer " + certs.keys[0].token(), settings_for(certs)) is None


@pytest.mark.parametrize(
    ("claims", "reason"),
    [
        ({"aud": "https://other.example/_tasks/"}, "invalid OIDC token"),
        ({"exp": int(time.time()) - 3600, "iat": int(time.time()) - 7200}, "invalid OIDC token"),
        ({"iss": "https://evil.example"}, "issuer 'https://evil.example' is not Google's"),
        ({"email": "someone@other.iam.gserviceaccount.com"}, 'is not CLOUDTASK["SAE"]'),
        ({"email_verified": False}, "email is not verified"),
    ],
    ids=["audience", "expired", "issuer", "email", "unverified"],
)
def test_bad_claims_are_refused(certs: CertsServer, claims: dict[str, Any], reason: str) -> None:
    result = verify_bearer("Bearer " + certs.keys[0].token(**claims), settings_for(certs))
    assert result is not None and reason in result


def test_plain_accounts_google_com_issuer_is_accepted(certs: CertsServer) -> None:
    token = certs.keys[0].token(iss="accounts.google.com")
    assert verify_bearer("Bearer " + token, settings_for(certs)) is None


def test_a_token_signed_by_another_key_is_refused(certs: CertsServer) -> None:
    stranger = KeyPair("k1")  # same key id, different key
    result = verify_bearer("Bearer " + stranger.token(), settings_for(certs))
    assert result is not None and result.startswith("invalid OIDC token")


def test_missing_or_malformed_header(certs: CertsServer) -> None:
    settings = settings_for(certs)
    assert verify_bearer(None, settings) == "no OIDC bearer token (Authorization header)"
    assert verify_bearer("Basic abc", settings) == "no OIDC bearer token (Authorization header)"
    assert (verify_bearer("Bearer garbage", settings) or "").startswith("invalid OIDC token")


def test_oidc_audience_setting_wins_over_url(certs: CertsServer) -> None:
    settings = settings_for(certs, OIDC_AUDIENCE="my-audience")
    assert verify_bearer("Bearer " + certs.keys[0].token(aud="my-audience"), settings) is None
    assert verify_bearer("Bearer " + certs.keys[0].token(), settings) is not None


def test_certificates_are_cached_and_refetched_after_rotation(certs: CertsServer) -> None:
    now = [1000.0]
    transport = CachingCertsRequest(clock=lambda: now[0])
    settings = settings_for(certs)
    for _ in range(3):
        assert verify_bearer("Bearer " + certs.keys[0].token(), settings, transport) is None
    assert certs.fetches == 1

    # Google rotates its keys: a token names a key id the cached set lacks. Right after a
    # fetch, that is more likely a forged token, so it does not cost another fetch...
    certs.keys.append(KeyPair("k2"))
    rotated = "Bearer " + certs.keys[1].token()
    assert (verify_bearer(rotated, settings, transport) or "").startswith("invalid OIDC token")
    made_up = KeyPair("made-up")
    for _ in range(5):
        assert verify_bearer("Bearer " + made_up.token(), settings, transport) is not None
    assert certs.fetches == 1
    # ...but once the cached set is older than the minimum interval, the new key is fetched.
    now[0] += MIN_REFETCH_INTERVAL
    assert verify_bearer(rotated, settings, transport) is None
    assert certs.fetches == 2
