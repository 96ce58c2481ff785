"""Build the routing-outcomes table: every source in datasets/raw/ as one row per (prompt, model).

Steps, in this order: load every source; dedupe by normalized prompt text across sources; assign
each prompt one split; write ``datasets/outcomes.parquet``.

Split rules (fixed and documented in datasets/README.md):

1. A prompt is ``test`` when any source ships it in a test split (every routerbench-subset
   ``*_test.csv`` prompt, LLMRouter's test file) or it is a RouteLLM benchmark prompt
   (evaluation only).
2. A prompt is also ``test`` when it contains the question of a test prompt or its own question
   occurs inside a test prompt (the same benchmark question formatted by another source).
3. Other prompts that a source ships as training data: ``val`` when the first 8 hex digits of
   the prompt id, read as a fraction of 16**8, fall below 0.2, else ``train``.
4. Prompts from sources without a split: by the same fraction, ``test`` below 0.15, ``val``
   below 0.30, else ``train``.
"""

from __future__ import annotations

import hashlib
from collections import Counter, defaultdict
from pathlib import Path

import pandas as pd

from service.config import REPO_ROOT
from training.prompts import MIN_KEY_WORDS, last_block, normalize, prompt_id, question_key
from training.sources import LOADERS, alpaca_eval

RAW_DIR = REPO_ROOT / "datasets" / "raw"
OUTCOMES_PATH = REPO_ROOT / "datasets" / "outcomes.parquet"
ALPACA_EVAL_PATH = REPO_ROOT / "datasets" / "alpaca_eval.parquet"
COLUMNS = [
    "prompt_id",
    "prompt",
    "model",
    "quality",
    "cost_usd",
    "input_tokens",
    "output_tokens",
    "source",
    "task",
    "split",
    "response",
]
VAL_SHARE_OF_TRAIN = 0.2
TEST_SHARE_UNSPLIT = 0.15
VAL_SHARE_UNSPLIT = 0.15
SHINGLE_WORDS = MIN_KEY_WORDS  # every key has at least this many words


def _fraction(pid: str) -> float:
    return int(pid[:8], 16) / 16**8


def load_sources(raw_dir: Path = RAW_DIR, sources: list[str] | None = None) -> pd.DataFrame:
    """All loader rows, concatenated, with ``prompt_id``; empty prompts dropped."""
    frames = [LOADERS[name](raw_dir) for name in (sources or list(LOADERS))]
    rows = pd.concat(frames, ignore_index=True)
    rows = rows[rows["prompt"].fillna("").str.strip() != ""].copy()
    rows["prompt_id"] = rows["prompt"].map(prompt_id)
    return rows


def dedupe(rows: pd.DataFrame) -> pd.DataFrame:
    """One row per (prompt_id, model): quality and cost averaged over repeats, first text kept.

    A prompt shipped in a test split by any source keeps that mark.
    """
    rows = rows.assign(is_test=rows["source_split"].eq("test"))
    grouped = rows.groupby(["prompt_id", "model"], sort=True, dropna=False)
    first = grouped[
        ["prompt", "input_tokens", "output_tokens", "response", "source", "task", "source_split"]
    ].first()
    out = first.join(grouped[["quality", "cost_usd"]].mean()).reset_index()
    tested = rows.groupby("prompt_id")["is_test"].any()
    out["source_split"] = (
        out["prompt_id"].map(tested).map({True: "test"}).fillna(out["source_split"])
    )
    return out


def _containments(keys: dict[str, str], texts: dict[str, str]) -> set[tuple[str, str]]:
    """(key id, text id) pairs where a normalized key occurs inside a text; via word shingles."""
    index: dict[tuple[str, ...], list[str]] = defaultdict(list)
    for key_id, key in keys.items():
        index[tuple(key.split()[:SHINGLE_WORDS])].append(key_id)
    pairs = set()
    for text_id, text in texts.items():
        words = text.split()
        for start in range(max(0, len(words) - SHINGLE_WORDS + 1)):
            for key_id in index.get(tuple(words[start : start + SHINGLE_WORDS]), ()):
                if keys[key_id] in text:
                    pairs.add((key_id, text_id))
    return pairs


def _identifying_keys(prompts: dict[str, str], source_of: dict[str, str]) -> dict[str, str]:
    """Question keys that identify one prompt: no other prompt of the same source has them."""
    keys = {pid: k for pid, p in prompts.items() if (k := question_key(p))}
    counts = Counter((source_of.get(pid), k) for pid, k in keys.items())
    return {pid: k for pid, k in keys.items() if counts[(source_of.get(pid), k)] == 1}


