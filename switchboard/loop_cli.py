"""The closed loop from the terminal: ``switchboard experiment ...``, ``switchboard retrain``,
``switchboard rollback``, and ``switchboard eval --logged`` (off-policy, on logged traffic)."""

from __future__ import annotations

import json
import time
from collections.abc import Awaitable, Callable
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, TypeVar

import typer

from switchboard.cli_support import fail, with_ledger

if TYPE_CHECKING:
    from service.experiments import ExperimentStore

T = TypeVar("T")
experiment_app = typer.Typer(help="Online A/B experiments between routers.", no_args_is_help=True)


def on_experiments(work: Callable[[ExperimentStore], Awaitable[T]]) -> T:
    from service.experiments import ExperimentStore

    return with_ledger(lambda ledger: work(ExperimentStore(ledger.engine, 0)))


@experiment_app.command("start")
def experiment_start(
    name: Annotated[str, typer.Option(help="The experiment's name.")],
    arms: Annotated[
        str, typer.Option(help="router:weight,... control first (champion, challenger, heuristic).")
    ] = "champion:50,heuristic:50",
    unit: Annotated[str, typer.Option(help="tenant or user: what keeps its arm.")] = "tenant",
    margin: Annotated[float, typer.Option(help="Stop an arm worse than control by this.")] = 0.05,
    min_feedback: Annotated[int, typer.Option(help="Ratings per arm before stopping.")] = 100,
) -> None:
    """Start an experiment (one runs at a time; replicas pick it up within seconds)."""
    from service.experiments import parse_arms

    try:
        parsed = parse_arms(arms)
        experiment = on_experiments(
            lambda store: store.start(name, parsed, unit, margin, min_feedback)
        )
    except ValueError as error:
        fail(str(error))
        return
    typer.echo(json.dumps(experiment.describe(), indent=1))


@experiment_app.command("stop")
def experiment_stop(name: Annotated[str, typer.Argument(help="The experiment.")]) -> None:
    """Stop a running experiment."""
    if not on_experiments(lambda store: store.stop(name, "stopped by an operator")):
        fail(f"no running experiment {name!r}")
    typer.echo(f"stopped {name}")


