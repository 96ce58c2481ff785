"""Onboarding: a model joins a router from its graded answers, as a new installed version that
leaves every other model's scores as they were; bad outcomes files are named and refused."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pandas as pd
import pytest
from typer.testing import CliRunner

from service.catalog import Catalog
from service.routing.learned import LearnedRouter
from switchboard.cli import app
from tests.conftest import LEFT_OUT, train_small
from training import datasets
from training.onboard import MIN_GRADED_PROMPTS, kept

PROMPTS = ["What is 2+2?", "Write a haiku about the sea.", "Prove that sqrt(2) is irrational."]


def graded(model: str, n: int) -> pd.DataFrame:
    """``n`` of the shipped outcomes of ``model`` on training prompts, as a user would grade."""
    table = datasets.load()
    rows = table[(table["model"] == model) & (table["split"] == "train")].head(n)
    assert len(rows) == n
    return rows[["prompt", "model", "quality"]]


@pytest.fixture
def env(tmp_path, monkeypatch, open_router):
    router_dir = tmp_path / "router"
    shutil.copytree(open_router, router_dir)
    monkeypatch.setenv("SWITCHBOARD_ROUTER_DIR", str(router_dir))
    monkeypatch.setenv("SWITCHBOARD_RUNS_DIR", str(tmp_path / "runs"))
    monkeypatch.setenv("SWITCHBOARD_SNAPSHOTS_DIR", str(tmp_path / "snapshots"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    return tmp_path, router_dir


def onboard_cli(*args: str):
    return CliRunner().invoke(app, ["models", "onboard", *args], catch_exceptions=False)


def test_a_model_joins_from_graded_answers_and_the_others_keep_their_scores(env):
    tmp, router_dir = env
    before = LearnedRouter.load(router_dir)
    assert LEFT_OUT not in before.models
    path = tmp / "graded.jsonl"
    graded(LEFT_OUT, 50).to_json(path, orient="records", lines=True)
    result = onboard_cli("--outcomes", str(path), "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["models"][LEFT_OUT] == {
        "graded_prompts": 50,
        "pass_rate": pytest.approx(report["models"][LEFT_OUT]["pass_rate"]),
        "status": "onboarded",
    }
    after = LearnedRouter.load(router_dir)  # installed
    assert after.version == report["version"] and (tmp / "runs" / after.version).is_dir()
    assert after.graded_prompts(LEFT_OUT) == 50
    assert after.metadata["parent_version"] == before.version
    assert "none" in after.metadata["quality_gate"]
    others = before.models
    np.testing.assert_array_equal(
        before.p_pass(PROMPTS, others), after.p_pass(PROMPTS, others)
    )  # adding a model changes no other model's score
    assert not np.allclose(
        before.p_pass(PROMPTS, [LEFT_OUT], catalog=Catalog.load()),
        after.p_pass(PROMPTS, [LEFT_OUT]),
    )  # fitted abilities, not the prior
    assert set(kept(tmp / "snapshots")["model"]) == {LEFT_OUT}  # for every later retraining
    # the install moved MLflow's champion: rollback goes back to the parent
    rolled = CliRunner().invoke(app, ["rollback"], catch_exceptions=False)
    assert rolled.exit_code == 0, rolled.output
    assert LearnedRouter.load(router_dir).version == before.version


def test_no_install_writes_a_version_and_leaves_the_served_router(env):
    tmp, router_dir = env
    path = tmp / "graded.csv"
    graded(LEFT_OUT, 30).to_csv(path, index=False)
    version = LearnedRouter.load(router_dir).version
    result = onboard_cli("--outcomes", str(path), "--no-install", "--no-mlflow")
    assert result.exit_code == 0, result.output
    assert "not installed" in result.stdout and "30 graded prompts, onboarded" in result.stdout
    assert LearnedRouter.load(router_dir).version == version
    assert len(list((tmp / "runs").iterdir())) == 1


def test_too_few_graded_prompts_or_only_known_models_onboard_nothing(env):
    tmp, router_dir = env
    few = tmp / "few.jsonl"
    known = LearnedRouter.load(router_dir).models[0]
    rows = pd.concat([graded(LEFT_OUT, MIN_GRADED_PROMPTS - 1), graded(known, 20)])
    rows.to_json(few, orient="records", lines=True)
    result = onboard_cli("--outcomes", str(few), "--no-mlflow")
    assert result.exit_code == 2
    assert f"{MIN_GRADED_PROMPTS - 1} graded prompts, not onboarded" in result.stdout
    assert f"at least {MIN_GRADED_PROMPTS} are needed" in result.stdout
    assert "already in the router" in result.stdout
    refit = onboard_cli("--outcomes", str(few), "--refit", "--no-mlflow", "--json")
    assert refit.exit_code == 0
    assert json.loads(refit.stdout)["models"][known]["status"] == "onboarded"


def test_unknown_models_are_named_with_how_to_alias_them(env, monkeypatch):
    tmp, _ = env
    path = tmp / "mine.jsonl"
    rows = graded(LEFT_OUT, 12).assign(model="our-gpt-4o-mini-deployment")
    rows.to_json(path, orient="records", lines=True)
    refused = onboard_cli("--outcomes", str(path), "--no-mlflow")
    assert refused.exit_code == 2
    assert "our-gpt-4o-mini-deployment" in refused.output
    assert "SWITCHBOARD_ALIASES_PATH" in refused.output
    aliases = tmp / "aliases.json"
    aliases.write_text(json.dumps({"our-gpt-4o-mini-deployment": LEFT_OUT}))
    monkeypatch.setenv("SWITCHBOARD_ALIASES_PATH", str(aliases))
    accepted = onboard_cli("--outcomes", str(path), "--no-mlflow", "--json")
    assert accepted.exit_code == 0, accepted.output
    assert json.loads(accepted.stdout)["models"][LEFT_OUT]["status"] == "onboarded"


def test_a_router_that_cannot_score_new_models_says_so(env, tmp_path):
    directory = train_small(tmp_path, ["logistic-regression"], 30)["path"]
    path = tmp_path / "g.jsonl"
    graded(LEFT_OUT, 12).to_json(path, orient="records", lines=True)
    result = onboard_cli("--outcomes", str(path), "--router", str(directory), "--no-mlflow")
    assert result.exit_code == 2 and "factorized" in result.output


def test_train_on_your_outcomes_writes_a_version_and_installs_only_when_asked(env):
    tmp, router_dir = env
    served = LearnedRouter.load(router_dir).version
    path = tmp / "mine.jsonl"
    graded(LEFT_OUT, 40).to_json(path, orient="records", lines=True)
    base = ["train", "--outcomes", str(path), "--learners", "factorized", "--sample", "40"]
    base += ["--shrinkage", "0"]  # not chosen leave-one-source-out: four fits fewer
    written = CliRunner().invoke(app, [*base, "--no-mlflow"], catch_exceptions=False)
    assert written.exit_code == 0, written.output
    summary = json.loads(written.stdout[written.stdout.index("{") :])
    router = LearnedRouter.load(tmp / "runs" / summary["version"])
    assert LEFT_OUT in router.models and "user" in router.metadata["sources"]
    assert LearnedRouter.load(router_dir).version == served  # not installed
    installed = CliRunner().invoke(app, [*base, "--install"], catch_exceptions=False)
    assert installed.exit_code == 0, installed.output
    assert LearnedRouter.load(router_dir).version != served
    alone = CliRunner().invoke(
        app, ["train", "--outcomes", str(path), "--no-public", "--no-mlflow"]
    )
    assert alone.exit_code == 2 and "val and test prompts on every one" in alone.output
