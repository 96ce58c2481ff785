"""Shared fixtures: the shipped outcomes table and catalog, and a deterministic fake embedder."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

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


@pytest.fixture(scope="session")
def outcomes() -> pd.DataFrame:
    return datasets.load()


@pytest.fixture(scope="session")
def catalog() -> Catalog:
    return Catalog.load()


@pytest.fixture
def fake_embedder() -> FakeEmbedder:
    return FakeEmbedder()
