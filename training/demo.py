"""``make demo``: the shipped router on held-out data, then a few prompts routed live.

Runs offline: the embedding model comes from an installed package and the data from datasets/.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict

from service.catalog import Catalog
from service.routing.decision import route
from training import datasets
from training.pipeline import cached_featurizer, load_router
from training.report import decision_table
from training.train import SHIPPED_SOURCES, evaluation_sets, score_sets

EXAMPLES = [
    "What is the capital of Australia?",
    "Write a Python function that returns the n-th Fibonacci number using memoization.",
    "A train leaves at 3:40 pm and travels 210 km at 84 km/h. When does it arrive? "
    "Explain step by step.",
    "Prove that the square root of 2 is irrational.",
]


def _ratio(value: float | None) -> str:
    return "never" if value is None else f"{value:.2f}x"


def run_demo(echo: Callable[[str], None]) -> None:
    router = load_router(None)
    catalog = Catalog.load()
    echo(
        f"switchboard demo: learned router {router.version} ({router.metadata.get('learner')}), "
        f"{len(router.models)} models, default threshold {router.default_threshold}\n"
    )
    echo("Held-out test prompts (cost from the benchmarks' recorded calls where they have it):\n")
    outcomes = datasets.load()
    featurizer = cached_featurizer(router.embedder_name)
    sets = evaluation_sets(outcomes, "test", SHIPPED_SOURCES, featurizer, catalog)
    evaluations, _ = score_sets(router, sets, router.bar)
    header = (
        f"{'source':20s} {'prompts':>7s} {'models':>6s}  {'router':>14s} {'pass rate':>9s} "
        f"{'$/prompt':>10s} {'vs best model':>13s} {'95% at':>7s} {'100% at':>7s}"
    )
    echo(header)
    echo("-" * len(header))
    for evaluation, data in zip(evaluations, sets, strict=True):
        report = evaluation.report
        reference = report["routers"][f"model:{report['reference_model']}"]
        for name in ("learned", "heuristic", f"model:{report['reference_model']}"):
            entry = report["routers"][name]
            saving = 1 - entry["cost_usd"] / reference["cost_usd"]
            label = "best model" if name.startswith("model:") else name
            ratios = entry["cost_ratio_at_quality"]
            echo(
                f"{data.source:20s} {report['n_prompts']:7d} {len(report['models']):6d}  "
                f"{label:>14s} {entry['quality']:9.3f} {entry['cost_usd']:10.6f} "
                f"{saving:12.0%}  {_ratio(ratios['0.95']):>7s} {_ratio(ratios['1.0']):>7s}"
            )
        echo(f"{'':20s} best single model: {report['reference_model']}")
    echo(
        "\n'vs best model': spend saved at the default threshold against sending every prompt "
        "to the best single model. '95% at' / '100% at': the cheapest cost, as a share of that "
        "model's, at which the router keeps 95 % / 100 % of its pass rate.\n"
    )
    echo("Routing example prompts:\n")
    for prompt in EXAMPLES:
        echo(f"> {prompt}")
        decision = asdict(route(router, catalog, prompt))
        decision["candidates"] = sorted(
            decision["candidates"], key=lambda c: c["p_pass"], reverse=True
        )[:6]
        echo(decision_table(decision))
        echo("")
