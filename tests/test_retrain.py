"""A retraining cycle on a ledger of known logged traffic (no service): held-out prompts copied
into traffic never reach the challenger's training data, the traffic's own test split is held
out of training and used by the gate, every decision carries its minimum detectable difference,
and MLflow keeps a failed challenger as a run, unregistered, with the ``promoted`` tag, the gate
numbers and the off-policy intervals as metrics."""

from __future__ import annotations

import shutil
from datetime import UTC, datetime, timedelta

import mlflow
import numpy as np
import pandas as pd
import pytest
import sqlalchemy as sa

from service.config import to_sync_url
from service.migrate import upgrade
from service.prompts import normalize, prompt_id
from service.routing.exploration import explore
from service.routing.learned import LearnedRouter
from service.tables import feedback, requests
from tests.ledger_rows import routed_request
from training import datasets, tracking
from training.retrain import retrain
from training.traffic import held_out_ids, split_of
from training.train import SHIPPED_SOURCES, training_data

MODELS = [
    "mistralai/mixtral-8x7b-instruct",
    "mistralai/mistral-7b-instruct-v0.1",
    "openai/gpt-4-1106-preview",
]
COST = dict(zip(MODELS, (0.001, 0.004, 0.02), strict=True))
PASS = dict(zip(MODELS, (0.5, 0.7, 0.9), strict=True))
START = datetime(2026, 3, 1, tzinfo=UTC)


def first_training_split(prompts) -> str:
    """The first prompt whose traffic split is ``train`` or ``val`` (the challenger is refit on
    both): copied into traffic, it would be trained on unless it is recognized as held out."""
    return next(p for p in prompts if split_of(p) in ("train", "val"))


@pytest.fixture(scope="module")
def leaked(outcomes):
    """One held-out prompt of every kind, each of them in a traffic split trained on."""
    prompts = outcomes.drop_duplicates("prompt_id")
    public = lambda source, split: prompts.loc[  # noqa: E731
        (prompts["source"] == source) & (prompts["split"] == split), "prompt"
    ]
    return {
        "public test": first_training_split(public("routerbench-subset", "test")),
        "public val": first_training_split(public("llmrouter", "val")),
        "evaluation only": first_training_split(public("zeroeval-gsm8k", "test")),
        "alpaca-eval": first_training_split(datasets.load_alpaca_eval()["prompt"]),
    }


def request_row(i: int, prompt: str, router: LearnedRouter, rng) -> tuple[dict, dict]:
    p = router.p_pass([prompt], MODELS)[0]
    candidates = [
        {"model": m, "p_pass": float(p[j]), "expected_cost_usd": COST[m]}
        for j, m in enumerate(MODELS)
    ]
    clearing = [c["model"] for c in candidates if c["p_pass"] >= router.default_threshold]
    decision = clearing[0] if clearing else MODELS[int(np.argmax(p))]
    served, propensity = explore(f"t{i}", decision, MODELS, 0.3)
    row = routed_request(
        f"t{i}", START + timedelta(minutes=i), router.version, router.default_threshold,
        candidates, decision, served, propensity, COST[served], prompt,
        prompt_tokens=20, completion_tokens=50,
    )  # fmt: skip
    score = {
        "request_id": f"t{i}",
        "tenant_id": 1,
        "score": float(rng.uniform() < PASS[served]),
        "created_at": START,
    }
    return row, score


@pytest.fixture(scope="module")
def cycle(small_router, leaked, tmp_path_factory):
    """One retraining cycle (its gate set to fail: the challenger would have to gain a whole
    pass rate) on novel traffic and the leaked held-out prompts, with case and spacing
    changed."""
    directory, _ = small_router
    root = tmp_path_factory.mktemp("retrain")
    router_dir = root / "router"
    shutil.copytree(directory, router_dir)
    champion = LearnedRouter.load(router_dir)
    database_url = f"sqlite:///{root / 'ledger.db'}"
    upgrade(database_url)
    rng = np.random.default_rng(4)
    novel = [f"a novel question {i}: how would you plan a trip to city {i}?" for i in range(240)]
    copies = ["  " + text.upper().replace(" ", "  ") + "\n" for text in leaked.values()]
    rows, scores = zip(
        *(request_row(i, prompt, champion, rng) for i, prompt in enumerate([*novel, *copies])),
        strict=True,
    )
    named = next(m for m in MODELS if m != rows[-1]["served_model"])  # another (prompt, model)
    passthrough = dict(rows[-1], id="named", requested_model=named, candidates=None)
    passthrough.update(propensity=None, chosen_model=named, served_model=named)
    engine = sa.create_engine(to_sync_url(database_url))
    with engine.begin() as conn:
        conn.execute(requests.insert(), [*rows, passthrough])
        conn.execute(feedback.insert(), [*scores, dict(scores[-1], request_id="named")])
    engine.dispose()
    mp = pytest.MonkeyPatch()
    mp.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    report = retrain(
        database_url,
        router_dir,
        root / "runs",
        learners=["logistic-regression"],
        sample=40,
        margin=-1.0,
        snapshot_dir=root / "snapshots",
    )
    yield report, novel, champion, router_dir
    mp.undo()


