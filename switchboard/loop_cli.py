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
    unit: Annotated[
        str, typer.Option(help="tenant, user or request: what keeps its arm (request: each drawn).")
    ] = "tenant",
    margin: Annotated[float, typer.Option(help="Stop an arm worse than control by this.")] = 0.05,
    min_feedback: Annotated[
        int, typer.Option(help="Rated requests per arm before stopping.")
    ] = 100,
    max_requests: Annotated[
        int | None, typer.Option(help="Stop after this many requests in all (default: no cap).")
    ] = None,
    force: Annotated[
        bool, typer.Option("--force", help="Start a tenant-unit experiment below the minimum.")
    ] = False,
) -> None:
    """Start an experiment (one runs at a time; replicas pick it up within seconds). Unit tenant
    needs SWITCHBOARD_EXPERIMENT_MIN_TENANTS tenants (20) unless forced."""
    from service.config import Settings
    from service.experiments import parse_arms

    minimum = Settings().experiment_min_tenants
    try:
        parsed = parse_arms(arms)
        experiment = on_experiments(
            lambda store: store.start(
                name,
                parsed,
                unit,
                margin,
                min_feedback,
                max_requests=max_requests,
                force=force,
                min_tenants=minimum,
            )
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
    balance, unit = results["balance"], results["unit"]
    over = "requests" if unit == "request" else f"{unit} means (each {unit} counts once)"
    counted = "" if unit == "request" else f"{balance['units']} {unit}s, "
    typer.echo(
        f"unit {unit}: {counted}{balance['requests']} requests; intervals and tests over {over}"
    )
    typer.echo(
        f"{'arm':14s} {'share':>6s} {'units':>6s} {'requests':>8s} {'explored':>8s} "
        f"{'$/request':>10s} {'feedback':>9s} {'rated':>6s}"
    )
    for arm in results["results"]:
        cost, quality = arm["cost_per_request_usd"]["mean"], arm["feedback"]["mean"]
        typer.echo(
            f"{arm['arm'][:14]:14s} {arm['expected_share']:6.0%} {arm['units']:6d} "
            f"{arm['requests']:8d} {arm['explored']:8d} "
            f"{'-' if cost is None else f'{cost:.6f}':>10s} "
            f"{'-' if quality is None else f'{quality:.3f}':>9s} {arm['feedback_n']:6d}"
        )
    for arm in results["results"][1:]:
        test = arm["test"]
        p = test["p_worse_beyond_margin"]
        typer.echo(
            f"{arm['arm']} - {test['vs']}: feedback {_difference(test['feedback_diff'], 3)}, "
            f"cost per request {_difference(test['cost_diff_usd'], 8)} USD, "
            f"p(worse beyond the margin) {'-' if p is None else f'{p:.4f}'}"
        )
    for warning in results["warnings"]:
        typer.echo(f"warning: {warning}")


def _difference(test: dict[str, Any], digits: int) -> str:
    if test["diff"] is None:
        return "-"
    if test["ci_low"] is None:
        return f"{test['diff']:+.{digits}f} (no interval yet)"
    return (
        f"{test['diff']:+.{digits}f} ({test['ci_low']:+.{digits}f} to "
        f"{test['ci_high']:+.{digits}f})"
    )


@experiment_app.command("list")
def experiment_list() -> None:
    """Every experiment, newest first."""
    for experiment in on_experiments(lambda store: store.all()):
        arms = ",".join(f"{a.name}:{a.weight:g}" for a in experiment.arms)
        typer.echo(f"{experiment.name:30s} {experiment.status:8s} {experiment.unit:8s} {arms}")


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
    since_days: float | None,
    thresholds: list[float],
    router: Path | None,
    as_json: bool,
    router_version: str | None = None,
    min_ess: float = 30.0,
) -> None:
    """Off-policy estimates of routers on the logged traffic (``switchboard eval --logged``):
    the logged router without exploration, at other thresholds, the heuristic and (``router``)
    another learned router, on the requests one router version decided."""
    from service.config import Settings
    from service.ledger import now
    from service.routing.learned import LearnedRouter
    from training.offpolicy import (
        Policy,
        evaluate_logged,
        heuristic_policy,
        logged_policy,
        one_router_version,
        router_policy,
        threshold_policy,
    )
    from training.traffic import logged_requests

    if not min_ess >= 1:
        fail("--min-ess must be at least 1")
    if any(not 0.0 <= t <= 1.0 for t in thresholds):
        fail("--threshold must be in [0, 1]")
    settings = Settings()
    since = now() - timedelta(days=since_days) if since_days else None
    try:
        logged, selection = one_router_version(
            logged_requests(settings.database_url, since), router_version
        )
    except ValueError as error:
        fail(str(error))
        return
    policies: dict[str, Policy] = {"logged": logged_policy()}
    for t in thresholds:
        policies[f"threshold {t:g}"] = threshold_policy(t)
    not_estimated: dict[str, str] = {}
    prompts_stored = bool(logged["prompt"].notna().all())
    scoring = ["heuristic"]
    if prompts_stored:
        policies["heuristic"] = heuristic_policy()  # by each request's own threshold or value
    if router is not None:
        try:
            challenger = LearnedRouter.load(router)
        except (OSError, ValueError, KeyError) as error:
            fail(f"cannot load the router in {router}: {error}")
            return
        scoring.append(f"router {challenger.version}")
        if prompts_stored:
            policies[scoring[-1]] = router_policy(challenger)
    if not prompts_stored:
        for name in scoring:
            not_estimated[name] = (
                "needs the logged prompts: run the service with SWITCHBOARD_STORE_CONTENT=true"
            )
    try:
        results = evaluate_logged(logged, policies, min_ess)
    except ValueError as error:
        fail(str(error))
        return
    report = {**selection, "min_effective_sample_size": min_ess, "policies": results}
    if not_estimated:
        report["not_estimated"] = not_estimated
    if as_json:
        typer.echo(json.dumps(report, indent=1))
        return
    left_out = sum(selection["left_out"].values())
    typer.echo(
        f"{len(logged)} logged requests of {selection['router']}@{selection['router_version']}, "
        f"{int(logged['quality'].notna().sum())} rated"
        + (f" ({left_out} of other router versions left out: --router-version)" if left_out else "")
    )
    typer.echo(
        f"estimates withheld below an effective sample size (ESS) of {min_ess:g}; "
        "expl: explored requests that served what the policy would have"
    )
    typer.echo(
        f"{'policy':20s} {'agree':>5s} | {'ESS':>6s} {'expl':>5s} {'quality IPS (95 %)':>22s} "
        f"{'quality DR (95 %)':>22s} | {'ESS':>6s} {'expl':>5s} {'$/request DR (95 %)':>31s}"
    )
    for name, r in results.items():
        q, c = r["quality"], r["cost_usd"]
        typer.echo(
            f"{name[:20]:20s} {r['agreement']:5.2f} | {q['dr']['effective_sample_size']:6.0f} "
            f"{q['dr']['explored_agreeing']:5d} {_estimate(q['ips'], 3):>22s} "
            f"{_estimate(q['dr'], 3):>22s} | {c['dr']['effective_sample_size']:6.0f} "
            f"{c['dr']['explored_agreeing']:5d} {_estimate(c['dr'], 6):>31s}"
        )
    for name, reason in not_estimated.items():
        typer.echo(f"{name}: not estimated, {reason}")


