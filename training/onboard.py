"""A model joins the router from a few graded answers.

``onboard`` fits only the abilities (a_m, b_m) of each model of an outcomes file against the
router's fixed prompt projection g (service/routing/factorized.py), starting from the model's
prior; the other models' scores do not change, so no quality gate applies (the new version's
metadata says so). A model with fewer than ``MIN_GRADED_PROMPTS`` graded prompts is not
onboarded; one the router already scores is left alone unless ``refit``. The outcomes a model
was onboarded from are kept (``keep``) and join every later retraining, so an onboarded model
never vanishes from the router.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from service.catalog import Catalog
from service.features import Featurizer
from service.routing.learned import LearnedRouter
from training import datasets

MIN_GRADED_PROMPTS = 10
ONBOARDED = "onboarded"  # the source name of kept onboarding outcomes


@dataclass
class Onboarding:
    router: LearnedRouter
    models: dict[str, dict[str, Any]] = field(default_factory=dict)

    @property
    def onboarded(self) -> list[str]:
        return [m for m, r in self.models.items() if r["status"] == "onboarded"]


def onboard(
    router: LearnedRouter,
    outcomes: pd.DataFrame,
    featurizer: Featurizer,
    catalog: Catalog,
    refit: bool = False,
) -> Onboarding:
    """A new router with the outcomes' models onboarded (the given router is not changed)."""
    if not router.open:
        raise ValueError(
            f"this router's scorer ({router.metadata.get('learner', '?')}) scores only the "
            "models it was trained on; train a factorized router to onboard models"
        )
    scorer = copy.deepcopy(router.scorer)
    models = list(router.models)
    graded = outcomes.groupby(["model", "prompt_id"], sort=True).agg(
        prompt=("prompt", "first"), quality=("quality", "mean")
    )
    result = Onboarding(router)
    prompts = graded.reset_index().drop_duplicates("prompt_id").set_index("prompt_id")["prompt"]
    features = featurizer.transform(list(prompts))
    row_of = {pid: i for i, pid in enumerate(prompts.index)}
    for model, rows in graded.groupby(level="model", sort=True):
        count = len(rows)
        known = model in models
        if known and not refit:
            result.models[model] = {"graded_prompts": count, "status": "already in the router"}
            continue
        if count < MIN_GRADED_PROMPTS:
            result.models[model] = {
                "graded_prompts": count,
                "status": f"not onboarded: {count} graded prompts, at least "
                f"{MIN_GRADED_PROMPTS} are needed",
            }
            continue
        X = features[[row_of[pid] for pid in rows.index.get_level_values("prompt_id")]]
        passed = (rows["quality"].to_numpy() >= router.bar).astype(float)
        prior_ability, prior_offset = router.prior_of(model, catalog)
        fit = scorer.fit_abilities(X, passed, prior_ability, prior_offset)
        scorer.with_model(fit, models.index(model) if known else None)
        if not known:
            models.append(model)
        result.models[model] = {
            "graded_prompts": count,
            "pass_rate": float(passed.mean()),
            "status": "onboarded",
        }
    metadata = {
        **router.metadata,
        "parent_version": router.version,
        "onboarded": {m: r for m, r in result.models.items() if r["status"] == "onboarded"},
        "quality_gate": "none: onboarding adds models and leaves every other model's "
        "scores unchanged",
    }
    metadata.pop("test", None)  # measured on the parent's models; the parent keeps it
    result.router = router.derived(scorer, models, metadata)
    return result


def without(router: LearnedRouter, model: str) -> LearnedRouter:
    """The router as if ``model`` had never been onboarded (the demo's starting point): its
    abilities gone, every other score unchanged. Its outcomes did shape the shared projection
    g; a held-out evaluation (training/onboarding_eval.py) refits without them."""
    index = router.models.index(model)
    name = model.replace("/", "_")
    metadata = {**router.metadata, "version": f"{router.version}-without-{name}"}
    return router.derived(
        router.scorer.without_model(index), [m for m in router.models if m != model], metadata
    )


def keep(outcomes: pd.DataFrame, snapshots_dir: Path) -> Path:
    """Store onboarding outcomes (by content hash) where every later retraining finds them."""
    table = outcomes.copy()
    for column in datasets.COLUMNS:
        if column not in table:
            table[column] = None
    table = table.assign(source=ONBOARDED, split="train")[datasets.COLUMNS]
    directory = snapshots_dir / ONBOARDED
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"outcomes-{datasets.table_hash(table)[:16]}.parquet"
    if not path.exists():
        table.to_parquet(path, index=False)
    return path


def kept(snapshots_dir: Path) -> pd.DataFrame:
    """Every onboarding outcome kept so far (empty when none)."""
    files = sorted((snapshots_dir / ONBOARDED).glob("outcomes-*.parquet"))
    if not files:
        return pd.DataFrame(columns=datasets.COLUMNS)
    return pd.concat([pd.read_parquet(f) for f in files], ignore_index=True)


def describe(result: Onboarding, path: Path) -> list[str]:
    """Lines for the terminal: the version, where it is, and each model's graded prompts."""
    lines = [f"version {result.router.version} at {path}"]
    for model, entry in result.models.items():
        lines.append(f"  {model}: {entry['graded_prompts']} graded prompts, {entry['status']}")
    return lines
