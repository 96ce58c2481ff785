"""Maps from a scorer's logit to a calibrated P(pass), shared by all models or per model.

A joint scorer's logits are comparable across models, so one monotone map fitted on all models'
out-of-fold logits calibrates every model, including one that joins later with no rows of its
own to fit a map on. Models with many rows may get their own map (``per_model_rows``); the rest
keep the global one.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import numpy as np
from sklearn.isotonic import IsotonicRegression
from sklearn.linear_model import LogisticRegression

KINDS = ("isotonic", "platt")


@dataclass
class CalibrationMap:
    """logit -> P: sigmoid(slope * z + intercept) (Platt), or, with ``knots``, the piecewise
    linear isotonic fit through (knots, values), constant beyond its ends."""

    slope: float = 1.0
    intercept: float = 0.0
    knots: np.ndarray | None = None
    values: np.ndarray | None = None

    def __call__(self, z: np.ndarray) -> np.ndarray:
        if self.knots is None or self.values is None:
            return 0.5 * (1.0 + np.tanh(0.5 * (self.slope * z + self.intercept)))
        return np.interp(z, self.knots, self.values)


def fit_map(z: np.ndarray, y: np.ndarray, kind: str) -> CalibrationMap:
    """The ``kind`` map fitted to outcomes ``y`` (0/1) at logits ``z``."""
    if kind not in KINDS:
        raise ValueError(f"calibration must be one of {KINDS}, not {kind!r}")
    if kind == "platt":
        platt = LogisticRegression(C=1e6).fit(z[:, None], y)
        return CalibrationMap(float(platt.coef_[0, 0]), float(platt.intercept_[0]))
    isotonic = IsotonicRegression(out_of_bounds="clip", y_min=0.0, y_max=1.0).fit(z, y)
    return CalibrationMap(knots=isotonic.X_thresholds_, values=isotonic.y_thresholds_)


@dataclass
class LogitCalibration:
    """A global map plus per-model maps (by model column) for the models that have one."""

    global_map: CalibrationMap
    per_model: dict[int, CalibrationMap] = field(default_factory=dict)

    def apply(self, logits: np.ndarray, columns: list[int]) -> np.ndarray:
        """(prompts x len(columns)) probabilities from logits of the same shape."""
        out = np.empty_like(logits, dtype=float)
        for j, m in enumerate(columns):
            out[:, j] = self.per_model.get(m, self.global_map)(logits[:, j])
        return out

    def with_global_map(self, column: int) -> LogitCalibration:
        """A copy in which ``column`` uses the global map (its own was fitted on other rows)."""
        return replace(self, per_model={m: c for m, c in self.per_model.items() if m != column})


def fit_calibration(
    logits: np.ndarray,
    y: np.ndarray,
    model_index: np.ndarray,
    n_models: int,
    kind: str,
    per_model_rows: int | None = None,
) -> LogitCalibration:
    """One map on every row, plus one per model with at least ``per_model_rows`` rows of both
    outcomes (when set)."""
    calibration = LogitCalibration(fit_map(logits, y, kind))
    if per_model_rows is None:
        return calibration
    for m in range(n_models):
        rows = model_index == m
        if rows.sum() >= per_model_rows and 0 < y[rows].sum() < rows.sum():
            calibration.per_model[m] = fit_map(logits[rows], y[rows], kind)
    return calibration
