"""Run the real service under uvicorn on a free loopback port, in a background thread."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager

import httpx
import sqlalchemy as sa
import uvicorn

from service.config import Settings, to_sync_url
from service.main import create_app
from switchboard.service_process import free_port


def upstream_settings(upstream_url: str, database_url: str, admin_key: str, **more) -> Settings:
    """Settings for a service in front of a fake OpenRouter-compatible upstream."""
    values = {
        "upstream": "openrouter",
        "openrouter_base_url": upstream_url,
        "openrouter_api_key": "upstream-key",
        "database_url": database_url,
        "admin_key": admin_key,
    }
    return Settings(**(values | more))


class ServiceServer:
    """``with ServiceServer(settings) as server: server.url`` is ``http://127.0.0.1:PORT``."""

    def __init__(self, settings: Settings):
        self.settings = settings
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            create_app(settings), host="127.0.0.1", port=self.port, log_level="warning"
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> ServiceServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("the service did not start")
            time.sleep(0.05)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def app_state(self):  # the running app's state, for white-box checks
        return self.server.config.loaded_app.app.state  # type: ignore[union-attr]

    def create_key(self, tenant: str) -> str:
        admin = self.settings.admin_key.get_secret_value()  # type: ignore[union-attr]
        response = httpx.post(
            f"{self.url}/v1/admin/keys",
            json={"tenant": tenant},
            headers={"Authorization": f"Bearer {admin}"},
        )
        response.raise_for_status()
        return str(response.json()["key"])


@contextmanager
def postgres_database(server_url: str) -> Iterator[str]:
    """A fresh, empty PostgreSQL database on the server of ``server_url``, dropped afterwards."""
    name = f"switchboard_test_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(
        to_sync_url(server_url), isolation_level="AUTOCOMMIT", pool_pre_ping=True
    )
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    base = server_url.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()


class WebhookReceiver:
    """A local HTTP server that records every POST (headers, body); the first ``fail_first``
    answer 500, to exercise retries."""

    def __init__(self, fail_first: int = 0):
        import http.server

        received = self.received = []
        failures = [fail_first]

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", 0)))
                if failures[0] > 0:
                    failures[0] -= 1
                    self.send_response(500)
                else:
                    received.append((dict(self.headers), body))
                    self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hook"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> WebhookReceiver:
        self.thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.server.shutdown()


def self_signed_certificate(directory) -> tuple[str, str]:
    """A certificate for 127.0.0.1 and its key, as PEM files in ``directory``."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = f"{directory}/cert.pem", f"{directory}/key.pem"
    with open(cert_path, "wb") as out:
        out.write(certificate.public_bytes(serialization.Encoding.PEM))
    with open(key_path, "wb") as out:
        out.write(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    return cert_path, key_path


@contextmanager
def smtp_server(directory, username: str, password: str):
    """A real SMTP server on 127.0.0.1 (aiosmtpd) requiring STARTTLS and login; yields
    (port, CA file, received messages)."""
    import ssl

    from aiosmtpd.controller import Controller
    from aiosmtpd.smtp import AuthResult, LoginPassword

    cert, key = self_signed_certificate(directory)
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(cert, key)
    received: list = []

    class Handler:
        async def handle_DATA(self, server, session, envelope):
            received.append(envelope)
            return "250 OK"

    def authenticator(server, session, envelope, mechanism, auth_data):
        ok = isinstance(auth_data, LoginPassword) and (
            auth_data.login.decode(),
            auth_data.password.decode(),
        ) == (username, password)
        return AuthResult(success=ok)

    port = free_port()
    controller = Controller(
        Handler(),
        hostname="127.0.0.1",
        port=port,
        tls_context=context,
        require_starttls=True,
        auth_required=True,
        auth_require_tls=True,
        authenticator=authenticator,
    )
    controller.start()
    try:
        yield port, cert, received
    finally:
        controller.stop()


def ledger_row(service: ServiceServer, response: httpx.Response, admin_key: str) -> dict:
    """The ledger row of the request that got ``response``, read with the admin key."""
    request_id = response.headers["x-switchboard-request-id"]
    return httpx.get(
        f"{service.url}/v1/requests/{request_id}", headers={"Authorization": f"Bearer {admin_key}"}
    ).json()