def _estimate(estimate: dict[str, Any], digits: int) -> str:
    if estimate["value"] is None:
        return f"withheld: {estimate['reason']}"
    return (
        f"{estimate['value']:.{digits}f} ({estimate['ci_low']:.{digits}f}, "
        f"{estimate['ci_high']:.{digits}f})"
    )


def judge_command(
    model: Annotated[str, typer.Option(help="The judge model (a catalog id).")],
    share: Annotated[float, typer.Option(help="Share of logged answers to grade.")] = 0.1,
    since_days: Annotated[float | None, typer.Option(help="Only the last N days.")] = None,
    limit: Annotated[int, typer.Option(help="Grade at most this many.")] = 1000,
    url: Annotated[str, typer.Option(help="The running service.")] = "http://127.0.0.1:8000",
    retry_unparsed: Annotated[
        bool, typer.Option(help="Ask again about answers whose earlier reply held no grade.")
    ] = False,
) -> None:
    """Grade a sample of logged answers with an LLM judge through the service (priced, recorded
    and budgeted like any request); the grades become feedback with source 'judge'. Prints the
    counts as JSON; exits 2 with the reason when nothing could be graded."""
    from service.config import Settings
    from service.ledger import now
    from service.schemas import AUTO_MODEL
    from training.judge import grade

    settings = Settings()
    if settings.admin_key is None:
        fail("the judge rates every tenant's answers: set SWITCHBOARD_ADMIN_KEY")
        return
    if model == AUTO_MODEL or not 0 < share <= 1 or limit < 1:
        fail(
            "--model must name a model (not switchboard/auto), --share be in (0, 1] and "
            "--limit at least 1"
        )
    since = now() - timedelta(days=since_days) if since_days else None
    key = settings.admin_key.get_secret_value()
    run = grade(settings.database_url, url, key, model, share, since, limit, retry_unparsed)
    typer.echo(json.dumps(run.counts()))
    problem = run.problem()  # names the commonest failure and a reply without a grade
    if problem is None or len(run.failures) > 1:
        for reason, times in run.failures.most_common(3):
            typer.echo(f"{times} failed: {reason}", err=True)
    if run.unparsable and problem is None:
        typer.echo(
            f"{run.unparsable} replies held no grade, stored as unparsable (--retry-unparsed "
            f"asks again), e.g. {run.unparsable_replies[0][:200]!r}",
            err=True,
        )
    if run.skipped_unparsable:
        typer.echo(
            f"{run.skipped_unparsable} answers skipped: their earlier reply held no grade "
            "(--retry-unparsed asks again)",
            err=True,
        )
    if problem is not None:
        fail(f"nothing could be graded: {problem}")
    if not run.sampled:
        typer.echo(
            f"nothing left to grade: of the {run.stored} stored answers, every one in the "
            f"--share {share:g} sample has a verdict",
            err=True,
        )


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
