"""``switchboard models sync`` and ``switchboard models onboard``: the catalog of models, and
adding models to the router from graded answers."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from switchboard.cli_support import fail, with_ledger

models_app = typer.Typer(help="The model catalog, and models joining the router.")


@models_app.command("sync")
def models_sync(
    base_url: Annotated[
        str | None, typer.Option(help="OpenRouter API base (default: the configured one).")
    ] = None,
) -> None:
    """Refresh the price catalog from OpenRouter's /models (new models added, prices updated,
    each with the time it was seen) and record which models it lists now, for every replica:
    auto routing keeps to those."""
    from datetime import UTC, datetime

    import httpx

    from service.availability import Availability, listed_ids
    from service.catalog import Catalog, parse_openrouter_models
    from service.config import Settings

    settings = Settings()
    url = (base_url or settings.openrouter_base_url).rstrip("/") + "/models"
    headers = {}
    if settings.openrouter_api_key:
        headers["Authorization"] = f"Bearer {settings.openrouter_api_key.get_secret_value()}"
    try:
        response = httpx.get(url, headers=headers, timeout=30)
        response.raise_for_status()
        payload = response.json()
    except (httpx.HTTPError, ValueError) as error:
        fail(f"could not read {url}: {error}")
        return
    seen_at = datetime.now(UTC).isoformat(timespec="seconds")
    listed = parse_openrouter_models(payload, seen_at)
    if not listed:
        fail(f"{url} listed no models")
    catalog = Catalog.load(settings.catalog_path)
    report = catalog.merge(listed)
    catalog.save(settings.catalog_path)
    served = listed_ids(payload)
    with_ledger(lambda ledger: Availability(ledger.engine, 0).record_listing(served))
    typer.echo(
        f"{len(listed)} models listed at {seen_at}: {len(report['added'])} new, "
        f"{len(report['repriced'])} repriced, {len(report['seen'])} unchanged; "
        f"wrote {settings.catalog_path} (restart the service to use its prices)"
    )
    for model_id in report["repriced"]:
        typer.echo(f"  repriced {model_id}")
    router_json = settings.router_dir / "router.json"
    if router_json.exists():
        models = json.loads(router_json.read_text())["models"]
        gone = [m for m in models if m not in served]
        typer.echo(
            f"the router scores {len(models)} models; the upstream lists {len(models) - len(gone)}"
            f" of them now, and auto routing keeps to those"
        )
        for model_id in gone:
            typer.echo(f"  not listed: {model_id}")


@models_app.command("onboard")
def models_onboard(
    outcomes: Annotated[
        Path,
        typer.Option(help="Graded answers: .jsonl, .csv or .parquet (prompt, model, quality)."),
    ],
    refit: Annotated[
        bool, typer.Option(help="Also refit models the router already scores.")
    ] = False,
    install: Annotated[
        bool, typer.Option(help="Install the new version (the default) or only write it.")
    ] = True,
    router: Annotated[
        Path | None, typer.Option(help="Router directory (default SWITCHBOARD_ROUTER_DIR).")
    ] = None,
    mlflow: Annotated[bool, typer.Option(help="Log the version to MLflow.")] = True,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON on stdout.")] = False,
) -> None:
    """Fit the abilities of the file's models that the router lacks, from their graded prompts,
    as a new router version; installed unless --no-install. Exits 2 when no model joined."""
    from service.catalog import Catalog
    from service.config import Settings
    from training.outcomes import OutcomesError
    from training.pipeline import onboard_version

    settings = Settings()
    router_dir = router or settings.router_dir
    try:
        result, written, installed = onboard_version(
            outcomes,
            settings.runs_dir,
            router_dir,
            Catalog.load(settings.catalog_path),
            settings.snapshots_dir,
            refit=refit,
            install=install,
            log_mlflow=mlflow,
            aliases_path=settings.aliases_path,
        )
    except (OutcomesError, ValueError) as error:
        fail(str(error))
    report = {
        "version": written.version if written else None,
        "path": str(written.path) if written else None,
        "installed": installed,
        "models": result.models,
    }
    if as_json:
        typer.echo(json.dumps(report, indent=1))
    else:
        if written is not None:
            where = f"installed into {router_dir}" if installed else "not installed"
            typer.echo(f"version {written.version} at {written.path} ({where})")
        for model, entry in result.models.items():
            typer.echo(f"  {model}: {entry['graded_prompts']} graded prompts, {entry['status']}")
    if written is None:
        typer.echo("no model was onboarded", err=True)
        raise typer.Exit(2)


def calibrate(
    models: Annotated[str, typer.Option(help="Comma-separated model ids to calibrate.")],
    judge: Annotated[str, typer.Option(help="The model that grades the answers.")],
    prompts: Annotated[
        Path | None, typer.Option(help="Your prompts: JSONL or CSV with a 'prompt' column.")
    ] = None,
    sample: Annotated[int, typer.Option(help="How many prompts (default 100).")] = 100,
    reference: Annotated[
        str | None, typer.Option(help="A model whose answer the judge compares against.")
    ] = None,
    max_cost_usd: Annotated[
        float, typer.Option(help="Refuse a plan estimated to cost more than this.")
    ] = 5.0,
    output: Annotated[
        Path, typer.Option(help="The outcomes file written (a rerun skips what it holds).")
    ] = Path("calibration-outcomes.jsonl"),
    url: Annotated[str, typer.Option(help="The running service.")] = "http://127.0.0.1:8000",
    install: Annotated[bool, typer.Option(help="Install the onboarded router version.")] = True,
    seed: Annotated[int, typer.Option(help="Which sample of the prompts.")] = 0,
) -> None:
    """Send prompts to each model through the service, grade the answers with a judge model,
    write the outcomes file, and onboard the models from it."""
    import httpx
    from tqdm.auto import tqdm

    from service.catalog import Catalog, canonical_model_id
    from service.config import Settings
    from training.calibrate import CalibrationError, already_graded, load_prompts, plan, run
    from training.outcomes import OutcomesError
    from training.pipeline import onboard_version

    settings = Settings()
    if settings.admin_key is None or not settings.admin_key.get_secret_value():
        fail("calibrate sends through the service with the admin key: set SWITCHBOARD_ADMIN_KEY")
    wanted = [canonical_model_id(m.strip()) for m in models.split(",") if m.strip()]
    if not wanted or sample < 1:
        fail("--models needs at least one model id and --sample at least 1")
    admin = settings.admin_key.get_secret_value()
    client = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {admin}"}, timeout=180)
    try:
        ready = client.get("/readyz").json()
    except (httpx.HTTPError, ValueError) as error:
        fail(f"no switchboard service answers at {url}: {error}")
    if ready.get("upstream") == "replay":
        fail(
            f"the service at {url} answers from recordings (the replay upstream), which cannot "
            "answer new prompts: start it with OPENROUTER_API_KEY (or a provider key) set"
        )
    catalog = Catalog.load(settings.catalog_path)
    try:
        work = plan(
            load_prompts(prompts, sample, seed),
            wanted,
            canonical_model_id(judge),
            canonical_model_id(reference) if reference else None,
            catalog,
            already_graded(output),
        )
    except CalibrationError as error:
        fail(str(error))
    typer.echo(
        f"{len(work.prompts)} prompts x {len(work.models)} models, judged by {work.judge}: "
        f"{len(work.pending)} answers to get, estimated ${work.estimated_usd:.4f}",
        err=True,
    )
    if work.estimated_usd > max_cost_usd:
        fail(f"the estimate is over --max-cost-usd {max_cost_usd}: use fewer prompts or models")
    with tqdm(total=len(work.pending), desc="answers graded", unit="answer") as bar:
        counts = run(client, work, output, bar.update)
    typer.echo(
        f"graded {counts.graded}, judge replies without a grade {counts.unparsed} (left out), "
        f"failed calls {counts.failed}; spent ${counts.spent_usd:.4f}; outcomes in {output}",
        err=True,
    )
    for failure in counts.failures[:5]:
        typer.echo(f"  failed: {failure}", err=True)
    try:
        result, written, installed = onboard_version(
            output,
            settings.runs_dir,
            settings.router_dir,
            catalog,
            settings.snapshots_dir,
            refit=True,
            install=install,
            aliases_path=settings.aliases_path,
        )
    except (OutcomesError, ValueError) as error:
        fail(str(error))
    for model, entry in result.models.items():
        typer.echo(f"  {model}: {entry['graded_prompts']} graded prompts, {entry['status']}")
    if written is None:
        fail("no model was onboarded")
    where = f"installed into {settings.router_dir}" if installed else "not installed"
    typer.echo(f"version {written.version} at {written.path} ({where})")