@experiment_app.command("show")
def experiment_show(
    name: Annotated[str, typer.Argument(help="The experiment.")],
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Per-arm cost, feedback, latency and fallback rate with intervals, and the tests."""

    async def show(store: ExperimentStore) -> dict[str, Any] | None:
        experiment = await store.get(name)
        return None if experiment is None else await store.results(experiment)

    results = on_experiments(show)
    if results is None:
        fail(f"no experiment {name!r}")
        return
    if as_json:
        typer.echo(json.dumps(results, indent=1))
        return
    typer.echo(f"{results['name']}: {results['status']} {results['stop_reason'] or ''}")
    typer.echo(
        f"{'arm':14s} {'requests':>8s} {'$/request':>10s} {'feedback':>9s} {'n':>5s} {'p':>7s}"
    )
    for arm in results["results"]:
        cost, quality = arm["cost_per_request_usd"]["mean"], arm["feedback"]["mean"]
        p = (arm["test"] or {}).get("p_worse_beyond_margin")
        typer.echo(
            f"{arm['arm'][:14]:14s} {arm['requests']:8d} "
            f"{'-' if cost is None else f'{cost:.6f}':>10s} "
            f"{'-' if quality is None else f'{quality:.3f}':>9s} {arm['feedback_n']:5d} "
            f"{'-' if p is None else f'{p:.4f}':>7s}"
        )


@experiment_app.command("list")
def experiment_list() -> None:
    """Every experiment, newest first."""
    for experiment in on_experiments(lambda store: store.all()):
        arms = ",".join(f"{a.name}:{a.weight:g}" for a in experiment.arms)
        typer.echo(f"{experiment.name:30s} {experiment.status:8s} {arms}")


def retrain_command(
    since_days: Annotated[
        float | None, typer.Option(help="Use logged traffic of the last N days (default: all).")
    ] = None,
    output: Annotated[Path, typer.Option(help="Where the challenger is written.")] = Path(
        "models/challenger"
    ),
    learners: Annotated[str | None, typer.Option(help="Comma-separated learners.")] = None,
    sample: Annotated[
        int | None, typer.Option(help="At most this many public prompts per source and split.")
    ] = None,
    margin: Annotated[float, typer.Option(help="Largest pass-rate loss the gate allows.")] = 0.005,
    confidence: Annotated[float, typer.Option(help="The gate's one-sided confidence.")] = 0.95,
    promote: Annotated[bool, typer.Option(help="Promote if the gate passes.")] = True,
    every: Annotated[
        str | None, typer.Option(help="Repeat forever at this interval, e.g. 24h or 90m.")
    ] = None,
    seed: Annotated[int, typer.Option()] = 0,
) -> None:
    """Retrain on public data plus logged traffic, compare with the champion, log to MLflow,
    and promote only through the statistical gate."""
    import logging

    from service.config import Settings
    from service.ledger import now
    from training.retrain import retrain

    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    settings = Settings()
    interval = _interval(every) if every else None
    while True:
        since = now() - timedelta(days=since_days) if since_days else None
        report = retrain(
            settings.database_url,
            settings.router_dir,
            output,
            since,
            learners.split(",") if learners else None,
            sample,
            seed,
            margin,
            confidence,
            promote,
        )
        gate = report["gate"]
        typer.echo(json.dumps(report, indent=1, default=str))
        typer.echo(
            f"challenger {report['challenger']['version']}: gate "
            f"{'passed' if gate['passed'] else 'failed'} ({gate['reason']}); "
            f"{'promoted' if report['promoted'] else 'not promoted'}",
            err=True,
        )
        if interval is None:
            return
        time.sleep(interval)


def _interval(text: str) -> float:
    units = {"s": 1, "m": 60, "h": 3600, "d": 86400}
    try:
        seconds = float(text[:-1]) * units[text[-1]]
    except (KeyError, ValueError):
        fail("--every takes a number and a unit: 30m, 24h, 7d")
        raise
    if seconds < 60:
        fail("--every must be at least a minute")
    return seconds


def rollback_command() -> None:
    """Restore the previous champion (MLflow alias and the service's router directory)."""
    from service.config import Settings
    from training.retrain import rollback

    try:
        result = rollback(Settings().router_dir)
    except ValueError as error:
        fail(str(error))
        return
    typer.echo(json.dumps(result, indent=1))


def eval_logged(
    since_days: float | None, thresholds: list[float], router: Path | None, as_json: bool
) -> None:
    """Off-policy estimates of routers on the logged traffic (``switchboard eval --logged``)."""
    from service.config import Settings
    from service.ledger import now
    from service.routing.learned import LearnedRouter
    from training.offpolicy import (
        evaluate_logged,
        heuristic_policy,
        logged_policy,
        router_policy,
        threshold_policy,
    )
    from training.traffic import logged_requests

    settings = Settings()
    since = now() - timedelta(days=since_days) if since_days else None
    logged = logged_requests(settings.database_url, since)
    if logged.empty:
        fail("no logged auto-routed requests to evaluate on")
    policies = {"logged": logged_policy()}
    for t in thresholds:
        policies[f"threshold {t:g}"] = threshold_policy(t)
    if router is not None:
        challenger = LearnedRouter.load(router)
        policies[f"router {challenger.version}"] = router_policy(challenger)
        policies["heuristic"] = heuristic_policy(challenger.default_threshold)
    try:
        results = evaluate_logged(logged, policies)
    except ValueError as error:
        fail(str(error))
        return
    if as_json:
        typer.echo(json.dumps(results, indent=1))
        return
    typer.echo(f"{len(logged)} logged requests, {int(logged['quality'].notna().sum())} rated")
    typer.echo(
        f"{'policy':24s} {'agree':>6s} {'quality DR (95 %)':>26s} {'$/request DR (95 %)':>32s}"
    )
    for name, r in results.items():
        q, c = r["quality"]["dr"], r["cost_usd"]["dr"]
        typer.echo(
            f"{name[:24]:24s} {r['agreement']:6.2f} "
            f"{q['value']:8.3f} ({q['ci_low']:.3f}, {q['ci_high']:.3f}) "
            f"{c['value']:10.6f} ({c['ci_low']:.6f}, {c['ci_high']:.6f})"
        )


def judge_command(
    model: Annotated[str, typer.Option(help="The judge model (a catalog id).")],
    share: Annotated[float, typer.Option(help="Share of logged answers to grade.")] = 0.1,
    since_days: Annotated[float | None, typer.Option(help="Only the last N days.")] = None,
    limit: Annotated[int, typer.Option(help="Grade at most this many.")] = 1000,
    url: Annotated[str, typer.Option(help="The running service.")] = "http://127.0.0.1:8000",
) -> None:
    """Grade a sample of logged answers with an LLM judge through the service (priced, recorded
    and budgeted like any request); the grades become feedback with source 'judge'."""
    from service.config import Settings
    from service.ledger import now
    from service.schemas import AUTO_MODEL
    from training.judge import grade

    settings = Settings()
    if settings.admin_key is None:
        fail("the judge rates every tenant's answers: set SWITCHBOARD_ADMIN_KEY")
        return
    if model == AUTO_MODEL or not 0 < share <= 1:
        fail("--model must name a model (not switchboard/auto) and --share be in (0, 1]")
    since = now() - timedelta(days=since_days) if since_days else None
    key = settings.admin_key.get_secret_value()
    counts = grade(settings.database_url, url, key, model, share, since, limit)
    typer.echo(json.dumps(counts))


def soak_command(
    requests: Annotated[int, typer.Option(help="How many requests.")] = 20_000,
    concurrency: Annotated[int, typer.Option(help="Requests in flight.")] = 32,
    database_url: Annotated[
        str | None, typer.Option(help="Ledger database (default: a fresh SQLite file).")
    ] = None,
) -> None:
    """Soak a real server with faults sprinkled in; check the ledger against the clients."""
    import tempfile

    from switchboard.soak import soak

    workdir = Path(tempfile.mkdtemp(prefix="switchboard-soak-"))
    url = database_url or f"sqlite:///{workdir / 'ledger.db'}"
    result = soak(requests, concurrency, url, workdir / "service.log")
    typer.echo(json.dumps(result.report(), indent=1))
    if result.rows != result.sent or result.distinct_ids != result.rows:
        fail(f"the ledger has {result.rows} rows for {result.sent} requests")
