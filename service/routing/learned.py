"""The learned router: calibrated P(answer clears the quality bar | prompt) for each model.

Scorers share one interface (``fit(X, prompt_index, model_index, passed)`` and
``predict_proba(X, model_columns)``): one calibrated classifier per model, one classifier over
prompt features joined with a one-hot of the model, or the factorized scorer
(service/routing/factorized.py), which alone can also score a model it was not fitted on (from a
few graded answers, or on its prior: service/routing/priors.py). The router artifact is a
directory with ``router.joblib`` and ``router.json`` (metadata, model card data); loading it
needs scikit-learn and the embedder, not MLflow.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import joblib
import numpy as np
from sklearn.base import BaseEstimator, ClassifierMixin, clone
from sklearn.calibration import CalibratedClassifierCV
from sklearn.cluster import KMeans
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.model_selection import StratifiedKFold, cross_val_predict
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from service.catalog import Catalog
from service.features import Embedder, Featurizer, MiniLMEmbedder, StaticMiniLMEmbedder
from service.routing.ood import Nearness, OutOfDomainScore
from service.routing.priors import AbilityPrior, prior_abilities

# what P(pass) shrinks toward far from the training prompts (LearnedRouter.base_rates)
BaseRate = Literal["nearest", "overall"]

ARTIFACT = "router.joblib"
METADATA = "router.json"
DEFAULT_EMBEDDER = StaticMiniLMEmbedder.name
MIN_FEATURE_STD = 1e-6
EMBEDDERS: dict[str, type] = {
    MiniLMEmbedder.name: MiniLMEmbedder,
    StaticMiniLMEmbedder.name: StaticMiniLMEmbedder,
}


class ConstantScorer:
    """P(pass) of a model whose training labels are all one class: the observed pass rate."""

    def __init__(self, rate: float):
        self.rate = rate

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return np.tile([1.0 - self.rate, self.rate], (len(X), 1))


def _calibrated(estimator: Any, method: str, cv: int, X: np.ndarray, y: np.ndarray) -> Any:
    if len(np.unique(y)) < 2 or min(np.bincount(y.astype(int))) < cv:
        return ConstantScorer(float(y.mean()))
    return CalibratedClassifierCV(clone(estimator), method=method, cv=cv).fit(X, y)


class NearestNeighbours(ClassifierMixin, BaseEstimator):
    """Cosine k-nearest-neighbours vote that caps k at the number of training prompts."""

    def __init__(self, n_neighbors: int = 100):
        self.n_neighbors = n_neighbors

    def fit(self, X: np.ndarray, y: np.ndarray) -> NearestNeighbours:
        k = max(1, min(self.n_neighbors, len(X)))
        self.model_ = KNeighborsClassifier(k, metric="cosine", weights="distance").fit(X, y)
        self.classes_ = self.model_.classes_
        return self

    def predict_proba(self, X: np.ndarray) -> np.ndarray:
        return self.model_.predict_proba(X)

    def predict(self, X: np.ndarray) -> np.ndarray:
        return self.model_.predict(X)


class ClusterScorer(BaseEstimator):
    """Prompts grouped by k-means on their unit-length embeddings; a model's P(pass) for a
    prompt is its pass rate among the training prompts of the prompt's group, shrunk toward its
    overall pass rate by ``prior_strength`` pseudo-prompts.

    Per-group rates are steadier than per-prompt predictions, and rank the models of one prompt
    as they rank on its kind of prompt.
    """

    def __init__(
        self,
        embedding_dim: int,
        n_clusters: int = 40,
        prior_strength: float = 5.0,
        seed: int = 0,
    ):
        self.embedding_dim = embedding_dim
        self.n_clusters = n_clusters
        self.prior_strength = prior_strength
        self.seed = seed

    def _unit(self, X: np.ndarray) -> np.ndarray:
        embedding = np.asarray(X[:, : self.embedding_dim], dtype=float)
        return embedding / np.maximum(np.linalg.norm(embedding, axis=1, keepdims=True), 1e-12)

    def _groups(self, X: np.ndarray) -> np.ndarray:
        unit = self._unit(X)
        return np.argmin(self.centroid_norms_ - 2.0 * unit @ self.centroids_.T, axis=1)

    def fit(
        self, X: np.ndarray, prompt_index: np.ndarray, model_index: np.ndarray, passed: np.ndarray
    ) -> ClusterScorer:
        k = max(1, min(self.n_clusters, len(X)))
        kmeans = KMeans(k, n_init=4, random_state=self.seed).fit(self._unit(X))
        self.centroids_ = kmeans.cluster_centers_
        self.centroid_norms_ = (self.centroids_**2).sum(axis=1)
        n_models = int(model_index.max()) + 1
        group = kmeans.labels_[prompt_index]
        passes = np.zeros((k, n_models))
        counts = np.zeros((k, n_models))
        np.add.at(passes, (group, model_index), passed)
        np.add.at(counts, (group, model_index), 1.0)
        overall = passes.sum(axis=0) / np.maximum(counts.sum(axis=0), 1.0)
        self.rates_ = (passes + self.prior_strength * overall) / (counts + self.prior_strength)
        return self

    def predict_proba(self, X: np.ndarray, model_columns: Sequence[int]) -> np.ndarray:
        return self.rates_[self._groups(X)][:, list(model_columns)]


class PerModelScorer(BaseEstimator):
    """One classifier per model, each calibrated by cross-validation on its own rows."""

    def __init__(self, estimator: Any, method: str = "isotonic", cv: int = 5):
        self.estimator = estimator
        self.method = method
        self.cv = cv

    def fit(
        self, X: np.ndarray, prompt_index: np.ndarray, model_index: np.ndarray, passed: np.ndarray
    ) -> PerModelScorer:
        n_models = int(model_index.max()) + 1
        self.estimators_ = []
        for m in range(n_models):
            rows = model_index == m
            self.estimators_.append(
                _calibrated(
                    self.estimator, self.method, self.cv, X[prompt_index[rows]], passed[rows]
                )
            )
        return self

    def predict_proba(self, X: np.ndarray, model_columns: Sequence[int]) -> np.ndarray:
        return np.column_stack([self.estimators_[m].predict_proba(X)[:, 1] for m in model_columns])


class LinearScorer(BaseEstimator):
    """Per-model logistic regression with isotonic calibration, scored as one matrix product.

    For each model: standardized features, an L2 logistic regression fit on all its rows, and an
    isotonic map from that regression's out-of-fold probabilities to observed pass rates (the
    ``ensemble=False`` form of cross-validated calibration). Scoring every model for a prompt is
    one product with a (models x features) matrix plus one interpolation per model.
    """

    def __init__(self, C: float = 0.05, cv: int = 3, seed: int = 0):
        self.C = C
        self.cv = cv
        self.seed = seed

    def fit(
        self, X: np.ndarray, prompt_index: np.ndarray, model_index: np.ndarray, passed: np.ndarray
    ) -> LinearScorer:
        n_models = int(model_index.max()) + 1
        self.weights_ = np.zeros((n_models, X.shape[1]))
        self.intercepts_ = np.zeros(n_models)
        self.calibration_: list[tuple[np.ndarray, np.ndarray]] = []
        for m in range(n_models):
            rows = model_index == m
            x, y = X[prompt_index[rows]], passed[rows]
            # a feature (near-)constant on these rows carries no signal; standardizing would
            # blow its float noise up to unit scale and its weight up to ~1e30
            varies = np.flatnonzero(x.std(axis=0) > MIN_FEATURE_STD)
            x = x[:, varies]
            if len(np.unique(y)) < 2 or min(np.bincount(y.astype(int))) < self.cv:
                rate = float(y.mean())
                self.calibration_.append((np.array([0.0, 1.0]), np.array([rate, rate])))
                continue
            pipeline = make_pipeline(StandardScaler(), LogisticRegression(C=self.C, max_iter=3000))
            folds = StratifiedKFold(self.cv, shuffle=True, random_state=self.seed)
            out_of_fold = cross_val_predict(pipeline, x, y, cv=folds, method="predict_proba")
            isotonic = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0)
            isotonic.fit(out_of_fold[:, 1], y)
            self.calibration_.append((isotonic.X_thresholds_, isotonic.y_thresholds_))
            pipeline.fit(x, y)
            scaler, regression = pipeline[0], pipeline[1]
            coef = regression.coef_[0] / scaler.scale_
            self.weights_[m, varies] = coef
            self.intercepts_[m] = regression.intercept_[0] - coef @ scaler.mean_
        return self

    def predict_proba(self, X: np.ndarray, model_columns: Sequence[int]) -> np.ndarray:
        columns = list(model_columns)
        logits = X @ self.weights_[columns].T + self.intercepts_[columns]
        raw = 1.0 / (1.0 + np.exp(-logits))
        out = np.empty_like(raw)
        for j, m in enumerate(columns):
            x_points, y_points = self.calibration_[m]
            out[:, j] = np.interp(raw[:, j], x_points, y_points)
        return out


class JointScorer(BaseEstimator):
    """One classifier over [prompt features, one-hot model]: models share what prompts reveal."""

    def __init__(self, estimator: Any, method: str = "isotonic", cv: int = 5):
        self.estimator = estimator
        self.method = method
        self.cv = cv

    @staticmethod
    def _join(X: np.ndarray, model_index: np.ndarray, n_models: int) -> np.ndarray:
        onehot = np.zeros((len(model_index), n_models), dtype=X.dtype)
        onehot[np.arange(len(model_index)), model_index] = 1.0
        return np.hstack([X, onehot])

    def fit(
        self, X: np.ndarray, prompt_index: np.ndarray, model_index: np.ndarray, passed: np.ndarray
    ) -> JointScorer:
        self.n_models_ = int(model_index.max()) + 1
        joined = self._join(X[prompt_index], model_index, self.n_models_)
        self.estimator_ = _calibrated(self.estimator, self.method, self.cv, joined, passed)
        return self

    def predict_proba(self, X: np.ndarray, model_columns: Sequence[int]) -> np.ndarray:
        columns = []
        for m in model_columns:
            joined = self._join(X, np.full(len(X), m), self.n_models_)
            columns.append(self.estimator_.predict_proba(joined)[:, 1])
        return np.column_stack(columns)


class AnswerLengths:
    """Each model's expected answer length (tokens) for a prompt: per model, a ridge regression
    of log(1 + answer tokens) on the prompt's features, fit on the recorded answers; NaN for a
    model with fewer than ``min_answers`` of them (its typical length in the catalog stands in).

    Answer length drives most of a call's cost and varies with the prompt by an order of
    magnitude (a one-letter choice against a program), which one typical length cannot follow.
    """

    def __init__(self, models: Sequence[str], alpha: float = 10.0, min_answers: int = 50):
        self.models = list(models)
        self.alpha = alpha
        self.min_answers = min_answers

    def fit(
        self, X: np.ndarray, prompt_index: np.ndarray, model_index: np.ndarray, tokens: np.ndarray
    ) -> AnswerLengths:
        """``tokens[i]``: the answer length of row i (NaN where not recorded)."""
        self.weights_ = np.zeros((len(self.models), X.shape[1]))
        self.intercepts_ = np.full(len(self.models), np.nan)
        for m in range(len(self.models)):
            rows = (model_index == m) & ~np.isnan(tokens)
            if rows.sum() < self.min_answers:
                continue
            ridge = Ridge(alpha=self.alpha).fit(X[prompt_index[rows]], np.log1p(tokens[rows]))
            self.weights_[m], self.intercepts_[m] = ridge.coef_, ridge.intercept_
        return self

    def predict(self, X: np.ndarray, models: Sequence[str]) -> np.ndarray:
        """(prompts x models) expected answer tokens, at least 1; NaN for unknown models."""
        index = {m: j for j, m in enumerate(self.models)}
        columns = [index.get(m, -1) for m in models]
        known = np.array([c >= 0 for c in columns])
        rows = np.array([max(c, 0) for c in columns])
        log_tokens = X @ self.weights_[rows].T + np.where(known, self.intercepts_[rows], np.nan)
        return np.maximum(np.expm1(log_tokens), 1.0)


class LearnedRouter:
    """A fitted scorer plus the models it scores and the featurizer it was trained with."""

    name = "learned"

    def __init__(
        self,
        scorer: Any,
        models: list[str],
        embedder_name: str = DEFAULT_EMBEDDER,
        bar: float = 0.5,
        default_threshold: float = 0.5,
        metadata: dict[str, Any] | None = None,
        answer_lengths: AnswerLengths | None = None,
        prior: AbilityPrior | None = None,
        ratings: dict[str, float] | None = None,
        ood: OutOfDomainScore | None = None,
        shrinkage: float = 0.0,
    ):
        self.scorer = scorer
        self.models = models
        self.embedder_name = embedder_name
        self.bar = bar
        self.default_threshold = default_threshold
        self.metadata = metadata or {}
        self.answer_lengths = answer_lengths
        self.prior = prior
        self.ratings = ratings or {}
        self._reference: dict[str, np.ndarray] = {}
        self.ood = ood
        # the base rate's weight in P(pass) is min(1, shrinkage x ood_score) (0: no shrinkage)
        self.shrinkage = shrinkage
        self._featurizer: Featurizer | None = None
        self._index = {m: j for j, m in enumerate(models)}
        self._priors: dict[str, tuple[np.ndarray, float]] = {}

    def derived(
        self, scorer: Any, models: list[str], metadata: dict[str, Any] | None = None
    ) -> LearnedRouter:
        """A router with another scorer and models (onboarding), everything else kept."""
        return LearnedRouter(
            scorer,
            models,
            self.embedder_name,
            self.bar,
            self.default_threshold,
            self.metadata if metadata is None else metadata,
            self.answer_lengths,
            self.prior,
            self.ratings,
            self.ood,
            self.shrinkage,
        )

    @property
    def ood(self) -> OutOfDomainScore | None:
        return self._ood

    @ood.setter
    def ood(self, ood: OutOfDomainScore | None) -> None:
        self._ood = ood
        self._reference.clear()  # P(pass) on the old score's reference prompts

    @property
    def version(self) -> str:
        return str(self.metadata.get("version", "unversioned"))

    def featurizer(self, embedder: Embedder | None = None) -> Featurizer:
        if embedder is not None:
            self._featurizer = Featurizer(embedder)
        if self._featurizer is None:
            self._featurizer = Featurizer(EMBEDDERS[self.embedder_name]())
        return self._featurizer

    @property
    def open(self) -> bool:
        """Whether it can score models it was not fitted on (the factorized scorer)."""
        return hasattr(self.scorer, "predict_for")

    def graded_prompts(self, model: str) -> int:
        """How many graded answers of ``model`` its scores come from (0: on its prior)."""
        column = self._index.get(model)
        if column is None:
            return 0
        counts = getattr(self.scorer, "graded_prompts_", None)
        if counts is not None:
            return int(counts[column])
        return int(self.metadata.get("graded_prompts", {}).get(model, 0))

    def prior_of(self, model: str, catalog: Catalog | None) -> tuple[np.ndarray, float]:
        """The abilities a model without graded answers is scored with (service.routing.priors):
        the population mean shifted by the model's prices, family and public rating."""
        if model not in self._priors:
            population = (self.scorer.a_mean_, self.scorer.b_mean_)
            a, b = prior_abilities(self.prior, [model], catalog, self.ratings, population)
            self._priors[model] = (a[0], float(b[0]))
        return self._priors[model]

    def nearness(self, features: np.ndarray) -> Nearness | None:
        """How unlike the training prompts each prompt is, and its nearest training prompts
        (service/routing/ood.py), or None for a router fitted without an OOD score."""
        return None if self.ood is None else self.ood.assess(features)

    def p_pass(
        self,
        prompts: Sequence[str],
        models: Sequence[str],
        cost_usd: np.ndarray | None = None,
        features: np.ndarray | None = None,
        catalog: Catalog | None = None,
        shrink: bool = True,
        nearness: Nearness | None = None,
    ) -> np.ndarray:
        """Calibrated P(pass) (prompts x models). Models the router was not fitted on are
        scored on their prior (from ``catalog``'s prices) where the scorer can do that. Far
        from the training prompts, P(pass) shrinks toward each model's base rate on the
        prompt's nearest kind of prompt (``base_rates``) by min(1, ``shrinkage`` x ood_score),
        unless ``shrink`` is False or the router has no shrinkage (``nearness``: the features'
        when the caller already has it)."""
        if features is None:
            features = self.featurizer().transform(prompts)
        out = self._scored(features, models, catalog)
        if shrink and self.shrinkage > 0 and self.ood is not None:
            if nearness is None:
                nearness = self.ood.assess(features)
            out = self.shrunk(out, nearness, models, catalog)
        return out

    def shrunk(
        self,
        p: np.ndarray,
        nearness: Nearness,
        models: Sequence[str],
        catalog: Catalog | None = None,
        shrinkage: float | None = None,
        base: BaseRate = "nearest",
    ) -> np.ndarray:
        """``p`` (prompts x models) moved toward the models' base rates with weight
        min(1, shrinkage x ood_score) (the router's shrinkage unless one is given)."""
        amount = self.shrinkage if shrinkage is None else shrinkage
        weight = np.minimum(1.0, amount * nearness.score)[:, None]
        return (1.0 - weight) * p + weight * self.base_rates(nearness, models, catalog, base)

    def base_rates(
        self,
        nearness: Nearness,
        models: Sequence[str],
        catalog: Catalog | None = None,
        base: BaseRate = "nearest",
    ) -> np.ndarray:
        """What is known of each model (columns) without reading the prompt (rows) itself: its
        mean P(pass) on the prompt's nearest kind of prompt, the ``k`` nearest reference
        prompts of the OOD score; ``base="overall"``: on every reference prompt (the rule
        the nearest kind replaced, kept to compare them in docs/RESULTS.md)."""
        columns = self._reference_p_pass(models, catalog)
        if base == "overall":
            means = np.array([column.mean() for column in columns])
            return np.broadcast_to(means, (len(nearness.score), len(models)))
        # gather only the neighbours' rows of each model's column (not the whole reference)
        rows = nearness.neighbours.ravel()
        near = np.column_stack([column[rows] for column in columns])
        return near.reshape(*nearness.neighbours.shape, len(models)).mean(axis=1)

    def _reference_p_pass(self, models: Sequence[str], catalog: Catalog | None) -> list[np.ndarray]:
        """P(pass) of each of ``models`` on the OOD score's reference prompts, kept."""
        assert self.ood is not None
        missing = [m for m in models if m not in self._reference]
        if missing:
            p = self._scored(self.ood.reference_rows_, missing, catalog)
            self._reference.update(zip(missing, p.T.astype(np.float32), strict=True))
        return [self._reference[m] for m in models]

    def _scored(
        self, features: np.ndarray, models: Sequence[str], catalog: Catalog | None
    ) -> np.ndarray:
        unknown = [m for m in models if m not in self._index]
        if unknown and not self.open:
            raise KeyError(f"the learned router has no scorer for {', '.join(unknown)}")
        known = [j for j, m in enumerate(models) if m in self._index]
        out = np.empty((len(features), len(models)))
        if known:
            columns = [self._index[models[j]] for j in known]
            out[:, known] = self.scorer.predict_proba(features, columns)
        if unknown:
            priors = [self.prior_of(m, catalog) for m in unknown]
            abilities = np.vstack([a for a, _ in priors])
            offsets = np.array([b for _, b in priors])
            rest = [j for j, m in enumerate(models) if m not in self._index]
            out[:, rest] = self.scorer.predict_for(features, abilities, offsets)
        return out

    def answer_tokens(self, features: np.ndarray, models: Sequence[str]) -> np.ndarray | None:
        """Expected answer tokens (prompts x models; NaN where unknown), or None without an
        answer-length model."""
        if self.answer_lengths is None:
            return None
        return self.answer_lengths.predict(features, models)

    def save(self, directory: Path) -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        artifact = {
            "scorer": self.scorer,
            "answer_lengths": self.answer_lengths,
            "prior": self.prior,
            "ratings": self.ratings,
            "ood": self.ood,
        }
        joblib.dump(artifact, directory / ARTIFACT, compress=3)
        meta = {
            "models": self.models,
            "embedder": self.embedder_name,
            "bar": self.bar,
            "default_threshold": self.default_threshold,
            "shrinkage": self.shrinkage,
            **self.metadata,
        }
        (directory / METADATA).write_text(json.dumps(meta, indent=1, sort_keys=True) + "\n")

    @classmethod
    def load(cls, directory: Path) -> LearnedRouter:
        directory = Path(directory)
        meta = json.loads((directory / METADATA).read_text())
        artifact = joblib.load(directory / ARTIFACT)
        models = meta.pop("models")
        return cls(
            scorer=artifact["scorer"],
            models=models,
            embedder_name=meta.pop("embedder"),
            bar=meta.pop("bar"),
            default_threshold=meta.pop("default_threshold"),
            metadata=meta,
            answer_lengths=artifact.get("answer_lengths"),
            prior=artifact.get("prior"),
            ratings=artifact.get("ratings"),
            ood=artifact.get("ood"),
            shrinkage=meta.pop("shrinkage", 0.0),
        )
