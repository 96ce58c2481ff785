"""One retraining cycle, and rollback.

``retrain``: logged traffic (rated requests with stored prompts) joins the public outcomes in an
immutable snapshot named by its hash; a challenger is trained on it; the challenger, the
champion (the router the service loads from ``router_dir``) and the heuristic are evaluated on
the held-out public test sets and, off-policy, on the logged traffic; everything goes to MLflow;
and the challenger is promoted (MLflow alias ``champion``, and exported to ``router_dir``, which
every replica picks up without a restart) only when the gate passes.

The gate, on the pooled held-out prompts, each router at its own default threshold, with a
paired bootstrap over prompts: the challenger's pass rate may not be lower than the champion's
by more than ``margin`` at the stated one-sided confidence, and its total cost must be lower at
that confidence. ``rollback`` points ``champion`` back at the version it replaced (alias
``previous-champion``) and exports that version to ``router_dir`` again.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import asdict, dataclass, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from service.catalog import Catalog
from service.routing.decision import choose
from service.routing.learned import LearnedRouter
from training import datasets, versions
from training.offpolicy import evaluate_logged, heuristic_policy, logged_policy, router_policy
from training.onboard import ONBOARDED, kept
from training.pipeline import cached_featurizer, sample_outcomes
from training.traffic import TRAFFIC_SOURCE, held_out_removed, logged_requests, traffic_outcomes
from training.train import SHIPPED_SOURCES, SourceEvaluation, score_sets, summary, train

log = logging.getLogger("switchboard.retrain")
SNAPSHOTS = datasets.OUTCOMES_PATH.parent / "snapshots"
BOOTSTRAP = 2000


@dataclass
class Gate:
    passed: bool
    prompts: int
    quality_diff: float  # challenger - champion pass rate
    quality_diff_low: float  # its one-sided lower confidence bound
    cost_change: float  # challenger / champion total cost - 1
    cost_change_high: float  # its one-sided upper confidence bound
    margin: float
    confidence: float
    reason: str


def realized(
    router: LearnedRouter, sets: list[SourceEvaluation], bar: float
) -> tuple[np.ndarray, np.ndarray]:
    """Per held-out prompt: did the router's choice pass, and what did it cost. Both routers of
    a gate decide with the sets' expected costs (the challenger's answer lengths), so the gate
    compares what they predict about passing."""
    passed, cost = [], []
    for data in sets:
        p = router.p_pass(data.table.prompts, data.models, features=data.features)
        column, _ = choose(p, data.table.expected_cost_usd, router.default_threshold)
        column = np.where(column < 0, np.argmax(p, axis=1), column)
        rows = np.arange(len(column))
        passed.append(data.table.score(bar, "passed")[rows, column])
        cost.append(data.table.cost_usd[rows, column])
    return np.concatenate(passed), np.concatenate(cost)


def shared_sets(
    routers: list[LearnedRouter], sets: list[SourceEvaluation]
) -> list[SourceEvaluation]:
    """The evaluation sets restricted to the models every router can score (an older champion
    may not know a source's newer models), so that routers are compared on one choice."""
    shared = []
    for data in sets:
        models = [m for m in data.models if all(r.open or m in r.models for r in routers)]
        if len(models) >= 2:
            shared.append(replace(data, models=models, table=data.table.restricted(models)))
    return shared


def gate(
    champion: LearnedRouter,
    challenger: LearnedRouter,
    sets: list[SourceEvaluation],
    margin: float,
    confidence: float,
    seed: int = 0,
) -> Gate:
    q_new, c_new = realized(challenger, sets, challenger.bar)
    q_old, c_old = realized(champion, sets, champion.bar)
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(q_new), size=(BOOTSTRAP, len(q_new)))
    quality = (q_new[draws] - q_old[draws]).mean(axis=1)
    cost = c_new[draws].sum(axis=1) / c_old[draws].sum(axis=1) - 1
    low = float(np.quantile(quality, 1 - confidence))
    high = float(np.quantile(cost, confidence))
    passed = low >= -margin and high < 0
    if passed:
        reason = "no significant quality loss and a significant cost gain"
    elif low < -margin:
        reason = f"pass rate may be lower by more than {margin} (lower bound {low:+.4f})"
    else:
        reason = f"no significant cost gain (upper bound of the cost change {high:+.2%})"
    return Gate(
        passed=passed,
        prompts=len(q_new),
        quality_diff=float((q_new - q_old).mean()),
        quality_diff_low=low,
        cost_change=float(c_new.sum() / c_old.sum() - 1),
        cost_change_high=high,
        margin=margin,
        confidence=confidence,
        reason=reason,
    )


