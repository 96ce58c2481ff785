"""Shared fixtures: the shipped outcomes table and catalog, a deterministic fake embedder, and
ledger databases (SQLite always; PostgreSQL too where SWITCHBOARD_TEST_POSTGRES_URL is set)."""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from service.catalog import Catalog
from training import datasets


class FakeEmbedder:
    """Deterministic unit vectors from a text hash: fast, and equal texts embed equally."""

    name = "fake-embedder"
    dim = 16

    def encode(self, texts: Sequence[str], show_progress: bool = False) -> np.ndarray:
        rows = []
        for text in texts:
            seed = int(hashlib.sha256(text.encode()).hexdigest()[:8], 16)
            vector = np.random.default_rng(seed).normal(size=self.dim)
            rows.append(vector / np.linalg.norm(vector))
        return np.asarray(rows, dtype=np.float32).reshape(len(rows), self.dim)


BACKENDS = ["sqlite"] + (["postgres"] if os.environ.get("SWITCHBOARD_TEST_POSTGRES_URL") else [])


@pytest.fixture(scope="module", params=BACKENDS)
def database_url(request, tmp_path_factory):
    """A fresh, empty ledger database for the module, on each backend."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path_factory.mktemp('ledger') / 'ledger.db'}"
    else:
        from tests.servers import postgres_database

        with postgres_database(os.environ["SWITCHBOARD_TEST_POSTGRES_URL"]) as url:
            yield url


@pytest.fixture(scope="session")
def outcomes() -> pd.DataFrame:
    return datasets.load()


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    return Catalog.load()


@pytest.fixture
def fake_embedder() -> FakeEmbedder:
    return FakeEmbedder()


@pytest.fixture(scope="session")
def fake_embedder_registered():
    """Let routers trained with the fake embedder load it by name (as the real one is)."""
    from service.routing.learned import EMBEDDERS

    EMBEDDERS[FakeEmbedder.name] = FakeEmbedder
    yield FakeEmbedder
    EMBEDDERS.pop(FakeEmbedder.name, None)


def train_small(work: Path, learners: list[str], sample: int, **more) -> dict:
    """A router version trained on ``sample`` prompts per source and split with the fake
    embedder, written under ``work``, not installed; the training summary."""
    from service.catalog import Catalog
    from service.features import Featurizer
    from training.pipeline import train_version

    return train_version(
        work / "runs",
        work / "installed",
        Catalog.load(),
        learners,
        sample=sample,
        log_mlflow=False,
        featurizer=Featurizer(FakeEmbedder()),
        **more,
    )


@pytest.fixture(scope="session")
def small_router(tmp_path_factory, fake_embedder_registered):
    """A router trained on a small sample of the shipped data with the fake embedder."""
    summary = train_small(
        tmp_path_factory.mktemp("router"), ["factorized", "logistic-regression"], 60, shrinkage=0.0
    )
    return Path(summary["path"]), summary


LEFT_OUT = "openai/gpt-4o-mini"  # a served model the open router has never seen


@pytest.fixture(scope="session")
def open_router(tmp_path_factory, fake_embedder_registered):
    """A factorized router (it can score models it was not fitted on) trained with the fake
    embedder on a small sample of the shipped data without LEFT_OUT's outcomes."""
    work = tmp_path_factory.mktemp("open-router")
    table = datasets.load()
    table[table["model"] != LEFT_OUT].to_parquet(work / "outcomes.parquet", index=False)
    summary = train_small(work, ["factorized"], 60, outcomes_path=work / "outcomes.parquet")
    return Path(summary["path"])


@pytest.fixture
def isolated_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("SWITCHBOARD_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"
