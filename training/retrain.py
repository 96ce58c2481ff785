"""One retraining cycle, and rollback.

``retrain``: logged traffic (rated requests with stored prompts) joins the public outcomes in an
immutable snapshot named by its hash; a challenger is trained on it; the challenger, the
champion (the router the service loads from ``router_dir``) and the heuristic are evaluated on
the held-out public test sets and, off-policy, on the logged traffic; everything goes to MLflow;
and the challenger is promoted (MLflow alias ``champion``, and exported to ``router_dir``, which
every replica picks up without a restart) only when the gate passes.

Traffic never trains on a held-out prompt: rows whose normalized prompt text is a validation
or test prompt of any public source, or a prompt of an evaluation-only set (RouteLLM, zeroeval's
GSM8K, AlpacaEval), are dropped before the snapshot and counted in the report. The traffic's own
test split (15 % of prompts, by a hash of the prompt) is never trained on either.

The gate (training/gate.py), on the pooled held-out items (the public test prompts and the
traffic's test requests), each router at its own default threshold, with a paired bootstrap:
the challenger's pass rate may not be lower than the champion's by more than ``margin`` at the
stated one-sided confidence, and its total cost must be lower at that confidence. Every decision
carries its minimum detectable difference and says whether a failing challenger was worse or the
data too few to tell. ``rollback`` points ``champion`` back at the version it replaced (alias
``previous-champion``) and exports that version to ``router_dir`` again.
"""

from __future__ import annotations

import logging
import tempfile
from dataclasses import asdict, replace
from datetime import datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from service.catalog import Catalog
from service.routing.decision import choose
from service.routing.learned import LearnedRouter
from training import datasets, versions
from training.gate import BOOTSTRAP, Gate, TrafficTerms, decide, traffic_terms
from training.offpolicy import (
    MIN_EFFECTIVE_SAMPLE_SIZE,
    evaluate_logged,
    heuristic_policy,
    logged_policy,
    one_router_version,
    router_policy,
)
from training.onboard import ONBOARDED, kept
from training.pipeline import cached_featurizer, sample_outcomes
from training.traffic import (
    TRAFFIC_SOURCE,
    gate_requests,
    held_out_ids,
    held_out_removed,
    logged_requests,
    traffic_outcomes,
)
from training.train import SHIPPED_SOURCES, SourceEvaluation, score_sets, summary, train

log = logging.getLogger("switchboard.retrain")
SNAPSHOTS = datasets.OUTCOMES_PATH.parent / "snapshots"
__all__ = ["BOOTSTRAP", "Gate", "gate", "realized", "retrain", "rollback", "shared_sets"]


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
    traffic: TrafficTerms | None = None,
) -> Gate:
    """The gate on the public test ``sets`` and, when given, the traffic's test requests."""
    q_new, c_new = realized(challenger, sets, challenger.bar)
    q_old, c_old = realized(champion, sets, champion.bar)
    public = len(q_new)
    traffic = traffic or TrafficTerms.empty("not given")
    return decide(
        np.concatenate([q_new, traffic.q_new]),
        np.concatenate([q_old, traffic.q_old]),
        np.concatenate([c_new, traffic.c_new]),
        np.concatenate([c_old, traffic.c_old]),
        margin,
        confidence,
        seed,
        public_prompts=public,
        traffic_test=traffic.info,
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
    public = datasets.load()
    evaluation_prompts = held_out_ids(public, [datasets.load_alpaca_eval()])  # every held-out set
    all_traffic = traffic_outcomes(logged_requests(database_url, since, auto_only=False))
    traffic = held_out_removed(all_traffic, public, held_out=evaluation_prompts)
    dropped = all_traffic[~all_traffic["prompt_id"].isin(set(traffic["prompt_id"]))]
    if len(dropped):
        log.info("%d traffic rows are held-out prompts: not trained on", len(dropped))
    # the traffic's own test split (never trained on), for the gate
    traffic_test = gate_requests(logged, evaluation_prompts)
    onboarded = kept(snapshot_dir)  # models onboarded from graded answers stay in the router
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
    decision = gate(
        champion, challenger, held_out, margin, confidence, seed,
        traffic_terms(traffic_test, champion, challenger),
    )  # fmt: skip
    report: dict[str, Any] = {
        "snapshot": str(snapshot_path),
        "snapshot_sha256": digest,
        "logged_requests": len(logged),
        "traffic_outcomes": len(traffic),
        "traffic": {
            "rows": len(all_traffic),
            "held_out_rows_dropped": len(dropped),
            "held_out_prompts_dropped": int(dropped["prompt_id"].nunique()),
            "prompts_by_split": {
                split: int(traffic.loc[traffic["split"] == split, "prompt_id"].nunique())
                for split in ("train", "val", "test")
            },
            "test_requests_in_gate": decision.traffic_test_requests,
        },
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

        # registered as a model version only when the gate passed; the run is kept either way
        written.mlflow = tracking.log_retraining(challenger, written.path, champion, report)
        report["mlflow"] = written.mlflow
    if promoted:
        report["install"] = versions.install(written, router_dir)
    if log_mlflow:
        tracking.set_promoted(written.mlflow["run_id"], promoted)  # after the install, if any
    report["promoted"] = promoted
    return report


def _off_policy(
    logged: pd.DataFrame, champion: LearnedRouter, challenger: LearnedRouter
) -> dict[str, Any]:
    if logged.empty:
        return {"note": "no logged auto-routed requests"}
    logged_versions = set(logged["router_version"].dropna().astype(str))
    version = champion.version if champion.version in logged_versions else None
    logged, selection = one_router_version(logged, version)  # one router's P(pass), not a mix
    policies = {"logged": logged_policy()}
    note = "prompts not stored (SWITCHBOARD_STORE_CONTENT): only the logged policy is estimated"
    if logged["prompt"].notna().all():
        note = (
            "self-normalized IPS and doubly robust estimates (reward model cross-fitted on the "
            f"logged feedback) on the requests of {selection['router']}@"
            f"{selection['router_version']}; withheld (null) below an effective sample size of "
            f"{MIN_EFFECTIVE_SAMPLE_SIZE:g}"
        )
        policies |= {
            "champion": router_policy(champion),
            "challenger": router_policy(challenger),
            "heuristic": heuristic_policy(),  # by each request's own threshold or value
        }
    return {"note": note, **evaluate_logged(logged, policies)}


def rollback(router_dir: Path) -> dict[str, str]:
    """Make the previous champion the champion again, in MLflow and in ``router_dir``."""
    from training import tracking

    with tempfile.TemporaryDirectory() as tmp:
        restored = tracking.restore_previous_champion(Path(tmp))
        versions.replace_dir(restored["router_dir"], router_dir)
    return {k: str(v) for k, v in restored.items() if k != "router_dir"}
