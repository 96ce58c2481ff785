"""Readable terminal tables for ``switchboard eval`` and ``switchboard route``."""

from __future__ import annotations

from typing import Any


def _cell(value: float | None, fmt: str) -> str:
    """A number in ``fmt``, or a dash padded to the same width."""
    if value is None:
        width = int(fmt.split(".")[0] or 0)
        return "-".rjust(width)
    return format(value, fmt)


def evaluation_table(report: dict[str, Any]) -> str:
    """The eval report as a table, learned router first, single models last."""
    lines = [
        f"{report['n_prompts']} prompts, {len(report['models'])} models, bar {report['bar']}, "
        f"reference {report['reference_model']}",
        "",
        f"{'router':42s} {'quality':>8s} {'$/prompt':>10s} {'AIQ':>7s} "
        f"{'cost@95%':>9s} {'cost@100%':>9s} {'APGR':>6s} {'CPT50':>6s} {'CPT80':>6s}",
    ]
    for name, entry in report["routers"].items():
        ratios = entry["cost_ratio_at_quality"]
        lines.append(
            f"{name[:42]:42s} {entry['quality']:8.4f} {entry['cost_usd']:10.6f} "
            f"{entry['aiq']:7.4f} {_cell(ratios['0.95'], '9.3f')} {_cell(ratios['1.0'], '9.3f')} "
            f"{_cell(entry['apgr'], '6.3f')} {_cell(entry['cpt50'], '6.1f')} "
            f"{_cell(entry['cpt80'], '6.1f')}"
        )
    lines += [
        "",
        "cost@95%/cost@100%: cheapest mean cost on the router's hull reaching that share of the "
        "reference's quality, over the reference's mean cost (- = never reached).",
    ]
    return "\n".join(lines)


def decision_table(decision: dict[str, Any]) -> str:
    """The routing decision and every candidate, cheapest first."""
    knob = (
        f"threshold {decision['threshold']}"
        if decision.get("answer_value_usd") is None
        else f"answer worth ${decision['answer_value_usd']}"
    )
    lines = [
        f"route to {decision['model']}  (P(pass) {decision['p_pass']:.3f}, expected cost "
        f"${_cell(decision['expected_cost_usd'], '.6f')}, {decision['rule'].replace('_', ' ')}, "
        f"{knob}, router {decision['router']})",
        *(
            [f"ood_score {ood:.3f}: how unlike the router's training prompts (0 to 1)"]
            if (ood := decision.get("ood_score")) is not None
            else []
        ),
        "",
        f"{'candidate':42s} {'P(pass)':>8s} {'expected $':>11s}",
    ]
    for candidate in decision["candidates"]:
        cost = candidate["expected_cost_usd"]
        mark = "*" if candidate["model"] == decision["model"] else " "
        lines.append(
            f"{mark}{candidate['model'][:41]:41s} {candidate['p_pass']:8.3f} {_cell(cost, '11.6f')}"
        )
    return "\n".join(lines)
