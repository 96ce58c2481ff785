"""The closed loop, simulated end to end: recorded traffic through the service on the
replay upstream (exploring, storing prompts), feedback drawn from the benchmark's grades, an
off-policy estimate checked against the replayed truth, and retraining cycles whose gate decides
promotion, picked up by the running service without a restart, and rolled back."""

from __future__ import annotations

import shutil
import time

import httpx
import mlflow
import numpy as np
import pytest

from service.config import REPO_ROOT, Settings
from service.prompts import prompt_id
from service.routing.learned import LearnedRouter
from tests.servers import ServiceServer
from training import datasets, tracking
from training.offpolicy import evaluate_policy, router_policy
from training.retrain import realized, retrain, rollback, shared_sets
from training.simulate import recorded_traffic, send
from training.traffic import logged_requests, traffic_outcomes

pytestmark = pytest.mark.slow
ADMIN = "sb-admin-loop"


@pytest.fixture(scope="module")
def loop(tmp_path_factory):
    root = tmp_path_factory.mktemp("loop")
    router_dir = root / "router"
    shutil.copytree(REPO_ROOT / "models" / "router", router_dir)
    settings = Settings(
        upstream="replay",
        database_url=f"sqlite:///{root / 'ledger.db'}",
        admin_key=ADMIN,
        store_content=True,
        exploration_rate=0.3,
        router_dir=router_dir,
        upkeep_interval_s=0.5,
    )
    outcomes = datasets.load()
    prompts, graded = recorded_traffic(outcomes, 400, seed=3, split="train")
    with ServiceServer(settings) as service:
        key = service.create_key("simulated")
        served = send(service.url, key, prompts, graded, rate=True)
        yield service, settings, root, prompts, graded, served


def version_served(service, key_header, prompt):
    """The version of the router deciding now (a recorded prompt: the replay upstream's)."""
    response = httpx.post(f"{service.url}/v1/route", json={"prompt": prompt}, headers=key_header)
    response.raise_for_status()
    return response.json()["router_version"]


def test_logged_traffic_becomes_outcomes_with_propensities(loop):
    _, settings, _, prompts, _, _served = loop
    logged = logged_requests(settings.database_url)
    assert len(logged) == len(prompts)
    assert logged["quality"].notna().all() and logged["prompt"].notna().all()
    assert (logged["propensity"] < 0.5).any() and (logged["propensity"] > 0.7).any()
    outcomes = traffic_outcomes(logged)
    assert set(outcomes["source"]) == {"traffic"} and len(outcomes) == len(prompts)
    # split by prompt hash (these are public training prompts: their hashes fall in train/val)
    assert {"train", "val"} <= set(outcomes["split"]) <= {"train", "val", "test"}


def test_the_off_policy_estimate_of_a_known_router_covers_its_replayed_value(loop):
    _, settings, _, _, graded, _ = loop
    logged = logged_requests(settings.database_url)
    champion = LearnedRouter.load(settings.router_dir)
    choices = router_policy(champion)(logged)  # the champion without exploration
    truth = np.mean(
        [
            graded.loc[(prompt_id(p), c), "quality"]
            for p, c in zip(logged["prompt"], choices, strict=True)
        ]
    )
    estimate = evaluate_policy(logged, choices)
    for method in ("ips", "dr"):
        value = estimate["quality"][method]
        # the 95 % interval, widened to 99.9 % (3.29 standard errors) so the test is not flaky;
        # tests/test_offpolicy.py checks the 95 % coverage itself on seeded synthetic logs
        assert abs(value["value"] - truth) <= 3.29 * value["se"], (method, value, truth)
    assert estimate["agreement"] > 0.6


def test_a_retraining_cycle_promotes_only_through_the_gate(loop, monkeypatch):
    _service, settings, root, _, _, _ = loop
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow.db'}")
    old = LearnedRouter.load(settings.router_dir)
    report = retrain(
        settings.database_url,
        settings.router_dir,
        root / "challenger",
        learners=["logistic-regression"],
        sample=150,
        snapshot_dir=root / "snapshots",
    )
    gate = report["gate"]
    assert report["traffic_outcomes"] > 0
    assert (root / "snapshots").glob("outcomes-*.parquet")
    assert report["snapshot_sha256"][:16] in report["snapshot"]
    assert set(report["off_policy"]) >= {"logged", "champion", "challenger", "heuristic"}
    # registered as a model version only when the gate passed; a run either way
    assert bool(report["mlflow"]["model_version"]) == gate["passed"]
    assert report["mlflow"]["run_id"]
    assert gate["reason"].startswith(("passed", gate["quality_verdict"], gate["cost_verdict"]))
    assert gate["quality_mdd"] > 0 and gate["public_prompts"] > 0
    now_served = LearnedRouter.load(settings.router_dir)
    assert report["promoted"] == gate["passed"]
    assert (now_served.version != old.version) == report["promoted"]
    # on held-out data, what serves now is at least as good as before: the gate's promise
    sets = shared_sets([old, now_served], _test_sets(old))
    q_old, c_old = realized(old, sets, old.bar)
    q_now, c_now = realized(now_served, sets, now_served.bar)
    assert q_now.mean() >= q_old.mean() - gate["margin"] - 0.02
    assert c_now.sum() <= c_old.sum() * (1 + 1e-9)


def test_promotion_is_picked_up_live_and_rollback_restores_the_old_champion(loop, monkeypatch):
    service, settings, root, prompts, _, _ = loop
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{root / 'mlflow-promotion.db'}")
    auth = {"Authorization": f"Bearer {ADMIN}"}
    # an expensive champion: the served router with a conservative threshold
    expensive = LearnedRouter.load(settings.router_dir)
    expensive.default_threshold = 0.95
    expensive.metadata["version"] = "expensive-" + expensive.version
    expensive.save(settings.router_dir)
    wait_for(lambda: version_served(service, auth, prompts[0]) == expensive.version)
    report = retrain(
        settings.database_url,
        settings.router_dir,
        root / "cheaper",
        learners=["logistic-regression"],
        sample=150,
        margin=0.5,  # accept a lower pass rate for the much lower cost of a normal threshold
        snapshot_dir=root / "snapshots",
    )
    assert report["gate"]["passed"] and report["promoted"], report["gate"]
    assert report["gate"]["cost_change_high"] < 0
    new_version = report["challenger"]["version"]
    wait_for(lambda: version_served(service, auth, prompts[0]) == new_version)  # no restart
    listed = httpx.get(f"{service.url}/v1/models/switchboard/auto", headers=auth).json()
    assert listed["switchboard"]["router_version"] == new_version  # what serves now
    run = mlflow.MlflowClient(tracking.tracking_uri()).get_run(report["mlflow"]["run_id"])
    assert run.data.tags["promoted"] == "true" and report["mlflow"]["model_version"]
    restored = rollback(settings.router_dir)
    assert restored["champion_version"] == report["install"]["replaced"]
    wait_for(lambda: version_served(service, auth, prompts[0]) == expensive.version)


def _test_sets(router):
    from service.catalog import Catalog
    from training.pipeline import cached_featurizer, sample_outcomes
    from training.train import SHIPPED_SOURCES, evaluation_sets

    outcomes = sample_outcomes(datasets.load(), 150)
    return evaluation_sets(
        outcomes, "test", SHIPPED_SOURCES, cached_featurizer(router.embedder_name), Catalog.load()
    )


def wait_for(condition, timeout=30.0):
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.2)
