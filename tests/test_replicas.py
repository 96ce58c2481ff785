"""Two server processes on one PostgreSQL database: an experiment keeps a tenant on one arm
whichever replica serves it, and a new champion is picked up by both without a restart. (Budgets
and alerts across replicas: tests/test_budget_replicas.py.)"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import time

import httpx
import pytest

from service.config import REPO_ROOT, Settings, to_async_url
from service.experiments import ExperimentStore, parse_arms
from service.ledger import Ledger
from service.migrate import upgrade
from service.routing.learned import LearnedRouter
from switchboard.fake_upstream import FakeUpstreamServer, catalog_prices
from switchboard.service_process import ServiceProcess, upstream_env
from tests.servers import postgres_database

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        not os.environ.get("SWITCHBOARD_TEST_POSTGRES_URL"), reason="needs PostgreSQL"
    ),
]


def test_two_replicas_share_experiments_and_pick_up_a_new_champion(tmp_path):
    router_dir = tmp_path / "router"
    shutil.copytree(REPO_ROOT / "models" / "router", router_dir)
    with postgres_database(os.environ["SWITCHBOARD_TEST_POSTGRES_URL"]) as url:
        upgrade(url)

        async def prepare() -> list[str]:
            ledger = Ledger.connect(to_async_url(url))
            try:
                keys = [(await ledger.create_key(f"team-{i}"))[0] for i in range(6)]
                await ExperimentStore(ledger.engine, 0).start(
                    "ab",
                    parse_arms("champion:50,heuristic:50"),
                    "tenant",
                    0.05,
                    100,
                    force=True,  # six tenants: below the minimum, but the point is a kept arm
                )
                return keys
            finally:
                await ledger.close()

        keys = asyncio.run(prepare())
        models = json.loads((Settings().router_dir / "router.json").read_text())["models"]
        with FakeUpstreamServer(catalog_prices(models)) as upstream:
            env = upstream_env(
                url, upstream.url, router_dir=str(router_dir), upkeep_interval_s="0.5"
            )
            replicas = [ServiceProcess(env, log_path=tmp_path / f"r{i}.log") for i in (1, 2)]
            for replica in replicas:
                replica.launch()
            try:
                for replica in replicas:
                    replica.wait_ready()
                body = {
                    "model": "switchboard/auto",
                    "messages": [{"role": "user", "content": "hi"}],
                }
                arms: dict[str, set[str]] = {}
                for key in keys:
                    for replica in replicas * 2:
                        response = httpx.post(
                            f"{replica.url}/v1/chat/completions",
                            json=body,
                            headers={"Authorization": f"Bearer {key}"},
                        )
                        record = httpx.get(
                            f"{replica.url}/v1/requests/{response.headers['x-switchboard-request-id']}",
                            headers={"Authorization": f"Bearer {key}"},
                        ).json()
                        arms.setdefault(key, set()).add(record["arm"])
                assert all(len(seen) == 1 for seen in arms.values())  # same arm on both
                assert len(set().union(*arms.values())) == 2  # and both arms in use
                # a new champion lands in the shared router directory
                fresh = LearnedRouter.load(router_dir)
                fresh.metadata["version"] = "next-" + fresh.version
                fresh.save(router_dir)

                def versions() -> set[str]:
                    return {
                        httpx.post(
                            f"{r.url}/v1/route",
                            json={"prompt": "hello"},
                            headers={"Authorization": f"Bearer {keys[0]}"},
                        ).json()["router_version"]
                        for r in replicas
                    }

                deadline = time.monotonic() + 20
                while versions() != {fresh.version}:
                    assert time.monotonic() < deadline, versions()
                    time.sleep(0.3)
            finally:
                for replica in replicas:
                    replica.stop()
