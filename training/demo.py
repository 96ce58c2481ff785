"""``make demo``: the service on the replay upstream, with held-out recorded traffic sent through
its HTTP API by the official ``openai`` client.

Runs offline: the replay upstream answers from the benchmarks' recorded responses, with their
recorded token counts and costs; the quality of each answer is the benchmark's own grade of it.
The same prompts go through five times: routed by the learned router at its default threshold, at
a stricter one and by its value rule (a passing answer worth ``ANSWER_VALUE_USD``), routed by the
heuristic baseline, and sent to the reference model (the best single model on these prompts).
"""

from __future__ import annotations

import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import pandas as pd

from service.config import Settings
from service.routing.learned import LearnedRouter
from switchboard.service_process import ServiceProcess
from training import datasets
from training.onboard import without
from training.report import decision_table
from training.simulate import SOURCE, Served, best_single_model, recorded_traffic, send
from training.train import DEFAULT_BAR
from training.versions import replace_dir

PROMPTS = 300
SEED = 0
CONCURRENCY = 8
STRICT_THRESHOLD = 0.85
ANSWER_VALUE_USD = 0.1
EXAMPLES = 2
ONBOARD_PROMPTS = 50


@dataclass
class Arm:
    label: str
    model: str
    extra_body: dict[str, object] | None = None


def summarize(served: list[Served]) -> dict[str, float | int]:
    costs = [s.cost_usd for s in served]
    quality = [s.quality for s in served]
    return {
        "requests": len(served),
        "spend": sum(c for c in costs if c is not None),
        "unpriced": sum(c is None for c in costs),
        "pass_rate": sum(q >= DEFAULT_BAR for q in quality) / len(quality),
        "quality": sum(quality) / len(quality),
    }


def ledger_totals(service_url: str, admin_key: str) -> tuple[int, float]:
    """Requests and spend as the service's own ledger holds them (through its API)."""
    response = httpx.get(
        f"{service_url}/v1/requests",
        params={"limit": 1},
        headers={"Authorization": f"Bearer {admin_key}"},
    )
    response.raise_for_status()
    summary = response.json()["summary"]
    return int(summary["requests"]), float(summary["cost_usd"])


@dataclass
class DemoResult:
    summaries: dict[str, dict[str, float | int]]  # per arm label, as ``summarize`` gives
    ledger_requests: int
    ledger_spend: float
    client_spend: float


def run_demo(echo: Callable[[str], None]) -> DemoResult:
    outcomes = datasets.load()
    prompts, graded = recorded_traffic(outcomes, PROMPTS, SEED)
    reference = best_single_model(graded)
    admin_key = "sb-admin-" + secrets.token_urlsafe(16)
    with tempfile.TemporaryDirectory(prefix="switchboard-demo-") as tmp:
        router_dir = Path(tmp) / "router"  # the shipped router, changed by the onboarding part
        shutil.copytree(Settings().router_dir, router_dir)
        env: dict[str, str | None] = {
            "SWITCHBOARD_DATABASE_URL": f"sqlite:///{Path(tmp) / 'ledger.db'}",
            "SWITCHBOARD_UPSTREAM": "replay",
            "SWITCHBOARD_ADMIN_KEY": admin_key,
            "OPENROUTER_API_KEY": None,
            "SWITCHBOARD_ROUTER_DIR": str(router_dir),
            "SWITCHBOARD_RUNS_DIR": str(Path(tmp) / "runs"),
            "SWITCHBOARD_SNAPSHOTS_DIR": str(Path(tmp) / "snapshots"),
            "SWITCHBOARD_UPKEEP_INTERVAL_S": "1",
        }
        echo("Starting `switchboard serve` on the replay upstream (recorded answers, no network)")
        with ServiceProcess(env, log_path=Path(tmp) / "service.log") as service:
            created = httpx.post(
                f"{service.url}/v1/admin/keys",
                json={"tenant": "demo"},
                headers={"Authorization": f"Bearer {admin_key}"},
            )
            created.raise_for_status()
            key = created.json()["key"]
            echo(f"  {service.url}, tenant 'demo' with a new API key\n")
            _route_examples(echo, service.url, key, prompts[:EXAMPLES])
            arms = [
                Arm("learned router", "switchboard/auto"),
                Arm(
                    f"learned, threshold {STRICT_THRESHOLD}",
                    "switchboard/auto",
                    {"switchboard": {"quality_threshold": STRICT_THRESHOLD}},
                ),
                Arm(
                    f"learned, answer worth ${ANSWER_VALUE_USD}",
                    "switchboard/auto",
                    {"switchboard": {"answer_value_usd": ANSWER_VALUE_USD}},
                ),
                Arm("heuristic", "switchboard/auto", {"switchboard": {"router": "heuristic"}}),
                Arm(f"always {reference}", reference),
            ]
            echo(
                f"Sending {len(prompts)} held-out {SOURCE} test prompts {len(arms)} times through "
                f"POST /v1/chat/completions ({CONCURRENCY} at a time, official openai client):\n"
            )
            results = {
                arm.label: send(
                    service.url,
                    key,
                    prompts,
                    graded,
                    arm.model,
                    arm.extra_body,
                    concurrency=CONCURRENCY,
                )
                for arm in arms
            }
            onboarding = _onboarding(
                echo, service.url, key, env, outcomes, prompts, graded, results["learned router"]
            )
            ledger_requests, ledger_spend = ledger_totals(service.url, admin_key)
    summaries = {label: summarize(served) for label, served in results.items()}
    _print_table(echo, summaries, arms[-1].label)
    learned = results["learned router"]
    mix = Counter(s.model for s in learned)
    echo("\nLearned router's routing mix:")
    for model, count in mix.most_common():
        echo(f"  {model:40s} {count:4d}  {count / len(learned):5.1%}")
    for line in onboarding.lines:
        echo(line)
    results.update(onboarding.results)
    client_spend = sum(s.cost_usd or 0.0 for arm in results.values() for s in arm)
    echo(
        f"\nLedger: {ledger_requests} requests recorded, ${ledger_spend:.4f} "
        f"(the client saw {sum(len(r) for r in results.values())} answers, ${client_spend:.4f})."
    )
    echo(
        "Pass rate: share of answers graded >= "
        f"{DEFAULT_BAR} by the benchmark; quality: mean grade. Costs are the benchmark's recorded "
        "costs of these very answers. Offline evaluation on every held-out set: docs/RESULTS.md "
        "(`make results`)."
    )
    return DemoResult(summaries, ledger_requests, ledger_spend, client_spend)


