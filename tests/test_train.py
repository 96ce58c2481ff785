import json

import numpy as np

from service.catalog import Catalog
from service.routing.learned import LearnedRouter
from training.evaluate import THRESHOLDS
from training.learners import LEARNERS
from training.train import evaluation_models, one_standard_error_choice, training_data


def test_training_data_indexes_prompts_and_models(outcomes):
    sample = outcomes[outcomes["source"] == "routerarena"]
    data = training_data(sample, ["train"], ["routerarena"], bar=0.5)
    assert data.models == ["anthropic/claude-3-haiku", "google/gemini-2.0-flash-001"]
    assert len(data.prompt_index) == len(data.model_index) == len(data.passed)
    assert data.prompt_index.max() == len(data.prompts) - 1
    assert set(np.unique(data.passed)) == {0, 1}


def test_each_source_routes_among_the_models_it_evaluated(outcomes):
    assert len(evaluation_models(outcomes, "routerbench-subset")) == 11
    assert len(evaluation_models(outcomes, "llmrouter")) == 9  # the NQ-only models are left out
    assert len(evaluation_models(outcomes, "routerarena")) == 2
    # zeroeval's routing set: priced models graded on every prompt, o1 (hidden reasoning) out
    catalog = Catalog.load()
    routed = evaluation_models(outcomes, "zeroeval", catalog)
    assert len(routed) >= 20 and not any("o1-" in m for m in routed)
    assert all(catalog.get(m).priced for m in routed)


def test_training_chooses_on_validation_and_exports_a_complete_router(small_router):
    directory, summary = small_router
    assert summary["default_threshold"] in THRESHOLDS
    router = LearnedRouter.load(directory)
    meta = json.loads((directory / "router.json").read_text())
    order = [name for name in LEARNERS if name in meta["validation"]]  # simplest first
    within = [
        n
        for n in order
        if meta["validation"][n]["aiq_gap_to_best"]
        <= meta["validation"][n]["aiq_gap_standard_error"]
    ]
    assert summary["learner"] == within[0]
    assert meta["learner"] == summary["learner"]
    assert meta["data_sha256"] and meta["code_version"]
    assert set(meta["test"]["sources"]) == {
        "routerbench-subset",
        "llmrouter",
        "routerarena",
        "zeroeval",
    }
    assert meta["kind"] == "train" and meta["version"] == summary["version"]
    assert directory.parent.name == "runs" and directory.name == summary["version"]
    card = (directory / "MODEL_CARD.md").read_text()
    assert summary["learner"] in card and "Test split" in card
    assert (directory / "test-calibration.png").stat().st_size > 0
    p = router.p_pass(["What is 2+2?"], router.models)
    assert p.shape == (1, len(router.models)) and ((p >= 0) & (p <= 1)).all()


def test_one_standard_error_rule_prefers_the_simplest_close_candidate():
    rng = np.random.default_rng(0)
    noise = rng.normal(scale=0.01, size=201)
    replicates = {
        "simple": 0.700 + noise,
        "complex": 0.703 + noise + rng.normal(scale=0.005, size=201),
        "bad": 0.650 + noise,
    }
    candidates = {name: {} for name in ("bad", "simple", "complex")}
    assert one_standard_error_choice(candidates, replicates) == "simple"
    assert candidates["bad"]["aiq_gap_to_best"] > candidates["bad"]["aiq_gap_standard_error"]
    far = {**replicates, "complex": replicates["complex"] + 0.05}
    assert one_standard_error_choice(candidates, far) == "complex"
