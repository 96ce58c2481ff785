"""Faults: a soak with upstream faults sprinkled in, and PostgreSQL restarted under load; the
ledger must hold exactly one row per request either way."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time

import httpx
import pytest
import sqlalchemy as sa

from service.config import Settings, to_sync_url
from switchboard.fake_upstream import FakeUpstreamServer, catalog_prices
from switchboard.service_process import ServiceProcess, new_key, upstream_env
from switchboard.soak import soak
from tests.servers import postgres_database

pytestmark = pytest.mark.slow


def test_a_short_soak_with_faults_loses_and_duplicates_no_row(tmp_path):
    result = soak(1200, 16, f"sqlite:///{tmp_path / 'ledger.db'}", tmp_path / "service.log")
    assert result.sent == 1200 and 0 not in result.statuses  # no connection dropped
    assert result.rows == result.sent and result.distinct_ids == result.rows
    assert result.statuses.get(200, 0) >= 0.9 * result.sent  # faults retried or fallen back
    assert result.ok_rows <= result.statuses.get(200, 0)
    fds = [s["open_fds"] for s in result.samples]
    assert max(fds) - fds[0] < 50  # no descriptor leak


@pytest.mark.skipif(
    not os.environ.get("SWITCHBOARD_TEST_RESTART_POSTGRES") or not shutil.which("pg_ctlcluster"),
    reason="restarts the local PostgreSQL: set SWITCHBOARD_TEST_RESTART_POSTGRES=1 (CI does)",
)
def test_postgres_restarted_mid_load_loses_no_row(tmp_path):
    with postgres_database(os.environ["SWITCHBOARD_TEST_POSTGRES_URL"]) as url:
        api_key = new_key(url, "restart")
        models = json.loads((Settings().router_dir / "router.json").read_text())["models"]
        with FakeUpstreamServer(catalog_prices(models)) as upstream:
            env = upstream_env(url, upstream.url)
            with ServiceProcess(env, log_path=tmp_path / "service.log") as service:
                statuses = []
                headers = {"Authorization": f"Bearer {api_key}"}
                body = {"model": "switchboard/auto", "messages": [{"role": "user", "content": "x"}]}
                restart = None
                for i in range(300):
                    if i == 100:  # restart the database while requests keep coming
                        restart = subprocess.Popen(["pg_ctlcluster", "15", "main", "restart"])
                    response = httpx.post(
                        f"{service.url}/v1/chat/completions", json=body, headers=headers, timeout=30
                    )
                    statuses.append(response.status_code)
                assert restart is not None and restart.wait(timeout=60) == 0
                time.sleep(2)  # the queued rows are retried with backoff
        engine = sa.create_engine(to_sync_url(url))
        with engine.connect() as conn:
            rows = conn.execute(sa.text("SELECT count(*), count(DISTINCT id) FROM requests")).one()
        engine.dispose()
    # answered throughout (the auth cache and the queued ledger carry the restart) ...
    assert statuses.count(200) == 300
    # ... and every row was written once the database was back
    assert tuple(rows) == (300, 300)
