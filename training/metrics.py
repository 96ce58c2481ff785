"""Routing metrics: RouterBench's non-decreasing convex hull and AIQ, RouteLLM's APGR and CPT, ECE.

Definitions follow shared/docs/metrics.md. Conventions:

- Cost-quality curves (RouterBench, §2). A hull is an array of shape (k, 2), rows (cost, quality)
  sorted by cost, with quality strictly increasing. Between hull points quality is linearly
  interpolated (mixing two configurations), to the right of the last point it stays flat, and to
  the left of the first point it is 0.0 (the router cannot spend that little).
- AIQ = 1/(cost_max - cost_min) * integral of R̃(c) over [cost_min, cost_max], computed exactly.
  The range is the common cost range of all routers compared in one evaluation and is passed in
  by the caller (RouterBench's code divides by its max cost instead; we do not).
- Two-model curves (RouteLLM, §1) are pairs of arrays (strong_pct, quality), strong_pct in percent
  (0..100) sorted ascending; quality is in whatever unit y_strong/y_weak are in (APGR and CPT are
  invariant to that scale). Router scores are "higher means send to the strong model".
- CPT walks the curve by increasing strong_pct and returns the first linearly interpolated point
  where PGR reaches the fraction, instead of RouteLLM's np.interp on the inverse curve.
- ECE uses equal-width bins on [0, 1], left-closed, the last bin also closed on the right.
"""

from __future__ import annotations

import random

import numpy as np
from numpy.typing import ArrayLike, NDArray

FloatArray = NDArray[np.float64]
Curve = tuple[FloatArray, FloatArray]


def _vector(values: ArrayLike, name: str) -> FloatArray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1:
        raise ValueError(f"{name} must be one-dimensional, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} must be finite")
    return array


def _pair(y_strong: ArrayLike, y_weak: ArrayLike) -> tuple[FloatArray, FloatArray]:
    strong = _vector(y_strong, "y_strong")
    weak = _vector(y_weak, "y_weak")
    if strong.shape != weak.shape or strong.size == 0:
        raise ValueError("y_strong and y_weak must be non-empty and of the same length")
    return strong, weak


def _hull_array(hull: ArrayLike) -> FloatArray:
    array = np.asarray(hull, dtype=np.float64)
    if array.ndim != 2 or array.shape[1] != 2 or array.shape[0] == 0:
        raise ValueError(f"hull must have shape (k, 2) with k >= 1, got {array.shape}")
    return array


# ---------------------------------------------------------------------------------------------
# RouterBench: non-decreasing convex hull, R̃(c), AIQ, cost at a quality target
# ---------------------------------------------------------------------------------------------


def non_decreasing_convex_hull(costs: ArrayLike, qualities: ArrayLike) -> FloatArray:
    """Upper convex hull of the (cost, quality) points, cut where quality stops increasing.

    Returns shape (k, 2), sorted by cost; points on a hull chord are dropped as redundant.
    """
    cost = _vector(costs, "costs")
    quality = _vector(qualities, "qualities")
    if cost.shape != quality.shape or cost.size == 0:
        raise ValueError("costs and qualities must be non-empty and of the same length")

    # Sort by cost, best quality first among equal costs, then keep that best one per cost.
    order = np.lexsort((-quality, cost))
    cost, quality = cost[order], quality[order]
    first = np.concatenate(([True], cost[1:] != cost[:-1]))
    cost, quality = cost[first], quality[first]

    # Andrew's monotone chain, upper half: drop the middle point unless it turns clockwise.
    upper: list[tuple[float, float]] = []
    for point in zip(cost.tolist(), quality.tolist(), strict=True):
        while len(upper) >= 2:
            (x0, y0), (x1, y1) = upper[-2], upper[-1]
            cross = (x1 - x0) * (point[1] - y0) - (y1 - y0) * (point[0] - x0)
            if cross < 0:
                break
            upper.pop()
        upper.append(point)

    # The upper hull is concave: quality rises to its peak, then falls. Keep up to the peak.
    kept = [upper[0]]
    for point in upper[1:]:
        if point[1] <= kept[-1][1]:
            break
        kept.append(point)
    return np.array(kept, dtype=np.float64).reshape(-1, 2)


def hull_quality_at(hull: ArrayLike, cost: float) -> float:
    """R̃(cost): linear interpolation on the hull, flat to the right of its last point.

    0.0 to the left of its first point, which the router cannot reach.
    """
    points = _hull_array(hull)
    if cost < points[0, 0]:
        return 0.0
    if cost >= points[-1, 0]:
        return float(points[-1, 1])
    return float(np.interp(cost, points[:, 0], points[:, 1]))


