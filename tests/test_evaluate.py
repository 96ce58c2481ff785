import numpy as np
import pytest

from service.routing.learned import LearnedRouter
from training.evaluate import THRESHOLDS, EvaluationError, RoutingTable, evaluate

KEYS = {"quality", "cost_usd", "aiq", "cost_ratio_at_quality", "apgr", "cpt50", "cpt80"}


def table(n=400, models=("cheap", "mid", "frontier"), seed=0):
    """Three models of rising price; the cheap one fails hard prompts, the frontier rarely."""
    rng = np.random.default_rng(seed)
    hard = rng.uniform(size=n)
    quality = np.column_stack([hard < 0.5, hard < 0.8, hard < 0.95][: len(models)]).astype(float)
    price = np.array([0.001, 0.01, 0.1])[: len(models)]
    cost = np.tile(price, (n, 1))
    return RoutingTable(
        prompt_ids=[str(i) for i in range(n)],
        prompts=["p"] * n,
        models=list(models),
        quality=quality,
        cost_usd=cost,
        expected_cost_usd=cost.copy(),
    ), hard


def router(threshold=0.5):
    return LearnedRouter(scorer=None, models=[], default_threshold=threshold)


def test_report_has_exactly_the_documented_shape():
    t, _ = table()
    report = evaluate(t, router(), t.quality * 0.9 + 0.05).report
    assert set(report) == {"n_prompts", "models", "bar", "reference_model", "routers"}
    names = {"learned", "heuristic", "random", "zero", "oracle"} | {f"model:{m}" for m in t.models}
    assert set(report["routers"]) == names
    for entry in report["routers"].values():
        assert set(entry) == KEYS
        assert set(entry["cost_ratio_at_quality"]) == {"0.95", "1.0"}
        assert entry["apgr"] is None  # three models: no two-model metrics
    assert report["reference_model"] == "frontier"


def test_a_router_that_knows_the_outcomes_beats_the_baselines():
    t, _ = table()
    routers = evaluate(t, router(), t.quality).report["routers"]
    # its one informative point is the oracle's best; the oracle also trades quality for cost
    assert routers["learned"]["quality"] == pytest.approx(routers["oracle"]["quality"])
    assert routers["oracle"]["aiq"] >= routers["learned"]["aiq"]
    assert routers["learned"]["aiq"] > routers["zero"]["aiq"] > routers["random"]["aiq"]
    assert routers["learned"]["cost_ratio_at_quality"]["1.0"] < 0.5
    assert routers["zero"]["cost_ratio_at_quality"]["1.0"] == pytest.approx(1.0)


def test_uninformative_probabilities_do_not_beat_the_zero_router():
    t, _ = table()
    constant = np.tile([0.5, 0.8, 0.95], (len(t.prompts), 1))
    routers = evaluate(t, router(), constant).report["routers"]
    assert routers["learned"]["aiq"] <= routers["zero"]["aiq"] + 1e-9


def test_two_models_fill_apgr_and_cpt():
    t, _ = table(models=("cheap", "mid"))
    routers = evaluate(t, router(), t.quality).report["routers"]
    assert routers["learned"]["apgr"] > 0.8
    assert routers["random"]["apgr"] == pytest.approx(0.5, abs=0.05)
    assert routers["zero"]["apgr"] == pytest.approx(0.5)
    assert routers["model:cheap"]["apgr"] is None


def test_unknown_reference_is_an_error():
    t, _ = table()
    with pytest.raises(EvaluationError, match="reference"):
        evaluate(t, router(), t.quality, reference="nope")


def test_default_operating_point_is_the_router_threshold():
    t, _ = table()
    p = np.tile([0.55, 0.85, 0.99], (len(t.prompts), 1))
    routers = evaluate(t, router(threshold=0.9), p).report["routers"]
    assert 0.9 in THRESHOLDS
    assert routers["learned"]["cost_usd"] == pytest.approx(0.1)  # only the frontier clears 0.9


def test_an_unpriced_model_without_recorded_costs_is_left_out_with_a_warning(caplog):
    import pandas as pd

    from service.catalog import Catalog, ModelInfo
    from training.evaluate import shared_models

    catalog = Catalog(
        {
            "a/cheap": ModelInfo("a/cheap", "A", 1e-6, 1e-6),
            "b/mid": ModelInfo("b/mid", "B", 2e-6, 2e-6),
            "c/unpriced": ModelInfo("c/unpriced", "C", None, None),
        }
    )
    rows = pd.DataFrame(
        {
            "prompt_id": ["p", "p", "p"],
            "prompt": ["x"] * 3,
            "model": ["a/cheap", "b/mid", "c/unpriced"],
            "quality": [1.0, 1.0, 0.0],
            "cost_usd": [None, None, None],
        }
    )
    routed = LearnedRouter(scorer=None, models=["a/cheap", "b/mid", "c/unpriced"])
    assert shared_models(rows, routed, catalog, None) == ["a/cheap", "b/mid"]
    assert "c/unpriced has no price" in caplog.text and "column 'cost_usd'" in caplog.text
    with pytest.raises(EvaluationError, match="at least two priced models"):
        shared_models(rows, routed, catalog, ["a/cheap", "c/unpriced"])
