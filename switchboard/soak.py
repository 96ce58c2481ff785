"""``switchboard soak``: many requests at sustained concurrency through a real ``switchboard
serve`` in front of the fake upstream, with faults sprinkled in, then the ledger checked against
what the clients saw.

Every 500 requests one fault rule (429, 500, 503, a reset, a malformed answer, a cut stream)
fires a few times; a quarter of the requests stream. Afterwards the service is stopped gracefully
and the ledger must hold exactly one row per request sent, with as many ``ok`` rows as 200
answers, and no duplicate id. The process's resident memory and open file descriptors are
sampled along the way.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import sqlalchemy as sa

from service.config import Settings, to_sync_url
from switchboard.fake_upstream import FakeUpstreamServer, catalog_prices
from switchboard.service_process import ServiceProcess, new_key, upstream_env

FAULTS = ("429", "500", "503", "reset", "malformed", "cut_stream")


@dataclass
class SoakResult:
    sent: int
    statuses: dict[int, int]
    rows: int
    ok_rows: int
    distinct_ids: int
    seconds: float
    samples: list[dict[str, float]] = field(default_factory=list)

    def report(self) -> dict[str, Any]:
        return self.__dict__ | {"requests_per_s": round(self.sent / self.seconds, 1)}


def _usage(pid: int) -> dict[str, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS"))
    return {"rss_mb": rss / 1024, "open_fds": len(os.listdir(f"/proc/{pid}/fd"))}


def soak(requests: int, concurrency: int, database_url: str, log_path: Path) -> SoakResult:
    key = new_key(database_url, "soak")
    models = json.loads((Settings().router_dir / "router.json").read_text())["models"]
    with FakeUpstreamServer(catalog_prices(models)) as upstream:
        env = upstream_env(
            database_url,
            upstream.url,
            backoff_base_s="0.01",
            backoff_max_s="0.05",
            breaker_failures="1000",
        )
        service = ServiceProcess(env, log_path=log_path).start()
        assert service.process is not None
        pid = service.process.pid
        started = time.perf_counter()
        statuses, samples = asyncio.run(
            _flood(service.url, upstream.control_url, key, requests, concurrency, pid)
        )
        seconds = time.perf_counter() - started
        service.stop()
    engine = sa.create_engine(to_sync_url(database_url))
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT id, status FROM requests")).all()
    engine.dispose()
    counts: dict[int, int] = {}
    for status in statuses:
        counts[status] = counts.get(status, 0) + 1
    return SoakResult(
        sent=len(statuses),
        statuses=counts,
        rows=len(rows),
        ok_rows=sum(status == "ok" for _, status in rows),
        distinct_ids=len({request_id for request_id, _ in rows}),
        seconds=seconds,
        samples=samples,
    )


async def _flood(
    url: str, control: str, key: str, total: int, concurrency: int, pid: int
) -> tuple[list[int], list[dict[str, float]]]:
    rng = random.Random(0)
    statuses: list[int] = []
    errors: list[str] = []
    samples = [_usage(pid)]
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(total):
        queue.put_nowait(i)
    headers = {"Authorization": f"Bearer {key}"}
    # idle connections expire on the client before uvicorn's 5 s keep-alive closes them: else a
    # request sent on a connection the server is closing never reaches it (a ReadError)
    limits = httpx.Limits(max_connections=concurrency, keepalive_expiry=2.0)
    async with httpx.AsyncClient(timeout=60, limits=limits) as client:

        async def worker() -> None:
            while not queue.empty():
                i = queue.get_nowait()
                if i % 500 == 0:
                    rule = {"model": "*", "fault": rng.choice(FAULTS), "times": 3}
                    await client.post(f"{control}/faults", json=rule)
                if i % 2000 == 0:
                    samples.append(_usage(pid))
                body = {
                    "model": "switchboard/auto",
                    "messages": [{"role": "user", "content": f"soak request {i}"}],
                    "stream": i % 4 == 0,
                }
                try:
                    async with client.stream(
                        "POST", f"{url}/v1/chat/completions", json=body, headers=headers
                    ) as response:
                        await response.aread()
                        statuses.append(response.status_code)
                except httpx.TransportError as error:
                    statuses.append(0)
                    errors.append(f"request {i}: {type(error).__name__}: {error}")

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    samples.append(_usage(pid))
    for line in errors[:20]:
        print("transport error:", line)
    return statuses, samples
