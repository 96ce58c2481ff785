import numpy as np

from service.routing.decision import choose
from service.routing.heuristic import HeuristicRouter, complexity, tier_strengths

SIMPLE = "Hi, what's the capital of France?"
HARD = (
    "Write a Python function that solves the equation x^2 + 3x - 4 = 0 and prove step by step "
    "why your implementation is correct. Explain the complexity and compare it with a "
    "closed-form derivation.\n```python\ndef solve(a, b, c):\n    return None\n```"
)


def test_code_math_and_reasoning_cues_raise_complexity():
    simple, hard = complexity([SIMPLE, HARD])
    assert 0 <= simple < 0.2
    assert hard > 0.67


def test_price_terciles_become_tier_strengths():
    strengths = tier_strengths(np.array([[0.3, 0.1, 0.2, np.nan, 0.05, 0.6]]))
    # five priced models: the cheapest alone, then two and two; the unpriced one gets nothing
    np.testing.assert_allclose(strengths[0], [1, 2 / 3, 2 / 3, 0, 1 / 3, 1])


def test_simple_prompts_go_to_the_cheap_tier_and_hard_ones_to_the_frontier():
    cost = np.array([[0.001, 0.01, 0.1]] * 2)
    p = HeuristicRouter().p_pass([SIMPLE, HARD], ["a", "b", "c"], cost)
    chosen, _ = choose(p, cost, threshold=0.5)
    assert chosen.tolist() == [0, 2]
