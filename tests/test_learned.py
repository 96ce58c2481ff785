import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from service.routing.learned import (
    ClusterScorer,
    ConstantScorer,
    JointScorer,
    LearnedRouter,
    PerModelScorer,
)


def synthetic(n_prompts=300, seed=0):
    """Model 0 passes when feature 0 is positive, model 1 always passes, model 2 never does."""
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n_prompts, 4)).astype(np.float32)
    prompt_index = np.repeat(np.arange(n_prompts), 3)
    model_index = np.tile(np.arange(3), n_prompts)
    passed = np.where(model_index == 0, X[prompt_index, 0] > 0, model_index == 1).astype(int)
    return X, prompt_index, model_index, passed


@pytest.mark.parametrize("scorer_class", [PerModelScorer, JointScorer])
def test_scorers_learn_which_prompts_each_model_passes(scorer_class):
    X, prompt_index, model_index, passed = synthetic()
    scorer = scorer_class(LogisticRegression(), method="sigmoid", cv=3)
    scorer.fit(X, prompt_index, model_index, passed)
    p = scorer.predict_proba(X, [0, 1, 2])
    assert p.shape == (len(X), 3)
    positive = X[:, 0] > 0
    assert p[positive, 0].mean() > p[~positive, 0].mean() + 0.4
    if scorer_class is PerModelScorer:
        assert p[:, 1].min() == 1.0 and p[:, 2].max() == 0.0  # single-class models: constants


def test_a_model_with_one_class_gets_its_observed_rate():
    p = ConstantScorer(0.25).predict_proba(np.zeros((3, 2)))
    np.testing.assert_allclose(p, [[0.75, 0.25]] * 3)


def test_router_round_trips_through_its_directory(tmp_path):
    X, prompt_index, model_index, passed = synthetic()
    scorer = PerModelScorer(LogisticRegression(), method="sigmoid", cv=3)
    scorer.fit(X, prompt_index, model_index, passed)
    router = LearnedRouter(
        scorer, ["a/x", "b/y", "c/z"], "fake-embedder", 0.5, 0.7, {"version": "v1"}
    )
    router.save(tmp_path / "r")
    loaded = LearnedRouter.load(tmp_path / "r")
    assert loaded.models == router.models and loaded.default_threshold == 0.7
    assert loaded.version == "v1"
    np.testing.assert_allclose(
        loaded.p_pass([""] * 5, ["c/z", "a/x"], features=X[:5]),
        router.p_pass([""] * 5, ["c/z", "a/x"], features=X[:5]),
    )
    with pytest.raises(KeyError, match="no scorer for d/w"):
        loaded.p_pass([""], ["d/w"], features=X[:1])


def test_linear_scorer_is_the_standardized_regression_folded_into_one_matrix():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from service.routing.learned import LinearScorer

    X, prompt_index, model_index, passed = synthetic()
    X = X * np.array([1.0, 10.0, 0.1, 3.0], dtype=np.float32) + 5.0  # scaling must not matter
    scorer = LinearScorer(C=0.5, cv=3).fit(X, prompt_index, model_index, passed)
    rows = model_index == 0
    pipeline = make_pipeline(StandardScaler(), LogisticRegression(C=0.5, max_iter=3000))
    pipeline.fit(X[prompt_index[rows]], passed[rows])
    logits = X @ scorer.weights_[0] + scorer.intercepts_[0]
    np.testing.assert_allclose(logits, pipeline.decision_function(X), rtol=1e-6, atol=1e-6)
    p = scorer.predict_proba(X, [0, 1, 2])
    order = np.argsort(logits)
    assert (np.diff(p[order, 0]) >= -1e-12).all()  # calibration keeps the order
    positive = X[:, 0] > 5.0
    assert p[positive, 0].mean() > p[~positive, 0].mean() + 0.4
    np.testing.assert_allclose(p[:, 1], 1.0)
    np.testing.assert_allclose(p[:, 2], 0.0)


