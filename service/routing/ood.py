"""How unlike the training prompts a prompt is: ``ood_score`` in [0, 1].

The raw signal is the mean cosine distance from the prompt's embedding to its ``k`` nearest
prompts in a fixed-size sample of the training prompts. It is turned into a probability, the
same on every source, by a logistic map on its logarithm fitted leave-one-source-out: for each
training source, a reference sample drawn from the other sources' training prompts scores that
source's validation prompts (out of domain, label 1) and the other sources' validation prompts
(in domain, label 0). ``ood_score`` is then the probability that a prompt comes from a kind of
prompt the router has not seen. The shipped reference is a sample of every source's training
prompts, of the same size as in the fit (the distance depends on the sample's density).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

REFERENCE_SIZE = 2048
NEIGHBOURS = 10
ANCHORS = 256  # training prompts (all their features) over which base rates are taken


def _unit(X: np.ndarray) -> np.ndarray:
    X = np.asarray(X, dtype=np.float32)
    norms = np.linalg.norm(X, axis=1, keepdims=True)
    return X / np.maximum(norms, 1e-12)


def _sample(X: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    if len(X) <= size:
        return X
    return X[rng.choice(len(X), size=size, replace=False)]


def nearest_distance(reference: np.ndarray, X: np.ndarray, k: int = NEIGHBOURS) -> np.ndarray:
    """Mean cosine distance of each row of ``X`` to its ``k`` nearest rows of ``reference``
    (both already unit length)."""
    similarity = X @ reference.T
    k = min(k, reference.shape[0])
    top = np.partition(-similarity, k - 1, axis=1)[:, :k]
    return np.maximum(1.0 + top.mean(axis=1), 1e-6)  # 1 - mean similarity of the k nearest


class OutOfDomainScore:
    """sklearn-style: ``fit`` on per-source training and validation feature rows (the first
    ``embedding_dim`` columns are the embedding), ``score`` new rows. Fitted attributes:
    ``reference_`` (the embedding sample), ``coef_`` and ``intercept_`` (the logistic map of
    log distance), ``auroc_`` (per held-out source: how well the score tells its validation
    prompts from the other sources' validation prompts), ``anchors_`` (a sample of training
    feature rows, over which a router takes each model's base rate)."""

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
        everything = np.vstack(list(train.values()))
        self.anchors_ = _sample(everything, ANCHORS, rng).astype(np.float32)
        train = {s: self._embedded(X) for s, X in train.items()}
        val = {s: self._embedded(X) for s, X in val.items() if len(X)}
        distances, labels, held_out = [], [], []
        for source in val:
            others = [X for s, X in train.items() if s != source]
            reference = _sample(np.vstack(others), self.reference_size, rng)
            for s, X in val.items():
                distances.append(np.log(nearest_distance(reference, X, self.k)))
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
        self.reference_ = _sample(np.vstack(list(train.values())), self.reference_size, rng)
        return self

    def _embedded(self, X: np.ndarray) -> np.ndarray:
        return _unit(np.asarray(X)[:, : self.embedding_dim])

    def score(self, X: np.ndarray) -> np.ndarray:
        """ood_score of each feature row of ``X``, in [0, 1]."""
        d = np.log(nearest_distance(self.reference_, self._embedded(X), self.k))
        return 1.0 / (1.0 + np.exp(-(self.coef_ * d + self.intercept_)))
