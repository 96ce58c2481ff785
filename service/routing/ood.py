"""How unlike the training prompts a prompt is: ``ood_score`` in [0, 1].

The raw signal is the mean cosine distance from the prompt's embedding to its ``k`` nearest
prompts in a fixed-size sample of the training prompts. It is turned into a probability, the
same on every source, by a logistic map on its logarithm fitted leave-one-source-out: for each
training source, a reference sample drawn from the other sources' training prompts scores that
source's validation prompts (out of domain, label 1) and the other sources' validation prompts
(in domain, label 0). ``ood_score`` is then the probability that a prompt comes from a kind of
prompt the router has not seen. The shipped reference is a sample of every source's training
prompts, of the same size as in the fit (the distance depends on the sample's density); its
rows' full features are kept too, so that a router can take each model's pass rate on a
prompt's nearest kind of prompt (its ``k`` nearest reference prompts).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

REFERENCE_SIZE = 2048
NEIGHBOURS = 10


def _unit(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float32)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.maximum(norms, 1e-12)


def _sample(X: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    if len(X) <= size:
        return X
    return X[rng.choice(len(X), size=size, replace=False)]


def nearest(
    reference: np.ndarray, X: np.ndarray, k: int = NEIGHBOURS
) -> tuple[np.ndarray, np.ndarray]:
    """Each row of ``X``'s mean cosine distance to its ``k`` nearest rows of ``reference``
    (both already unit length), and those rows' indices (rows x k)."""
    similarity = X @ reference.T
    k = min(k, reference.shape[0])
    neighbours = np.argpartition(-similarity, k - 1, axis=1)[:, :k]
    top = np.take_along_axis(similarity, neighbours, axis=1)
    return np.maximum(1.0 - top.mean(axis=1), 1e-6), neighbours


@dataclass(frozen=True)
class Nearness:
    """Prompts seen against the training prompts: ``score`` (ood_score, one per prompt) and
    ``neighbours`` (the indices of each prompt's nearest reference prompts, prompts x k)."""

    score: np.ndarray
    neighbours: np.ndarray


class OutOfDomainScore:
    """sklearn-style: ``fit`` on per-source training and validation feature rows (the first
    ``embedding_dim`` columns are the embedding), ``score`` new rows. Fitted attributes:
    ``reference_`` (the embedding sample), ``coef_`` and ``intercept_`` (the logistic map of
    log distance), ``auroc_`` (per held-out source: how well the score tells its validation
    prompts from the other sources' validation prompts), ``reference_rows_`` (the reference
    prompts' full feature rows, over which a router takes each model's base rates)."""

    def __init__(
        self,
        embedding_dim: int,
        reference_size: int = REFERENCE_SIZE,
        k: int = NEIGHBOURS,
        seed: int = 0,
    ):
        self.embedding_dim = embedding_dim
        self.reference_size = reference_size
        self.k = k
        self.seed = seed

    def fit(
        self, train: Mapping[str, np.ndarray], val: Mapping[str, np.ndarray]
    ) -> OutOfDomainScore:
        from sklearn.linear_model import LogisticRegression
        from sklearn.metrics import roc_auc_score

        rng = np.random.default_rng(self.seed)
        rows = _sample(np.vstack(list(train.values())), self.reference_size, rng)
        train = {s: self._embedded(X) for s, X in train.items()}
        val = {s: self._embedded(X) for s, X in val.items() if len(X)}
        distances, labels, held_out = [], [], []
        for source in val:
            others = [X for s, X in train.items() if s != source]
            reference = _sample(np.vstack(others), self.reference_size, rng)
            for s, X in val.items():
                distances.append(np.log(nearest(reference, X, self.k)[0]))
                labels.append(np.full(len(X), int(s == source)))
                held_out.append(np.full(len(X), source, dtype=object))
        d, y, which = np.concatenate(distances), np.concatenate(labels), np.concatenate(held_out)
        # every held-out source weighs the same, and so do its in- and out-of-domain rows
        weights = np.zeros(len(y))
        for source in val:
            for label in (0, 1):
                mask = (which == source) & (y == label)
                weights[mask] = 1.0 / max(int(mask.sum()), 1)
        fit = LogisticRegression(C=1e4).fit(d[:, None], y, sample_weight=weights)
        self.coef_ = float(fit.coef_[0, 0])
        self.intercept_ = float(fit.intercept_[0])
        self.auroc_ = {
            source: float(roc_auc_score(y[which == source], d[which == source])) for source in val
        }
        self.reference_rows_ = np.asarray(rows, dtype=np.float32)
        self.reference_ = self._embedded(self.reference_rows_)
        return self

    def _embedded(self, X: np.ndarray) -> np.ndarray:
        return _unit(np.asarray(X)[:, : self.embedding_dim])

    def assess(self, X: np.ndarray) -> Nearness:
        """Each feature row of ``X``'s ood_score, in [0, 1], and nearest reference prompts."""
        distance, neighbours = nearest(self.reference_, self._embedded(X), self.k)
        score = 1.0 / (1.0 + np.exp(-(self.coef_ * np.log(distance) + self.intercept_)))
        return Nearness(score, neighbours)

    def score(self, X: np.ndarray) -> np.ndarray:
        """ood_score of each feature row of ``X``, in [0, 1]."""
        return self.assess(X).score
