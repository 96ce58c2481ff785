"""Training runs in a real MLflow tracking store (SQLite in a temporary directory)."""

import mlflow
import pytest

from service.routing.learned import LearnedRouter
from training import datasets, tracking


@pytest.fixture
def store(tmp_path, monkeypatch):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    return uri


def test_runs_are_logged_registered_and_promoted_only_when_installed(small_router, store, tmp_path):
    directory, _ = small_router
    router = LearnedRouter.load(directory)
    artifacts = [directory / "MODEL_CARD.md"]
    first = tracking.log_training(
        router, directory, artifacts, {"bar": 0.5}, datasets.OUTCOMES_PATH
    )
    assert first["model_version"] == "1" and tracking.champion_version() is None
    assert tracking.promote(first["model_version"], tmp_path / "nothing-installed") is None
    assert tracking.champion_version() == "1"
    second = tracking.log_training(router, directory, artifacts, {"bar": 0.5}, None)
    assert second["model_version"] == "2"
    assert tracking.champion_version() == "1"

    run = mlflow.get_run(first["run_id"])
    assert run.data.tags["code_version"] == router.metadata["code_version"]
    assert run.data.tags["outcomes_table_sha256"] == router.metadata["data_sha256"]
    assert run.data.params["default_threshold"] == str(router.default_threshold)
    assert "test.routerbench-subset.learned.aiq" in run.data.metrics
    files = {a.path for a in mlflow.MlflowClient().list_artifacts(first["run_id"])}
    assert "MODEL_CARD.md" in files


def test_the_champion_loads_as_a_pyfunc_model_and_scores_prompts(small_router, store):
    directory, _ = small_router
    router = LearnedRouter.load(directory)
    logged = tracking.log_training(router, directory, [], {}, datasets.OUTCOMES_PATH)
    tracking.promote(logged["model_version"], directory)
    model = mlflow.pyfunc.load_model(f"models:/{tracking.REGISTERED_MODEL}@champion")
    scores = model.predict(["What is 2+2?", "Write a sorting function."])
    assert list(scores.columns) == router.models and len(scores) == 2


def retraining_report(passed: bool) -> dict:
    estimate = {
        "value": 0.7,
        "se": 0.02,
        "ci_low": 0.66,
        "ci_high": 0.74,
        "n": 300,
        "effective_sample_size": 250.0,
        "explored_agreeing": 40,
        "reason": None,
    }
    withheld = dict(estimate, value=None, se=None, ci_low=None, ci_high=None)
    withheld.update(effective_sample_size=9.5, reason="not enough overlap")
    return {
        "snapshot_sha256": "ab" * 32,
        "traffic_outcomes": 12,
        "traffic": {"held_out_rows_dropped": 3, "held_out_prompts_dropped": 2},
        "gate": {
            "passed": passed,
            "prompts": 500,
            "quality_diff_low": -0.01,
            "margin": 0.05,
            "confidence": 0.95,
            "quality_mdd": 0.03,
            "quality_verdict": "not worse",
            "cost_verdict": "cheaper",
            "reason": "passed",
            "traffic_test": {"requests": 4},
            "prompts_needed": None,
        },
        "challenger": {"test": {}},
        "champion": {"test": {}},
        "off_policy": {
            "note": "a string, not a policy",
            "logged": {"quality": {"ips": estimate, "dr": estimate}, "cost_usd": {}},
            "heuristic": {"quality": {"ips": withheld, "dr": withheld}, "cost_usd": {}},
        },
    }


def test_a_retraining_run_registers_only_a_challenger_that_passed_and_tags_promotion(
    small_router, store
):
    directory, _ = small_router
    router = LearnedRouter.load(directory)
    client = mlflow.MlflowClient(tracking_uri=store, registry_uri=store)
    failed = tracking.log_retraining(router, directory, router, retraining_report(False))
    assert failed["model_version"] is None
    assert not client.search_model_versions(f"run_id='{failed['run_id']}'")
    passed = tracking.log_retraining(router, directory, router, retraining_report(True))
    assert passed["model_version"] == "1"
    assert client.get_run(passed["run_id"]).data.tags["promoted"] == "false"  # not yet
    tracking.set_promoted(passed["run_id"], True)
    promoted = client.get_run(passed["run_id"]).data.tags
    kept = client.get_run(failed["run_id"]).data.tags
    assert (promoted["promoted"], kept["promoted"]) == ("true", "false")
    assert (promoted["registered"], kept["registered"]) == ("true", "false")
    metrics = client.get_run(failed["run_id"]).data.metrics
    assert metrics["gate.quality_mdd"] == 0.03 and metrics["gate.prompts"] == 500
    assert metrics["ope.logged.quality.dr"] == 0.7
    assert metrics["ope.logged.quality.dr.ci_low"] == 0.66
    assert metrics["ope.logged.quality.dr.ci_high"] == 0.74
    assert metrics["ope.logged.quality.ips.ess"] == 250.0
    # a withheld estimate: its effective sample size, no value or interval
    assert metrics["ope.heuristic.quality.dr.ess"] == 9.5
    assert "ope.heuristic.quality.dr" not in metrics
    assert "ope.heuristic.quality.dr.ci_low" not in metrics
    params = client.get_run(failed["run_id"]).data.params
    assert params["traffic_held_out_rows_dropped"] == "3"
