"""Popularity and item-kNN, checked by hand on toy data (genrec.models.popularity, genrec.models.itemknn)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from genrec.data.jagged import Jagged
from genrec.models import ItemKNN, ItemKNNConfig, Popularity, PopularityConfig


def J(rows: list[list[int]]) -> Jagged:
    return Jagged.from_lists(rows)


def dense_sim(model: ItemKNN) -> np.ndarray:
    return model.similarity_.toarray()


# ----------------------------------------------------------------------------------------------------------
# Popularity
# ----------------------------------------------------------------------------------------------------------
def test_popularity_scores_equal_training_counts():
    train = J([[1, 2, 2], [2, 3], [4, 2, 1]])
    model = Popularity().fit(train, n_items=5)
    scores = model.score(J([[1], [], [3, 4, 5]]), np.array([1, 2, 3]))
    expected = torch.tensor([0, 2, 4, 1, 1, 0], dtype=torch.float32)
    assert scores.shape == (3, 6)
    for row in scores:
        assert torch.equal(row, expected)


def test_popularity_recent_fraction():
    # lengths 4 -> last ceil(2.0) = 2; length 3 -> last ceil(1.5) = 2; length 1 -> ceil(0.5) = 1
    train = J([[1, 1, 2, 3], [4, 4, 3], [2]])
    model = Popularity(PopularityConfig(recent_fraction=0.5)).fit(train, n_items=4)
    assert model.counts_.tolist() == [0, 0, 2, 2, 1]


def test_popularity_ignores_history_and_user():
    model = Popularity().fit(J([[1, 2], [2]]), n_items=3)
    a = model.score(J([[1, 2, 3]]), np.array([7]))
    b = model.score(J([[]]), np.array([1]))
    assert torch.equal(a, b)


# ----------------------------------------------------------------------------------------------------------
# Item-kNN on a 3-user / 4-item toy
#   u1: 1 2 3    u2: 1 2    u3: 2 4
#   users per item n = {1: 2, 2: 3, 3: 1, 4: 1};  co(1,2)=2 co(1,3)=1 co(2,3)=1 co(2,4)=1, the rest 0
# ----------------------------------------------------------------------------------------------------------
TOY = [[1, 2, 3], [1, 2], [2, 4]]
S12, S13, S23, S24 = 2 / math.sqrt(6), 1 / math.sqrt(2), 1 / math.sqrt(3), 1 / math.sqrt(3)
TOY_SIM = np.array([
    [0, 0, 0, 0, 0],
    [0, 0, S12, S13, 0],
    [0, S12, 0, S23, S24],
    [0, S13, S23, 0, 0],
    [0, 0, S24, 0, 0],
])


def knn(**kw) -> ItemKNN:
    kw = {"shrink": 0.0, "window": None, "history_decay": 1.0, "neighbors": 100, **kw}
    return ItemKNN(ItemKNNConfig(**kw))


def test_itemknn_cosine_by_hand():
    model = knn().fit(J(TOY), n_items=4)
    assert model.similarity_.shape == (5, 5)
    np.testing.assert_allclose(dense_sim(model), TOY_SIM, rtol=1e-6, atol=1e-7)
    assert model.n_items == 4


def test_itemknn_shrink():
    model = knn(shrink=10.0).fit(J(TOY), n_items=4)
    sim = dense_sim(model)
    assert sim[1, 2] == pytest.approx(2 / (math.sqrt(6) + 10))
    assert sim[2, 4] == pytest.approx(1 / (math.sqrt(3) + 10))
    assert sim[1, 4] == 0


def test_itemknn_repeats_count_once_without_window():
    repeated = [[1, 2, 1, 3, 3], [1, 2, 2], [2, 4, 4, 2]]
    np.testing.assert_allclose(dense_sim(knn().fit(J(repeated), 4)), TOY_SIM, rtol=1e-6, atol=1e-7)


def test_itemknn_neighbors_keeps_largest():
    model = knn(neighbors=1).fit(J(TOY), n_items=4)
    sim = model.similarity_.tocsr()
    assert np.diff(sim.indptr).max() <= 1
    # Row 1 keeps item 2 (0.816 > 0.707); row 2 keeps item 1; row 3 keeps item 1; row 4 keeps item 2.
    assert {(i, int(j)) for i in range(5) for j in sim[i].indices} == {(1, 2), (2, 1), (3, 1), (4, 2)}
    assert sim[1, 2] == pytest.approx(S12) and sim[3, 1] == pytest.approx(S13)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("k", [1, 2, 5])
def test_itemknn_neighbors_pruning_random(seed, k):
    rng = np.random.default_rng(seed)
    n_items = 25
    train = J([rng.integers(1, n_items + 1, size=int(rng.integers(1, 10))).tolist() for _ in range(40)])
    full = dense_sim(knn(shrink=1.0).fit(train, n_items))
    pruned = knn(shrink=1.0, neighbors=k).fit(train, n_items).similarity_.tocsr()
    dense = pruned.toarray()
    for i in range(n_items + 1):
        nz = np.flatnonzero(full[i])
        kept = pruned[i].indices
        assert len(kept) == min(k, len(nz))
        np.testing.assert_allclose(dense[i, kept], full[i, kept])  # kept values are untouched
        dropped = np.setdiff1d(nz, kept)
        if len(kept) and len(dropped):
            assert full[i, kept].min() >= full[i, dropped].max()


def test_itemknn_window_pairs():
    train = J([[1, 2, 3, 4]])
    s1 = dense_sim(knn(window=1).fit(train, 4))
    nz1 = {(int(i), int(j)) for i, j in zip(*np.nonzero(s1), strict=True)}
    assert nz1 == {(1, 2), (2, 1), (2, 3), (3, 2), (3, 4), (4, 3)}
    np.testing.assert_allclose(s1[1, 2], 1.0)  # each item occurs once: co / sqrt(1 * 1)
    s2 = dense_sim(knn(window=2).fit(train, 4))
    assert s2[1, 3] == pytest.approx(1.0) and s2[2, 4] == pytest.approx(1.0) and s2[1, 4] == 0
    s3 = dense_sim(knn(window=3).fit(train, 4))
    assert s3[1, 4] == pytest.approx(1.0)
    assert np.all(np.diag(s3) == 0)


def test_itemknn_window_stays_within_a_sequence():
    # The last item of one user and the first of the next are adjacent in the flat values, but never a pair.
    s = dense_sim(knn(window=5).fit(J([[1, 2], [3, 4]]), 4))
    assert s[2, 3] == 0 and s[1, 3] == 0 and s[1, 2] == pytest.approx(1.0) and s[3, 4] == pytest.approx(1.0)


def test_itemknn_window_counts_by_hand():
    # u1: 1 2 3 1   u2: 3 1 ; window 1 -> pairs (1,2) (2,3) (3,1) in u1 and (3,1) in u2; occurrences
    # n1 = 3, n2 = 1, n3 = 2. Cosine: co(1,2)=1 -> 1/sqrt(3); co(1,3)=2 -> 2/sqrt(6); co(2,3)=1 -> 1/sqrt(2).
    s = dense_sim(knn(window=1).fit(J([[1, 2, 3, 1], [3, 1]]), 3))
    assert s[1, 2] == pytest.approx(1 / math.sqrt(3))
    assert s[1, 3] == pytest.approx(2 / math.sqrt(6))
    assert s[2, 3] == pytest.approx(1 / math.sqrt(2))
    np.testing.assert_allclose(s, s.T)


@pytest.mark.parametrize("seed", range(3))
def test_itemknn_long_window_equals_no_window_without_repeats(seed):
    rng = np.random.default_rng(seed)
    train = J([rng.choice(np.arange(1, 31), size=int(rng.integers(1, 9)), replace=False).tolist()
               for _ in range(30)])
    a = dense_sim(knn(shrink=2.0).fit(train, 30))
    b = dense_sim(knn(shrink=2.0, window=8).fit(train, 30))
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_itemknn_score_by_hand_with_decay():
    model = knn(history_decay=0.5).fit(J(TOY), n_items=4)
    scores = model.score(J([[1, 3], [3, 1], []]), np.array([1, 2, 3]))
    assert scores.shape == (3, 5) and scores.dtype == torch.float32
    # History [1, 3]: weight 0.5 on item 1, 1.0 on item 3 (the last one).
    expected = 0.5 * TOY_SIM[1] + 1.0 * TOY_SIM[3]
    np.testing.assert_allclose(scores[0].numpy(), expected, rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(scores[1].numpy(), 1.0 * TOY_SIM[1] + 0.5 * TOY_SIM[3], rtol=1e-6, atol=1e-7)
    assert torch.all(scores[2] == 0)
    # The last item weighs most: item 2 is closer to item 1 (0.816) than to item 3 (0.577).
    assert scores[1, 2] > scores[0, 2]


def test_itemknn_decay_one_is_order_free():
    model = knn(history_decay=1.0).fit(J(TOY), n_items=4)
    scores = model.score(J([[1, 3], [3, 1]]), np.array([1, 2]))
    assert torch.allclose(scores[0], scores[1])
    np.testing.assert_allclose(scores[0].numpy(), TOY_SIM[1] + TOY_SIM[3], rtol=1e-6, atol=1e-7)


def test_itemknn_max_history():
    model = knn(history_decay=0.5, max_history=2).fit(J(TOY), n_items=4)
    s = model.score(J([[4, 2, 1, 3], [1, 3]]), np.array([1, 2]))
    assert torch.equal(s[0], s[1])


def test_itemknn_similarity_is_sparse_and_symmetric_before_pruning():
    model = knn().fit(J(TOY), n_items=4)
    assert sp.issparse(model.similarity_)
    np.testing.assert_allclose(dense_sim(model), dense_sim(model).T)


@pytest.mark.parametrize("cls", [Popularity, ItemKNN])
def test_score_before_fit_raises(cls):
    with pytest.raises(RuntimeError, match="not fitted"):
        cls().score(J([[1]]), np.array([1]))
