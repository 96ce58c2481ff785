"""Plots: the cost-quality curves of an evaluation and the calibration of P(pass).

Figures are drawn on ``matplotlib.figure.Figure`` directly and saved to files, without pyplot:
importing this module chooses no backend, so a notebook's plots still show inline.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from matplotlib.figure import Figure

from training.evaluate import Evaluation

STYLE = {
    "learned": ("tab:blue", "-"),
    "heuristic": ("tab:orange", "-"),
    "random": ("tab:gray", ":"),
    "zero": ("black", "--"),
    "oracle": ("tab:green", "--"),
}


def cost_quality(
    evaluation: Evaluation, path: Path, title: str, quality_label: str = "pass rate"
) -> Path:
    """Each router's non-decreasing convex hull, its raw points, and the single models."""
    fig = Figure(figsize=(7.5, 5))
    ax = fig.subplots()
    for name, (color, line) in STYLE.items():
        hull = evaluation.hulls[name]
        points = evaluation.curves[name]
        ax.plot(hull[:, 0], hull[:, 1], line, color=color, label=f"{name} (hull)")
        if name in ("learned", "heuristic"):
            ax.scatter(points[:, 0], points[:, 1], s=6, color=color, alpha=0.35)
    for name, curve in evaluation.curves.items():
        if name.startswith("model:"):
            ax.scatter(curve[:, 0], curve[:, 1], marker="x", color="tab:red")
            ax.annotate(name[6:].split("/")[-1], curve[0], fontsize=7, alpha=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("mean cost per prompt (USD, log scale)")
    ax.set_ylabel(f"mean quality ({quality_label})")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="lower right")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path


def calibration(p: np.ndarray, y: np.ndarray, path: Path, title: str, n_bins: int = 10) -> Path:
    """Reliability diagram: mean predicted P(pass) against the observed pass rate per bin."""
    edges = np.linspace(0, 1, n_bins + 1)
    which = np.clip(np.digitize(p, edges[1:-1]), 0, n_bins - 1)
    predicted, observed, counts = [], [], []
    for b in range(n_bins):
        mask = which == b
        if mask.any():
            predicted.append(p[mask].mean())
            observed.append(y[mask].mean())
            counts.append(mask.sum())
    fig = Figure(figsize=(5, 5))
    ax = fig.subplots()
    ax.plot([0, 1], [0, 1], "--", color="gray", label="perfect calibration")
    ax.plot(predicted, observed, "o-", color="tab:blue", label="learned router")
    for x, yv, n in zip(predicted, observed, counts, strict=True):
        ax.annotate(str(n), (x, yv), fontsize=7, textcoords="offset points", xytext=(4, -10))
    ax.set_xlabel("predicted P(pass)")
    ax.set_ylabel("observed pass rate")
    ax.set_title(title)
    ax.legend(fontsize=8, loc="upper left")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    return path
