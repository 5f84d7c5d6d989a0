"""Exact fast ranking paths (genrec.eval.fast): embedding blocks, one global order, sparse rows. Each must give
what the dense path of the previous release gave (kept here as the reference) on random data with ties, NaN and
infinite scores, seen targets, exclusion on and off, and every K."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from genrec.data.jagged import Jagged
from genrec.data.splits import EvalCases
from genrec.eval import fast, topk
from genrec.eval.fast import EmbeddingScorer, GlobalScorer, SparseScorer, fast_kind
from genrec.eval.metrics import metrics_from_ranks, popularity_percentiles
from genrec.eval.retrieval import mask_seen, rank_cases, target_ranks, topk_deterministic

torch.set_num_threads(1)


def reference_rank_cases(scorer, cases, n_items, ks, exclude_seen, item_counts=None, bs=7):
    """The dense algorithm as it was before the fast paths: one [batch, n_items + 1] matrix per batch."""
    ks = sorted(set(ks))
    max_k = min(max(ks), n_items)
    ranks = np.empty(len(cases), dtype=np.int64)
    unranked = np.zeros(len(cases), dtype=bool)
    top = np.empty((len(cases), max_k), dtype=np.int64)
    seen_targets = 0
    for start in range(0, len(cases), bs):
        rows = np.arange(start, min(start + bs, len(cases)))
        hist = cases.history.take(rows)
        scores = scorer.score(hist, cases.users[rows]).detach().to(torch.float32).clone()
        targets = torch.from_numpy(cases.targets[rows].astype(np.int64))
        scores = torch.nan_to_num(scores, nan=-torch.inf, neginf=-torch.inf, posinf=torch.inf)
        scores[:, 0] = -torch.inf
        excluded = torch.zeros(len(rows), dtype=torch.bool)
        if exclude_seen:
            t_before = scores.gather(1, targets[:, None])[:, 0].clone()
            mask_seen(scores, hist)
            excluded = torch.isinf(scores.gather(1, targets[:, None])[:, 0]) & ~torch.isinf(t_before)
            seen_targets += int(excluded.sum())
        top_ids, top_vals = topk_deterministic(scores[:, 1:], max_k)
        top[rows] = torch.where(top_vals == -torch.inf, 0, top_ids + 1).numpy()
        r = target_ranks(scores[:, 1:], targets - 1)
        ranks[rows] = torch.where(excluded, torch.full_like(r, n_items), r).numpy()
        unranked[rows] = excluded.numpy()
    per_case = metrics_from_ranks(ranks, ks)
    for values in per_case.values():
        values[unranked] = 0.0
    aggregate = {}
    pct = popularity_percentiles(item_counts) if item_counts is not None else None
    for k in ks:
        kk = min(k, max_k)
        aggregate[f"coverage@{k}"] = int(np.count_nonzero(np.unique(top[:, :kk]))) / n_items
        if pct is not None:
            per_case[f"popularity@{k}"] = pct[top[:, :kk]].sum(axis=1) / np.maximum((top[:, :kk] > 0).sum(1), 1)
    return ranks, per_case, aggregate, seen_targets, top


def assert_same(result, reference):
    ranks, per_case, aggregate, seen_targets, _ = reference
    np.testing.assert_array_equal(result.ranks, ranks)
    assert list(result.per_case) == list(per_case)
    for name, values in per_case.items():
        np.testing.assert_array_equal(result.per_case[name], values, err_msg=name)
    assert result.aggregate == aggregate
    assert result.info["targets_in_history_excluded"] == seen_targets


# ------------------------------------------------------------------------------------------------------------------
# Stub scorers with exactly representable scores, so the dense reference and the fast paths see the same numbers
# ------------------------------------------------------------------------------------------------------------------
class EmbeddingStub:
    """Query = sum of the history items' query vectors; item vectors are small integers (many ties), some NaN or
    infinite when asked."""

    def __init__(self, n_items: int, dim: int, seed: int, special: bool):
        rng = np.random.default_rng(seed)
        self.items = torch.from_numpy(rng.integers(-2, 3, (n_items + 1, dim)).astype(np.float32))
        self.queries = torch.from_numpy(rng.integers(-1, 2, (n_items + 1, dim)).astype(np.float32))
        if special:
            some = rng.choice(np.arange(1, n_items + 1), 6, replace=False)
            self.items[some[0], 0] = torch.nan
            self.items[some[1]] = torch.inf
            self.items[some[2], 1] = -torch.inf
            self.queries[some[3], 0] = torch.inf
        self.calls = 0

    def item_table(self) -> torch.Tensor:
        return self.items

    def last_hidden(self, history: Jagged, timestamps=None) -> torch.Tensor:
        self.calls += 1
        q = torch.zeros(len(history), self.items.shape[1])
        q.index_add_(0, torch.from_numpy(history.row_ids()), self.queries[torch.from_numpy(history.values)])
        return q

    def score(self, history: Jagged, users, timestamps=None) -> torch.Tensor:
        return self.last_hidden(history) @ self.item_table().T


class GlobalStub:
    def __init__(self, scores):
        self.scores = torch.as_tensor(np.asarray(scores, dtype=np.float32))

    def global_scores(self) -> torch.Tensor:
        return self.scores

    def score(self, history: Jagged, users, timestamps=None) -> torch.Tensor:
        return self.scores.expand(len(history), -1)


class SparseStub:
    """A sparse score row per user: zeros, negatives, NaN, infinities and duplicate entries included."""

    def __init__(self, table: sp.csr_matrix):
        self.table = table

    def sparse_scores(self, history: Jagged, users, timestamps=None) -> sp.csr_matrix:
        return self.table[np.asarray(users)]

    def score(self, history: Jagged, users, timestamps=None) -> torch.Tensor:
        return torch.from_numpy(self.sparse_scores(history, users).toarray().astype(np.float32))


def random_cases(seed: int, n_items: int, n_cases: int, max_hist: int = 30) -> EvalCases:
    rng = np.random.default_rng(seed)
    lengths = rng.integers(0, max_hist, n_cases)
    values = rng.integers(1, n_items + 1, int(lengths.sum()))
    hist = Jagged.from_lengths(values, lengths)
    targets = rng.integers(1, n_items + 1, n_cases)
    some = np.flatnonzero(lengths > 0)[: n_cases // 4]  # a quarter of the targets were seen
    targets[some] = hist.values[hist.offsets[some]]
    return EvalCases(np.arange(1, n_cases + 1), hist, targets)


def random_sparse(seed: int, n_users: int, n_items: int) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    per_row = rng.integers(0, 25, n_users + 1)
    indptr = np.concatenate([[0], np.cumsum(per_row)])
    indices = rng.integers(0, n_items + 1, indptr[-1])  # column 0 and repeated columns included
    data = rng.choice(np.array([0.0, 0.5, 1.0, 1.0, 2.0, -1.0, -0.0, np.nan, np.inf, -np.inf, 3.0]), indptr[-1])
    return sp.csr_matrix((data, indices, indptr), shape=(n_users + 1, n_items + 1))


KS = (1, 3, 10, 50, 400)


@pytest.fixture(params=["cpu", "any device"])
def top_k_kind(request, monkeypatch):
    """The CPU's sparse running top-K, or the block-by-block top-K that other devices use."""
    if request.param == "any device":
        monkeypatch.setattr(topk, "SPARSE_TOP_K_DEVICES", ())
    return request.param


