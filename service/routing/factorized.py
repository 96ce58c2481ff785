"""One scorer for every model: P(pass | prompt x, model m) = c(a_m . g(x) + b_m).

``g`` projects the standardized prompt features to ``rank`` dimensions and is learned jointly
over every model and source; each model has an ability vector ``a_m`` and an offset ``b_m``,
held near the population's mean (``a_mean``, ``b_mean``) by an L2 prior: multidimensional item
response theory, or logistic matrix factorization with prompt features on one side. Because
``g`` is shared, a model seen on a few prompts (or on none: its prior) is scored on every kind
of prompt the others were: ``fit_abilities`` fits only (a_m, b_m) against the fixed ``g``, in
milliseconds, and leaves every other model's scores unchanged.

``c`` is a calibration map from logit to probability (service/routing/calibration.py), fitted
on the out-of-fold logits of scorers cross-fitted over prompts. The joint model's logits are on
one scale for every model, so one global map calibrates them all, including a model onboarded
from a few graded prompts, which has no out-of-fold logits of its own.

Fitting is full-batch L-BFGS (scipy) on the mean log loss; scoring is one small matrix product
and one elementwise map in numpy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np
from scipy import sparse
from scipy.optimize import minimize
from sklearn.base import BaseEstimator

from service.routing.calibration import LogitCalibration, fit_calibration

MIN_FEATURE_STD = 1e-6
MIN_PRIOR_VAR = 1e-4


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


@dataclass
class _Parameters:
    """What one L-BFGS fit learns; ``residuals`` is (models x features), zero when unused."""

    projection: np.ndarray
    a_mean: np.ndarray
    b_mean: float
    abilities: np.ndarray
    offsets: np.ndarray
    residuals: np.ndarray
    converged: bool

    def logits(self, Z: np.ndarray, model_index: np.ndarray) -> np.ndarray:
        """Per row, the logit of model ``model_index[i]`` on standardized prompt ``Z[i]``."""
        G = Z @ self.projection
        return (
            np.einsum("ij,ij->i", G, self.abilities[model_index])
            + np.einsum("ij,ij->i", Z, self.residuals[model_index])
            + self.offsets[model_index]
        )


class FactorizedScorer(BaseEstimator):
    """Low-rank joint logistic model of pass/fail over (prompt, model) pairs, calibrated.

    ``ability_l2`` pulls each model's (a_m, b_m) toward the population mean, ``projection_l2``
    shrinks g's weights, ``mean_l2`` (weak) the population mean itself, ``offset_l2`` (default:
    ``ability_l2``) b_m alone, ``residual_l2`` (when set) a full-rank per-model correction; each
    is per row of the training data, so their strength does not depend on its size.

    ``calibration`` ("platt", "isotonic" or None for the plain sigmoid) is fitted on
    ``calibration_folds``-fold out-of-fold logits (folds over prompts, so a prompt's rows are
    all held out together, as a new prompt's would be). Models with at least ``per_model_rows``
    training rows get a map of their own when it is set; the others, and onboarded models,
    the global one. On validation a global Platt map calibrated best without changing the
    routing (it is strictly monotone and shared, so it keeps every prompt's order of models).
    """

    def __init__(
        self,
        rank: int = 16,
        ability_l2: float = 3e-3,
        projection_l2: float = 1e-2,
        mean_l2: float = 1e-6,
        offset_l2: float | None = None,
        residual_l2: float | None = None,
        calibration: str | None = "platt",
        calibration_folds: int = 3,
        per_model_rows: int | None = None,
        max_iter: int = 600,
        seed: int = 0,
    ):
        self.rank = rank
        self.ability_l2 = ability_l2
        self.projection_l2 = projection_l2
        self.mean_l2 = mean_l2
        self.offset_l2 = offset_l2
        self.residual_l2 = residual_l2
        self.calibration = calibration
        self.calibration_folds = calibration_folds
        self.per_model_rows = per_model_rows
        self.max_iter = max_iter
        self.seed = seed

    # -- features ------------------------------------------------------------------------------

    def _standardized(self, X: np.ndarray) -> np.ndarray:
        return (np.asarray(X, dtype=float)[:, self.kept_] - self.mean_) / self.scale_

    def projection(self, X: np.ndarray) -> np.ndarray:
        """g(x): (prompts x rank)."""
        return self._standardized(X) @ self.projection_

    # -- fitting ---------------------------------------------------------------------------------

    def _offset_l2(self) -> float:
        return self.ability_l2 if self.offset_l2 is None else self.offset_l2

    def _fit_parameters(
        self,
        Z: np.ndarray,
        prompt_index: np.ndarray,
        model_index: np.ndarray,
        y: np.ndarray,
        n_models: int,
    ) -> _Parameters:
        """Maximum a posteriori parameters on these rows (``Z`` indexed by ``prompt_index``)."""
        n_prompts, n_features = Z.shape
        k = self.rank
        n_rows = len(y)
        rows = np.arange(n_rows)
        to_model = sparse.csr_matrix((np.ones(n_rows), (rows, model_index)), (n_rows, n_models))
        to_prompt = sparse.csr_matrix((np.ones(n_rows), (rows, prompt_index)), (n_rows, n_prompts))
        model_t, prompt_t = to_model.T.tocsr(), to_prompt.T.tocsr()
        offset_l2 = self._offset_l2()
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
                + self.ability_l2 * float((delta**2).sum())
                + offset_l2 * float((epsilon**2).sum())
                + self.mean_l2 * float((a_mean**2).sum() + b_mean[0] ** 2)
            )
            parts = [
                (Z.T @ grad_G + 2 * self.projection_l2 * W).ravel(),
                grad_A.sum(axis=0) + 2 * self.mean_l2 * a_mean,
                [residual.sum() + 2 * self.mean_l2 * b_mean[0]],
                (grad_A + 2 * self.ability_l2 * delta).ravel(),
                grad_e + 2 * offset_l2 * epsilon,
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
        return _Parameters(
            projection=W,
            a_mean=a_mean,
            b_mean=float(b_mean[0]),
            abilities=a_mean + delta,
            offsets=b_mean[0] + epsilon,
            residuals=V if use_residual else np.zeros((n_models, n_features)),
            converged=bool(result.success),
        )

    def _out_of_fold_logits(
        self,
        Z: np.ndarray,
        prompt_index: np.ndarray,
        model_index: np.ndarray,
        y: np.ndarray,
        n_models: int,
    ) -> np.ndarray:
        """Per row, the logit of a scorer fitted without the row's prompt (K folds of prompts).

        In-sample logits would be too confident to calibrate on; these are what a scorer fitted
        on a little less data says about prompts it has not seen.
        """
        fold = np.random.default_rng(self.seed).permutation(len(Z)) % self.calibration_folds
        out = np.empty(len(y))
        for f in range(self.calibration_folds):
            held = fold[prompt_index] == f
            kept = np.flatnonzero(fold != f)
            renumber = np.full(len(Z), -1)
            renumber[kept] = np.arange(len(kept))
            parameters = self._fit_parameters(
                Z[kept], renumber[prompt_index[~held]], model_index[~held], y[~held], n_models
            )
            out[held] = parameters.logits(Z[prompt_index[held]], model_index[held])
        return out

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
        Z = self._standardized(X)
        n_models = int(model_index.max()) + 1
        y = np.asarray(passed, dtype=float)
        fitted = self._fit_parameters(Z, prompt_index, model_index, y, n_models)
        self.projection_ = fitted.projection
        self.residuals_ = fitted.residuals
        self.a_mean_, self.b_mean_ = fitted.a_mean, fitted.b_mean
        self.abilities_, self.offsets_ = fitted.abilities, fitted.offsets
        self.graded_prompts_ = np.bincount(model_index, minlength=n_models)
        self.n_rows_ = len(y)
        self.converged_ = fitted.converged
        # how far apart the fitted models' abilities are: the prior of a model that joins
        # later (its abilities are one more draw from that spread, around its prior's centre)
        self.ability_var_ = np.maximum(fitted.abilities.var(axis=0), MIN_PRIOR_VAR)
        self.offset_var_ = max(float(fitted.offsets.var()), MIN_PRIOR_VAR)
        self.calibration_: LogitCalibration | None = None
        if self.calibration is not None:
            logits = self._out_of_fold_logits(Z, prompt_index, model_index, y, n_models)
            self.calibration_ = fit_calibration(
                logits, y, model_index, n_models, self.calibration, self.per_model_rows
            )
        return self

    def fit_abilities(
        self,
        X: np.ndarray,
        passed: np.ndarray,
        prior_ability: np.ndarray | None = None,
        prior_offset: float | None = None,
    ) -> AbilityFit:
        """(a_m, b_m) of one model from its graded prompts (``X`` one row per graded answer)
        against the fixed g: the most probable abilities under a normal prior centred on
        ``prior_*`` (default: the population mean) with the spread of the fitted models'
        abilities (the training penalty would be far tighter: a few graded answers must be
        able to move a new model as far as the fitted models are from one another)."""
        a0 = self.a_mean_ if prior_ability is None else np.asarray(prior_ability, dtype=float)
        b0 = self.b_mean_ if prior_offset is None else float(prior_offset)
        y = np.asarray(passed, dtype=float)
        if len(y) == 0:
            return AbilityFit(a0.copy(), b0, 0)
        G = self.projection(X)
        # N(a0, diag(ability_var_)) on the mean log loss of len(y) answers
        l2_a = 1.0 / (2.0 * len(y) * self.ability_var_)
        l2_b = 1.0 / (2.0 * len(y) * self.offset_var_)
        k = len(a0)

        def objective(theta: np.ndarray) -> tuple[float, np.ndarray]:
            a, b = theta[:k], theta[k]
            logits = G @ a + b
            residual = (_sigmoid(logits) - y) / len(y)
            da, db = a - a0, b - b0
            loss = float(_log_loss(logits, y).mean()) + float(l2_a @ (da * da)) + l2_b * db * db
            grad = np.concatenate(
                [G.T @ residual + 2 * l2_a * da, [residual.sum() + 2 * l2_b * db]]
            )
            return loss, grad

        theta = np.concatenate([a0, [b0]])
        result = minimize(objective, theta, jac=True, method="L-BFGS-B")
        return AbilityFit(result.x[:k], float(result.x[k]), len(y))

    def with_model(self, fit: AbilityFit, index: int | None = None) -> int:
        """Add (or, at ``index``, replace) a model's abilities; returns its column.

        The model is scored without a residual and through the global calibration map: a
        residual or map of its own would have been fitted on rows it no longer (or never) had.
        """
        if index is None:
            index = len(self.offsets_)
            self.residuals_ = np.vstack([self.residuals_, np.zeros(self.residuals_.shape[1])])
            self.abilities_ = np.vstack([self.abilities_, fit.ability])
            self.offsets_ = np.append(self.offsets_, fit.offset)
            self.graded_prompts_ = np.append(self.graded_prompts_, fit.graded_prompts)
        else:
            self.abilities_[index], self.offsets_[index] = fit.ability, fit.offset
            self.residuals_[index] = 0.0
            self.graded_prompts_[index] = fit.graded_prompts
        if self.calibration_ is not None:
            self.calibration_ = self.calibration_.with_global_map(index)
        return index

    def without_model(self, index: int) -> FactorizedScorer:
        """A copy that lacks the model in column ``index`` (the others keep their order,
        shifted down past it): a router that never onboarded it."""
        import copy

        out = copy.deepcopy(self)
        keep = np.arange(len(self.offsets_)) != index
        out.abilities_, out.offsets_ = self.abilities_[keep], self.offsets_[keep]
        out.residuals_, out.graded_prompts_ = self.residuals_[keep], self.graded_prompts_[keep]
        if self.calibration_ is not None:
            maps = self.calibration_.per_model
            shifted = {m - (m > index): c for m, c in maps.items() if m != index}
            out.calibration_ = replace(self.calibration_, per_model=shifted)
        return out

    # -- scoring ---------------------------------------------------------------------------------

    def predict_for(self, X: np.ndarray, abilities: np.ndarray, offsets: np.ndarray) -> np.ndarray:
        """(prompts x models) P(pass) of models given by their abilities (rows) and offsets:
        models the scorer was not fitted on, scored on a prior, through the global map."""
        logits = self.projection(X) @ np.atleast_2d(abilities).T + offsets
        if self.calibration_ is None:
            return _sigmoid(logits)
        return self.calibration_.global_map(logits)

    def decision_function(self, X: np.ndarray, model_columns: Sequence[int]) -> np.ndarray:
        """(prompts x models) uncalibrated logits."""
        columns = list(model_columns)
        Z = self._standardized(X)
        weights = self.projection_ @ self.abilities_[columns].T + self.residuals_[columns].T
        return Z @ weights + self.offsets_[columns]

    def predict_proba(self, X: np.ndarray, model_columns: Sequence[int]) -> np.ndarray:
        """(prompts x models) calibrated P(pass)."""
        columns = list(model_columns)
        logits = self.decision_function(X, columns)
        if self.calibration_ is None:
            return _sigmoid(logits)
        return self.calibration_.apply(logits, columns)
