"""`make demo`'s main job: the service on the replay upstream, real traffic, a truthful ledger."""

from __future__ import annotations

import pytest

from training.demo import PROMPTS, run_demo

pytestmark = pytest.mark.slow


def test_demo_serves_held_out_traffic_and_the_ledger_matches_the_client():
    lines: list[str] = []
    result = run_demo(lines.append)
    arms = result.summaries
    assert len(arms) == 5 and all(row["requests"] == PROMPTS for row in arms.values())
    # the five arms, then the onboarding part's two passes (without the model, after onboarding)
    assert result.ledger_requests == PROMPTS * (len(arms) + 2)
    assert result.ledger_spend == pytest.approx(result.client_spend, rel=1e-9)
    learned, heuristic = arms["learned router"], arms["heuristic"]
    reference = next(row for label, row in arms.items() if label.startswith("always "))
    strict = next(row for label, row in arms.items() if "threshold" in label)
    valued = next(row for label, row in arms.items() if "answer worth" in label)
    # Replayed answers are all priced; the learned router is cheaper than the reference and
    # better than the heuristic; a stricter threshold buys quality with money.
    assert all(row["unpriced"] == 0 for row in arms.values())
    assert learned["spend"] < reference["spend"]
    assert learned["pass_rate"] > heuristic["pass_rate"]
    assert strict["spend"] > learned["spend"] and strict["pass_rate"] >= learned["pass_rate"]
    assert valued["spend"] < reference["spend"] and valued["pass_rate"] > heuristic["pass_rate"]
    assert any(line.strip().startswith("Ledger:") for line in lines)
    # the model taken out gets no traffic; onboarded from 50 graded answers, it gets traffic again
    rows = ("with it (shipped)", "without ", "after onboarding")
    shares = {line.split()[0]: line.split()[-1] for line in lines if line.startswith(rows)}
    assert shares["without"] == "0.0%" and float(shares["after"].rstrip("%")) > 10
