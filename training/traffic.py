"""Logged traffic as data: the ledger's auto-routed requests with their feedback, and the same
as routing outcomes (the table the public data is in), for off-policy evaluation and retraining.

A logged request is usable when it was routed by ``switchboard/auto``, answered, and has its
routing record (candidates with P(pass) and expected cost, the served model, its propensity).
Its quality is the mean of its feedback scores (user ratings and judge grades); prompts exist
only where the service stored them (``SWITCHBOARD_STORE_CONTENT=true``), and only requests with
a prompt and feedback become training outcomes.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import pandas as pd
import sqlalchemy as sa

from service.config import to_sync_url
from service.migrate import upgrade
from service.prompts import normalize, prompt_id
from service.schemas import AUTO_MODEL
from service.tables import feedback, requests
from training.sources import EVALUATION_ONLY

TRAFFIC_SOURCE = "traffic"
TEST_SHARE, VAL_SHARE = 0.15, 0.15


def logged_requests(
    database_url: str, since: datetime | None = None, auto_only: bool = True
) -> pd.DataFrame:
    """One row per usable auto-routed request, with ``quality`` (mean feedback, or NaN); with
    ``auto_only`` off, answered requests that named their model too (training data from
    pass-through traffic: no propensities, so never for off-policy estimates)."""
    upgrade(database_url)  # a fresh database has no tables yet
    engine = sa.create_engine(to_sync_url(database_url))
    auto = requests.c.requested_model.is_(None) | (requests.c.requested_model == AUTO_MODEL)
    where = (requests.c.status == "ok") & requests.c.served_model.is_not(None)
    if auto_only:
        where = where & auto & requests.c.candidates.is_not(None)
    else:
        where = where & (requests.c.endpoint == "chat.completions")
    if since is not None:
        where = where & (requests.c.created_at >= since)
    query = sa.select(
        requests.c.id,
        requests.c.created_at,
        requests.c.tenant_id,
        requests.c.prompt,
        requests.c.router,
        requests.c.router_version,
        requests.c.arm,
        requests.c.threshold,
        requests.c.answer_value_usd,
        requests.c.candidates,
        requests.c.chosen_model,
        requests.c.served_model,
        requests.c.propensity,
        requests.c.explored,
        requests.c.cost_usd,
        requests.c.prompt_tokens,
        requests.c.completion_tokens,
    ).where(where)
    scores = sa.select(
        feedback.c.request_id, sa.func.avg(feedback.c.score).label("quality")
    ).group_by(feedback.c.request_id)
    with engine.connect() as conn:
        rows = pd.DataFrame(conn.execute(query).mappings().all())
        rated = pd.DataFrame(conn.execute(scores).mappings().all())
    engine.dispose()
    if rows.empty:
        return rows
    if rated.empty:
        rows["quality"] = float("nan")
    else:
        rows = rows.merge(rated.rename(columns={"request_id": "id"}), on="id", how="left")
    if not auto_only:
        return rows.reset_index(drop=True)
    # a fallback served another model than the chosen one: its propensity is not known
    return rows[rows["served_model"] == rows["chosen_model"]].reset_index(drop=True)


def _split(pid: str) -> str:
    fraction = int(pid[:8], 16) / 16**8
    return (
        "test" if fraction < TEST_SHARE else "val" if fraction < TEST_SHARE + VAL_SHARE else "train"
    )


def split_of(prompt: str) -> str:
    """The traffic split of a prompt (``train``, ``val`` or ``test``), by the hash of its
    normalized text: the same prompt always lands in the same split."""
    return _split(prompt_id(prompt))


def traffic_outcomes(logged: pd.DataFrame) -> pd.DataFrame:
    """Rated, stored-prompt requests as routing outcomes (``source`` = ``traffic``)."""
    columns = [
        "prompt_id", "prompt", "model", "quality", "cost_usd", "input_tokens",
        "output_tokens", "source", "task", "split", "response",
    ]  # fmt: skip
    if logged.empty or "prompt" not in logged:
        return pd.DataFrame(columns=columns)
    usable = logged[logged["prompt"].notna() & logged["quality"].notna()].copy()
    if usable.empty:
        return pd.DataFrame(columns=columns)
    usable["prompt"] = usable["prompt"].map(normalize)
    out = pd.DataFrame(
        {
            "prompt_id": usable["prompt"].map(prompt_id),
            "prompt": usable["prompt"],
            "model": usable["served_model"],
            "quality": usable["quality"].astype(float).clip(0, 1),
            "cost_usd": usable["cost_usd"].astype(float),
            "input_tokens": usable["prompt_tokens"].astype("Int64"),
            "output_tokens": usable["completion_tokens"].astype("Int64"),
            "source": TRAFFIC_SOURCE,
            "task": TRAFFIC_SOURCE,
            "response": None,
        }
    )
    out["split"] = out["prompt_id"].map(_split)
    # one row per (prompt, model): the mean of its ratings
    grouped = out.groupby(["prompt_id", "model"], as_index=False).agg(
        {c: "first" for c in columns if c not in ("prompt_id", "model", "quality", "cost_usd")}
        | {"quality": "mean", "cost_usd": "mean"}
    )
    return grouped[columns]


def held_out_ids(public: pd.DataFrame, evaluation_only: Sequence[pd.DataFrame] = ()) -> set[str]:
    """The ids (of the normalized text) of every held-out prompt: the validation and test
    prompts of every source in ``public``, every prompt of an evaluation-only source
    (``training.sources.EVALUATION_ONLY``: RouteLLM, zeroeval's GSM8K) and every prompt of the
    ``evaluation_only`` tables (AlpacaEval)."""
    held = public["split"].isin(["val", "test"]) | public["source"].isin(EVALUATION_ONLY)
    ids: set[str] = set()
    for table in (public[held], *evaluation_only):
        prompts = table.drop_duplicates("prompt_id")
        ids |= set(prompts["prompt_id"]) | set(prompts["prompt"].map(prompt_id))
    return ids


def held_out_removed(
    traffic: pd.DataFrame,
    public: pd.DataFrame,
    evaluation_only: Sequence[pd.DataFrame] = (),
    held_out: set[str] | None = None,
) -> pd.DataFrame:
    """Traffic rows whose prompt (by normalized text) is in no held-out set (``held_out_ids``,
    or the given ``held_out``): a choice or a gate must not reward memorized held-out
    prompts."""
    if traffic.empty:
        return traffic
    held_out = held_out_ids(public, evaluation_only) if held_out is None else held_out
    ids = traffic["prompt"].map(prompt_id)  # the text decides, not an id a file gives
    return traffic[~ids.isin(held_out)].reset_index(drop=True)


def gate_requests(logged: pd.DataFrame, held_out: set[str]) -> pd.DataFrame:
    """The logged requests of the traffic's own test split: rated, with a stored prompt whose
    split (``split_of``) is ``test`` and that is in no held-out set (those are in the public
    test sets already)."""
    if logged.empty or "prompt" not in logged:
        return logged.iloc[:0]
    usable = logged[logged["prompt"].notna() & logged["quality"].notna()]
    ids = usable["prompt"].map(prompt_id)
    chosen = (ids.map(_split) == "test") & ~ids.isin(held_out)
    return usable[chosen].reset_index(drop=True)
