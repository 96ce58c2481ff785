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
