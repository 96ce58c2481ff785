"""``switchboard bench`` (gateway part): switchboard against the LiteLLM proxy, a minimal
pass-through and the mock alone, on one loopback mock, in one run.

Every target runs as one worker process on this machine: the mock (switchboard.bench_servers),
the pass-through, LiteLLM's proxy (installed by this command in its own throwaway virtualenv,
``.bench/litellm``; nothing of it enters the project), and switchboard with learned routing
(``switchboard/auto``), the cost ledger and a budget hold on every request, on SQLite and, where
PostgreSQL is reachable, on PostgreSQL. Load comes from ``hey`` (c = 1, paced at 50 requests
per second: latency without queueing) and ``wrk`` (closed loop at c = 1, 4, 16, 64: throughput
and latency under load); streams are timed by a Python client (time to first byte and total).
Ratios are taken within this run only.
"""

from __future__ import annotations

import csv
import io
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from service.config import REPO_ROOT

BENCH = REPO_ROOT / ".bench"
LITELLM_VENV = BENCH / "litellm"
MASTER_KEY = "sk-bench-1234"
PORTS = {"direct": 18080, "passthrough": 4200, "litellm": 4000, "switchboard": 4100}
PROMPT_TOKENS = (12, 64, 256, 1000)
CONCURRENCY = (1, 4, 16, 64)
PACED_SECONDS, WRK_SECONDS, STREAMS = 5, 6, 150
LUA = "\n".join(
    [
        'local f = io.open(os.getenv("BODY_FILE"), "r")',
        'wrk.method = "POST"; wrk.body = f:read("*a"); f:close()',
        'wrk.headers["Content-Type"] = "application/json"',
        'local a = os.getenv("AUTH")',
        'if a and #a > 0 then wrk.headers["Authorization"] = "Bearer " .. a end',
        "done = function(s, lat, req)",
        "  local e = s.errors.connect + s.errors.read + s.errors.write + s.errors.timeout",
        '  io.write(string.format(\'JSON {"requests":%d,"non2xx":%d,"errors":%d,"rps":%.1f,\'',
        '    .. \'"p50_ms":%.3f,"p99_ms":%.3f}\\n\', s.requests, s.errors.status, e,',
        "    s.requests / (s.duration / 1e6), lat:percentile(50) / 1000,",
        "    lat:percentile(99) / 1000))",
        "end",
    ]
)


@dataclass
class Target:
    name: str
    port: int
    model: str
    auth: str = ""
    process: subprocess.Popen[bytes] | None = None
    startup_s: float | None = None
    rss_mb: dict[str, float] = field(default_factory=dict)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1/chat/completions"

    def rss(self) -> float:
        """Resident memory of the process and its children, in MB."""
        if self.process is None:
            return float("nan")
        pids = [self.process.pid]
        try:
            children = Path(f"/proc/{self.process.pid}/task/{self.process.pid}/children")
            pids += [int(p) for p in children.read_text().split()]
        except OSError:
            pass
        total = 0
        for pid in pids:
            try:
                status = Path(f"/proc/{pid}/status").read_text()
                total += int(
                    next(line for line in status.splitlines() if line.startswith("VmRSS")).split()[
                        1
                    ]
                )
            except (OSError, StopIteration, ValueError):
                continue
        return total / 1024


def _start(target: Target, command: list[str], env: dict[str, str], ready: str) -> Target:
    log = open(BENCH / f"{target.name}.log", "wb")  # noqa: SIM115 (closed with the process)
    started = time.perf_counter()
    target.process = subprocess.Popen(command, env={**os.environ, **env}, stdout=log, stderr=log)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if httpx.get(ready, timeout=1).status_code < 500:
                target.startup_s = time.perf_counter() - started
                return target
        except httpx.TransportError:
            pass
        if target.process.poll() is not None:
            break
        time.sleep(0.1)
    raise RuntimeError(f"{target.name} did not start; see {BENCH / (target.name + '.log')}")