@dataclass
class Onboarded:
    lines: list[str]
    results: dict[str, list[Served]]


def _onboarding(
    echo: Callable[[str], None],
    url: str,
    key: str,
    env: dict[str, str | None],
    outcomes: pd.DataFrame,
    prompts: list[str],
    graded: pd.DataFrame,
    full: list[Served],
) -> Onboarded:
    """A model the learned router uses is taken out of it, the traffic is routed without it,
    the model is onboarded from ONBOARD_PROMPTS graded training prompts (the benchmark's own
    grades) with `switchboard models onboard`, and the traffic is routed again."""
    router_dir = Path(str(env["SWITCHBOARD_ROUTER_DIR"]))
    shipped = LearnedRouter.load(router_dir)
    if not shipped.open:
        return Onboarded(["\n(The shipped router cannot onboard models: no onboarding part.)"], {})
    model = Counter(s.model for s in full).most_common(1)[0][0]
    staging = router_dir.parent / "without"
    without(shipped, model).save(staging)
    replace_dir(staging, router_dir)
    _wait_for_version(url, key, prompts[0], LearnedRouter.load(router_dir).version)
    before = send(url, key, prompts, graded, "switchboard/auto", concurrency=CONCURRENCY)
    rows = outcomes[
        (outcomes["model"] == model)
        & (outcomes["source"] == SOURCE)
        & (outcomes["split"] == "train")
    ].sort_values("prompt_id")
    file = router_dir.parent / "graded.jsonl"
    rows.head(ONBOARD_PROMPTS)[["prompt", "model", "quality"]].to_json(
        file, orient="records", lines=True
    )
    command = [sys.executable, "-m", "switchboard", "models", "onboard", "--outcomes", str(file)]
    subprocess.run(
        [*command, "--no-mlflow"],
        env={k: v for k, v in {**os.environ, **env}.items() if v is not None},
        check=True,
        capture_output=True,
    )
    _wait_for_version(url, key, prompts[0], LearnedRouter.load(router_dir).version)
    after = send(url, key, prompts, graded, "switchboard/auto", concurrency=CONCURRENCY)
    arms = {"with it (shipped)": full, f"without {model}": before, "after onboarding": after}
    width = max(len(label) for label in arms) + 2
    lines = [
        f"\nOnboarding: {model}, the learned router's most used model, is taken out of it,",
        f"then onboarded from {ONBOARD_PROMPTS} graded training prompts "
        "(`switchboard models onboard`), and the same traffic routed each time:\n",
        f"{'':{width}s} {'spend $':>9s} {'pass rate':>9s}  share of {model}",
    ]
    for label, served in arms.items():
        row = summarize(served)
        share = sum(s.model == model for s in served) / len(served)
        lines.append(f"{label:{width}s} {row['spend']:9.4f} {row['pass_rate']:9.3f}  {share:.1%}")
    return Onboarded(lines, {"onboarding: without": before, "onboarding: after": after})


def _wait_for_version(url: str, key: str, prompt: str, version: str, timeout_s: float = 30) -> None:
    """Until the service routes with router ``version`` (it picks a new one up live)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        decision = httpx.post(
            f"{url}/v1/route", json={"prompt": prompt}, headers={"Authorization": f"Bearer {key}"}
        )
        if decision.is_success and decision.json()["router_version"] == version:
            return
        time.sleep(0.2)
    raise RuntimeError(f"the service did not pick up router {version}")


def _route_examples(echo: Callable[[str], None], url: str, key: str, prompts: list[str]) -> None:
    echo("POST /v1/route (the decision alone) for the first prompts of that traffic:\n")
    for prompt in prompts:
        response = httpx.post(
            f"{url}/v1/route",
            json={"prompt": prompt},
            headers={"Authorization": f"Bearer {key}"},
        )
        response.raise_for_status()
        decision = response.json()
        decision["candidates"] = sorted(
            decision["candidates"], key=lambda c: c["p_pass"], reverse=True
        )[:5]
        shown = " ".join(prompt.split())
        echo(f"> {shown[:150]}{' ...' if len(shown) > 150 else ''}")
        echo(decision_table(decision))
        echo("")


def _print_table(
    echo: Callable[[str], None],
    summaries: dict[str, dict[str, float | int]],
    reference_label: str,
) -> None:
    reference_spend = float(summaries[reference_label]["spend"])
    header = (
        f"{'':32s} {'requests':>8s} {'spend $':>9s} {'$/request':>10s} {'saving':>7s} "
        f"{'pass rate':>9s} {'quality':>7s}"
    )
    echo(header)
    echo("-" * len(header))
    for label, row in summaries.items():
        spend = float(row["spend"])
        saving = 1 - spend / reference_spend if reference_spend else float("nan")
        echo(
            f"{label:32s} {row['requests']:8d} {spend:9.4f} {spend / row['requests']:10.6f} "
            f"{saving:7.0%} {row['pass_rate']:9.3f} {row['quality']:7.3f}"
        )
