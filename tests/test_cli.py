"""The ``switchboard`` command as a user runs it: output shapes and clear errors, no tracebacks."""

import json

import pytest
from typer.testing import CliRunner

from service.catalog import Catalog
from service.routing.learned import LearnedRouter
from switchboard.cli import app

runner = CliRunner()


@pytest.fixture
def rb_test_file(outcomes, tmp_path):
    rows = outcomes[(outcomes["source"] == "routerbench-subset") & (outcomes["split"] == "test")]
    keep = rows["prompt_id"].drop_duplicates().head(40)
    path = tmp_path / "rb.jsonl"
    rows[rows["prompt_id"].isin(keep)].drop(columns=["response"]).to_json(
        path, orient="records", lines=True
    )
    return path


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def test_eval_json_has_the_documented_shape(small_router, rb_test_file, isolated_cache):
    directory, _ = small_router
    result = invoke("eval", "--outcomes", rb_test_file, "--router", directory, "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["n_prompts"] <= 40 and len(report["models"]) == 11
    assert report["reference_model"] in report["models"]
    assert {"learned", "heuristic", "random", "zero", "oracle"} <= set(report["routers"])


def test_eval_restricted_to_two_models_reports_apgr(small_router, rb_test_file, isolated_cache):
    directory, _ = small_router
    models = "openai/gpt-4-1106-preview,mistralai/mixtral-8x7b-instruct"
    result = invoke(
        "eval", "--outcomes", rb_test_file, "--router", directory, "--models", models, "--json"
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["models"] == models.split(",")
    assert report["routers"]["learned"]["apgr"] is not None


def test_eval_table_writes_the_plot(small_router, rb_test_file, isolated_cache, tmp_path):
    directory, _ = small_router
    plot = tmp_path / "plot.png"
    result = invoke("eval", "--outcomes", rb_test_file, "--router", directory, "--plot", plot)
    assert result.exit_code == 0, result.output
    assert "learned" in result.stdout and "cost@95%" in result.stdout
    assert plot.stat().st_size > 0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--models", "no/such-model"], "not in the outcomes file"),
        (["--reference", "no/such-model"], "reference model"),
        (["--bar", "2"], "--bar must be in [0, 1]"),
    ],
)
def test_eval_bad_options_are_clear_errors(
    small_router, rb_test_file, isolated_cache, args, message
):
    directory, _ = small_router
    result = invoke("eval", "--outcomes", rb_test_file, "--router", directory, *args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert "Traceback" not in result.output


def test_eval_of_a_malformed_file_names_the_row(small_router, tmp_path, isolated_cache):
    directory, _ = small_router
    path = tmp_path / "bad.csv"
    path.write_text("prompt,model,quality\nhello,openai/gpt-4-1106-preview,1\nhi,x/y,yes\n")
    result = invoke("eval", "--outcomes", path, "--router", directory)
    assert result.exit_code == 2
    assert "row 2, column 'quality'" in result.stderr


def test_route_prints_every_candidate(small_router, isolated_cache):
    directory, _ = small_router
    result = invoke("route", "What is the capital of France?", "--router", directory, "--json")
    assert result.exit_code == 0, result.output
    decision = json.loads(result.stdout)
    assert decision["model"] in [c["model"] for c in decision["candidates"]]
    catalog = Catalog.load()
    priced = [m for m in LearnedRouter.load(directory).models if catalog.get(m).priced]
    assert len(decision["candidates"]) == len(priced)
    assert all(0 <= c["p_pass"] <= 1 and c["expected_cost_usd"] > 0 for c in decision["candidates"])
    cheap = invoke("route", "Hi", "--router", directory, "--threshold", "0", "--json")
    chosen = json.loads(cheap.stdout)
    assert chosen["expected_cost_usd"] == min(c["expected_cost_usd"] for c in chosen["candidates"])


def test_route_rejects_empty_prompts_and_bad_thresholds(small_router):
    directory, _ = small_router
    assert "prompt is empty" in invoke("route", "  ", "--router", directory).stderr
    assert "--threshold" in invoke("route", "x", "--threshold", "3", "--router", directory).stderr
    missing = invoke("route", "x", "--router", directory / "absent")
    assert missing.exit_code == 2 and "switchboard train" in missing.stderr
