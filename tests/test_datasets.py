import hashlib
from pathlib import Path

import pandas as pd
import pytest

from training import datasets
from training.datasets import RAW_DIR, leaked_prompts
from training.prompts import prompt_id
from training.sources import EVALUATION_ONLY
from training.sources.routerbench import messages


def test_raw_files_are_the_recorded_copies():
    sums = (Path(RAW_DIR) / "SHA256SUMS").read_text().split("\n")
    for line in filter(None, sums):
        digest, name = line.split(maxsplit=1)
        path = Path(RAW_DIR) / name
        assert hashlib.sha256(path.read_bytes()).hexdigest() == digest, name


def test_table_has_the_documented_columns_and_value_ranges(outcomes):
    assert list(outcomes.columns) == datasets.COLUMNS
    assert outcomes["quality"].between(0, 1).all()
    assert (outcomes["cost_usd"].dropna() >= 0).all()
    assert outcomes["prompt"].str.strip().ne("").all()
    assert set(outcomes["split"]) == {"train", "val", "test"}
    assert not outcomes.duplicated(["prompt_id", "model"]).any()
    assert outcomes.groupby("prompt_id")["split"].nunique().eq(1).all()


def test_every_routerbench_test_prompt_stays_in_test(outcomes):
    ids = set()
    for path in (Path(RAW_DIR) / "routerbench-subset").glob("*_test.csv"):
        ids |= {prompt_id(messages(p)) for p in pd.read_csv(path)["prompt"]}
    splits = outcomes.drop_duplicates("prompt_id").set_index("prompt_id")["split"]
    assert splits.loc[sorted(ids)].eq("test").all()


def test_evaluation_only_benchmarks_never_reach_training(outcomes):
    evaluation = outcomes[outcomes["source"].isin(EVALUATION_ONLY)]
    assert evaluation["split"].eq("test").all()
    counts = evaluation.drop_duplicates(["source", "prompt_id"]).groupby(["source", "task"]).size()
    # RouteLLM's decontaminated sets (MMLU repeats 106 of its 14,037 questions verbatim), and
    # zeroeval's GSM8K: the same test questions, 12 of them not decontaminated
    assert counts.to_dict() == {
        ("routellm", "gsm8k"): 1307,
        ("routellm", "mmlu"): 13931,
        ("routellm", "mt-bench"): 72,
        ("zeroeval-gsm8k", "gsm"): 1319,
    }
    train = outcomes[outcomes["split"] != "test"].drop_duplicates("prompt_id")
    test = outcomes[outcomes["source"].isin(EVALUATION_ONLY)].drop_duplicates("prompt_id")
    sources = dict(zip(outcomes["prompt_id"], outcomes["source"], strict=True))
    leaked = leaked_prompts(
        dict(zip(test["prompt_id"], test["prompt"], strict=True)),
        dict(zip(train["prompt_id"], train["prompt"], strict=True)),
        sources,
    )
    assert leaked == set()


def test_a_question_shared_by_two_sources_is_caught_in_either_direction():
    test = {"t": "Which planet is known as the red planet?\nA. Mars\nB. Venus\nAnswer:"}
    other = {
        "copy": "Question: which planet is known as the red planet? Think step by step.",
        "stem": "Which planet is known as the red planet?",
        "unrelated": "Which metal is liquid at room temperature?",
    }
    assert leaked_prompts(test, other) == {"copy", "stem"}


def test_dedupe_averages_repeats_and_keeps_a_test_mark():
    rows = pd.DataFrame(
        {
            "prompt_id": ["p", "p", "q"],
            "prompt": ["P", "P", "Q"],
            "model": ["m", "m", "m"],
            "quality": [1.0, 0.0, 1.0],
            "cost_usd": [0.2, 0.4, None],
            "input_tokens": [None, None, None],
            "output_tokens": [None, None, None],
            "response": ["a", "b", None],
            "source": ["s", "s", "s"],
            "task": ["t", "t", "t"],
            "source_split": ["train", "test", None],
        }
    )
    out = datasets.dedupe(rows).set_index("prompt_id")
    assert out.loc["p", "quality"] == 0.5
    assert out.loc["p", "cost_usd"] == pytest.approx(0.3)
    assert out.loc["p", "source_split"] == "test"
    assert pd.isna(out.loc["q", "source_split"])


@pytest.mark.slow
def test_shipped_table_is_exactly_what_the_build_produces(outcomes):
    assert datasets.table_hash(datasets.build()) == datasets.table_hash(outcomes)


def test_alpaca_eval_is_its_own_evaluation_table_and_asks_no_training_question(outcomes):
    from training.sources.alpaca_eval import MODELS, SOURCE

    alpaca = datasets.load_alpaca_eval()
    assert list(alpaca.columns) == datasets.COLUMNS
    assert alpaca["split"].eq("test").all() and alpaca["source"].eq(SOURCE).all()
    assert set(alpaca["quality"]) <= {0.0, 0.5, 1.0}
    assert sorted(alpaca["model"].unique()) == sorted(MODELS.values())
    assert alpaca["prompt_id"].nunique() == 805
    assert SOURCE not in set(outcomes["source"])  # non-commercial: never in the training table
    seen = outcomes[outcomes["split"] != "test"]
    assert not set(alpaca["prompt_id"]) & set(seen["prompt_id"])
    rebuilt = datasets.build_alpaca_eval(outcomes)
    assert datasets.table_hash(rebuilt) == datasets.table_hash(alpaca)


def test_alpaca_eval_leaves_out_an_instruction_a_training_prompt_asks(outcomes):
    alpaca = datasets.load_alpaca_eval()
    instruction = alpaca.sort_values("prompt_id")["prompt"].iloc[0]
    extra = outcomes.iloc[:1].assign(
        prompt=f"Answer briefly. {instruction}", prompt_id="copy", split="train"
    )
    rebuilt = datasets.build_alpaca_eval(pd.concat([outcomes, extra], ignore_index=True))
    assert instruction not in set(rebuilt["prompt"])
    assert rebuilt["prompt_id"].nunique() == 804
