"""Retrieval evaluation, full-catalog ranking (genrec.eval.retrieval): hand-checked ranks, the deterministic
order, chunking, seen-item exclusion, coverage/popularity, and the sampled-negatives mode."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from genrec.data.jagged import Jagged
from genrec.data.splits import EvalCases
from genrec.eval.retrieval import mask_seen, rank_cases, target_ranks, topk_deterministic


class TableScorer:
    """A fixed score row per dense user id: ``score`` returns ``table[users]``."""

    def __init__(self, table):
        self.table = torch.as_tensor(np.asarray(table, dtype=np.float32))
        self.calls: list[int] = []

    def score(self, history: Jagged, users: np.ndarray, timestamps: Jagged | None = None) -> torch.Tensor:
        assert len(history) == len(users)
        self.calls.append(len(users))
        return self.table[torch.from_numpy(np.asarray(users, dtype=np.int64))]


def make_cases(histories: list[list[int]], targets: list[int], users=None) -> EvalCases:
    users = np.arange(1, len(targets) + 1) if users is None else np.asarray(users)
    return EvalCases(users, Jagged.from_lists(histories), np.asarray(targets, dtype=np.int64))


def ref_order(row: np.ndarray) -> np.ndarray:
    """Item ids sorted by (score desc, id asc) with a stable sort."""
    ids = np.arange(len(row))
    return np.lexsort((ids, -row.astype(np.float64)))


def rank(scorer, cases, n_items, **kw):
    kw.setdefault("show_progress", False)
    return rank_cases(scorer, cases, n_items, **kw)


# ----------------------------------------------------------------------------------------------------------
# A hand-checked 6-item catalog.
#   Base scores of items 1..6: [0.5, 0.9, 0.5, 0.1, 0.9, 0.3]
#   Order (score desc, id asc): 2, 5, 1, 3, 6, 4
# ----------------------------------------------------------------------------------------------------------
N = 6
BASE = [-7.0, 0.5, 0.9, 0.5, 0.1, 0.9, 0.3]  # column 0 (padding) is ignored by rank_cases
HAND_TABLE = [[0.0] * 7, BASE, BASE, BASE, BASE, BASE, [0.0] * 7]  # row 0 unused; user 6 has all scores tied
HAND_HIST = [[2], [5, 1], [4], [], [3, 6], [1]]
HAND_TARGETS = [3, 6, 5, 1, 3, 4]
# Seen kept:     A: 2,5,1,[3] -> 3   B: 2,5,1,3,[6] -> 4   C: 2,[5] -> 1   D: 2,5,[1] -> 2
#                E: 2,5,1,[3] -> 3   F (all tied): 1,2,3,[4] -> 3
HAND_RANKS_KEPT = [3, 4, 1, 2, 3, 3]
# Seen excluded: A: 5,1,[3] -> 2   B: 2,3,[6] -> 2   C: 2,[5] -> 1   D: 2,5,[1] -> 2
#                E: target 3 is in the history -> a miss, rank n_items = 6   F: 2,3,[4] -> 2
HAND_RANKS_EXCLUDED = [2, 2, 1, 2, 6, 2]


def hand_cases() -> EvalCases:
    return make_cases(HAND_HIST, HAND_TARGETS)


def test_hand_ranks_seen_kept():
    r = rank(TableScorer(HAND_TABLE), hand_cases(), N, ks=(1, 3), exclude_seen=False)
    np.testing.assert_array_equal(r.ranks, HAND_RANKS_KEPT)
    assert r.info["targets_in_history_excluded"] == 0
    assert r.info["exclude_seen"] is False
    assert r.info["protocol"] == "full catalog"
    assert r.info["cases"] == 6 and r.info["n_items"] == N and r.info["ks"] == [1, 3]


def test_hand_ranks_seen_excluded():
    r = rank(TableScorer(HAND_TABLE), hand_cases(), N, ks=(1, 3, 10))
    np.testing.assert_array_equal(r.ranks, HAND_RANKS_EXCLUDED)
    assert r.info["targets_in_history_excluded"] == 1
    np.testing.assert_array_equal(r.per_case["hr@1"], [0, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(r.per_case["hr@3"], [1, 1, 1, 1, 0, 1])
    # K larger than the catalog: the excluded target is still a miss.
    np.testing.assert_array_equal(r.per_case["hr@10"], [1, 1, 1, 1, 0, 1])
    np.testing.assert_allclose(r.per_case["ndcg@3"], [0.5, 0.5, 0.6309297535714575, 0.5, 0.0, 0.5])
    np.testing.assert_allclose(r.per_case["ndcg@10"], [0.5, 0.5, 0.6309297535714575, 0.5, 0.0, 0.5])
    np.testing.assert_allclose(r.per_case["mrr"], [1 / 3, 1 / 3, 1 / 2, 1 / 3, 0.0, 1 / 3])


def test_hand_coverage_and_popularity():
    # Top lists with seen items excluded (order 2, 5, 1, 3, 6, 4 minus the history):
    #   A [5, 1, 3]  B [2, 3, 6]  C [2, 5, 1]  D [2, 5, 1]  E [2, 5, 1]  F (tied) [2, 3, 4]
    counts = np.array([0, 10, 50, 20, 0, 40, 30])  # percentiles: 1:.2 2:1 3:.4 4:0 5:.8 6:.6
    r = rank(TableScorer(HAND_TABLE), hand_cases(), N, ks=(1, 2, 3), item_counts=counts)
    assert r.aggregate == pytest.approx({"coverage@1": 2 / 6, "coverage@2": 4 / 6, "coverage@3": 1.0})
    np.testing.assert_allclose(r.per_case["popularity@1"], [0.8, 1.0, 1.0, 1.0, 1.0, 1.0])
    np.testing.assert_allclose(r.per_case["popularity@2"], [0.5, 0.7, 0.9, 0.9, 0.9, 0.7])
    np.testing.assert_allclose(r.per_case["popularity@3"], [1.4 / 3, 2 / 3, 2 / 3, 2 / 3, 2 / 3, 1.4 / 3])
    # Seen kept: every base row recommends [2, 5], the tied row [1, 2].
    kept = rank(TableScorer(HAND_TABLE), hand_cases(), N, ks=(2,), exclude_seen=False)
    assert kept.aggregate == pytest.approx({"coverage@2": 3 / 6})
    assert "popularity@2" not in kept.per_case  # only with item_counts


def test_coverage_never_counts_padding_or_excluded_items():
    # Every user has seen item 4; with K beyond what is left to rank, only items 1..3 are recommended.
    table = [[0, 0, 0, 0, 0], [0, 3, 2, 1, 9], [0, 1, 2, 3, 9]]
    cases = make_cases([[4], [4, 2]], [1, 3])
    counts = np.array([0, 1, 2, 3, 4])  # percentiles 0, 1/3, 2/3, 1
    r = rank(TableScorer(table), cases, 4, ks=(10,), item_counts=counts)
    np.testing.assert_array_equal(r.ranks, [0, 0])
    assert r.aggregate["coverage@10"] == pytest.approx(3 / 4)
    # Popularity of what was recommended: user 1 gets {1, 2, 3}, user 2 {3, 1}.
    np.testing.assert_allclose(r.per_case["popularity@10"], [1 / 3, 1 / 3])


class SharedRowScorer:
    """Returns a view of one stored row (like Popularity): rank_cases must not write into it."""

    def __init__(self, row):
        self.row = torch.tensor(row, dtype=torch.float32)

    def score(self, history: Jagged, users: np.ndarray, timestamps: Jagged | None = None) -> torch.Tensor:
        return self.row.expand(len(history), -1)


def test_scores_are_not_modified_and_padding_ignored():
    # A huge padding score must not take a rank; the scorer's own tensor must not be written to.
    scorer = SharedRowScorer([1e9, 0.1, 0.3, 0.2])
    r = rank(scorer, make_cases([[2], [3]], [3, 1]), 3, ks=(1, 10))
    np.testing.assert_array_equal(r.ranks, [0, 1])
    assert r.aggregate["coverage@10"] == pytest.approx(1.0)
    assert scorer.row.tolist() == pytest.approx([1e9, 0.1, 0.3, 0.2])


def test_nan_scores_rank_last():
    table = [[0.0] * 5, [0.0, float("nan"), -5.0, 1.0, float("nan")]]
    r = rank(TableScorer(table), make_cases([[], [], []], [2, 1, 4], users=[1, 1, 1]), 4, ks=(1,),
             exclude_seen=False)
    # Order: 3 (1.0), 2 (-5), then the NaN items 1, 4 by id (the padding column never takes a rank).
    np.testing.assert_array_equal(r.ranks, [1, 2, 3])


def test_wrong_score_shape_is_an_error():
    table = np.zeros((3, 5), np.float32)  # 4 columns of items + padding, but the catalog has 6 items
    with pytest.raises(ValueError, match="shape"):
        rank(TableScorer(table), make_cases([[1], [2]], [3, 4]), 6, ks=(1,))


def test_empty_cases():
    r = rank(TableScorer(HAND_TABLE), make_cases([], []), N, ks=(1, 5))
    assert len(r.ranks) == 0 and all(len(v) == 0 for v in r.per_case.values())


# ----------------------------------------------------------------------------------------------------------
# Chunking, exclusion, relabelling
# ----------------------------------------------------------------------------------------------------------
def random_problem(seed: int, n_items: int, n_cases: int, ties: bool = False, target_in_history: bool = True):
    rng = np.random.default_rng(seed)
    if ties:
        scores = rng.integers(0, 4, size=(n_cases + 1, n_items)).astype(np.float32)
    else:  # distinct scores within each row
        scores = np.argsort(rng.random((n_cases + 1, n_items)), axis=1).astype(np.float32)
    table = np.zeros((n_cases + 1, n_items + 1), np.float32)
    table[:, 1:] = scores
    targets = rng.integers(1, n_items + 1, size=n_cases)
    hists = []
    for t in targets:
        h = rng.integers(1, n_items + 1, size=int(rng.integers(0, n_items))).tolist()
        if not target_in_history:
            h = [i for i in h if i != t]
        hists.append(h)
    counts = rng.integers(0, 50, size=n_items + 1)
    return table, make_cases(hists, targets.tolist()), counts


@pytest.mark.parametrize("exclude_seen", [True, False])
@pytest.mark.parametrize("ties", [True, False])
def test_chunking_does_not_change_results(exclude_seen, ties):
    table, cases, counts = random_problem(0, n_items=40, n_cases=37, ties=ties)
    ks = (1, 5, 10, 50)
    results = []
    for max_elems, bs in [(1, 256), (41 * 7, 256), (1 << 24, 256), (1 << 24, 5)]:
        scorer = TableScorer(table)
        results.append(rank(scorer, cases, 40, ks=ks, exclude_seen=exclude_seen, item_counts=counts,
                            max_batch_elements=max_elems, batch_size=bs))
        assert max(scorer.calls) <= max(1, min(bs, max_elems // 41))
    for other in results[1:]:
        np.testing.assert_array_equal(other.ranks, results[0].ranks)
        assert other.per_case.keys() == results[0].per_case.keys()
        for k in results[0].per_case:
            np.testing.assert_array_equal(other.per_case[k], results[0].per_case[k])
        assert other.aggregate == results[0].aggregate
        assert other.info == results[0].info


def test_exclusion_matches_reference():
    table, cases, _ = random_problem(1, n_items=25, n_cases=30, ties=True)
    r = rank(TableScorer(table), cases, 25, ks=(1, 10))
    in_hist = 0
    for i in range(len(cases)):
        hist, target = set(cases.history.row(i).tolist()), int(cases.targets[i])
        if target in hist:
            in_hist += 1
            assert r.ranks[i] == 25
            assert r.per_case["hr@10"][i] == 0 and r.per_case["mrr"][i] == 0
            continue
        row = table[i + 1].astype(np.float64)
        order = [j for j in ref_order(row) if j != 0 and j not in hist]
        assert r.ranks[i] == order.index(target)
    assert in_hist > 0
    assert r.info["targets_in_history_excluded"] == in_hist


def test_mask_seen_in_place():
    scores = torch.zeros(3, 5)
    mask_seen(scores, Jagged.from_lists([[1, 1, 4], [], [2]]))
    expected = torch.zeros(3, 5)
    expected[0, 1] = expected[0, 4] = expected[2, 2] = -torch.inf
    assert torch.equal(scores, expected)
    mask_seen(scores, Jagged.from_lists([[], [], []]))  # no-op
    assert torch.equal(scores, expected)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_items=st.integers(2, 30), n_cases=st.integers(1, 12),
       exclude_seen=st.booleans())
def test_invariant_to_item_relabelling(seed, n_items, n_cases, exclude_seen):
    table, cases, counts = random_problem(seed, n_items, n_cases, ties=False)
    perm = np.concatenate([[0], np.random.default_rng(seed + 1).permutation(n_items) + 1])  # old id -> new id
    new_table = np.empty_like(table)
    new_table[:, perm] = table
    new_counts = np.empty_like(counts)
    new_counts[perm] = counts
    new_hist = Jagged(perm[cases.history.values], cases.history.offsets)
    new_cases = EvalCases(cases.users, new_hist, perm[cases.targets])
    kw = {"ks": (1, 3, 10, 50), "exclude_seen": exclude_seen}
    a = rank(TableScorer(table), cases, n_items, item_counts=counts, **kw)
    b = rank(TableScorer(new_table), new_cases, n_items, item_counts=new_counts, **kw)
    np.testing.assert_array_equal(a.ranks, b.ranks)
    for k in a.per_case:
        np.testing.assert_allclose(a.per_case[k], b.per_case[k], err_msg=k)
    assert a.aggregate == pytest.approx(b.aggregate)


# ----------------------------------------------------------------------------------------------------------
# The deterministic order: topk_deterministic and target_ranks against a stable sort on (-score, id)
# ----------------------------------------------------------------------------------------------------------
score_elems = st.one_of(st.sampled_from([-np.inf, 0.0, 1.0, 2.0, 0.5]),
                        st.floats(-100, 100, width=32, allow_nan=False, allow_infinity=False))
score_mats = arrays(np.float32, shape=st.tuples(st.integers(1, 5), st.integers(1, 25)), elements=score_elems)


@settings(max_examples=80, deadline=None)
@given(scores=score_mats, k=st.integers(1, 30))
def test_topk_deterministic_matches_stable_sort(scores, k):
    ids, vals = topk_deterministic(torch.from_numpy(scores), k)
    kk = min(k, scores.shape[1])
    assert ids.shape == vals.shape == (scores.shape[0], kk)
    for r in range(scores.shape[0]):
        expected = ref_order(scores[r])[:kk]
        np.testing.assert_array_equal(ids[r].numpy(), expected)
        np.testing.assert_array_equal(vals[r].numpy(), scores[r][expected])


def test_topk_deterministic_ties_and_inf_explicit():
    s = torch.tensor([[1.0, 3.0, 3.0, -torch.inf, 3.0, 2.0],
                      [-torch.inf] * 6,
                      [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],
                      [-torch.inf, 5.0, -torch.inf, -torch.inf, 1.0, -torch.inf]])
    ids, vals = topk_deterministic(s, 4)
    assert ids.tolist() == [[1, 2, 4, 5], [0, 1, 2, 3], [0, 1, 2, 3], [1, 4, 0, 2]]
    assert vals[0].tolist() == [3.0, 3.0, 3.0, 2.0]
    assert vals[3].tolist() == [5.0, 1.0, -np.inf, -np.inf]


@settings(max_examples=80, deadline=None)
@given(scores=score_mats, data=st.data())
def test_target_ranks_match_stable_sort(scores, data):
    b, n = scores.shape
    targets = np.array(data.draw(st.lists(st.integers(0, n - 1), min_size=b, max_size=b)))
    got = target_ranks(torch.from_numpy(scores), torch.from_numpy(targets)).numpy()
    for r in range(b):
        assert got[r] == list(ref_order(scores[r])).index(targets[r])


def test_target_ranks_agree_with_topk_position():
    rng = np.random.default_rng(3)
    scores = torch.from_numpy(rng.integers(0, 3, size=(8, 12)).astype(np.float32))
    ids, _ = topk_deterministic(scores, 12)
    for t in range(12):
        r = target_ranks(scores, torch.full((8,), t))
        for row in range(8):
            assert ids[row, r[row]] == t


# ----------------------------------------------------------------------------------------------------------
# Sampled negatives: only behind a flag, labelled, with a warning
# ----------------------------------------------------------------------------------------------------------
def sampled(scorer, cases, n_items, n_neg, **kw):
    with pytest.warns(UserWarning, match="sampled"):
        return rank(scorer, cases, n_items, ks=kw.pop("ks", (1, 5, 10)), sampled_negatives=n_neg, **kw)


def test_sampled_ranks_bounded_and_labelled():
    table, cases, _ = random_problem(5, n_items=50, n_cases=40, ties=True, target_in_history=False)
    r = sampled(TableScorer(table), cases, 50, 10)
    assert r.ranks.min() >= 0 and r.ranks.max() <= 10
    assert "sampled" in r.info["protocol"] and "10" in r.info["protocol"]
    assert r.info["protocol"] != "full catalog"
    full = rank(TableScorer(table), cases, 50, ks=(1, 5, 10))
    assert r.per_case["hr@10"].mean() >= full.per_case["hr@10"].mean()  # sampled numbers flatter the model


def test_sampled_never_uses_target_as_negative():
    # The target has the lowest score of all rankable items: every kept negative beats it, so its rank is
    # exactly n_neg; a draw of the target itself would take a slot without beating it.
    n_items, n_neg = 30, 10
    rng = np.random.default_rng(0)
    targets = rng.integers(1, n_items + 1, size=25)
    table = np.zeros((26, n_items + 1), np.float32)
    table[:, 1:] = rng.random((26, n_items)) + 1.0
    table[np.arange(1, 26), targets] = 0.0
    hists = [[int(i) for i in rng.choice(np.setdiff1d(np.arange(1, n_items + 1), [t]), 5)] for t in targets]
    r = sampled(TableScorer(table), make_cases(hists, targets.tolist()), n_items, n_neg)
    np.testing.assert_array_equal(r.ranks, np.full(25, n_neg))


def test_sampled_never_uses_history_items_as_negatives():
    # History items score above the target, which beats every other item: with seen items excluded, the
    # target ranks first among the negatives.
    n_items = 30
    rng = np.random.default_rng(1)
    hists = [rng.choice(np.arange(1, n_items + 1), 8, replace=False) for _ in range(20)]
    targets = [int(np.setdiff1d(np.arange(1, n_items + 1), h)[0]) for h in hists]
    table = np.zeros((21, n_items + 1), np.float32)
    table[:, 1:] = rng.random((21, n_items))
    for u, (h, t) in enumerate(zip(hists, targets, strict=True), start=1):
        table[u, h] = 100.0
        table[u, t] = 50.0
    cases = make_cases([h.tolist() for h in hists], targets)
    r = sampled(TableScorer(table), cases, n_items, 12)
    np.testing.assert_array_equal(r.ranks, np.zeros(20))
    kept = sampled(TableScorer(table), cases, n_items, 12, exclude_seen=False)
    assert kept.ranks.max() > 0  # it is the exclusion that keeps the history out


def test_sampled_deterministic_for_seed():
    table, cases, _ = random_problem(7, n_items=40, n_cases=30, ties=False, target_in_history=False)
    a = sampled(TableScorer(table), cases, 40, 5, seed=3)
    b = sampled(TableScorer(table), cases, 40, 5, seed=3)
    np.testing.assert_array_equal(a.ranks, b.ranks)


def test_sampled_target_in_history_is_a_miss():
    table, cases, _ = random_problem(8, n_items=20, n_cases=30, ties=False, target_in_history=True)
    r = sampled(TableScorer(table), cases, 20, 5)
    in_hist = np.array([int(cases.targets[i]) in cases.history.row(i) for i in range(len(cases))])
    assert in_hist.any()
    assert np.all(r.ranks[in_hist] == 20) and np.all(r.ranks[~in_hist] <= 5)
    assert np.all(r.per_case["mrr"][in_hist] == 0)
    assert r.info["targets_in_history_excluded"] == int(in_hist.sum())


def test_full_catalog_emits_no_warning():
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rank(TableScorer(HAND_TABLE), hand_cases(), N, ks=(1,))
