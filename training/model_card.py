"""The model card of a trained router: data, code version, choice of learner and metrics."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from service.routing.learned import LearnedRouter
from training.learners import LEARNERS
from training.sources import LICENSES


def _ratio(value: float | None) -> str:
    return "never" if value is None else f"{value:.3f}x"


def _results_table(summary: dict[str, Any]) -> list[str]:
    lines = [
        "| source | prompts | models | router | AIQ | cost at 95 % | cost at 100 % |",
        "|---|---|---|---|---|---|---|",
    ]
    for source, result in summary["sources"].items():
        for name in ("learned", "heuristic", "zero", "oracle"):
            entry = result[name]
            lines.append(
                f"| {source} | {result['n_prompts']} | {result['models']} | {name} | "
                f"{entry['aiq']:.4f} | {_ratio(entry['cost_ratio_at_95'])} | "
                f"{_ratio(entry['cost_ratio_at_100'])} |"
            )
    return lines


def render(router: LearnedRouter) -> str:
    """Markdown for MODEL_CARD.md from the router's metadata."""
    meta = router.metadata
    validation = meta.get("validation", {})
    test = meta.get("test", {})
    lines = [
        "# switchboard learned router: model card",
        "",
        f"Written by `switchboard {meta.get('kind', 'train')}`; every number below comes from "
        "that run (an onboarded version keeps its parent's validation figures).",
        "",
        "## What it predicts",
        "",
        f"For each of {len(router.models)} models, the probability that its answer to a prompt "
        f"clears the quality bar ({router.bar}: a benchmark score of at least {router.bar}). The "
        "router sends a prompt to the cheapest model whose probability reaches the threshold "
        f"(default {router.default_threshold}, chosen on validation as the cheapest threshold "
        "keeping 95 % of the best single model's quality), else to the model most likely to pass; "
        "or, when the caller says what a passing answer is worth, to the model with the highest "
        "expected net value (value x P(pass) - expected cost). Its cost-quality curves cover "
        "both rules (the hull of every threshold and every value). Expected costs come from "
        "the prompt's tokens and, for models with recorded answers, the answer length a ridge "
        "regression on the same features predicts for the prompt (else the model's typical "
        "length), at catalog prices.",
        "",
        f"- version: `{router.version}`, trained {meta.get('trained_at', '?')}",
        f"- code: `{meta.get('code_version', '?')}`",
        f"- learner: `{meta.get('learner', '?')}` (chosen on validation among "
        f"{', '.join(f'`{n}`' for n in validation)})",
        f"- features: `{router.embedder_name}` sentence embedding of the prompt (head and tail "
        "when long) plus cheap text features (service/features.py)",
        "",
        "## Data",
        "",
        f"- outcomes table sha256 `{meta.get('data_sha256', '?')}`",
        f"- trained on {meta.get('training_prompts', '?')} prompts / "
        f"{meta.get('training_rows', '?')} (prompt, model) outcomes: the train and val splits of",
    ]
    lines += [f"  - {s}: {LICENSES.get(s, 'unknown license')}" for s in meta.get("sources", [])]
    lines += [
        "- evaluation-only benchmarks (RouteLLM's MMLU, GSM8K, MT-Bench; zeroeval's GSM8K; "
        "AlpacaEval) are never trained on.",
        "",
        "## Models",
        "",
        "Each model with the graded prompts its scores come from"
        + (" (onboarded models marked *)" if meta.get("onboarded") else "")
        + ":",
        "",
        ", ".join(
            f"`{m}` {router.graded_prompts(m)}{'*' if m in meta.get('onboarded', {}) else ''}"
            for m in router.models
        ),
        "",
        *(
            [
                f"Onboarded into version `{meta.get('parent_version')}` "
                f"({meta.get('quality_gate')}).",
                "",
            ]
            if meta.get("onboarded")
            else []
        ),
        "## Choice of learner (validation split)",
        "",
        "Mean AIQ over the validation sets of the three sources. The chosen learner is the "
        "simplest one (order: " + ", ".join(n for n in LEARNERS if n in validation) + ") whose "
        "gap to the best is within one paired-bootstrap standard error of that gap.",
        "",
        "| learner | mean AIQ | gap to best | SE of gap | heuristic mean AIQ | log loss | ECE "
        "| fit seconds |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in [n for n in LEARNERS if n in validation]:
        result = validation[name]
        lines.append(
            f"| {name} | {result['mean_aiq']:.4f} | {result.get('aiq_gap_to_best', 0):.4f} | "
            f"{result.get('aiq_gap_standard_error', 0):.4f} | "
            f"{result['mean_heuristic_aiq']:.4f} | {result['log_loss']:.4f} | "
            f"{result['ece']:.4f} | {result['fit_seconds']:.0f} |"
        )
    lines += _out_of_domain_lines(meta.get("out_of_domain") or {})
    if test:
        lines += [
            "",
            "## Test split (after the choice)",
            "",
            "Cost at 95 % / 100 %: the cheapest mean cost at which the router's hull reaches that "
            "share of the best single model's pass rate, over that model's mean cost.",
            "",
            *_results_table(test),
            "",
            f"Expected calibration error of P(pass) on test: {test['ece']:.4f} "
            f"(log loss {test['log_loss']:.4f}).",
        ]
    return "\n".join(lines) + "\n"


def _out_of_domain_lines(found: dict) -> list[str]:
    """The OOD score's leave-one-source-out check and the choice of shrinkage."""
    if "ood_auroc_held_out_source" not in found:
        return ["", f"No out-of-domain score: {found.get('ood', 'not fitted')}."] if found else []
    lines = [
        "",
        "## Far from the training prompts",
        "",
        "`ood_score` (service/routing/ood.py), leave-one-source-out AUROC on validation: "
        + ", ".join(f"{s} {a:.3f}" for s, a in found["ood_auroc_held_out_source"].items())
        + ".",
        "",
        f"Shrinkage toward each model's base rate: {found.get('shrinkage', 0.0)}"
        + (f" ({found['shrinkage_reason']})" if "shrinkage_reason" in found else "")
        + ".",
    ]
    objective = found.get("shrinkage_objective")
    if objective:
        lines += [
            "",
            "Chosen on leave-one-source-out validation, the lowest mean log loss of P(pass) "
            "over the folds (each fold's router fitted without one source), AIQ beside it.",
            "",
            "| shrinkage | log loss, held-out source | log loss, in domain | AIQ, held-out "
            "source | AIQ, in domain |",
            "|---|---|---|---|---|",
        ]
        lines += [
            f"| {w} | {v['held_out_source_val_log_loss']:.4f} | "
            f"{v['in_domain_val_log_loss']:.4f} | {v['held_out_source_val_aiq']:.4f} | "
            f"{v['in_domain_val_aiq']:.4f} |"
            for w, v in objective.items()
        ]
    return lines


def write(router: LearnedRouter, directory: Path) -> Path:
    path = Path(directory) / "MODEL_CARD.md"
    path.write_text(render(router))
    return path