@pytest.mark.parametrize("exclude_seen", [True, False])
@pytest.mark.parametrize("special", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_embedding_path_equals_dense(exclude_seen, special, seed, top_k_kind):
    n_items = 150 + seed * 37  # blocks of 64 and a shorter last block
    cases = random_cases(seed, n_items, 60)
    scorer = EmbeddingStub(n_items, 3, seed, special)
    counts = np.random.default_rng(seed).integers(0, 9, n_items + 1)
    ref = reference_rank_cases(scorer, cases, n_items, KS, exclude_seen, counts)
    for block, bs in [(64, 16), (128, 60), (4096, 7)]:
        r = rank_cases(scorer, cases, n_items, ks=KS, exclude_seen=exclude_seen, item_counts=counts,
                       item_block=block, batch_size=bs, show_progress=False)
        assert_same(r, ref)
    assert fast_kind(scorer) == "embedding"


@pytest.mark.parametrize("exclude_seen", [True, False])
def test_embedding_long_catalog_uses_the_group_filter(exclude_seen, top_k_kind):
    # Many blocks after the first: candidates come from the maxima of column groups of every size; distinct
    # scores (a wide range) and ties (the small-integer base) both occur.
    n_items = 20000
    cases = random_cases(5, n_items, 40, max_hist=200)
    scorer = EmbeddingStub(n_items, 6, 5, special=False)
    scorer.items *= torch.arange(1, 7, dtype=torch.float32) ** 3
    ks = (1, 5, 20)
    ref = reference_rank_cases(scorer, cases, n_items, ks, exclude_seen)
    r = rank_cases(scorer, cases, n_items, ks=ks, exclude_seen=exclude_seen, item_block=256, batch_size=13,
                   show_progress=False)
    assert_same(r, ref)


def test_embedding_scores_rising_with_id(top_k_kind):
    # Every block beats the running top-K: each block's own best K is merged instead of its candidates.
    n_items = 2000
    cases = random_cases(6, n_items, 30)
    scorer = EmbeddingStub(n_items, 2, 6, special=False)
    scorer.items[:, 0] = torch.arange(n_items + 1, dtype=torch.float32) // 3  # ties in threes
    scorer.queries[:, 0] = 1.0
    scorer.queries[:, 1] = 0.0
    ref = reference_rank_cases(scorer, cases, n_items, (1, 10), True)
    assert_same(rank_cases(scorer, cases, n_items, ks=(1, 10), item_block=512, show_progress=False), ref)


def test_embedding_never_scores_the_whole_catalog_at_once():
    n_items = 500
    cases = random_cases(2, n_items, 20)
    scorer = EmbeddingStub(n_items, 4, 2, special=False)
    seen_shapes = []
    orig = torch.mm

    def spy(a, b, *args, **kw):
        seen_shapes.append(tuple(b.shape))
        return orig(a, b, *args, **kw)

    torch.mm = spy
    try:
        rank_cases(scorer, cases, n_items, ks=(10,), item_block=128, show_progress=False)
    finally:
        torch.mm = orig
    assert seen_shapes and max(s[1] for s in seen_shapes) <= 128


@pytest.mark.parametrize("exclude_seen", [True, False])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_global_path_equals_dense(exclude_seen, seed):
    n_items = 120
    rng = np.random.default_rng(seed)
    scores = rng.integers(0, 6, n_items + 1).astype(np.float32)  # many ties
    if seed > 0:
        scores[rng.choice(np.arange(1, n_items + 1), 12, replace=False)] = [np.nan, np.nan, np.inf, np.inf,
                                                                             -np.inf, -np.inf, -0.0, 0.0, 1e30,
                                                                             -1e30, 2.5, -2.5]
    scores[0] = 1e9  # padding never ranks
    cases = random_cases(seed, n_items, 90, max_hist=130)
    counts = rng.integers(0, 9, n_items + 1)
    scorer = GlobalStub(scores)
    ref = reference_rank_cases(scorer, cases, n_items, KS, exclude_seen, counts)
    for bs in (None, 11):
        r = rank_cases(scorer, cases, n_items, ks=KS, exclude_seen=exclude_seen, item_counts=counts, batch_size=bs,
                       show_progress=False)
        assert_same(r, ref)


@pytest.mark.parametrize("exclude_seen", [True, False])
@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("merge_elements", [1 << 22, 64])
def test_sparse_path_equals_dense(exclude_seen, seed, merge_elements, monkeypatch):
    monkeypatch.setattr(fast, "_MERGE_ELEMENTS", merge_elements)  # 64: the top-K merge takes a few rows at a time
    n_items, n_cases = 80, 70
    cases = random_cases(seed, n_items, n_cases)
    scorer = SparseStub(random_sparse(seed, n_cases, n_items))
    counts = np.random.default_rng(seed).integers(0, 9, n_items + 1)
    ref = reference_rank_cases(scorer, cases, n_items, KS, exclude_seen, counts)
    for bs in (None, 9):
        r = rank_cases(scorer, cases, n_items, ks=KS, exclude_seen=exclude_seen, item_counts=counts, batch_size=bs,
                       show_progress=False)
        assert_same(r, ref)


def test_hand_checked_global_order():
    # Scores of items 1..6: [0.5, 0.9, 0.5, 0.1, 0.9, 0.3]; order 2, 5, 1, 3, 6, 4 (see test_eval_ranking).
    scorer = GlobalStub([-7.0, 0.5, 0.9, 0.5, 0.1, 0.9, 0.3])
    cases = EvalCases(np.arange(1, 6), Jagged.from_lists([[2], [5, 1], [4], [], [3, 6]]), np.array([3, 6, 5, 1, 3]))
    r = rank_cases(scorer, cases, 6, ks=(1, 3), show_progress=False)
    np.testing.assert_array_equal(r.ranks, [2, 2, 1, 2, 6])
    kept = rank_cases(scorer, cases, 6, ks=(1, 3), exclude_seen=False, show_progress=False)
    np.testing.assert_array_equal(kept.ranks, [3, 4, 1, 2, 3])


def test_models_take_their_fast_paths_and_agree_with_dense():
    from genrec.models import ItemKNN, Popularity

    n_items = 60
    rng = np.random.default_rng(4)
    train = Jagged.from_lengths(rng.integers(1, n_items + 1, 900), np.full(60, 15))
    cases = random_cases(4, n_items, 60)
    for model in (Popularity().fit(train, n_items), ItemKNN().fit(train, n_items)):
        assert fast_kind(model) in ("global", "sparse")
        for exclude_seen in (True, False):
            fast = rank_cases(model, cases, n_items, ks=KS, exclude_seen=exclude_seen, show_progress=False)
            dense = rank_cases(model, cases, n_items, ks=KS, exclude_seen=exclude_seen, fast=False,
                               show_progress=False)
            assert_same(fast, (dense.ranks, dense.per_case, dense.aggregate,
                               dense.info["targets_in_history_excluded"], None))


def test_protocols_recognise_methods_not_types():
    assert isinstance(EmbeddingStub(3, 2, 0, False), EmbeddingScorer)
    assert isinstance(GlobalStub([0, 1]), GlobalScorer)
    assert isinstance(SparseStub(sp.csr_matrix((2, 2))), SparseScorer)

    class DenseOnly:
        def score(self, history, users, timestamps=None):
            raise AssertionError

    assert fast_kind(DenseOnly()) is None


def test_fast_paths_check_shapes():
    cases = random_cases(0, 10, 4)
    with pytest.raises(ValueError, match="global_scores"):
        rank_cases(GlobalStub(np.zeros(5)), cases, 10, show_progress=False)
    with pytest.raises(ValueError, match="sparse_scores"):
        rank_cases(SparseStub(sp.csr_matrix((5, 4))), cases, 10, show_progress=False)
    with pytest.raises(ValueError, match="item_table"):
        rank_cases(EmbeddingStub(7, 2, 0, False), cases, 10, show_progress=False)


@pytest.mark.parametrize("name", ["sasrec", "hstu"])
def test_sequential_model_blocks_equal_its_dense_scores(name):
    from genrec.models import HSTU, HSTUConfig, SASRec, SASRecConfig

    n_items = 700
    torch.manual_seed(0)
    cfg = {"dim": 16, "heads": 2, "blocks": 1, "max_len": 20}
    model = (SASRec(SASRecConfig(**cfg), n_items) if name == "sasrec" else HSTU(HSTUConfig(**cfg), n_items)).eval()
    assert fast_kind(model) == "embedding"
    cases = random_cases(9, n_items, 80)
    for exclude_seen in (True, False):
        dense = rank_cases(model, cases, n_items, ks=KS, exclude_seen=exclude_seen, fast=False, show_progress=False)
        fast = rank_cases(model, cases, n_items, ks=KS, exclude_seen=exclude_seen, item_block=192,
                          show_progress=False)
        assert_same(fast, (dense.ranks, dense.per_case, dense.aggregate,
                           dense.info["targets_in_history_excluded"], None))


def test_bootstrap_by_weights_equals_resampling_gather():
    # bootstrap_ci counts how often each user is drawn instead of gathering every draw; same resamples, same
    # intervals up to the rounding of the sums.
    from genrec.eval.stats import _bootstrap_indices, bootstrap_ci

    ranks = np.random.default_rng(0).integers(0, 500, 3000)
    values = metrics_from_ranks(ranks, (1, 10))
    got = bootstrap_ci(values, n_boot=250, seed=3)
    mat = np.stack(list(values.values()))
    means = np.concatenate([mat[:, idx].mean(axis=2) for idx in _bootstrap_indices(mat.shape[1], 250, 3)], axis=1)
    low, high = np.quantile(means, [0.025, 0.975], axis=1)
    for i, name in enumerate(values):
        assert got[name]["ci_low"] == pytest.approx(low[i], abs=1e-12)
        assert got[name]["ci_high"] == pytest.approx(high[i], abs=1e-12)
        assert got[name]["mean"] == values[name].mean()
