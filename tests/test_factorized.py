import numpy as np
import pytest

from service.routing.calibration import CalibrationMap, fit_calibration
from service.routing.factorized import FactorizedScorer


def synthetic(n_prompts=400, n_models=4, seed=0):
    """Model m passes when x0 + x1 > its difficulty; x2 is noise."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_prompts, 3))
    prompt_index = np.repeat(np.arange(n_prompts), n_models)
    model_index = np.tile(np.arange(n_models), n_prompts)
    skill = X[prompt_index, 0] + X[prompt_index, 1] + rng.normal(0, 0.5, len(prompt_index))
    passed = (skill > np.linspace(-1.0, 1.0, n_models)[model_index]).astype(int)
    return X, prompt_index, model_index, passed


@pytest.mark.parametrize("calibration", [None, "platt", "isotonic"])
def test_scores_follow_the_skill_and_the_model(calibration):
    X, prompt_index, model_index, passed = synthetic()
    scorer = FactorizedScorer(rank=2, calibration=calibration, max_iter=200)
    scorer.fit(X, prompt_index, model_index, passed)
    p = scorer.predict_proba(X, [0, 3])
    assert p.shape == (len(X), 2)
    easy = X[:, 0] + X[:, 1] > 0
    assert p[easy, 0].mean() > p[~easy, 0].mean() + 0.4
    assert (p[:, 0] >= p[:, 1] - 1e-9).mean() > 0.95  # model 0 has the lowest bar
    rows = model_index == 0
    tolerance = 0.1 if calibration is None else 0.05  # the prior shrinks the plain sigmoid
    assert abs(p[prompt_index[rows], 0].mean() - passed[rows].mean()) < tolerance


def test_onboarding_leaves_the_other_models_unchanged():
    X, prompt_index, model_index, passed = synthetic()
    keep = model_index < 3
    scorer = FactorizedScorer(rank=2, ability_l2=1e-4, max_iter=200)
    scorer.fit(X, prompt_index[keep], model_index[keep], passed[keep])
    before = scorer.predict_proba(X, [0, 1, 2])
    new = model_index == 3
    fit = scorer.fit_abilities(X[prompt_index[new]][:200], passed[new][:200])
    column = scorer.with_model(fit)
    assert column == 3
    np.testing.assert_allclose(scorer.predict_proba(X, [0, 1, 2]), before)
    p_new = scorer.predict_proba(X, [column])[:, 0]
    assert p_new.mean() < before[:, 2].mean()  # the hardest model, seen on 200 prompts
    assert abs(p_new.mean() - passed[new].mean()) < 0.1


def test_a_replaced_model_falls_back_to_the_global_map():
    logits = np.linspace(-3, 3, 200)
    y = (logits + np.random.default_rng(0).normal(0, 1, 200) > 0).astype(float)
    model_index = np.repeat([0, 1], 100)
    calibration = fit_calibration(logits, y, model_index, 2, "platt", per_model_rows=50)
    assert set(calibration.per_model) == {0, 1}
    assert set(calibration.with_global_map(1).per_model) == {0}


def test_platt_map_is_the_logistic_of_an_affine_logit():
    z = np.array([-1.0, 0.0, 2.0])
    np.testing.assert_allclose(CalibrationMap(2.0, 1.0)(z), 1 / (1 + np.exp(-(2 * z + 1))))
