"""Run ``switchboard serve`` as a child process on a free loopback port (demo, benchmarks)."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class ServiceProcess:
    """``with ServiceProcess(env) as service: service.url``; waits for ``/readyz``.

    ``env`` adds to (or, with value ``None``, removes from) this process's environment;
    ``wrapper`` is a command that runs the service (``setpriv`` as another user, say).
    """

    def __init__(
        self,
        env: dict[str, str | None],
        workers: int = 1,
        log_path: Path | None = None,
        start_timeout_s: float = 180.0,
        wrapper: Sequence[str] = (),
    ):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = dict(os.environ)
        for name, value in env.items():
            if value is None:
                self.env.pop(name, None)
            else:
                self.env[name] = value
        self.workers = workers
        self.log_path = log_path
        self.start_timeout_s = start_timeout_s
        self.wrapper = list(wrapper)
        self.process: subprocess.Popen[bytes] | None = None

    def start(self) -> ServiceProcess:
        return self.launch().wait_ready()

    def launch(self) -> ServiceProcess:
        """Start the process without waiting (start several, then ``wait_ready`` each)."""
        command = [*self.wrapper, sys.executable, "-m", "switchboard", "serve"]
        command += ["--host", "127.0.0.1"]
        command += ["--port", str(self.port), "--workers", str(self.workers)]
        log = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self.process = subprocess.Popen(command, env=self.env, stdout=log, stderr=log)
        return self

    def wait_ready(self) -> ServiceProcess:
        assert self.process is not None, "launch() first"
        deadline = time.monotonic() + self.start_timeout_s
        while True:
            try:
                if httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                where = f"; see {self.log_path}" if self.log_path else ""
                raise RuntimeError(f"switchboard serve did not become ready{where}")
            time.sleep(0.2)

    def stop(self) -> None:
        """SIGTERM (graceful: in-flight requests finish), then wait."""
        if self.process is None:
            return
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=40)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        self.process = None

    def __enter__(self) -> ServiceProcess:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


def new_key(database_url: str, tenant: str) -> str:
    """Migrate the database if needed and create an API key for ``tenant`` in it."""
    import asyncio

    from service.config import to_async_url
    from service.ledger import Ledger
    from service.migrate import upgrade

    upgrade(database_url)

    async def create() -> str:
        ledger = Ledger.connect(to_async_url(database_url))
        try:
            return (await ledger.create_key(tenant))[0]
        finally:
            await ledger.close()

    return asyncio.run(create())


def upstream_env(database_url: str, upstream_url: str, **more: str) -> dict[str, str | None]:
    """Environment for ``switchboard serve`` in front of an OpenRouter-compatible upstream."""
    env: dict[str, str | None] = {
        "SWITCHBOARD_DATABASE_URL": database_url,
        "SWITCHBOARD_OPENROUTER_BASE_URL": upstream_url,
        "OPENROUTER_API_KEY": "upstream-key",
        "SWITCHBOARD_UPSTREAM": "openrouter",
    }
    return env | {f"SWITCHBOARD_{name.upper()}": value for name, value in more.items()}
