import numpy as np
import pytest

from service.routing.decision import (
    CLEARS_THRESHOLD,
    HIGHEST_VALUE,
    MOST_LIKELY,
    NoCandidateError,
    choose,
    choose_by_value,
    decide,
    expected_costs,
)

MODELS = ["cheap", "mid", "frontier"]
COST = np.array([0.001, 0.01, 0.1])


def test_cheapest_model_that_clears_the_threshold_wins():
    decision = decide(MODELS, np.array([0.4, 0.8, 0.95]), COST, threshold=0.7, router="t")
    assert decision.model == "mid"
    assert decision.rule == CLEARS_THRESHOLD
    assert [c.model for c in decision.candidates] == MODELS


def test_most_likely_model_wins_when_none_clears():
    decision = decide(MODELS, np.array([0.4, 0.6, 0.5]), COST, threshold=0.9, router="t")
    assert decision.model == "mid"
    assert decision.rule == MOST_LIKELY


def test_tie_in_probability_goes_to_the_cheaper_model():
    chosen, cleared = choose(np.array([[0.5, 0.5, 0.5]]), COST[None, :], threshold=0.9)
    assert chosen.tolist() == [0]
    assert not cleared[0]


def test_allowed_models_and_cost_cap_restrict_candidates():
    p = np.array([0.8, 0.9, 0.99])
    assert decide(MODELS, p, COST, 0.5, "t", allowed_models=["frontier"]).model == "frontier"
    assert decide(MODELS, p, COST, 0.95, "t", max_cost_usd=0.05).model == "mid"


def test_no_candidate_is_a_clear_error():
    with pytest.raises(NoCandidateError):
        decide(MODELS, np.array([0.9, 0.9, 0.9]), COST, 0.5, "t", max_cost_usd=0.0001)


def test_unpriced_model_is_never_chosen():
    cost = np.array([np.nan, 0.01, 0.1])
    assert decide(MODELS, np.array([0.99, 0.8, 0.9]), cost, 0.5, "t").model == "mid"


def test_vectorized_choice_matches_row_by_row_decisions():
    rng = np.random.default_rng(0)
    p = rng.uniform(size=(200, 3))
    cost = rng.uniform(size=(200, 3))
    chosen, _ = choose(p, cost, 0.6)
    for i in range(200):
        assert MODELS[chosen[i]] == decide(MODELS, p[i], cost[i], 0.6, "t").model


def test_expected_cost_uses_prompt_length_and_typical_answer_length(catalog):
    costs = expected_costs(["x" * 400], ["openai/gpt-4-1106-preview"], catalog)
    typical = catalog.get("openai/gpt-4-1106-preview").typical_output_tokens
    assert costs[0, 0] == pytest.approx(100 * 10e-6 + typical * 30e-6)


def test_expected_costs_bound_the_answer_by_the_requests_max_tokens(catalog):
    models = ["openai/gpt-4-1106-preview", "mistralai/mixtral-8x7b-instruct"]
    free = expected_costs(["Explain entropy."], models, catalog)
    capped = expected_costs(["Explain entropy."], models, catalog, max_output_tokens=1)
    assert (capped < free).all()
    prompt_only = expected_costs(["Explain entropy."], models, catalog, max_output_tokens=0)
    info = catalog.get(models[0])
    assert capped[0, 0] - prompt_only[0, 0] == pytest.approx(info.completion_usd_per_token)


def test_value_rule_picks_the_highest_expected_net_value():
    p = np.array([0.5, 0.8, 0.95])
    # worth $0.02: 0.0090, 0.0060, -0.0810 -> cheap; worth $1: 0.499, 0.79, 0.85 -> frontier
    low = decide(MODELS, p, COST, 0.7, "t", answer_value_usd=0.02)
    assert (low.model, low.rule, low.threshold) == ("cheap", HIGHEST_VALUE, None)
    assert decide(MODELS, p, COST, 0.7, "t", answer_value_usd=1.0).model == "frontier"
    # worth $0.2: 0.099, 0.15, 0.09 -> mid
    assert decide(MODELS, p, COST, 0.7, "t", answer_value_usd=0.2).model == "mid"


def test_value_rule_weighs_each_prompts_gain_against_its_cost():
    """One value, two prompts: the frontier model only where it adds enough P(pass)."""
    p = np.array([[0.60, 0.61, 0.64], [0.30, 0.50, 0.95]])
    chosen = choose_by_value(p, np.tile(COST, (2, 1)), 0.5)
    assert chosen.tolist() == [0, 2]


def test_value_rule_breaks_ties_to_the_cheaper_and_skips_unpriced_and_ineligible_models():
    p = np.array([[0.5, 0.5, 0.5]])
    cost = np.array([[0.01, 0.01, np.nan]])
    assert choose_by_value(p, cost, 1.0).tolist() == [0]
    eligible = np.array([[False, False, True]])
    assert choose_by_value(p, cost, 1.0, eligible).tolist() == [-1]
    with pytest.raises(NoCandidateError):
        decide(MODELS, p[0], COST, 0.5, "t", max_cost_usd=0.0001, answer_value_usd=1.0)


def test_expected_costs_use_predicted_answer_lengths_where_known(catalog):
    models = ["openai/gpt-4-1106-preview", "mistralai/mixtral-8x7b-instruct"]
    typical = expected_costs(["Write a parser."], models, catalog)
    answer = np.array([[500.0, np.nan]])  # a long answer predicted for the first model only
    predicted = expected_costs(["Write a parser."], models, catalog, answer_tokens=answer)
    info = catalog.get(models[0])
    extra = (500 - info.typical_output_tokens) * info.completion_usd_per_token
    assert predicted[0, 0] == pytest.approx(typical[0, 0] + extra)
    assert predicted[0, 1] == typical[0, 1]
    capped = expected_costs(
        ["Write a parser."], models, catalog, max_output_tokens=1, answer_tokens=answer
    )
    np.testing.assert_allclose(
        capped, expected_costs(["Write a parser."], models, catalog, max_output_tokens=1)
    )
