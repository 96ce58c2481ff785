"""The out-of-domain score and the shrinkage of P(pass) toward each model's base rate."""

import numpy as np
from sklearn.linear_model import LogisticRegression

from service.routing.learned import LearnedRouter, PerModelScorer
from service.routing.ood import OutOfDomainScore, nearest
from tests.test_learned import synthetic

DIM = 8


def cluster(centre: int, n: int, seed: int) -> np.ndarray:
    """Feature rows whose embedding part (the first DIM columns) lies near axis ``centre``,
    with two text-feature columns after it."""
    rng = np.random.default_rng(seed)
    X = rng.normal(scale=0.3, size=(n, DIM + 2)).astype(np.float32)
    X[:, centre] += 3.0
    return X


def fitted() -> OutOfDomainScore:
    train = {f"s{c}": cluster(c, 200, c) for c in range(3)}
    val = {f"s{c}": cluster(c, 60, 10 + c) for c in range(3)}
    return OutOfDomainScore(DIM, reference_size=300, k=5).fit(train, val)


def test_a_kind_of_prompt_never_seen_scores_far_and_seen_ones_near():
    ood = fitted()
    near, far = ood.score(cluster(1, 50, 99)), ood.score(cluster(6, 50, 98))
    assert ((near >= 0) & (near <= 1)).all() and ((far >= 0) & (far <= 1)).all()
    assert far.min() > near.max()
    assert far.mean() > 0.5 > near.mean()
    assert set(ood.auroc_) == {"s0", "s1", "s2"} and min(ood.auroc_.values()) > 0.9
    assert ood.reference_.shape == (300, DIM) and ood.reference_rows_.shape == (300, DIM + 2)


def test_the_text_features_do_not_move_the_score():
    ood = fitted()
    X = cluster(2, 20, 5)
    shifted = X.copy()
    shifted[:, DIM:] += 100.0
    np.testing.assert_allclose(ood.score(X), ood.score(shifted))


def test_nearest_is_the_mean_cosine_distance_of_the_k_nearest():
    reference = np.eye(3, dtype=np.float32)
    x = np.array([[1.0, 0.0, 0.0]], dtype=np.float32)
    assert nearest(reference, x, k=1)[0][0] == 1e-6  # floored above 0 for the log
    np.testing.assert_allclose(nearest(reference, x, k=2)[0], [0.5])
    assert nearest(reference, x, k=1)[1].tolist() == [[0]]


def test_the_base_rate_is_the_models_p_pass_on_the_prompts_nearest_kind():
    router, X = router_with(1.0)
    models = ["a/x", "b/y"]
    reference = router.p_pass([""] * 200, models, features=router.ood.reference_rows_,
                              shrink=False)  # fmt: skip
    seen = router.nearness(X[:3])
    np.testing.assert_allclose(
        router.base_rates(seen, models), reference[seen.neighbours].mean(axis=1), rtol=1e-5
    )
    overall = router.base_rates(seen, models, base="overall")
    np.testing.assert_allclose(overall, np.tile(reference.mean(axis=0), (3, 1)), rtol=1e-5)
    # two kinds of prompt on which model a/x passes at different rates: each prompt's base rate
    # follows its own kind, where the overall rate cannot tell them apart
    kinds = np.array([reference[:, 0].argmax(), reference[:, 0].argmin()])
    sure = router.nearness(router.ood.reference_rows_[kinds])
    rates = router.base_rates(sure, models)[:, 0]
    assert rates[0] > reference[:, 0].mean() > rates[1]


def router_with(shrinkage: float) -> tuple[LearnedRouter, np.ndarray]:
    X, prompt_index, model_index, passed = synthetic()
    X = np.hstack([X, np.zeros((len(X), DIM + 2 - X.shape[1]), dtype=np.float32)])
    X[:, DIM - 1] += 3.0  # every training prompt near one axis
    scorer = PerModelScorer(LogisticRegression(), method="sigmoid", cv=3)
    scorer.fit(X, prompt_index, model_index, passed)
    ood = OutOfDomainScore(DIM, reference_size=200, k=5).fit(
        {"a": X[:150], "b": X[150:]}, {"a": X[:60], "b": X[150:210]}
    )
    router = LearnedRouter(scorer, ["a/x", "b/y", "c/z"], ood=ood, shrinkage=shrinkage)
    return router, X


def test_far_from_the_training_prompts_p_pass_moves_to_the_base_rate():
    router, X = router_with(1.0)
    far = np.zeros((4, DIM + 2), dtype=np.float32)
    far[:, 0] = np.array([1.0, -1.0, 1.0, -1.0])  # model a/x's feature
    far[:, DIM - 2] = 5.0  # along a direction no training prompt takes
    models = ["a/x", "b/y", "c/z"]
    raw = router.p_pass([""] * 4, models, features=far, shrink=False)
    shrunk = router.p_pass([""] * 4, models, features=far)
    seen = router.nearness(far)
    base = router.base_rates(seen, models)
    weight = np.minimum(1.0, seen.score)[:, None]
    np.testing.assert_allclose(shrunk, (1 - weight) * raw + weight * base)
    assert (weight > 0.5).all()  # far prompts lean on their nearest kind more than on themselves
    assert (np.abs(shrunk - base) <= np.abs(raw - base) + 1e-12).all()
    near = X[:4]
    close = router.nearness(near).score
    assert close.max() < seen.score.min()  # training prompts lean on themselves
    moved = router.p_pass([""] * 4, models, features=near) - router.p_pass(
        [""] * 4, models, features=near, shrink=False
    )
    assert (np.abs(moved) <= close[:, None] + 1e-12).all()
    off, _ = router_with(0.0)
    np.testing.assert_allclose(off.p_pass([""] * 4, models, features=far), raw)


def test_the_score_and_the_shrinkage_survive_save_and_load(tmp_path):
    router, X = router_with(0.4)
    router.save(tmp_path / "r")
    loaded = LearnedRouter.load(tmp_path / "r")
    assert loaded.shrinkage == 0.4
    np.testing.assert_allclose(loaded.nearness(X[:5]).score, router.nearness(X[:5]).score)
    np.testing.assert_allclose(
        loaded.p_pass([""] * 5, ["a/x"], features=X[:5]),
        router.p_pass([""] * 5, ["a/x"], features=X[:5]),
    )