def test_held_out_prompts_copied_into_traffic_never_reach_the_challengers_training(cycle, leaked):
    report, novel, _, _ = cycle
    leaked_ids = {prompt_id(p) for p in leaked.values()}
    assert leaked_ids <= held_out_ids(datasets.load(), [datasets.load_alpaca_eval()])
    # four auto-routed copies and one named-model copy, of four prompts
    assert report["traffic"]["held_out_rows_dropped"] == 5
    assert report["traffic"]["held_out_prompts_dropped"] == 4
    snapshot = pd.read_parquet(report["snapshot"])
    traffic = snapshot[snapshot["source"] == "traffic"]
    assert not set(traffic["prompt_id"]) & leaked_ids
    assert set(traffic["prompt_id"]) == {prompt_id(p) for p in novel}
    trained = training_data(snapshot, ["train", "val"], [*SHIPPED_SOURCES, "traffic"], 0.5)
    assert not {prompt_id(p) for p in trained.prompts} & leaked_ids


def test_the_traffics_test_split_is_held_out_of_training_and_used_by_the_gate(cycle):
    report, novel, _, _ = cycle
    test_ids = {prompt_id(p) for p in novel if split_of(p) == "test"}
    assert 15 <= len(test_ids) <= 60
    snapshot = pd.read_parquet(report["snapshot"])
    traffic = snapshot[snapshot["source"] == "traffic"]
    assert set(traffic.loc[traffic["split"] == "test", "prompt_id"]) == test_ids
    trained = training_data(snapshot, ["train", "val"], [*SHIPPED_SOURCES, "traffic"], 0.5)
    assert not {prompt_id(normalize(p)) for p in trained.prompts} & test_ids
    assert report["traffic"]["prompts_by_split"]["test"] == len(test_ids)
    gate = report["gate"]
    assert gate["traffic_test_requests"] == len(test_ids)  # one request per novel prompt
    assert gate["prompts"] == gate["public_prompts"] + len(test_ids)
    assert gate["traffic_test"]["requests"] == len(test_ids)


def test_the_decision_says_why_with_its_minimum_detectable_difference(cycle):
    report, _, _, _ = cycle
    gate = report["gate"]
    assert not gate["passed"] and not report["promoted"]
    assert gate["quality_mdd"] == pytest.approx(2.486 * gate["quality_se"], rel=1e-3)
    assert gate["quality_verdict"] in ("worse", "probably worse", "too few data to tell")
    assert gate["reason"].startswith(gate["quality_verdict"])
    assert "minimum detectable difference" in gate["reason"]


def test_mlflow_keeps_the_failed_challenger_as_a_run_not_a_model_version(cycle):
    report, _, champion, router_dir = cycle
    assert report["mlflow"]["model_version"] is None
    assert LearnedRouter.load(router_dir).version == champion.version  # nothing installed
    mlflow.set_tracking_uri(tracking.tracking_uri())
    client = mlflow.MlflowClient()
    run = client.get_run(report["mlflow"]["run_id"])
    assert run.data.tags["promoted"] == "false" and run.data.tags["registered"] == "false"
    assert run.data.tags["gate"] == "failed"
    assert run.data.tags["gate_quality_verdict"] == report["gate"]["quality_verdict"]
    assert not client.search_model_versions(f"run_id='{run.info.run_id}'")
    # the router stays with the run as a logged model, loadable without a registry version
    logged_models = client.search_logged_models(
        experiment_ids=[run.info.experiment_id], filter_string=f"source_run_id='{run.info.run_id}'"
    )
    assert [m.name for m in logged_models] == ["router"]
    metrics = run.data.metrics
    for name in ("quality_diff_low", "quality_mdd", "cost_mdd", "traffic_test_requests"):
        assert f"gate.{name}" in metrics
    assert run.data.params["traffic_held_out_rows_dropped"] == "5"
    for policy in ("logged", "champion", "challenger", "heuristic"):
        estimate = report["off_policy"][policy]["quality"]["dr"]
        assert metrics[f"ope.{policy}.quality.dr.ess"] == pytest.approx(
            estimate["effective_sample_size"]
        )
        if estimate["value"] is not None:
            assert metrics[f"ope.{policy}.quality.dr.ci_low"] == pytest.approx(estimate["ci_low"])
            assert metrics[f"ope.{policy}.quality.dr.ci_high"] == pytest.approx(estimate["ci_high"])
    logged = report["off_policy"]["logged"]["quality"]["dr"]
    assert logged["value"] is not None  # the logged router itself is always well supported
