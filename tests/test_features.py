import numpy as np
import pytest

from service.features import (
    EMBED_HEAD_CHARS,
    EMBED_TAIL_CHARS,
    TEXT_FEATURE_NAMES,
    EmbeddingCache,
    Featurizer,
    MiniLMEmbedder,
    embedding_text,
    text_features,
)


def test_text_features_have_one_named_column_each():
    rows = text_features(["Hi", "def f(x):\n    return x ** 2  # why? explain step by step"])
    assert rows.shape == (2, len(TEXT_FEATURE_NAMES))
    code, reasoning = (
        TEXT_FEATURE_NAMES.index("code_cues"),
        TEXT_FEATURE_NAMES.index("reasoning_cues"),
    )
    assert rows[1, code] > rows[0, code] == 0
    assert rows[1, reasoning] > 0


def test_long_prompts_are_embedded_from_head_and_tail():
    short = "a question"
    assert embedding_text(short) == short
    long = "H" * 5000 + "the question at the end?"
    text = embedding_text(long)
    assert text.startswith("H" * EMBED_HEAD_CHARS) and text.endswith("the question at the end?")
    assert len(text) < EMBED_HEAD_CHARS + EMBED_TAIL_CHARS + 10


class CountingEmbedder:
    name = "counting"
    dim = 3

    def __init__(self):
        self.seen: list[str] = []

    def encode(self, texts, show_progress=False):
        self.seen += list(texts)
        return np.array([[len(t), 1.0, 0.0] for t in texts], dtype=np.float32)


def test_cache_embeds_each_text_once_across_calls(tmp_path):
    embedder, cache = CountingEmbedder(), EmbeddingCache(tmp_path)
    first = cache.encode(embedder, ["a", "bb", "a"])
    second = EmbeddingCache(tmp_path).encode(embedder, ["bb", "ccc"])
    assert sorted(embedder.seen) == ["a", "bb", "ccc"]  # each text embedded once
    np.testing.assert_array_equal(first[1], second[0])


def test_featurizer_joins_embedding_and_text_features(fake_embedder):
    features = Featurizer(fake_embedder).transform(["one", "two"])
    assert features.shape == (2, fake_embedder.dim + len(TEXT_FEATURE_NAMES))


@pytest.mark.slow
def test_minilm_loads_offline_and_embeds_similar_prompts_closer():
    vectors = MiniLMEmbedder(threads=1).encode(
        ["How do I sort a list in Python?", "Sorting a Python list", "The capital of France"]
    )
    assert vectors.shape == (3, 384)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, rtol=1e-5)
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.3


@pytest.mark.slow
def test_static_table_holds_minilm_embedding_of_each_word_piece(tmp_path):
    from service.features import StaticMiniLMEmbedder

    static = StaticMiniLMEmbedder(directory=tmp_path)
    full = MiniLMEmbedder(threads=1).encode(["hello", "routing"])
    np.testing.assert_allclose(static.encode(["hello", "routing"]), full, atol=1e-4)
    assert static.table_path().exists()
    vectors = static.encode(["How do I sort a list in Python?", "Sorting a Python list", "Paris"])
    assert vectors[0] @ vectors[1] > vectors[0] @ vectors[2] + 0.2
    assert static.encode([""]).tolist() == [[0.0] * 384]
