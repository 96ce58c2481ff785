"""The ``switchboard`` command. Each subcommand imports its heavy modules only when it runs."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from switchboard.cli_support import fail
from switchboard.keys_cli import keys_app
from switchboard.loop_cli import (
    eval_logged,
    experiment_app,
    judge_command,
    retrain_command,
    rollback_command,
    soak_command,
)
from switchboard.models_cli import calibrate, models_app
from switchboard.report import report
from switchboard.spend_cli import breaker_app, budget_app, reconcile

app = typer.Typer(help="switchboard: a learned LLM router.", no_args_is_help=True)
data_app = typer.Typer(help="The routing-outcomes dataset.", no_args_is_help=True)
app.add_typer(data_app, name="data")
app.add_typer(keys_app, name="keys")
db_app = typer.Typer(help="The ledger database.", no_args_is_help=True)
app.add_typer(db_app, name="db")
app.add_typer(budget_app, name="budget", no_args_is_help=True)
app.add_typer(models_app, name="models")
app.add_typer(breaker_app, name="breaker")
app.command("reconcile")(reconcile)
app.command("report")(report)
app.add_typer(experiment_app, name="experiment")
app.command("retrain")(retrain_command)
app.command("rollback")(rollback_command)
app.command("judge")(judge_command)
app.command("calibrate")(calibrate)
app.command("soak")(soak_command)
LOOPBACK = ("127.0.0.1", "localhost", "::1")


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(levelname)s: %(message)s",
        stream=sys.stderr,
    )


@data_app.command("build")
def data_build() -> None:
    """Rebuild datasets/outcomes.parquet, datasets/alpaca_eval.parquet (evaluation only) and
    models/catalog.json from datasets/raw/."""
    from service.catalog import DEFAULT_CATALOG_PATH
    from training import datasets, prices

    outcomes = datasets.build()
    digest = datasets.write(outcomes)
    prices.build_catalog(datasets.RAW_DIR, outcomes).save(DEFAULT_CATALOG_PATH)
    alpaca = datasets.build_alpaca_eval(outcomes)
    alpaca.to_parquet(datasets.ALPACA_EVAL_PATH, index=False)
    prompts = outcomes.drop_duplicates("prompt_id")
    typer.echo(f"{len(outcomes):,} rows, {len(prompts):,} prompts, table sha256 {digest}")
    typer.echo(
        f"alpaca-eval (evaluation only): {len(alpaca):,} rows, "
        f"{alpaca['prompt_id'].nunique():,} instructions, {alpaca['model'].nunique()} models"
    )
    typer.echo(prompts.groupby(["source", "split"]).size().unstack(fill_value=0).to_string())


@app.command()
def serve(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8000,
    workers: Annotated[int | None, typer.Option(help="Worker processes.")] = None,
) -> None:
    """Run the OpenAI-compatible service (settings from SWITCHBOARD_* environment variables)."""
    import os
    import tempfile

    import uvicorn

    from service.config import Settings

    try:
        settings = Settings()
    except ValueError as error:
        fail(f"bad settings: {error}")
    if settings.auth_disabled and host not in LOOPBACK:
        fail("SWITCHBOARD_AUTH_DISABLED is for local use only: bind to 127.0.0.1 or enable auth")
    count = workers or settings.workers
    if count > 1 and not os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="switchboard-metrics-")
    typer.echo(
        f"switchboard on http://{host}:{port} (upstream {settings.upstream}, {count} worker(s))",
        err=True,
    )
    uvicorn.run(
        "service.main:app_from_env",
        factory=True,
        host=host,
        port=port,
        workers=count,
        log_level="warning",
        timeout_graceful_shutdown=30,
        http="service.slow_clients:HeaderDeadlineProtocol",
    )


@app.command("fake-upstream")
def fake_upstream(
    host: Annotated[str, typer.Option(help="Address to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 9000,
    priced: Annotated[
        bool, typer.Option(help="Accept only catalog-priced models and report usage.cost.")
    ] = True,
    judge: Annotated[
        bool, typer.Option(help="Judge mode: grading prompts get a grade per answering model.")
    ] = False,
) -> None:
    """Run the fake OpenRouter-compatible upstream (tests, benchmarks, trying the service)."""
    from switchboard.fake_upstream import catalog_prices, serve

    typer.echo(f"fake upstream on http://{host}:{port}/api/v1 (faults: /_control/faults)", err=True)
    prices = catalog_prices() if priced else None
    serve(host, port, prices, log_level="warning", judge_grades={} if judge else None)


@db_app.command("upgrade")
def db_upgrade() -> None:
    """Apply the ledger migrations to SWITCHBOARD_DATABASE_URL (the service also does on start)."""
    from service.config import Settings
    from service.migrate import upgrade

    settings = Settings()
    upgrade(settings.database_url)
    typer.echo("database is at the newest schema")


@app.command()
def train(
    outcomes: Annotated[
        Path | None,
        typer.Option(help="Your graded answers (.jsonl, .csv, .parquet), beside the shipped data."),
    ] = None,
    public: Annotated[
        bool, typer.Option(help="Train on the shipped public data too (--no-public: yours only).")
    ] = True,
    install: Annotated[
        bool, typer.Option(help="Install the new version (it changes every model's scores).")
    ] = False,
    router: Annotated[
        Path | None, typer.Option(help="Router directory to install into (default: the setting).")
    ] = None,
    learners: Annotated[
        str | None, typer.Option(help="Comma-separated learners to try (default: all).")
    ] = None,
    sample: Annotated[
        int | None, typer.Option(help="Use at most this many prompts per source and split.")
    ] = None,
    seed: Annotated[int, typer.Option()] = 0,
    mlflow: Annotated[bool, typer.Option(help="Log the run to MLflow.")] = True,
    embedder: Annotated[
        str,
        typer.Option(help="all-MiniLM-L6-v2-static (default, fast) or all-MiniLM-L6-v2 (full)."),
    ] = "all-MiniLM-L6-v2-static",
    shrinkage: Annotated[
        float | None,
        typer.Option(
            help="Shrinkage of P(pass) toward the base rates far from the training prompts "
            "(default: chosen leave-one-source-out, one more fit per source; 0: off)."
        ),
    ] = None,
) -> None:
    """Train a whole router, choosing its learner on validation: a new version under
    SWITCHBOARD_RUNS_DIR, logged to MLflow, installed into SWITCHBOARD_ROUTER_DIR only with
    --install."""
    _setup_logging(verbose=True)
    from service.catalog import Catalog
    from service.config import Settings
    from training.outcomes import OutcomesError
    from training.pipeline import train_version

    if not public and outcomes is None:
        fail("--no-public needs --outcomes FILE: there is nothing else to train on")
    if shrinkage is not None and not 0.0 <= shrinkage <= 10.0:
        fail("--shrinkage must be in [0, 10]")
    settings = Settings()
    chosen = learners.split(",") if learners else None
    try:
        summary = train_version(
            settings.runs_dir,
            router or settings.router_dir,
            Catalog.load(settings.catalog_path),
            chosen,
            sample=sample,
            seed=seed,
            log_mlflow=mlflow,
            embedder=embedder,
            user_file=outcomes,
            public=public,
            install=install,
            aliases_path=settings.aliases_path,
            shrinkage=shrinkage,
        )
    except (OutcomesError, ValueError) as error:
        fail(str(error))
    typer.echo(json.dumps(summary, indent=1))


@app.command("eval")
def evaluate_command(
    outcomes: Annotated[
        Path | None, typer.Option(help="Outcomes file: .jsonl, .csv or .parquet.")
    ] = None,
    logged: Annotated[
        bool, typer.Option("--logged", help="Off-policy, on the service's logged traffic.")
    ] = False,
    since_days: Annotated[
        float | None, typer.Option(help="With --logged: the last N days only.")
    ] = None,
    threshold: Annotated[
        list[float] | None, typer.Option(help="With --logged: the logged router at these.")
    ] = None,
    router_version: Annotated[
        str | None,
        typer.Option(help="With --logged: this router version's requests (default: the newest's)."),
    ] = None,
    min_ess: Annotated[
        float,
        typer.Option(help="With --logged: withhold estimates below this effective sample size."),
    ] = 30.0,
    models: Annotated[
        str | None, typer.Option(help="Comma-separated model ids to route among.")
    ] = None,
    bar: Annotated[float, typer.Option(help="passed = quality >= bar.")] = 0.5,
    reference: Annotated[
        str | None, typer.Option(help="Reference model (default: the best single model).")
    ] = None,
    router: Annotated[Path | None, typer.Option(help="Router directory.")] = None,
    metric: Annotated[
        str, typer.Option(help="'passed' (pass rate at the bar) or 'quality' (mean score).")
    ] = "passed",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
    plot: Annotated[Path, typer.Option(help="Cost-quality plot (without --json).")] = Path(
        "cost-quality.png"
    ),
) -> None:
    """Evaluate the learned router against the baselines on an outcomes file, or (--logged)
    estimate routers off-policy on the service's logged traffic."""
    _setup_logging()
    if logged:
        eval_logged(since_days, threshold or [], router, as_json, router_version, min_ess)
        return
    if outcomes is None:
        fail("--outcomes FILE (or --logged) is required")
        return
    from training.pipeline import evaluate_file

    if metric not in ("passed", "quality"):
        fail("--metric must be 'passed' or 'quality'")
    if not 0.0 <= bar <= 1.0:
        fail("--bar must be in [0, 1]")
    requested = [m.strip() for m in models.split(",") if m.strip()] if models else None
    try:
        evaluation = evaluate_file(outcomes, router, requested, bar, reference, metric)
    except (ValueError, KeyError) as error:
        fail(str(error).strip('"'))
    for note in evaluation.notes:
        typer.echo(f"note: {note}", err=True)
    if as_json:
        typer.echo(json.dumps(evaluation.report, indent=1))
        return
    from training import plots
    from training.report import evaluation_table

    typer.echo(evaluation_table(evaluation.report))
    title = f"{outcomes.name}: {len(evaluation.report['models'])} models"
    plots.cost_quality(evaluation, plot, title, "pass rate" if metric == "passed" else "quality")
    typer.echo(f"\ncost-quality plot: {plot}")


