import pytest

from service.catalog import (
    ALIASES,
    Catalog,
    ModelInfo,
    UnknownModelError,
    canonical_model_id,
    parse_openrouter_models,
)

ROUTERBENCH_IDS = {
    "gpt-4-1106-preview": "openai/gpt-4-1106-preview",
    "gpt-3.5-turbo-1106": "openai/gpt-3.5-turbo-1106",
    "claude-v1": "anthropic/claude-1",
    "claude-v2": "anthropic/claude-2",
    "claude-instant-v1": "anthropic/claude-instant-1",
    "mistralai/mixtral-8x7b-chat": "mistralai/mixtral-8x7b-instruct",
    "mistralai/mistral-7b-chat": "mistralai/mistral-7b-instruct-v0.1",
    "meta/llama-2-70b-chat": "meta-llama/llama-2-70b-chat",
    "meta/code-llama-instruct-34b-chat": "meta-llama/codellama-34b-instruct",
    "zero-one-ai/Yi-34B-Chat": "01-ai/yi-34b-chat",
    "WizardLM/WizardLM-13B-V1.2": "wizardlm/wizardlm-13b-v1.2",
}


def test_routerbench_models_map_to_the_fixed_openrouter_ids():
    for name, model_id in ROUTERBENCH_IDS.items():
        assert canonical_model_id(name) == model_id
        assert ALIASES[name] == model_id


def test_an_openrouter_id_maps_to_itself():
    assert canonical_model_id("openai/gpt-4o-mini") == "openai/gpt-4o-mini"


def test_parse_skips_variants_and_keeps_unknown_prices_null():
    payload = {
        "data": [
            {"id": "a/b", "name": "B", "pricing": {"prompt": "0.000001", "completion": "0.000002"}},
            {"id": "a/b:free", "pricing": {"prompt": "0", "completion": "0"}},
            {"id": "openrouter/auto", "pricing": {"prompt": "-1", "completion": "-1"}},
            {"id": "c/d", "pricing": {}},
        ]
    }
    models = parse_openrouter_models(payload, "2024-08-02")
    assert set(models) == {"a/b", "openrouter/auto", "c/d"}
    assert models["a/b"].prompt_usd_per_token == pytest.approx(1e-6)
    assert models["a/b"].price_seen_at == "2024-08-02"
    assert models["openrouter/auto"].prompt_usd_per_token is None
    assert not models["c/d"].priced


def test_unpriced_model_costs_none_not_zero():
    info = ModelInfo("x/y", "Y", None, None)
    assert info.cost_usd(100, 100) is None
    priced = ModelInfo("x/z", "Z", 1e-6, 2e-6, request_usd=0.001)
    assert priced.cost_usd(100, 50) == pytest.approx(100e-6 + 100e-6 + 0.001)


def test_catalog_round_trips_through_json(tmp_path):
    catalog = Catalog({"x/y": ModelInfo("x/y", "Y", 1e-6, None, typical_output_tokens=12)})
    catalog.save(tmp_path / "catalog.json")
    assert Catalog.load(tmp_path / "catalog.json").get("x/y") == catalog.get("x/y")


def test_unknown_model_is_a_clear_error(catalog):
    with pytest.raises(UnknownModelError, match="no/such-model"):
        catalog.get("no/such-model")


def test_shipped_catalog_prices_routerbench_models_from_the_2024_08_snapshot(catalog):
    for model_id in ROUTERBENCH_IDS.values():
        info = catalog.get(model_id)
        assert info.priced, model_id
        assert info.typical_output_tokens and info.typical_output_tokens > 0
        if model_id != "wizardlm/wizardlm-13b-v1.2":
            assert info.price_source.endswith("2024-08-02"), model_id
    gpt4 = catalog.get("openai/gpt-4-1106-preview")
    assert gpt4.prompt_usd_per_token == pytest.approx(10e-6)
    assert gpt4.completion_usd_per_token == pytest.approx(30e-6)
    wizard = catalog.get("wizardlm/wizardlm-13b-v1.2")
    assert wizard.price_source.startswith("dataset")


def test_shipped_catalog_lists_current_openrouter_models_at_their_newest_price(catalog):
    assert len(catalog.ids()) > 40
    gpt4o = catalog.get("openai/gpt-4o")
    assert gpt4o.prompt_usd_per_token == pytest.approx(2.5e-6)  # 2026-08, not 2024-08's 5e-6


def test_a_sync_takes_what_each_model_supports_from_the_listing():
    catalog = Catalog(
        {
            "a/b": ModelInfo("a/b", "B", 1e-6, 1e-6, supported_parameters=("max_tokens",)),
            "c/d": ModelInfo("c/d", "D", 1e-6, 1e-6, supported_parameters=("tools",)),
        }
    )
    listing = {
        "data": [
            {
                "id": "a/b",
                "pricing": {"prompt": "0.000001", "completion": "0.000001"},
                "supported_parameters": ["max_tokens", "tools", "response_format"],
                "architecture": {"input_modalities": ["text", "image"]},
                "context_length": 32000,
            },
            {"id": "c/d", "pricing": {"prompt": "0.000001", "completion": "0.000001"}},
        ]
    }
    catalog.merge(parse_openrouter_models(listing, "2026-11-30"))
    refreshed = catalog.get("a/b")
    assert refreshed.supported_parameters == ("max_tokens", "response_format", "tools")
    assert refreshed.input_modalities == ("image", "text") and refreshed.context_length == 32000
    assert catalog.get("c/d").supported_parameters == ("tools",)  # the listing stated nothing
