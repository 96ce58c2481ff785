"""Faults: a soak with upstream faults sprinkled in, PostgreSQL restarted under load, and the
SQLite ledger made read-only under load; the ledger must hold exactly one row per request in
every case."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

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


# --- the SQLite ledger made read-only under load -------------------------------------------------

NOBODY = 65534
PROBE = """import sys
try:
    open(sys.argv[1], "a")
except PermissionError:
    sys.exit(0)
sys.exit(3)
"""


READS_CHECKOUT = """
import pathlib, sys
import service.migrate
migrations = pathlib.Path(service.migrate.__file__).parent / "migrations" / "versions"
assert any(migrations.glob("*.py")), f"cannot read {migrations}"
assert pathlib.Path(sys.argv[1]).is_dir(), f"cannot reach {sys.argv[1]}"
"""


def _unprivileged(probe_dir: Path) -> list[str]:
    """The command prefix that runs the service where permission bits stop its writes.

    Root ignores permission bits, so as root the service runs as ``nobody`` through setpriv,
    keeping CAP_DAC_READ_SEARCH alone: it still reads and traverses what root can (the
    virtualenv's interpreter may live under a 0700 /root), but its writes obey the permission
    bits. Any other user is bound by them already: no prefix. Skips if neither is possible."""
    if os.geteuid() != 0:
        return []
    if shutil.which("setpriv") is None:
        pytest.skip("running as root without setpriv: permission bits would stop no write")
    wrapper = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
    wrapper += ["--inh-caps=-all,+dac_read_search", "--ambient-caps=-all,+dac_read_search"]
    probe = probe_dir / "not-writable"
    probe.write_text("")
    probe.chmod(0o444)
    check = subprocess.run(
        [*wrapper, sys.executable, "-c", PROBE, str(probe)], capture_output=True, text=True
    )
    if check.returncode != 0:
        pytest.skip(
            f"cannot run a process as uid {NOBODY} whose writes obey permission bits "
            f"(exit {check.returncode}: {check.stderr.strip()[-300:]})"
        )
    reads = subprocess.run(
        [*wrapper, sys.executable, "-c", READS_CHECKOUT, str(probe_dir)],
        capture_output=True,
        text=True,
    )
    if reads.returncode != 0:
        pytest.skip(
            f"a process as uid {NOBODY} cannot read the checkout, the virtualenv or the test's "
            f"directory (a 0700 home or temporary directory without the capability to read it): "
            f"{reads.stderr.strip()[-300:]}"
        )
    return wrapper


def _set_writable(database: Path, writable: bool) -> None:
    """``chmod a-w`` the database file and its directory (no journal can be created there),
    or give their owner write permission back."""
    for path in (database, database.parent):
        mode = stat.S_IMODE(path.stat().st_mode)
        path.chmod(mode | stat.S_IWUSR if writable else mode & ~0o222)


@dataclass
class Answer:
    phase: str
    tenant: str
    status: int  # 0: no HTTP answer
    request_id: str | None
    code: str | None  # the error's code (OpenAI shape)
    seconds: float


async def _send(
    url: str, keys: dict[str, str], phase: str, count: int, concurrency: int, pause_s: float = 0.0
) -> list[Answer]:
    """``count`` chat requests, the tenants taking turns, one in three streamed."""
    answers: list[Answer] = []
    pending = list(range(count))
    tenants = sorted(keys)
    async with httpx.AsyncClient(timeout=30) as client:

        async def worker() -> None:
            while pending:
                i = pending.pop(0)
                tenant = tenants[i % len(tenants)]
                body = {
                    "model": "switchboard/auto",
                    "messages": [{"role": "user", "content": f"{phase}: request {i}"}],
                    "stream": i % 3 == 0,
                }
                headers = {"Authorization": f"Bearer {keys[tenant]}"}
                started = time.perf_counter()
                try:
                    async with client.stream(
                        "POST", f"{url}/v1/chat/completions", json=body, headers=headers
                    ) as response:
                        text = (await response.aread()).decode()
                except httpx.TransportError:
                    answers.append(Answer(phase, tenant, 0, None, None, 0.0))
                    continue
                code = None
                if response.status_code != 200:
                    error = json.loads(text)["error"]  # the OpenAI shape, not a traceback
                    assert set(error) == {"message", "type", "param", "code"}, text
                    code = error["code"]
                    if response.status_code == 503:
                        assert "retry-after" in response.headers
                elif body["stream"]:
                    assert text.rstrip().endswith("data: [DONE]"), text[-300:]
                request_id = response.headers.get("x-switchboard-request-id")
                seconds = time.perf_counter() - started
                answers.append(
                    Answer(phase, tenant, response.status_code, request_id, code, seconds)
                )
                await asyncio.sleep(pause_s)

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return answers


def test_sqlite_ledger_made_read_only_under_load_loses_and_duplicates_no_row(tmp_path):
    """The ledger file and its directory made read-only (chmod a-w) under load, through a
    restart, then writable again. Every request is answered: 200, or for a tenant under a budget
    (whose hold needs a write) 503 ``ledger_unavailable`` while the ledger cannot be written;
    after a graceful stop every request has exactly one row, with the status its caller saw."""
    from service.routing.learned import LearnedRouter

    wrapper = _unprivileged(tmp_path)
    ledger_dir, home = tmp_path / "ledger", tmp_path / "home"
    ledger_dir.mkdir()
    home.mkdir()
    database = ledger_dir / "ledger.db"
    url = f"sqlite:///{database}"
    keys = {tenant: new_key(url, tenant) for tenant in ("budgeted", "free")}
    if wrapper:  # the service's user owns what it writes
        for path in (home, ledger_dir, *ledger_dir.iterdir()):
            os.chown(path, NOBODY, NOBODY)
    # what the router caches (its embedding table) is built here: the service may not write it
    router = LearnedRouter.load(Settings().router_dir)
    router.p_pass(["warm up"], router.models)
    log_path = tmp_path / "service.log"
    answers: list[Answer] = []
    with FakeUpstreamServer(catalog_prices(router.models)) as upstream:
        env = upstream_env(url, upstream.url, admin_key="admin-key") | {
            "HOME": str(home),
            "SWITCHBOARD_JOURNAL_DIR": str(home / "journal"),  # the service's user writes it
        }
        with ServiceProcess(env, log_path=log_path, wrapper=wrapper) as service:
            response = httpx.post(
                f"{service.url}/v1/admin/budgets",
                json={"scope": "tenant:budgeted", "period": "total", "limit_usd": 1000},
                headers={"Authorization": "Bearer admin-key"},
            )
            assert response.status_code == 200, response.text
            answers += asyncio.run(_send(service.url, keys, "writable", 60, 8))
            _set_writable(database, False)
            # permission bits are checked when a file is opened: the connections this process
            # opened before keep writing (any it opens now are read-only)
            answers += asyncio.run(_send(service.url, keys, "read-only", 60, 8))
        # a restart while read-only: every connection the new process opens is read-only, and
        # the rows queue while its recorder retries (0.05, 0.2, 1, 2 s apart)
        with ServiceProcess(env, log_path=log_path, wrapper=wrapper) as service:
            answers += asyncio.run(_send(service.url, keys, "restarted read-only", 60, 4, 0.2))
            # a read that must first see the queued rows: a clear 503, not a wait without end
            started = time.perf_counter()
            listing = httpx.get(
                f"{service.url}/v1/requests",
                headers={"Authorization": f"Bearer {keys['free']}"},
                timeout=30,
            )
            assert time.perf_counter() - started < 10
            assert listing.status_code == 503, listing.text
            assert listing.json()["error"]["code"] == "ledger_unavailable"
            assert "retry-after" in listing.headers
            _set_writable(database, True)
            answers += asyncio.run(_send(service.url, keys, "writable again", 60, 8))
        # stopped with SIGTERM: the recorder drains its queue before the process exits
    engine = sa.create_engine(to_sync_url(url))
    with engine.connect() as conn:
        rows = conn.execute(sa.text("SELECT id, status, http_status, error_code FROM requests"))
        by_id = {row.id: row for row in rows}
        row_count = conn.scalar(sa.text("SELECT count(*) FROM requests"))
    engine.dispose()
    log = log_path.read_text()

    seen = Counter((a.phase, a.tenant, a.status) for a in answers)
    statuses = Counter(f"{a.status} {a.code or ''}".strip() for a in answers)
    print(f"{len(answers)} requests: {dict(statuses)}; {row_count} rows, {len(by_id)} ids")
    # every request answered, none slowly ...
    assert len(answers) == 240 and all(a.status for a in answers)
    assert max(a.seconds for a in answers) < 10
    # ... 200, except the budgeted tenant's while its hold cannot be written: a clear 503
    for a in answers:
        refused = (a.tenant, a.status, a.code) == ("budgeted", 503, "ledger_unavailable")
        assert a.status == 200 or refused, a
    assert seen["restarted read-only", "budgeted", 503] == 30  # the fault took effect ...
    assert "could not record" in log and "attempt to write a readonly database" in log
    assert seen["writable", "budgeted", 200] == 30
    assert seen["writable again", "budgeted", 200] >= 20  # ... and writes resumed after it
    # one row per request, with the status its caller saw
    assert row_count == len(by_id) == len(answers)
    for a in answers:
        assert a.request_id is not None
        row = by_id[a.request_id]
        expected = ("ok", 200, None) if a.status == 200 else ("error", a.status, a.code)
        assert (row.status, row.http_status, row.error_code) == expected, a


def test_a_row_the_database_refuses_is_recorded_without_what_it_refused(database_url):
    """One row holding what the ledger cannot store (a lone surrogate on both backends, a NUL
    and an over-long string on PostgreSQL) neither wedges the writer nor delays the rows after
    it: it is written at once without the offending fields, named in dropped_fields."""
    from service.alerts import Alerts
    from service.budgets import BudgetStore
    from service.catalog import Catalog
    from service.config import to_async_url
    from service.ledger import Ledger
    from service.metrics import Metrics
    from service.migrate import upgrade
    from service.record import RequestRecord
    from service.recorder import Recorder
    from service.spend_breaker import SpendBreaker
    from service.spend_control import SpendControl
    from service.tables import requests

    upgrade(database_url)
    settings = Settings(database_url=database_url)

    async def run() -> dict[str, dict]:
        ledger = Ledger.connect(to_async_url(database_url))
        tenant = await ledger.ensure_tenant("refused")
        async with httpx.AsyncClient() as client:
            alerts = Alerts(ledger.engine, settings, client)
            store = BudgetStore(ledger.engine, 0)
            spend = SpendControl(
                store,
                alerts,
                Catalog.load(),
                settings,
                SpendBreaker(ledger.engine, settings, alerts),
            )
            recorder = Recorder(ledger, Metrics(), spend)
            from service.ledger import Principal

            principal = Principal(tenant, "refused", None)
            records = [RequestRecord(principal, "chat.completions") for _ in range(4)]
            records[1].response = "half of a pair: \ud800"
            records[1].end_user = "nul \x00 inside"
            records[2].requested_model = "m" * 300
            for record in records:
                await recorder.finish(record)
            await asyncio.wait_for(recorder.flush(), 10)
            async with ledger.engine.connect() as conn:
                rows = (await conn.execute(requests.select())).all()
            await recorder.drain()
        await ledger.close()
        return {row.id: row._asdict() for row in rows}

    rows = asyncio.run(run())
    assert len(rows) == 4
    flagged = {row["dropped_fields"] for row in rows.values() if row["dropped_fields"]}
    assert any("response" in dropped for dropped in flagged)
    if database_url.startswith("postgresql"):
        assert any("end_user" in d for d in flagged) and any(
            "requested_model" in d for d in flagged
        )
    assert sum(1 for row in rows.values() if row["dropped_fields"] is None) >= 2


def _kill(service: ServiceProcess) -> None:
    """kill -9: nothing the process holds in memory survives."""
    assert service.process is not None
    service.process.kill()
    service.process.wait()
    service.process = None


def _ledger_rows(url: str) -> dict[str, Any]:
    engine = sa.create_engine(to_sync_url(url))
    with engine.connect() as conn:
        rows = conn.execute(
            sa.text("SELECT id, status, error_code, attempts, cost_usd, served_model FROM requests")
        ).all()
    engine.dispose()
    return {row.id: row for row in rows}


@contextlib.contextmanager
def _ledger_locked(url: str):
    """Hold the requests table so that no row can be written (the recorder's batches wait)."""
    engine = sa.create_engine(to_sync_url(url))
    conn = engine.connect()
    if url.startswith("sqlite"):
        conn.exec_driver_sql("BEGIN IMMEDIATE")
    else:
        conn.exec_driver_sql("BEGIN")
        conn.exec_driver_sql("LOCK TABLE requests IN ACCESS EXCLUSIVE MODE")
    try:
        yield
    finally:
        conn.exec_driver_sql("ROLLBACK")
        conn.close()
        engine.dispose()


async def _answers(url: str, key: str, count: int, stream_every: int = 3) -> list[str]:
    """``count`` concurrent chat requests; the request ids of those answered 200 in full."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "journal me"}]}
    async with httpx.AsyncClient(timeout=20) as client:

        async def one(i: int) -> str | None:
            try:
                async with client.stream(
                    "POST",
                    f"{url}/v1/chat/completions",
                    json={**body, "stream": i % stream_every == 0},
                    headers={"Authorization": f"Bearer {key}"},
                ) as response:
                    text = (await response.aread()).decode()
            except httpx.TransportError:
                return None  # the process died first
            complete = response.status_code == 200 and (
                "data: [DONE]" in text or '"choices"' in text
            )
            return response.headers.get("x-switchboard-request-id") if complete else None

        found = await asyncio.gather(*(one(i) for i in range(count)))
    return [f for f in found if f]


async def _killed_during(service: ServiceProcess, key: str, count: int, after_s: float) -> list:
    """Send ``count`` requests and kill the service ``after_s`` into them."""
    task = asyncio.create_task(_answers(service.url, key, count))
    await asyncio.sleep(after_s)
    _kill(service)
    return await task


MODEL = "openai/gpt-4o-mini"


def test_a_killed_process_loses_no_row_of_an_answer_or_an_upstream_call(database_url, tmp_path):
    """kill -9 after clients got answers whose rows could not be written yet, with upstream
    calls in flight, and mid-load, three times: after each restart every answer a client got
    has its row as the client saw it, every upstream call made is counted in some row, the
    budget's spend equals the ledger's, and the dead process's leases are released at once."""
    from service.budgets import BudgetStore
    from service.config import to_async_url
    from service.ledger import Ledger
    from service.migrate import upgrade

    upgrade(database_url)

    async def prepare() -> tuple[str, str, int]:
        ledger = Ledger.connect(to_async_url(database_url))
        try:
            free, _ = await ledger.create_key("journal-free")
            held, _ = await ledger.create_key("journal-budget")
            budget = await BudgetStore(ledger.engine).put("tenant:journal-budget", "total", 10.0)
            return free, held, budget.id
        finally:
            await ledger.close()

    free, held, budget_id = asyncio.run(prepare())
    received: list[str] = []
    with FakeUpstreamServer(catalog_prices([MODEL])) as upstream:
        env = upstream_env(database_url, upstream.url) | {
            "SWITCHBOARD_JOURNAL_DIR": str(tmp_path / "journal"),
            "SWITCHBOARD_REQUEST_TIMEOUT_S": "20",
        }
        log_path = tmp_path / "service.log"
        service = ServiceProcess(env, log_path=log_path).start()
        # 1. answered while no row can be written, then killed
        with _ledger_locked(database_url):
            received += asyncio.run(_answers(service.url, free, 12))
            assert len(received) == 12
            _kill(service)
        service = ServiceProcess(env, log_path=log_path).start()
        assert set(received) <= set(_ledger_rows(database_url))
        # 2. killed with upstream calls in flight (the upstream takes 3 s to answer)
        httpx.post(
            f"{upstream.control_url}/faults",
            json={"model": "*", "fault": "none", "latency_ms": 3000, "times": 10},
        )
        calls_before = len(upstream.state.requests)

        async def in_flight() -> None:
            load = asyncio.create_task(_answers(service.url, held, 10))
            while len(upstream.state.requests) < calls_before + 10:
                await asyncio.sleep(0.05)
            _kill(service)
            await load

        asyncio.run(in_flight())
        service = ServiceProcess(env, log_path=log_path).start()
        httpx.delete(f"{upstream.control_url}/faults")
        # 3. mid-load, three times
        for round_ in range(3):
            key = (free, held)[round_ % 2]
            received += asyncio.run(_killed_during(service, key, 40, 0.4 + 0.3 * round_))
            service = ServiceProcess(env, log_path=log_path).start()
        received += asyncio.run(_answers(service.url, held, 10))
        service.stop()
        upstream_calls = len(upstream.state.requests)
    rows = _ledger_rows(database_url)
    missing = [r for r in received if r not in rows]
    assert missing == []  # every answer a client got is in the ledger
    assert all(rows[r].status == "ok" for r in received)
    assert sum(r.attempts for r in rows.values()) >= upstream_calls  # every call left a row
    died = [r for r in rows.values() if r.error_code == "process_died"]
    assert died, "no call was caught in flight"
    engine = sa.create_engine(to_sync_url(database_url))
    with engine.connect() as conn:
        window = conn.execute(
            sa.text("SELECT spent_usd, reserved_usd FROM budget_windows WHERE budget_id = :b"),
            {"b": budget_id},
        ).one()
        tenant_spend = conn.scalar(
            sa.text(
                "SELECT coalesce(sum(charged_usd), 0) FROM requests r JOIN tenants t "
                "ON t.id = r.tenant_id WHERE t.name = 'journal-budget'"
            )
        )
    engine.dispose()
    assert window.spent_usd == pytest.approx(tenant_spend, rel=1e-9, abs=1e-12)
    assert window.reserved_usd == pytest.approx(0, abs=1e-12)  # no dead lease left
    assert not list((tmp_path / "journal").glob("journal-*"))  # all replayed or cleaned up