def leaked_prompts(
    test_prompts: dict[str, str],
    other_prompts: dict[str, str],
    source_of: dict[str, str] | None = None,
) -> set[str]:
    """Ids of ``other_prompts`` that ask a test prompt's benchmark question.

    Either the test question occurs anywhere in the other prompt, or the other prompt's question
    occurs in the test prompt's question block (not in its few-shot examples). A key that several
    prompts of one source share ("What is the number of the house ...") identifies no question
    and is skipped; ``source_of`` maps prompt ids to sources for that count.
    """
    source_of = source_of or {}
    test_keys = _identifying_keys(test_prompts, source_of)
    other_keys = _identifying_keys(other_prompts, source_of)
    other_text = {pid: normalize(p) for pid, p in other_prompts.items()}
    test_questions = {pid: normalize(last_block(p)) for pid, p in test_prompts.items()}
    forward = {text_id for _, text_id in _containments(test_keys, other_text)}
    backward = {key_id for key_id, _ in _containments(other_keys, test_questions)}
    return forward | backward


def assign_splits(outcomes: pd.DataFrame) -> pd.Series:
    """The split of every prompt id, by the rules in this module's docstring."""
    prompts = outcomes.drop_duplicates("prompt_id").set_index("prompt_id")
    shipped = prompts["source_split"]
    test_ids = set(shipped.index[shipped.eq("test")])
    leaked = leaked_prompts(
        prompts.loc[sorted(test_ids), "prompt"].to_dict(),
        prompts.loc[sorted(set(prompts.index) - test_ids), "prompt"].to_dict(),
        prompts["source"].to_dict(),
    )
    splits = {}
    for pid, source_split in shipped.items():
        fraction = _fraction(str(pid))
        if pid in test_ids or pid in leaked:
            splits[pid] = "test"
        elif source_split == "train":
            splits[pid] = "val" if fraction < VAL_SHARE_OF_TRAIN else "train"
        elif fraction < TEST_SHARE_UNSPLIT:
            splits[pid] = "test"
        elif fraction < TEST_SHARE_UNSPLIT + VAL_SHARE_UNSPLIT:
            splits[pid] = "val"
        else:
            splits[pid] = "train"
    return pd.Series(splits, name="split")


def build(raw_dir: Path = RAW_DIR) -> pd.DataFrame:
    """The routing-outcomes table from the raw files."""
    outcomes = dedupe(load_sources(raw_dir))
    outcomes["split"] = outcomes["prompt_id"].map(assign_splits(outcomes))
    outcomes = outcomes.astype(
        {"cost_usd": "float64", "input_tokens": "Int64", "output_tokens": "Int64"}
    )
    outcomes = outcomes[COLUMNS].sort_values(["source", "prompt_id", "model"], kind="stable")
    return outcomes.reset_index(drop=True)


def build_alpaca_eval(outcomes: pd.DataFrame, raw_dir: Path = RAW_DIR) -> pd.DataFrame:
    """AlpacaEval's table (training/sources/alpaca_eval.py): evaluation only, kept out of the
    outcomes table because its license is non-commercial. Instructions whose question a
    training or validation prompt of ``outcomes`` asks are left out."""
    rows = alpaca_eval.load(raw_dir)
    rows["prompt_id"] = rows["prompt"].map(prompt_id)
    rows = rows.drop_duplicates(["prompt_id", "model"])
    seen = outcomes[outcomes["split"] != "test"].drop_duplicates("prompt_id")
    sources = seen.set_index("prompt_id")["source"].to_dict()
    asked = leaked_prompts(  # AlpacaEval ids that ask the question of a training prompt
        seen.set_index("prompt_id")["prompt"].to_dict(),
        rows.drop_duplicates("prompt_id").set_index("prompt_id")["prompt"].to_dict(),
        {**sources, **dict.fromkeys(rows["prompt_id"], alpaca_eval.SOURCE)},
    )
    rows = rows[~rows["prompt_id"].isin(asked | set(seen["prompt_id"]))].assign(split="test")
    rows = rows[COLUMNS]
    return rows.sort_values(["prompt_id", "model"], kind="stable").reset_index(drop=True)


def write(outcomes: pd.DataFrame, path: Path = OUTCOMES_PATH) -> str:
    """Write the table as Parquet; returns the SHA-256 of its content."""
    outcomes.to_parquet(path, index=False)
    return table_hash(outcomes)


def table_hash(outcomes: pd.DataFrame) -> str:
    """A content hash of the table that does not depend on the Parquet writer's version."""
    digest = hashlib.sha256()
    hashed = pd.util.hash_pandas_object(outcomes.drop(columns=["response"]), index=False)
    digest.update(hashed.to_numpy().tobytes())
    return digest.hexdigest()


def load(path: Path = OUTCOMES_PATH) -> pd.DataFrame:
    """The routing-outcomes table as built and shipped in datasets/."""
    return pd.read_parquet(path)


def load_alpaca_eval(path: Path = ALPACA_EVAL_PATH) -> pd.DataFrame:
    """AlpacaEval's evaluation-only table, as built and shipped in datasets/."""
    return pd.read_parquet(path)