def _uvicorn(app: str, port: int) -> list[str]:
    return [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port),
            "--workers", "1", "--log-level", "warning", "--no-access-log"]  # fmt: skip


def install_litellm() -> str | None:
    """LiteLLM's proxy in its own virtualenv; its version, or None if it cannot be installed."""
    python = LITELLM_VENV / "bin" / "python"
    if not (LITELLM_VENV / "bin" / "litellm").exists():
        subprocess.run([sys.executable, "-m", "venv", str(LITELLM_VENV)], check=True)
        result = subprocess.run(
            [str(python), "-m", "pip", "install", "-q", "litellm[proxy]", "httptools"],
            capture_output=True,
        )
        if result.returncode != 0:
            return None
    out = subprocess.run(
        [str(python), "-c", "import importlib.metadata as m; print(m.version('litellm'))"],
        capture_output=True, text=True,
    )  # fmt: skip
    return out.stdout.strip() or None


def start_targets(database_url: str, postgres_url: str | None) -> list[Target]:
    BENCH.mkdir(exist_ok=True)
    upstream = f"http://127.0.0.1:{PORTS['direct']}/v1"
    direct = _start(
        Target("direct", PORTS["direct"], "mock-gpt"),
        _uvicorn("switchboard.bench_servers:mock", PORTS["direct"]),
        {},
        f"http://127.0.0.1:{PORTS['direct']}/",
    )
    targets = [direct]
    targets.append(
        _start(
            Target("passthrough", PORTS["passthrough"], "mock-gpt"),
            _uvicorn("switchboard.bench_servers:passthrough", PORTS["passthrough"]),
            {"PASSTHROUGH_UPSTREAM": upstream},
            f"http://127.0.0.1:{PORTS['passthrough']}/",
        )
    )
    if (LITELLM_VENV / "bin" / "litellm").exists():
        config = BENCH / "litellm.yaml"
        config.write_text(
            "model_list:\n  - model_name: mock-gpt\n    litellm_params: {model: openai/mock-gpt, "
            f'api_base: "{upstream}", api_key: sk-mock-upstream}}\n'
            "litellm_settings: {drop_params: true}\n"
            f"general_settings: {{master_key: {MASTER_KEY}}}\n"
        )
        targets.append(
            _start(
                Target("litellm", PORTS["litellm"], "mock-gpt", MASTER_KEY),
                [
                    str(LITELLM_VENV / "bin" / "litellm"),
                    "--config",
                    str(config),
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(PORTS["litellm"]),
                    "--num_workers",
                    "1",
                ],
                {
                    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
                    "LITELLM_LOG": "ERROR",
                    "HF_HUB_OFFLINE": "1",
                },
                f"http://127.0.0.1:{PORTS['litellm']}/health/liveliness",
            )
        )
    no_budget_url = database_url.removesuffix(".db") + "-no-budget.db"
    for name, url, port, budget in (
        ("switchboard", database_url, PORTS["switchboard"], True),
        ("switchboard-pg", postgres_url, PORTS["switchboard"] + 1, True),
        ("switchboard-no-budget", no_budget_url, PORTS["switchboard"] + 2, False),
    ):
        if url is None:
            continue
        key = _prepare_switchboard(url, budget)
        targets.append(
            _start(
                Target(name, port, "switchboard/auto", key),
                [
                    sys.executable,
                    "-m",
                    "switchboard",
                    "serve",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(port),
                    "--workers",
                    "1",
                ],
                {
                    "SWITCHBOARD_DATABASE_URL": url,
                    "SWITCHBOARD_OPENROUTER_BASE_URL": upstream,
                    "OPENROUTER_API_KEY": "sk-mock-upstream",
                    "SWITCHBOARD_UPSTREAM": "openrouter",
                },
                f"http://127.0.0.1:{port}/readyz",
            )
        )
    return targets


