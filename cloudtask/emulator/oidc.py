"""OIDC tokens like the ones Cloud Tasks attaches, signed by a key the emulator makes at start.

The matching self-signed certificate is served as JSON ``{kid: PEM}`` (the format of Google's
``https://www.googleapis.com/oauth2/v1/certs``), so google-auth's ``id_token.verify_token(...,
certs_url=...)`` accepts the tokens exactly as it accepts Google's.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

TOKEN_LIFETIME = 3600
# A cached token is reused until this many seconds before it expires.
REFRESH_MARGIN = 300


def _b64(data: bytes) -> bytes:
    return base64.urlsafe_b64encode(data).rstrip(b"=")


class TokenIssuer:
    """Makes RS256 ID tokens for (service account, audience) pairs and caches them."""

    def __init__(self, issuer: str = "https://accounts.google.com") -> None:
        self.issuer = issuer
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        now = dt.datetime.now(dt.UTC)
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "cloudtask emulator")])
        self.certificate = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(subject)
            .public_key(self._key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + dt.timedelta(days=365))
            .sign(self._key, hashes.SHA256())
        )
        der = self.certificate.public_bytes(serialization.Encoding.DER)
        self.kid = hashlib.sha1(der, usedforsecurity=False).hexdigest()
        self.certificate_pem = self.certificate.public_bytes(serialization.Encoding.PEM).decode()
        self._cache: dict[tuple[str, str], tuple[str, float]] = {}
        self._lock = threading.Lock()

    def certs_json(self) -> bytes:
        return json.dumps({self.kid: self.certificate_pem}).encode()

    def token(self, email: str, audience: str, now: float) -> str:
        key = (email, audience)
        with self._lock:
            cached = self._cache.get(key)
            if cached is not None and cached[1] - REFRESH_MARGIN > now:
                return cached[0]
        iat = int(now)
        exp = iat + TOKEN_LIFETIME
        claims = {
            "iss": self.issuer,
            "aud": audience,
            "azp": email,
            "sub": _subject(email),
            "email": email,
            "email_verified": True,
            "iat": iat,
            "exp": exp,
        }
        header = {"alg": "RS256", "typ": "JWT", "kid": self.kid}
        signing_input = (
            _b64(json.dumps(header, separators=(",", ":")).encode())
            + b"."
            + _b64(json.dumps(claims, separators=(",", ":")).encode())
        )
        signature = self._key.sign(signing_input, padding.PKCS1v15(), hashes.SHA256())
        token = (signing_input + b"." + _b64(signature)).decode()
        with self._lock:
            self._cache[key] = (token, float(exp))
        return token


def _subject(email: str) -> str:
    # Google's sub is a stable numeric id per account; derive one from the address.
    return str(int(hashlib.sha256(email.encode()).hexdigest()[:16], 16))


class _IPv6Server(ThreadingHTTPServer):
    address_family = socket.AF_INET6


class CertsServer:
    """A tiny HTTP server answering GET /certs with the issuer's certificate."""

    def __init__(self, issuer: TokenIssuer, host: str, port: int = 0) -> None:
        body = issuer.certs_json()

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.path.split("?", 1)[0] != "/certs":
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Type", "application/json; charset=UTF-8")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "public, max-age=3600")
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass  # certificate fetches are not dispatches: keep the log to one line each

        server_class = _IPv6Server if ":" in host else ThreadingHTTPServer
        try:
            self._server = server_class((host.strip("[]"), port), Handler)
        except OSError as exc:
            raise OSError(
                f"The Cloud Tasks emulator cannot serve OIDC certificates on {host}:{port} "
                f"({exc.strerror}): choose another certs port, or 0 for any free one"
            ) from exc
        self._server.daemon_threads = True
        # A short poll interval keeps stop() quick (shutdown() waits for the next poll).
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            args=(0.05,),
            name="cloudtask-emulator-certs",
            daemon=True,
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop serving and close the socket (only close it if it never served: shutdown()
        would wait forever for a serve_forever() that never ran)."""
        if self._thread.is_alive():
            self._server.shutdown()
        self._server.server_close()
