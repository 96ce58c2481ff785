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
    admin = sa.create_engine(to_sync_url(server_url), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(sa.text(f'CREATE DATABASE "{name}"'))
    base = server_url.rsplit("/", 1)[0]
    try:
        yield f"{base}/{name}"
    finally:
        with admin.connect() as conn:
            conn.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