def _prepare_switchboard(database_url: str, budget: bool = True) -> str:
    """A fresh ledger with a tenant key and, with ``budget``, a global budget (so every request
    takes a hold)."""
    import asyncio

    from service.budgets import BudgetStore
    from service.config import to_async_url
    from service.ledger import Ledger
    from service.migrate import upgrade

    upgrade(database_url)

    async def prepare() -> str:
        ledger = Ledger.connect(to_async_url(database_url))
        try:
            key, _ = await ledger.create_key("bench")
            if budget:
                await BudgetStore(ledger.engine).put("global", "month", 1_000_000.0)
            return key
        finally:
            await ledger.close()

    return asyncio.run(prepare())


def body_file(target: Target, tokens: int, stream: bool = False) -> Path:
    words = ("route this prompt to the cheapest model that answers it well " * 200).split()
    content = " ".join(words[: max(1, int(tokens * 0.75))])
    body = {
        "model": target.model,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": 16,
    }
    if stream:
        body |= {"stream": True, "stream_options": {"include_usage": True}}
    path = BENCH / f"body-{target.name}-{tokens}{'-stream' if stream else ''}.json"
    path.write_text(json.dumps(body))
    return path


def hey_paced(target: Target, body: Path, seconds: int = PACED_SECONDS) -> dict[str, float]:
    """c = 1 at 50 requests per second: latency without queueing."""
    command = ["hey", "-z", f"{seconds}s", "-c", "1", "-q", "50", "-m", "POST", "-T",
               "application/json", "-D", str(body), "-o", "csv"]  # fmt: skip
    if target.auth:
        command += ["-H", f"Authorization: Bearer {target.auth}"]
    out = subprocess.run([*command, target.url], capture_output=True, text=True, check=True).stdout
    rows = list(csv.DictReader(io.StringIO(out)))
    ok = [float(r["response-time"]) * 1000 for r in rows if r["status-code"] == "200"]
    values = np.asarray(ok)
    return {
        "requests": len(rows),
        "errors": len(rows) - len(ok),
        "p50_ms": float(np.percentile(values, 50)),
        "p99_ms": float(np.percentile(values, 99)),
    }


def wrk(target: Target, body: Path, connections: int, seconds: int = WRK_SECONDS) -> dict:
    script = BENCH / "post.lua"
    script.write_text(LUA)
    env = {**os.environ, "BODY_FILE": str(body), "AUTH": target.auth}
    command = ["wrk", "-t1", f"-c{connections}", f"-d{seconds}s", "-s", str(script), target.url]
    out = subprocess.run(command, capture_output=True, text=True, env=env, check=True).stdout
    line = next(line for line in out.splitlines() if line.startswith("JSON "))
    return json.loads(line[5:])


def streams(target: Target, body: Path, count: int = STREAMS) -> dict[str, float]:
    """Sequential streamed requests: time to first byte and total, in ms."""
    headers = {"content-type": "application/json"}
    if target.auth:
        headers["authorization"] = f"Bearer {target.auth}"
    payload = body.read_bytes()
    first, total = [], []
    with httpx.Client(timeout=30) as client:
        for i in range(count + 20):
            started = time.perf_counter()
            with client.stream("POST", target.url, content=payload, headers=headers) as response:
                chunks = response.iter_raw()
                next(chunks)
                ttfb = time.perf_counter() - started
                for _ in chunks:
                    pass
            if i >= 20:  # warm-up
                first.append(ttfb * 1000)
                total.append((time.perf_counter() - started) * 1000)
    return {"ttfb_p50_ms": float(np.median(first)), "total_p50_ms": float(np.median(total))}


def stop(targets: list[Target]) -> None:
    for target in targets:
        if target.process is not None and target.process.poll() is None:
            target.process.terminate()
            try:
                target.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                target.process.kill()


