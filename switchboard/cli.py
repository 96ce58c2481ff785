"""The ``switchboard`` command. Each subcommand imports its heavy modules only when it runs."""

from __future__ import annotations

import typer

app = typer.Typer(help="switchboard: a learned LLM router.", no_args_is_help=True)
data_app = typer.Typer(help="The routing-outcomes dataset.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("build")
def data_build() -> None:
    """Rebuild datasets/outcomes.parquet and models/catalog.json from datasets/raw/."""
    from service.catalog import DEFAULT_CATALOG_PATH
    from training import datasets, prices

    outcomes = datasets.build()
    digest = datasets.write(outcomes)
    prices.build_catalog(datasets.RAW_DIR, outcomes).save(DEFAULT_CATALOG_PATH)
    prompts = outcomes.drop_duplicates("prompt_id")
    typer.echo(f"{len(outcomes):,} rows, {len(prompts):,} prompts, table sha256 {digest}")
    typer.echo(prompts.groupby(["source", "split"]).size().unstack(fill_value=0).to_string())


def main() -> None:
    app()


if __name__ == "__main__":
    main()