def snapshot(outcomes: pd.DataFrame, directory: Path = SNAPSHOTS) -> tuple[Path, str]:
    """Write the training table once under its hash; the same data gives the same file."""
    digest = datasets.table_hash(outcomes)
    path = directory / f"outcomes-{digest[:16]}.parquet"
    if not path.exists():
        directory.mkdir(parents=True, exist_ok=True)
        staging = path.with_suffix(".incoming")
        outcomes.to_parquet(staging, index=False)
        staging.rename(path)
    return path, digest


def retrain(
    database_url: str,
    router_dir: Path,
    runs_dir: Path,
    since: datetime | None = None,
    learners: list[str] | None = None,
    sample: int | None = None,
    seed: int = 0,
    margin: float = 0.005,
    confidence: float = 0.95,
    promote: bool = True,
    log_mlflow: bool = True,
    snapshot_dir: Path = SNAPSHOTS,
) -> dict[str, Any]:
    logged = logged_requests(database_url, since)  # auto-routed: off-policy estimates
    traffic = held_out_removed(
        traffic_outcomes(logged_requests(database_url, since, auto_only=False)),
        datasets.load(),
    )
    onboarded = kept(snapshot_dir)  # models onboarded from graded answers stay in the router
    public = datasets.load()
    if sample:
        public = sample_outcomes(public, sample)
    parts = [t for t in (public, traffic, onboarded) if len(t)]
    combined = pd.concat(parts, ignore_index=True)
    snapshot_path, digest = snapshot(combined, snapshot_dir)
    champion = LearnedRouter.load(router_dir)
    featurizer = cached_featurizer(champion.embedder_name)
    catalog = Catalog.load()
    extra = [TRAFFIC_SOURCE] if len(traffic) else []
    extra += [ONBOARDED] if len(onboarded) else []
    result = train(
        combined, featurizer, catalog, learners, SHIPPED_SOURCES, seed=seed,
        extra_training_sources=extra, shrinkage=champion.shrinkage,
    )  # fmt: skip
    challenger = result.router
    challenger.metadata["snapshot_sha256"] = digest
    written = versions.write(challenger, "retrain", runs_dir, log_mlflow=False)
    held_out = shared_sets([champion, challenger], result.test_sets)
    evaluations, probabilities = score_sets(champion, held_out, champion.bar)
    decision = gate(champion, challenger, held_out, margin, confidence, seed)
    report: dict[str, Any] = {
        "snapshot": str(snapshot_path),
        "snapshot_sha256": digest,
        "logged_requests": len(logged),
        "traffic_outcomes": len(traffic),
        "onboarded_outcomes": len(onboarded),
        "champion": {
            "version": champion.version,
            "test": summary(evaluations, held_out, probabilities),
        },
        "challenger": {
            "version": challenger.version,
            "learner": result.chosen,
            "test": result.test,
        },
        "gate": asdict(decision),
    }
    report["off_policy"] = _off_policy(logged, champion, challenger)
    promoted = promote and decision.passed
    report["challenger"]["path"] = str(written.path)
    if log_mlflow:
        from training import tracking

        written.mlflow = tracking.log_retraining(challenger, written.path, champion, report)
        report["mlflow"] = written.mlflow
    if promoted:
        report["install"] = versions.install(written, router_dir)
    report["promoted"] = promoted
    return report


def _off_policy(
    logged: pd.DataFrame, champion: LearnedRouter, challenger: LearnedRouter
) -> dict[str, Any]:
    if logged.empty:
        return {"note": "no logged auto-routed requests"}
    policies = {"logged": logged_policy()}
    note = "prompts not stored (SWITCHBOARD_STORE_CONTENT): only the logged policy is estimated"
    if logged["prompt"].notna().all():
        note = "estimates from the logged propensities (IPS) and with P(pass) as reward model (DR)"
        policies |= {
            "champion": router_policy(champion),
            "challenger": router_policy(challenger),
            "heuristic": heuristic_policy(champion.default_threshold),
        }
    return {"note": note, **evaluate_logged(logged, policies)}


def rollback(router_dir: Path) -> dict[str, str]:
    """Make the previous champion the champion again, in MLflow and in ``router_dir``."""
    from training import tracking

    with tempfile.TemporaryDirectory() as tmp:
        restored = tracking.restore_previous_champion(Path(tmp))
        versions.replace_dir(restored["router_dir"], router_dir)
    return {k: str(v) for k, v in restored.items() if k != "router_dir"}