def fresh_postgres(server_url: str | None) -> str | None:
    """A new, empty ``switchboard_bench`` database on that server (None: no PostgreSQL run)."""
    if not server_url:
        return None
    import sqlalchemy as sa

    from service.config import to_sync_url

    admin = sa.create_engine(to_sync_url(server_url), isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(sa.text('DROP DATABASE IF EXISTS "switchboard_bench" WITH (FORCE)'))
            conn.execute(sa.text('CREATE DATABASE "switchboard_bench"'))
    except sa.exc.OperationalError:
        return None
    finally:
        admin.dispose()
    return server_url.rsplit("/", 1)[0] + "/switchboard_bench"


def run(postgres_url: str | None) -> dict[str, Any]:
    import logging

    logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per streamed request
    missing = [tool for tool in ("wrk", "hey") if shutil.which(tool) is None]
    if missing:
        raise RuntimeError(f"the gateway benchmark needs {' and '.join(missing)} (apt install)")
    litellm_version = install_litellm()
    database = BENCH / "ledger.db"
    for leftover in BENCH.glob("ledger*.db*"):
        leftover.unlink()
    targets = start_targets(f"sqlite:///{database}", postgres_url)
    results: dict[str, Any] = {"litellm_version": litellm_version, "targets": {}}
    try:
        for target in targets:  # warm-up
            hey_paced(target, body_file(target, 64), 2)
            target.rss_mb["rest"] = target.rss()
        for target in targets:
            entry: dict[str, Any] = {"startup_s": target.startup_s, "paced": {}, "wrk": {}}
            for tokens in PROMPT_TOKENS:
                entry["paced"][tokens] = hey_paced(target, body_file(target, tokens))
            for connections in CONCURRENCY:
                entry["wrk"][connections] = wrk(target, body_file(target, 64), connections)
            target.rss_mb["load"] = target.rss()
            entry["stream"] = streams(target, body_file(target, 64, stream=True))
            entry["rss_mb"] = target.rss_mb
            results["targets"][target.name] = entry
    finally:
        stop(targets)
    results["machine"] = {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "wrk": shutil.which("wrk") is not None,
    }
    return results


def _ratio(a: float, b: float) -> str:
    return f"{a / b:.2f}x" if b else "-"


def section(results: dict[str, Any], decision_p50_ms: float | None) -> str:
    """The gateway part of docs/BENCHMARKS.md: method, raw numbers, ratios, targets."""
    t = results["targets"]
    lines = [
        "## Gateway overhead and throughput against LiteLLM",
        "",
        f"One run on {results['machine']['cpus']} CPUs ({results['machine']['platform']}, Python "
        f"{results['machine']['python']}), every target one worker process on the same cores; "
        f"LiteLLM proxy {results['litellm_version'] or 'not installed'} in its own virtualenv. "
        "The mock is switchboard.bench_servers:mock (uvicorn, answers at once; streams 20 "
        "chunks). switchboard routes `switchboard/auto` with the learned router, writes its "
        "ledger row and takes a budget hold on every request (a global budget; "
        "switchboard-no-budget: the same on SQLite without any budget, so no hold, to show "
        "what holding costs). c = 1 latency: `hey`, one "
        f"connection paced at 50 requests/s for {PACED_SECONDS} s; throughput: `wrk -t1` closed "
        f"loop for {WRK_SECONDS} s per concurrency, 64-token prompt; streams: {STREAMS} "
        "sequential requests from a Python client. Added latency = target minus the mock alone.",
        "",
        "### c = 1, paced: p50 / p99 ms by prompt length (tokens)",
        "",
        "| target | " + " | ".join(f"{n}" for n in PROMPT_TOKENS) + " |",
        "|---|" + "---|" * len(PROMPT_TOKENS),
    ]
    for name, entry in t.items():
        cells = [
            f"{entry['paced'][n]['p50_ms']:.2f} / {entry['paced'][n]['p99_ms']:.2f}"
            for n in PROMPT_TOKENS
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "### Closed loop, 64-token prompt: requests/s, p50 / p99 ms", ""]
    lines += ["| target | " + " | ".join(f"c={c}" for c in CONCURRENCY) + " |"]
    lines += ["|---|" + "---|" * len(CONCURRENCY)]
    for name, entry in t.items():
        cells = [
            f"{w['rps']:.0f}, {w['p50_ms']:.1f} / {w['p99_ms']:.1f}"
            + (f" ({w['non2xx'] + w['errors']} errors)" if w["non2xx"] + w["errors"] else "")
            for w in (entry["wrk"][c] for c in CONCURRENCY)
        ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines += ["", "### Streams, start-up and memory", ""]
    lines += [
        "| target | first byte p50 ms | total p50 ms | start-up s | RSS at rest MB "
        "| RSS after load MB |"
    ]
    lines += ["|---|---|---|---|---|---|"]
    for name, entry in t.items():
        s, rss = entry["stream"], entry["rss_mb"]
        startup = f"{entry['startup_s']:.1f}" if entry["startup_s"] is not None else "-"
        lines.append(
            f"| {name} | {s['ttfb_p50_ms']:.2f} | {s['total_p50_ms']:.2f} | {startup} | "
            f"{rss.get('rest', float('nan')):.0f} | {rss.get('load', float('nan')):.0f} |"
        )
    if "litellm" in t and "switchboard" in t:
        lines += ["", "### Against the targets (ratios within this run)", ""]
        lines += _targets(t, decision_p50_ms)
    return "\n".join(lines) + "\n"


def _targets(t: dict[str, Any], decision_p50_ms: float | None) -> list[str]:
    direct, lite, sb = t["direct"], t["litellm"], t["switchboard"]
    add = {
        name: {
            q: entry["paced"][64][f"{q}_ms"] - direct["paced"][64][f"{q}_ms"]
            for q in ("p50", "p99")
        }
        for name, entry in (("litellm", lite), ("switchboard", sb))
    }
    saturation = {
        name: max(w["rps"] for w in t[name]["wrk"].values()) for name in ("litellm", "switchboard")
    }
    first_byte = sb["stream"]["ttfb_p50_ms"] - direct["stream"]["ttfb_p50_ms"]
    stream_body = (sb["stream"]["total_p50_ms"] - sb["stream"]["ttfb_p50_ms"]) - (
        direct["stream"]["total_p50_ms"] - direct["stream"]["ttfb_p50_ms"]
    )
    per_chunk = stream_body / 22  # 20 content chunks, the first and the usage chunk
    rows = [
        (
            "added latency p50, c = 1, 64 tokens",
            f"{add['switchboard']['p50']:.2f} ms vs LiteLLM {add['litellm']['p50']:.2f} ms",
            _ratio(add["switchboard"]["p50"], add["litellm"]["p50"]),
            "<= 0.5x",
        ),
        (
            "added latency p99, c = 1, 64 tokens",
            f"{add['switchboard']['p99']:.2f} ms vs LiteLLM {add['litellm']['p99']:.2f} ms",
            _ratio(add["switchboard"]["p99"], add["litellm"]["p99"]),
            "<= 0.5x",
        ),
        (
            "saturation throughput per worker",
            f"{saturation['switchboard']:.0f} vs LiteLLM {saturation['litellm']:.0f} requests/s",
            _ratio(saturation["switchboard"], saturation["litellm"]),
            ">= 3x",
        ),
        ("stream first-byte overhead, c = 1", f"{first_byte:.2f} ms", "-", "<= 5 ms"),
        ("stream per-chunk overhead", f"{per_chunk:.3f} ms", "-", "<= 0.2 ms"),
    ]
    if decision_p50_ms is not None:
        rows.append(
            ("routing decision p50, 64 tokens", f"{decision_p50_ms:.2f} ms", "-", "<= 2 ms")
        )
    out = ["| measure | value | ratio | target |", "|---|---|---|---|"]
    out += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return out
