"""Graceful shutdown: on SIGTERM, requests in flight finish and are recorded; new ones are not
accepted."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import sqlalchemy as sa

from service.config import Settings, to_sync_url
from switchboard.fake_upstream import FakeUpstreamServer, catalog_prices
from switchboard.service_process import ServiceProcess, new_key, upstream_env

pytestmark = pytest.mark.slow
MODEL = "openai/gpt-4o-mini"


def test_sigterm_lets_requests_in_flight_finish_and_records_them(tmp_path):
    database = f"sqlite:///{tmp_path / 'ledger.db'}"
    api_key = new_key(database, "graceful")
    models = json.loads((Settings().router_dir / "router.json").read_text())["models"]
    with FakeUpstreamServer(catalog_prices([*models, MODEL])) as upstream:
        slow = {"model": "*", "fault": "none", "latency_ms": 1500, "times": -1}
        httpx.post(f"{upstream.control_url}/faults", json=slow).raise_for_status()
        env = upstream_env(database, upstream.url)
        service = ServiceProcess(env, log_path=tmp_path / "service.log").start()

        async def in_flight() -> list[int]:
            async with httpx.AsyncClient(timeout=30) as client:
                body = {"model": MODEL, "messages": [{"role": "user", "content": "slow one"}]}
                calls = [
                    client.post(
                        f"{service.url}/v1/chat/completions",
                        json=body,
                        headers={"Authorization": f"Bearer {api_key}"},
                    )
                    for _ in range(5)
                ]
                tasks = [asyncio.create_task(c) for c in calls]
                await asyncio.sleep(0.5)  # all five are waiting on the upstream now
                assert service.process is not None
                service.process.terminate()  # SIGTERM
                await asyncio.sleep(0.3)
                with pytest.raises(httpx.TransportError):  # no new requests
                    await client.post(f"{service.url}/v1/chat/completions", json=body)
                return [(await t).status_code for t in tasks]

        statuses = asyncio.run(in_flight())
        # uvicorn re-raises SIGTERM after its graceful shutdown: the exit says so
        assert service.process is not None and service.process.wait(timeout=30) in (0, -15)
    assert statuses == [200] * 5
    engine = sa.create_engine(to_sync_url(database))
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT status, cost_usd FROM requests")).all()
    engine.dispose()
    assert len(rows) == 5 and all(status == "ok" and cost > 0 for status, cost in rows)