def test_linear_scorer_gives_a_feature_that_never_varies_no_weight():
    """A dead embedding dimension (values around 1e-33) must not be standardized into a
    feature with an astronomically large weight."""
    from service.routing.learned import LinearScorer

    X, prompt_index, model_index, passed = synthetic()
    rng = np.random.default_rng(1)
    X = np.hstack([X, (rng.normal(size=(len(X), 1)) * 1e-33).astype(np.float32)])
    scorer = LinearScorer(C=0.5, cv=3).fit(X, prompt_index, model_index, passed)
    assert (scorer.weights_[:, -1] == 0).all()
    assert np.abs(scorer.weights_).max() < 1e3


def test_cluster_scorer_gives_each_group_its_smoothed_pass_rates():
    """Two tight groups of prompts (directions e0 and e1, plus an unused text feature): model 0
    passes every prompt of group A and none of group B; model 1 the other way round."""
    rng = np.random.default_rng(0)
    n = 100
    group_b = np.arange(2 * n) >= n
    X = np.zeros((2 * n, 4))
    X[~group_b, 0] = 1.0
    X[group_b, 1] = 1.0
    X[:, :3] += rng.normal(scale=0.01, size=(2 * n, 3))
    X[:, 3] = rng.normal(size=2 * n) * 100  # not part of the embedding: must not matter
    prompt_index = np.repeat(np.arange(2 * n), 2)
    model_index = np.tile([0, 1], 2 * n)
    passed = np.where(model_index == 0, ~group_b[prompt_index], group_b[prompt_index]).astype(int)
    scorer = ClusterScorer(embedding_dim=3, n_clusters=2, prior_strength=5.0)
    scorer.fit(X, prompt_index, model_index, passed)
    p = scorer.predict_proba(np.array([[2.0, 0.1, 0.0, 9.0], [0.0, 3.0, 0.1, -9.0]]), [0, 1])
    # 100 passes of 100, shrunk by 5 pseudo-prompts toward the overall rate 0.5
    expected = (100 + 5 * 0.5) / (100 + 5)
    np.testing.assert_allclose(p, [[expected, 1 - expected], [1 - expected, expected]])


def test_answer_lengths_follow_the_prompt_and_leave_unknown_models_to_the_catalog(tmp_path):
    """Model a answers long when feature 0 is high and short when it is low; model b has too
    few recorded answers to learn from; model c none at all."""
    from service.routing.learned import AnswerLengths

    rng = np.random.default_rng(0)
    X = rng.normal(size=(400, 3))
    prompt_index = np.concatenate([np.arange(400), np.arange(10)])
    model_index = np.concatenate([np.zeros(400, int), np.ones(10, int)])
    tokens = np.concatenate([np.exp(3.0 + 1.5 * X[:, 0]), np.full(10, 500.0)])
    tokens[:5] = np.nan  # answers not recorded: skipped
    lengths = AnswerLengths(["a", "b", "c"], alpha=1.0, min_answers=50)
    lengths.fit(X, prompt_index, model_index, tokens)
    probe = np.array([[2.0, 0.0, 0.0], [-2.0, 0.0, 0.0]])
    predicted = lengths.predict(probe, ["a", "b", "c", "unknown"])
    assert 200 < predicted[0, 0] < 600  # e^6 = 403 tokens, a little shrunk by the ridge
    assert 1.0 <= predicted[1, 0] < 3  # e^0 = 1 token
    assert np.isnan(predicted[:, 1:]).all()
    router = LearnedRouter(
        ConstantScorer(0.5), ["a", "b", "c"], "fake-embedder", answer_lengths=lengths
    )
    router.save(tmp_path / "r")
    loaded = LearnedRouter.load(tmp_path / "r")
    np.testing.assert_allclose(loaded.answer_tokens(probe, ["a"]), predicted[:, :1])
