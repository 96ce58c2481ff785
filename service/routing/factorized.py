"""One scorer for every model: P(pass | prompt x, model m) = sigmoid(a_m . g(x) + b_m).

``g`` projects the standardized prompt features to ``rank`` dimensions and is learned jointly
over every model and source; each model has an ability vector ``a_m`` and an offset ``b_m``,
held near the population's mean (``a_mean``, ``b_mean``) by an L2 prior: multidimensional item
response theory, or logistic matrix factorization with prompt features on one side. Because
``g`` is shared, a model seen on a few prompts (or on none: its prior) is scored on every kind
of prompt the others were: ``fit_abilities`` fits only (a_m, b_m) against the fixed ``g``, in
milliseconds, and leaves every other model's scores unchanged.

Fitting is full-batch L-BFGS (scipy) on the mean log loss; scoring is one small matrix product
in numpy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import sparse
from scipy.optimize import minimize
from sklearn.base import BaseEstimator

MIN_FEATURE_STD = 1e-6


def _sigmoid(z: np.ndarray) -> np.ndarray:
    return 0.5 * (1.0 + np.tanh(0.5 * z))


def _log_loss(z: np.ndarray, y: np.ndarray) -> np.ndarray:
    """-log P(y | logit z), stable for large |z|."""
    return np.logaddexp(0.0, z) - y * z


@dataclass
class AbilityFit:
    """The abilities fitted for one model, and how many graded prompts they came from."""

    ability: np.ndarray
    offset: float
    graded_prompts: int


class FactorizedScorer(BaseEstimator):
    """Low-rank joint logistic model of pass/fail over (prompt, model) pairs.

    ``ability_l2`` pulls each model's (a_m, b_m) toward the population mean, ``projection_l2``
    shrinks g's weights, ``mean_l2`` (weak) the population mean itself; each is per row of the
    training data, so their strength does not depend on its size.
    """

    def __init__(
        self,
        rank: int = 8,
        ability_l2: float = 1e-3,
        projection_l2: float = 1e-3,
        mean_l2: float = 1e-6,
        residual_l2: float | None = None,
        max_iter: int = 400,
        seed: int = 0,
    ):
        self.rank = rank
        self.ability_l2 = ability_l2
        self.projection_l2 = projection_l2
        self.mean_l2 = mean_l2
        self.residual_l2 = residual_l2
        self.max_iter = max_iter
        self.seed = seed

    # -- features ------------------------------------------------------------------------------

    def projection(self, X: np.ndarray) -> np.ndarray:
        """g(x): (prompts x rank)."""
        Z = (np.asarray(X, dtype=float)[:, self.kept_] - self.mean_) / self.scale_
        return Z @ self.projection_

    # -- fitting ---------------------------------------------------------------------------------

    def fit(
        self,
        X: np.ndarray,
        prompt_index: np.ndarray,
        model_index: np.ndarray,
        passed: np.ndarray,
    ) -> FactorizedScorer:
        X = np.asarray(X, dtype=float)
        std = X.std(axis=0)
        self.kept_ = np.flatnonzero(std > MIN_FEATURE_STD)
        self.mean_ = X[:, self.kept_].mean(axis=0)
        self.scale_ = std[self.kept_]
        Z = (X[:, self.kept_] - self.mean_) / self.scale_
        n_prompts, n_features = Z.shape
        n_models = int(model_index.max()) + 1
        k = self.rank
        y = np.asarray(passed, dtype=float)
        n_rows = len(y)
        rows = np.arange(n_rows)
        to_model = sparse.csr_matrix((np.ones(n_rows), (rows, model_index)), (n_rows, n_models))
        to_prompt = sparse.csr_matrix((np.ones(n_rows), (rows, prompt_index)), (n_rows, n_prompts))
        model_t, prompt_t = to_model.T.tocsr(), to_prompt.T.tocsr()
        use_residual = self.residual_l2 is not None
        residual_l2 = self.residual_l2 or 0.0
        n_residual = n_models * n_features if use_residual else 0
        sizes = [n_features * k, k, 1, n_models * k, n_models, n_residual]

        def unpack(theta: np.ndarray) -> tuple[np.ndarray, ...]:
            parts = np.split(theta, np.cumsum(sizes)[:-1])
            return (
                parts[0].reshape(n_features, k),
                parts[1],
                parts[2],
                parts[3].reshape(n_models, k),
                parts[4],
                parts[5].reshape(n_models, n_features) if use_residual else parts[5],
            )

        def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
            W, a_mean, b_mean, delta, epsilon, V = unpack(theta)
            G = Z @ W
            A = a_mean + delta
            Gp, Am = G[prompt_index], A[model_index]
            logits = np.einsum("ij,ij->i", Gp, Am) + b_mean[0] + epsilon[model_index]
            if use_residual:
                logits += (Z @ V.T)[prompt_index, model_index]
            loss = float(_log_loss(logits, y).mean())
            residual = (_sigmoid(logits) - y) / n_rows
            grad_A = model_t @ (residual[:, None] * Gp)
            grad_G = prompt_t @ (residual[:, None] * Am)
            grad_e = model_t @ residual
            penalty = (
                self.projection_l2 * float((W**2).sum())
                + self.ability_l2 * float((delta**2).sum() + (epsilon**2).sum())
                + self.mean_l2 * float((a_mean**2).sum() + b_mean[0] ** 2)
            )
            parts = [
                (Z.T @ grad_G + 2 * self.projection_l2 * W).ravel(),
                grad_A.sum(axis=0) + 2 * self.mean_l2 * a_mean,
                [residual.sum() + 2 * self.mean_l2 * b_mean[0]],
                (grad_A + 2 * self.ability_l2 * delta).ravel(),
                grad_e + 2 * self.ability_l2 * epsilon,
            ]
            if use_residual:
                by_pair = sparse.csr_matrix(
                    (residual, (model_index, prompt_index)), (n_models, n_prompts)
                )
                penalty += residual_l2 * float((V**2).sum())
                parts.append((by_pair @ Z + 2 * residual_l2 * V).ravel())
            return loss + penalty, np.concatenate(parts)

        rng = np.random.default_rng(self.seed)
        rate = float(np.clip(y.mean(), 1e-3, 1 - 1e-3))
        theta = np.concatenate(
            [
                rng.normal(0, 0.01, n_features * k),
                rng.normal(0, 0.1, k),
                [np.log(rate / (1 - rate))],
                rng.normal(0, 0.01, n_models * k),
                np.zeros(n_models),
                np.zeros(n_residual),
            ]
        )
        result = minimize(
            objective, theta, jac=True, method="L-BFGS-B", options={"maxiter": self.max_iter}
        )
        W, a_mean, b_mean, delta, epsilon, V = unpack(result.x)
        self.projection_ = W
        self.residuals_ = V if use_residual else np.zeros((n_models, n_features))
        self.a_mean_, self.b_mean_ = a_mean, float(b_mean[0])
        self.abilities_ = a_mean + delta
        self.offsets_ = b_mean[0] + epsilon
        self.graded_prompts_ = np.bincount(model_index, minlength=n_models)
        self.n_rows_ = n_rows
        self.converged_ = bool(result.success)
        return self

    def fit_abilities(
        self,
        X: np.ndarray,
        passed: np.ndarray,
        prior_ability: np.ndarray | None = None,
        prior_offset: float | None = None,
    ) -> AbilityFit:
        """(a_m, b_m) of one model from its graded prompts (``X`` one row per graded answer)
        against the fixed g: the most probable abilities under the same prior as in training,
        centred on ``prior_*`` (default: the population mean)."""
        a0 = self.a_mean_ if prior_ability is None else np.asarray(prior_ability, dtype=float)
        b0 = self.b_mean_ if prior_offset is None else float(prior_offset)
        y = np.asarray(passed, dtype=float)
        if len(y) == 0:
            return AbilityFit(a0.copy(), b0, 0)
        G = self.projection(X)
        # the training prior, per row of the training data, is this strong per graded answer
        l2 = self.ability_l2 * self.n_rows_ / len(y)
        k = len(a0)

        def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
            a, b = theta[:k], theta[k]
            logits = G @ a + b
            residual = (_sigmoid(logits) - y) / len(y)
            da, db = a - a0, b - b0
            loss = float(_log_loss(logits, y).mean()) + l2 * float(da @ da + db * db)
            grad = np.concatenate([G.T @ residual + 2 * l2 * da, [residual.sum() + 2 * l2 * db]])
            return loss, grad

        theta = np.concatenate([a0, [b0]])
        result = minimize(objective, theta, jac=True, method="L-BFGS-B")
        return AbilityFit(result.x[:k], float(result.x[k]), len(y))

    def with_model(self, fit: AbilityFit, index: int | None = None) -> int:
        """Add (or, at ``index``, replace) a model's abilities; returns its column."""
        if index is None:
            self.residuals_ = np.vstack([self.residuals_, np.zeros(self.residuals_.shape[1])])
            self.abilities_ = np.vstack([self.abilities_, fit.ability])
            self.offsets_ = np.append(self.offsets_, fit.offset)
            self.graded_prompts_ = np.append(self.graded_prompts_, fit.graded_prompts)
            return len(self.offsets_) - 1
        self.abilities_[index], self.offsets_[index] = fit.ability, fit.offset
        self.graded_prompts_[index] = fit.graded_prompts
        return index

    def without_model(self, index: int) -> FactorizedScorer:
        """A copy that lacks the model in column ``index`` (the others keep their columns'
        order, shifted down past it): a router that never onboarded it."""
        import copy

        out = copy.deepcopy(self)
        keep = np.arange(len(self.offsets_)) != index
        out.abilities_, out.offsets_ = self.abilities_[keep], self.offsets_[keep]
        out.residuals_, out.graded_prompts_ = self.residuals_[keep], self.graded_prompts_[keep]
        return out

    # -- scoring ---------------------------------------------------------------------------------

    def predict_for(self, X: np.ndarray, abilities: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """(prompts x models) P(pass) of models given by their abilities (rows) and offsets:
        models the scorer was not fitted on, scored on a prior."""
        return _sigmoid(self.projection(X) @ np.atleast_2d(abilities).T + offsets)

    def predict_proba(self, X: np.ndarray, model_columns: Sequence[int]) -> np.ndarray:
        """(prompts x models) P(pass)."""
        columns = list(model_columns)
        Z = (np.asarray(X, dtype=float)[:, self.kept_] - self.mean_) / self.scale_
        weights = self.projection_ @ self.abilities_[columns].T + self.residuals_[columns].T
        return _sigmoid(Z @ weights + self.offsets_[columns])
