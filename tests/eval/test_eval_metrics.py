"""Per-case ranking metrics: hand-computed values and properties (genrec.eval.metrics)."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genrec.eval.metrics import DEFAULT_KS, metrics_from_ranks, popularity_percentiles

FAST = settings(max_examples=60, deadline=None)


def test_hand_computed_ranks():
    m = metrics_from_ranks(np.array([0, 1, 4, 9, 10, 3415]), ks=(1, 5, 10))
    assert set(m) == {"hr@1", "ndcg@1", "hr@5", "ndcg@5", "hr@10", "ndcg@10", "mrr"}
    np.testing.assert_array_equal(m["hr@1"], [1, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(m["hr@5"], [1, 1, 1, 0, 0, 0])
    np.testing.assert_array_equal(m["hr@10"], [1, 1, 1, 1, 0, 0])
    # NDCG with one relevant item: 1 / log2(rank + 2) when rank < K.
    np.testing.assert_allclose(m["ndcg@1"], [1.0, 0, 0, 0, 0, 0], rtol=0, atol=1e-15)
    np.testing.assert_allclose(m["ndcg@5"], [1.0, 0.6309297535714575, 0.38685280723454163, 0, 0, 0],
                               rtol=0, atol=1e-15)
    ndcg10 = [1.0, 0.6309297535714575, 0.38685280723454163, 0.2890648263178879, 0, 0]
    np.testing.assert_allclose(m["ndcg@10"], ndcg10, rtol=0, atol=1e-15)
    # MRR is not truncated at any K.
    np.testing.assert_allclose(m["mrr"], [1.0, 0.5, 0.2, 0.1, 0.09090909090909091, 0.0002927400468384075],
                               rtol=0, atol=1e-15)
    assert m["hr@10"].mean() == pytest.approx(4 / 6)
    assert m["mrr"].mean() == pytest.approx((1 + 0.5 + 0.2 + 0.1 + 1 / 11 + 1 / 3416) / 6)


def test_default_ks_and_dtypes():
    m = metrics_from_ranks([3])
    assert set(m) == {f"{name}@{k}" for k in DEFAULT_KS for name in ("hr", "ndcg")} | {"mrr"}
    assert all(v.dtype == np.float64 and v.shape == (1,) for v in m.values())


def test_empty_ranks():
    m = metrics_from_ranks(np.array([], dtype=np.int64), ks=(1, 10))
    assert all(len(v) == 0 for v in m.values())


def test_negative_rank_rejected():
    with pytest.raises(ValueError, match=">= 0"):
        metrics_from_ranks(np.array([0, -1]), ks=(1,))


ranks_st = st.lists(st.integers(0, 600), min_size=1, max_size=40).map(np.array)
ks_st = st.lists(st.integers(1, 700), min_size=1, max_size=6, unique=True).map(sorted)


@FAST
@given(ranks=ranks_st, ks=ks_st)
def test_values_in_unit_interval(ranks, ks):
    for name, v in metrics_from_ranks(ranks, ks).items():
        assert np.all((v >= 0) & (v <= 1)), name


@FAST
@given(ranks=ranks_st, ks=ks_st)
def test_monotone_in_k_and_ndcg_below_hr(ranks, ks):
    m = metrics_from_ranks(ranks, ks)
    for k in ks:
        assert np.all(m[f"ndcg@{k}"] <= m[f"hr@{k}"])
        # On a hit, NDCG@K = 1/log2(r+2) >= 1/(r+1) = MRR for every rank r >= 0.
        hit = m[f"hr@{k}"] == 1
        assert np.all(m[f"ndcg@{k}"][hit] >= m["mrr"][hit] - 1e-12)
    for k1, k2 in zip(ks, ks[1:], strict=False):
        assert np.all(m[f"hr@{k1}"] <= m[f"hr@{k2}"])
        assert np.all(m[f"ndcg@{k1}"] <= m[f"ndcg@{k2}"])


@FAST
@given(ranks=ranks_st, ks=ks_st)
def test_hr_is_rank_below_k(ranks, ks):
    m = metrics_from_ranks(ranks, ks)
    for k in ks:
        np.testing.assert_array_equal(m[f"hr@{k}"], (ranks < k).astype(float))
    np.testing.assert_allclose(m["mrr"], 1.0 / (ranks + 1))


def test_popularity_percentiles_hand_computed():
    # counts[0] is padding; items 1..6 have distinct counts.
    pct = popularity_percentiles(np.array([99, 10, 50, 20, 0, 40, 30]))
    np.testing.assert_allclose(pct, [0, 0.2, 1.0, 0.4, 0.0, 0.8, 0.6])


def test_popularity_percentiles_ties_and_tiny():
    np.testing.assert_allclose(popularity_percentiles(np.array([0, 5, 5, 1])), [0, 0.75, 0.75, 0])
    np.testing.assert_allclose(popularity_percentiles(np.array([7, 3])), [0, 0])  # one item: nothing to rank
    np.testing.assert_allclose(popularity_percentiles(np.array([4])), [0])


@FAST
@given(st.lists(st.integers(0, 50), min_size=1, max_size=30))
def test_popularity_percentiles_properties(counts):
    counts = np.array(counts)
    pct = popularity_percentiles(counts)
    assert pct.shape == counts.shape and pct[0] == 0
    assert np.all((pct >= 0) & (pct <= 1))
    c, p = counts[1:], pct[1:]
    # Order-preserving: more interactions never means a lower percentile; equal counts, equal percentiles.
    for i in range(len(c)):
        for j in range(len(c)):
            if c[i] < c[j]:
                assert p[i] < p[j]
            elif c[i] == c[j]:
                assert p[i] == p[j]