def aiq(hull: ArrayLike, cost_min: float, cost_max: float) -> float:
    """Average quality of R̃ over [cost_min, cost_max], integrated exactly (piecewise linear).

    If cost_max == cost_min, this is R̃ at that cost.
    """
    points = _hull_array(hull)
    if cost_max < cost_min:
        raise ValueError(f"cost_max ({cost_max}) must not be below cost_min ({cost_min})")
    if cost_max == cost_min:
        return hull_quality_at(points, cost_min)

    start = float(points[0, 0])
    inside = points[(points[:, 0] > cost_min) & (points[:, 0] < cost_max), 0]
    knots = np.unique(np.concatenate(([cost_min, cost_max], inside)))
    area = 0.0
    for left, right in zip(knots[:-1].tolist(), knots[1:].tolist(), strict=True):
        # R̃ is 0 left of the hull's first cost (itself a knot when inside the range) and
        # continuous and linear on every knot interval to its right.
        if right <= start:
            continue
        value_left = hull_quality_at(points, left)
        value_right = hull_quality_at(points, right)
        area += 0.5 * (value_left + value_right) * (right - left)
    return area / (cost_max - cost_min)


def cost_at_quality(hull: ArrayLike, target_quality: float) -> float | None:
    """Lowest cost on the hull (interpolating between points) with quality >= target_quality.

    None if the hull never reaches the target.
    """
    points = _hull_array(hull)
    cost, quality = points[:, 0], points[:, 1]
    if quality[0] >= target_quality:
        return float(cost[0])
    for i in range(1, len(points)):
        if quality[i] >= target_quality:
            share = (target_quality - quality[i - 1]) / (quality[i] - quality[i - 1])
            return float(cost[i - 1] + share * (cost[i] - cost[i - 1]))
    return None


# ---------------------------------------------------------------------------------------------
# RouteLLM: strong-call curves, APGR, CPT
# ---------------------------------------------------------------------------------------------


def _threshold_points(
    scores: FloatArray, strong: FloatArray, weak: FloatArray, num_results: int
) -> tuple[NDArray[np.int64], FloatArray]:
    """Raw RouteLLM sweep: (strong-call count, mean quality) for each of the num_results+1 edges.

    The edges are what pd.qcut(scores, num_results, retbins=True) returns (linear-interpolated
    quantiles at linspace(0, 1, num_results + 1)), but duplicate edges are allowed.
    """
    if num_results < 1:
        raise ValueError("num_results must be at least 1")
    edges = np.quantile(scores, np.linspace(0.0, 1.0, num_results + 1))
    counts = np.empty(len(edges), dtype=np.int64)
    qualities = np.empty(len(edges), dtype=np.float64)
    for i, edge in enumerate(edges):
        # >= for every edge but the last, which uses > so that the curve reaches 0 % strong.
        selected = scores >= edge if i < len(edges) - 1 else scores > edge
        counts[i] = int(selected.sum())
        qualities[i] = float(np.where(selected, strong, weak).mean())
    return counts, qualities


def _mean_by_count(counts: NDArray[np.int64], qualities: FloatArray, n: int) -> Curve:
    """Group points by strong-call count (equivalently strong_pct), average quality, sort."""
    unique, inverse = np.unique(counts, return_inverse=True)
    sums = np.bincount(inverse, weights=qualities, minlength=len(unique))
    sizes = np.bincount(inverse, minlength=len(unique))
    return 100.0 * unique / n, sums / sizes


def threshold_curve(
    scores: ArrayLike, y_strong: ArrayLike, y_weak: ArrayLike, num_results: int = 10
) -> Curve:
    """RouteLLM's threshold sweep (metrics.md §1 steps 2-3): thresholds at the score deciles.

    Returns (strong_pct, quality) sorted by strong_pct; tied edges collapse into one point.
    """
    strong, weak = _pair(y_strong, y_weak)
    score = _vector(scores, "scores")
    if score.shape != strong.shape:
        raise ValueError("scores must have the same length as y_strong and y_weak")
    counts, qualities = _threshold_points(score, strong, weak, num_results)
    return _mean_by_count(counts, qualities, len(score))


def random_curve(
    y_strong: ArrayLike,
    y_weak: ArrayLike,
    iters: int = 10,
    seed: int = 0,
    num_results: int = 10,
) -> Curve:
    """RouteLLM's random router: seed once, draw uniform(0, 1) per prompt in order for each run.

    The threshold sweeps of all runs are pooled, grouped by strong_pct and averaged.
    """
    strong, weak = _pair(y_strong, y_weak)
    if iters < 1:
        raise ValueError("iters must be at least 1")
    # RouteLLM calls random.seed(seed) once per router, then random.uniform(0, 1) per prompt,
    # which is exactly one random() draw each; a private Random(seed) gives the same stream.
    rng = random.Random(seed)
    all_counts: list[NDArray[np.int64]] = []
    all_qualities: list[FloatArray] = []
    for _ in range(iters):
        scores = np.array([rng.random() for _ in range(len(strong))], dtype=np.float64)
        counts, qualities = _threshold_points(scores, strong, weak, num_results)
        all_counts.append(counts)
        all_qualities.append(qualities)
    return _mean_by_count(np.concatenate(all_counts), np.concatenate(all_qualities), len(strong))