@app.command()
def route(
    prompt: Annotated[str, typer.Argument(help="The prompt to route.")],
    threshold: Annotated[
        float | None, typer.Option(help="P(pass) threshold (default: the router's).")
    ] = None,
    allowed_models: Annotated[
        str | None, typer.Option(help="Comma-separated models the router may choose.")
    ] = None,
    max_cost_usd: Annotated[
        float | None, typer.Option(help="Only candidates expected to cost at most this.")
    ] = None,
    answer_value_usd: Annotated[
        float | None,
        typer.Option(
            help="What a passing answer is worth (USD): decide by the value rule instead."
        ),
    ] = None,
    router: Annotated[Path | None, typer.Option(help="Router directory.")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """Route one prompt: the decision, with every candidate's P(pass) and expected cost."""
    _setup_logging()
    from training.pipeline import route_prompt

    if not prompt.strip():
        fail("the prompt is empty")
    if threshold is not None and not 0.0 <= threshold <= 1.0:
        fail("--threshold must be in [0, 1]")
    if answer_value_usd is not None and not answer_value_usd > 0:
        fail("--answer-value-usd must be above 0")
    if answer_value_usd is not None and threshold is not None:
        fail("give --threshold (threshold rule) or --answer-value-usd (value rule), not both")
    allowed = [m.strip() for m in allowed_models.split(",")] if allowed_models else None
    try:
        decision = route_prompt(prompt, threshold, allowed, max_cost_usd, router, answer_value_usd)
    except (ValueError, KeyError) as error:
        fail(str(error).strip('"'))
    if as_json:
        typer.echo(json.dumps(decision, indent=1))
        return
    from training.report import decision_table

    typer.echo(decision_table(decision))


@app.command()
def results(
    output: Annotated[Path, typer.Option(help="Markdown file to write.")] = Path("docs/RESULTS.md"),
) -> None:
    """Evaluate the shipped router on every held-out set and write docs/RESULTS.md."""
    _setup_logging(verbose=True)
    from training.results import write_results

    write_results(output)
    typer.echo(f"wrote {output}")


@app.command()
def bench(
    output: Annotated[Path, typer.Option(help="Markdown file to write.")] = Path(
        "docs/BENCHMARKS.md"
    ),
    routing: Annotated[
        bool, typer.Option(help="Routing latency and quality (--no-routing keeps the file's).")
    ] = True,
    gateway: Annotated[
        bool, typer.Option(help="Gateway against LiteLLM (--no-gateway keeps the file's).")
    ] = True,
    postgres_url: Annotated[
        str | None,
        typer.Option(help="A PostgreSQL server for the ledger run (creates switchboard_bench)."),
    ] = "postgresql://postgres@127.0.0.1:5432/test",
) -> None:
    """Measure routing-decision latency and routing quality by embedder and, against LiteLLM's
    proxy on one mock, the gateway's added latency, throughput, streaming and memory; write
    docs/BENCHMARKS.md."""
    _setup_logging(verbose=True)
    from training.bench import write_benchmarks

    write_benchmarks(output, routing, gateway, postgres_url)
    typer.echo(output.read_text())


@app.command()
def demo() -> None:
    """Serve held-out recorded traffic through the service on the replay upstream; print spend,
    savings and quality."""
    _setup_logging()
    from training.demo import run_demo

    run_demo(typer.echo)


def main() -> Any:
    return app()


if __name__ == "__main__":
    main()
