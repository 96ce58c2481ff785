"""Recorded traffic through a running service: held-out benchmark prompts that every model
answered (so the replay upstream can serve any routing choice), sent with the official
``openai`` client, optionally rated with the benchmark's own grade of the answer that came back.
Used by ``make demo``, the closed-loop simulation test and the notebooks."""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import pandas as pd

from service.prompts import prompt_id
from training.train import DEFAULT_BAR

SOURCE = "routerbench-subset"


@dataclass
class Served:
    prompt: str
    model: str
    cost_usd: float | None
    request_id: str
    quality: float  # the benchmark's grade of the answer that was served


def recorded_traffic(
    outcomes: pd.DataFrame, n: int, seed: int = 0, source: str = SOURCE, split: str = "test"
) -> tuple[list[str], pd.DataFrame]:
    """``n`` prompts of ``source``'s ``split`` that every model answered, and their graded
    outcomes indexed by (prompt_id, model). Held-out (test) prompts to measure a router on;
    training prompts for traffic that is to become training data (retraining leaves out
    traffic on held-out prompts)."""
    test = outcomes[(outcomes["source"] == source) & (outcomes["split"] == split)]
    answered = test[test["response"].fillna("").str.strip().ne("")]
    per_prompt = answered.groupby("prompt_id")["model"].nunique()
    complete = per_prompt[per_prompt == test["model"].nunique()].index.to_series()
    ids = complete.sample(n=min(n, len(complete)), random_state=seed)
    rows = test[test["prompt_id"].isin(set(ids))]
    prompts = rows.drop_duplicates("prompt_id").set_index("prompt_id").loc[ids, "prompt"]
    return list(prompts), rows.set_index(["prompt_id", "model"])


def best_single_model(graded: pd.DataFrame) -> str:
    """The model with the highest pass rate on these prompts."""
    passed = (graded["quality"] >= DEFAULT_BAR).groupby(level="model").mean()
    return str(passed.idxmax())


def send(
    url: str,
    key: str,
    prompts: Sequence[str],
    graded: pd.DataFrame,
    model: str = "switchboard/auto",
    extra_body: dict[str, object] | None = None,
    rate: bool = False,
    concurrency: int = 8,
) -> list[Served]:
    """Send every prompt once; with ``rate``, post the served answer's grade as feedback."""
    import openai

    client = openai.OpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0, timeout=60)
    auth = {"Authorization": f"Bearer {key}"}

    def one(prompt: str) -> Served:
        raw = client.chat.completions.with_raw_response.create(
            model=model, messages=[{"role": "user", "content": prompt}], extra_body=extra_body
        )
        completion = raw.parse()
        request_id = raw.headers["x-switchboard-request-id"]
        quality = float(graded.loc[(prompt_id(prompt), completion.model), "quality"])
        if rate:
            response = httpx.post(
                f"{url}/v1/feedback",
                json={"request_id": request_id, "score": quality},
                headers=auth,
            )
            response.raise_for_status()
        cost = getattr(completion.usage, "cost", None)
        return Served(prompt, completion.model, cost, request_id, quality)

    with ThreadPoolExecutor(concurrency) as pool:
        return list(pool.map(one, prompts))
