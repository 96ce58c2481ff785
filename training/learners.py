"""The candidate learners tried for the learned router; training chooses one on validation.

Each factory returns an unfitted scorer (service/routing/learned.py,
service/routing/factorized.py) whose probabilities are calibrated: by cross-validation
(isotonic regression per model, or one Platt map for the factorized scorer), or, for prompt
clusters, as smoothed pass rates per cluster. The factorized scorer comes first: the one
standard-error rule prefers it, and it alone lets models join from graded answers, so a
per-model learner is shipped only if it is better by more than one standard error.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from sklearn.compose import ColumnTransformer
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.neural_network import MLPClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from service.routing.factorized import FactorizedScorer
from service.routing.learned import (
    ClusterScorer,
    JointScorer,
    LinearScorer,
    NearestNeighbours,
    PerModelScorer,
)

CALIBRATION = "isotonic"
CALIBRATION_FOLDS = 3


def _embedding_only(dim: int) -> ColumnTransformer:
    """Keep the embedding columns: cosine neighbours should not be pulled by text features."""
    return ColumnTransformer([("embedding", "passthrough", slice(0, dim))])


def factorized(embedding_dim: int, seed: int) -> Any:
    """One scorer for every model, the only one that can onboard a model it was not fitted on
    (rank 16, calibrated by one Platt map on 3-fold out-of-fold logits: chosen on validation)."""
    return FactorizedScorer(seed=seed)


def logistic_regression(embedding_dim: int, seed: int) -> Any:
    return LinearScorer(C=0.05, cv=CALIBRATION_FOLDS, seed=seed)


def prompt_clusters(embedding_dim: int, seed: int) -> Any:
    return ClusterScorer(embedding_dim, n_clusters=40, prior_strength=5.0, seed=seed)


def nearest_neighbours(embedding_dim: int, seed: int) -> Any:
    return PerModelScorer(
        make_pipeline(
            _embedding_only(embedding_dim),
            NearestNeighbours(n_neighbors=100),
        ),
        method=CALIBRATION,
        cv=CALIBRATION_FOLDS,
    )


def neural_network(embedding_dim: int, seed: int) -> Any:
    return PerModelScorer(
        make_pipeline(
            StandardScaler(),
            MLPClassifier((64,), alpha=1e-2, early_stopping=True, max_iter=100, random_state=seed),
        ),
        method=CALIBRATION,
        cv=CALIBRATION_FOLDS,
    )


def gradient_boosting(embedding_dim: int, seed: int) -> Any:
    return PerModelScorer(
        HistGradientBoostingClassifier(
            max_iter=100,
            learning_rate=0.05,
            max_leaf_nodes=15,
            min_samples_leaf=40,
            random_state=seed,
        ),
        method=CALIBRATION,
        cv=CALIBRATION_FOLDS,
    )


def joint_gradient_boosting(embedding_dim: int, seed: int) -> Any:
    return JointScorer(
        HistGradientBoostingClassifier(
            max_iter=300,
            learning_rate=0.1,
            max_leaf_nodes=31,
            min_samples_leaf=40,
            random_state=seed,
        ),
        method=CALIBRATION,
        cv=CALIBRATION_FOLDS,
    )


LEARNERS: dict[str, Callable[[int, int], Any]] = {
    "factorized": factorized,
    "logistic-regression": logistic_regression,
    "prompt-clusters": prompt_clusters,
    "knn": nearest_neighbours,
    "mlp": neural_network,
    "gradient-boosting": gradient_boosting,
    "joint-gradient-boosting": joint_gradient_boosting,
}