def oracle_curve(y_strong: ArrayLike, y_weak: ArrayLike, step_pct: float = 1) -> Curve:
    """Oracle: prompts with the largest y_strong - y_weak go to the strong model first.

    Sampled every step_pct percent; a fractional prompt count interpolates between whole counts.
    """
    strong, weak = _pair(y_strong, y_weak)
    if step_pct <= 0 or abs(100.0 / step_pct - round(100.0 / step_pct)) > 1e-9:
        raise ValueError("step_pct must be positive and divide 100")
    n = len(strong)
    gain = np.sort(strong - weak)[::-1]
    # quality_at[k] = mean quality when the k prompts with the largest gain go to strong.
    quality_at = (weak.sum() + np.concatenate(([0.0], np.cumsum(gain)))) / n
    strong_pct = np.linspace(0.0, 100.0, round(100.0 / step_pct) + 1)
    quality = np.interp(strong_pct / 100.0 * n, np.arange(n + 1), quality_at)
    return strong_pct, quality


def _sorted_curve(strong_pct: ArrayLike, quality: ArrayLike) -> Curve:
    x = _vector(strong_pct, "strong_pct")
    y = _vector(quality, "quality")
    if x.shape != y.shape or x.size == 0:
        raise ValueError("strong_pct and quality must be non-empty and of the same length")
    order = np.argsort(x, kind="stable")
    return x[order], y[order]


def apgr(strong_pct: ArrayLike, quality: ArrayLike, r_weak: float, r_strong: float) -> float:
    """APGR: trapezoid area under quality vs strong_pct/100, rescaled so that the constant lines

    at r_weak and r_strong (trapezoids over the same x points) give 0 and 1.
    """
    x, y = _sorted_curve(strong_pct, quality)
    x = x / 100.0
    if r_strong == r_weak or x[-1] == x[0]:
        raise ValueError("APGR needs r_strong != r_weak and a curve spanning more than one x")
    auc = float(np.trapezoid(y, x))
    weak_auc = float(np.trapezoid(np.full_like(x, r_weak), x))
    strong_auc = float(np.trapezoid(np.full_like(x, r_strong), x))
    return (auc - weak_auc) / (strong_auc - weak_auc)


def cpt(
    strong_pct: ArrayLike,
    quality: ArrayLike,
    r_weak: float,
    r_strong: float,
    fraction: float,
) -> float | None:
    """Call-performance threshold: the lowest strong_pct at which PGR >= fraction.

    First linearly interpolated crossing walking by increasing strong_pct; None if never reached.
    """
    x, y = _sorted_curve(strong_pct, quality)
    if r_strong == r_weak:
        raise ValueError("CPT needs r_strong != r_weak")
    pgr = (y - r_weak) / (r_strong - r_weak)
    if pgr[0] >= fraction:
        return float(x[0])
    for i in range(1, len(x)):
        if pgr[i] >= fraction:
            share = (fraction - pgr[i - 1]) / (pgr[i] - pgr[i - 1])
            return float(x[i - 1] + share * (x[i] - x[i - 1]))
    return None


# ---------------------------------------------------------------------------------------------
# Calibration
# ---------------------------------------------------------------------------------------------


def expected_calibration_error(p: ArrayLike, y: ArrayLike, n_bins: int = 10) -> float:
    """ECE: sum over equal-width bins on [0, 1] of bin share * |mean(p) - mean(y)| in the bin.

    Bins are [i/n, (i+1)/n), the last one including 1.0; y may be 0/1 or fractional.
    """
    prob = _vector(p, "p")
    outcome = _vector(y, "y")
    if prob.shape != outcome.shape or prob.size == 0:
        raise ValueError("p and y must be non-empty and of the same length")
    if n_bins < 1:
        raise ValueError("n_bins must be at least 1")
    if np.any((prob < 0.0) | (prob > 1.0)):
        raise ValueError("p must lie in [0, 1]")
    bins = np.minimum((prob * n_bins).astype(np.int64), n_bins - 1)
    sizes = np.bincount(bins, minlength=n_bins)
    gap = np.bincount(bins, weights=prob, minlength=n_bins) - np.bincount(
        bins, weights=outcome, minlength=n_bins
    )
    # |sum(p - y)| / n over each bin equals share * |mean(p) - mean(y)|; empty bins add 0.
    return float(np.abs(gap[sizes > 0]).sum() / prob.size)
