"""ContentKNN: cosine similarity of content embeddings to a recency-weighted history mean; scores unseen items."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from genrec.content.store import ItemEmbeddings
from genrec.data.jagged import Jagged
from genrec.data.splits import EvalCases
from genrec.errors import ConfigError, DataError
from genrec.eval import rank_cases
from genrec.models import ContentKNN, ContentKNNConfig, Recommender

N_ITEMS = 6


def embeddings() -> np.ndarray:
    """Row 0 padding (deliberately non-zero: it must be ignored); items 1-2 point along x, 3-4 along y, 5 along
    -x, 6 along x+y. Lengths differ so only cosine (not dot product) gives the expected order."""
    return np.array([[9.0, 9.0], [1.0, 0.0], [5.0, 0.1], [0.0, 2.0], [0.1, 3.0], [-4.0, 0.0], [1.0, 1.0]],
                    dtype=np.float32)


def fitted(**cfg) -> ContentKNN:
    return ContentKNN(ContentKNNConfig(**cfg), embeddings=embeddings()).fit(Jagged.from_lists([[1, 2]]), N_ITEMS)


def test_recommender_interface_and_no_work_in_init():
    model = ContentKNN(embeddings=embeddings())
    assert isinstance(model, Recommender) and model.n_items is None
    assert [a for a in vars(model) if a.endswith("_") and not a.startswith("_")] == []
    assert ContentKNN().config == ContentKNNConfig()
    with pytest.raises(RuntimeError, match="fit"):
        model.score(Jagged.from_lists([[1]]), np.array([1]))


def test_nearest_item_is_known():
    scores = fitted(window=1).score(Jagged.from_lists([[1], [3], [5]]), np.arange(1, 4))
    assert scores.shape == (3, N_ITEMS + 1) and scores.dtype == torch.float32
    assert torch.allclose(scores[0, 1], torch.tensor(1.0)) and torch.allclose(scores[0, 5], torch.tensor(-1.0))
    assert scores[0, 1:].argsort(descending=True)[:2].add(1).tolist() == [1, 2]  # along x first
    assert scores[1, 1:].argsort(descending=True)[:2].add(1).tolist() == [3, 4]  # along y first
    assert scores[2, 1:].argmax().item() + 1 == 5
    assert torch.allclose(scores[0, 6], torch.tensor(2**-0.5))
    assert scores[:, 1:].abs().max() <= 1 + 1e-6


def test_recency_weighted_mean_window_and_decay():
    hist = Jagged.from_lists([[3, 1]])  # y then x: x is the more recent
    s = fitted(window=2, decay=0.5).score(hist, np.array([1]))
    q = np.array([1.0, 0.0]) + 0.5 * np.array([0.0, 1.0])
    q /= np.linalg.norm(q)
    v = embeddings() / np.linalg.norm(embeddings(), axis=1, keepdims=True)
    assert torch.allclose(s[0, 1:], torch.from_numpy((v[1:] @ q).astype(np.float32)), atol=1e-6)
    equal = fitted(window=2, decay=1.0).score(hist, np.array([1]))
    assert torch.allclose(equal[0, 6], torch.tensor(1.0))  # plain mean of x and y points along item 6
    last_only = fitted(window=1).score(hist, np.array([1]))
    assert torch.allclose(last_only, fitted(window=1).score(Jagged.from_lists([[1]]), np.array([1])))


def test_unseen_items_are_scored():
    # Trained on nothing at all; every item still gets a real similarity.
    model = ContentKNN(embeddings=embeddings()).fit(Jagged.from_lists([]), N_ITEMS)
    s = model.score(Jagged.from_lists([[4]]), np.array([1]))
    assert s[0, 3] > 0.99 and s[0, 3] > s[0, 1]
    cases = EvalCases(np.array([1, 2]), Jagged.from_lists([[4], [2]]), np.array([3, 1]))
    r = rank_cases(model, cases, N_ITEMS, ks=(1,), show_progress=False)
    assert r.ranks.tolist() == [0, 0]  # the held-out-like nearest neighbour ranks first (history excluded)


def test_padding_column_and_row_ignored():
    model = fitted()
    s = model.score(Jagged.from_lists([[1, 2], []]), np.array([1, 2]))
    assert torch.isfinite(s).all()
    assert (s[:, 0] < s[:, 1:].min()).all()  # padding never outranks an item
    other = embeddings()
    other[0] = [-100.0, 3.0]
    s2 = ContentKNN(embeddings=other).fit(Jagged.from_lists([]), N_ITEMS).score(Jagged.from_lists([[1, 2], []]),
                                                                               np.array([1, 2]))
    assert torch.equal(s, s2)
    assert torch.equal(s[1, 1:], torch.zeros(N_ITEMS))  # empty history: no evidence, all items 0


def test_shapes_batches_and_determinism():
    model = fitted()
    hist = Jagged.from_lists([[1, 2, 3], [], [6], [5, 5, 4, 3, 2, 1, 6], [6, 5]])
    full = model.score(hist, np.arange(1, 6))
    assert full.shape == (5, N_ITEMS + 1)
    assert model.score(Jagged.from_lists([]), np.zeros(0, dtype=np.int64)).shape == (0, N_ITEMS + 1)
    for i in range(len(hist)):
        assert torch.allclose(model.score(hist.take(np.array([i])), np.array([i + 1]))[0], full[i], atol=1e-6)
    assert torch.equal(full, fitted().score(hist, np.arange(1, 6)))


def test_embedding_sources():
    base = fitted().score(Jagged.from_lists([[2, 4]]), np.array([1]))
    store = ItemEmbeddings(embeddings(), [str(i) for i in range(1, N_ITEMS + 1)])
    for source in (store, torch.from_numpy(embeddings()), embeddings().astype(np.float64)):
        in_fit = ContentKNN().fit(Jagged.from_lists([]), N_ITEMS, embeddings=source)
        assert torch.allclose(in_fit.score(Jagged.from_lists([[2, 4]]), np.array([1])), base, atol=1e-6)
    # Embeddings given to fit replace the constructor's; zero rows (no content) score 0.
    zero = np.zeros_like(embeddings())
    zero[1] = [1.0, 0.0]
    s = ContentKNN(embeddings=embeddings()).fit(Jagged.from_lists([]), N_ITEMS, embeddings=zero)
    assert torch.equal(s.score(Jagged.from_lists([[1]]), np.array([1]))[0, 2:], torch.zeros(N_ITEMS - 1))


def test_errors_name_the_problem():
    with pytest.raises(ConfigError, match="embeddings"):
        ContentKNN().fit(Jagged.from_lists([]), N_ITEMS)
    with pytest.raises(DataError, match=r"\[7, dim\]"):
        ContentKNN(embeddings=embeddings()[:-1]).fit(Jagged.from_lists([]), N_ITEMS)
    bad = embeddings()
    bad[2, 0] = np.nan
    with pytest.raises(DataError, match="NaN"):
        ContentKNN(embeddings=bad).fit(Jagged.from_lists([]), N_ITEMS)


def test_config_validates():
    for field_name, field in ContentKNNConfig.model_fields.items():
        assert field.description, field_name
    for bad in ({"window": 0}, {"decay": 0}, {"decay": 1.5}, {"not_a_field": 1}):
        with pytest.raises(ValidationError):
            ContentKNNConfig(**bad)
    c = ContentKNNConfig(window=3, decay=0.9)
    assert ContentKNNConfig.model_validate_json(c.model_dump_json()) == c
    with pytest.raises(ValidationError):
        c.window = 4
