"""Pointwise ranking metrics, calibration, task reports and the paired GAUC test (genrec.eval.ctr)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from genrec.eval.ctr import (
    auc,
    calibration_ratio,
    ece,
    gauc,
    log_loss,
    mae,
    mse,
    normalized_entropy,
    paired_gauc,
    pearson,
    task_report,
)


def brute_auc(y: np.ndarray, s: np.ndarray) -> float:
    pos, neg = s[y == 1], s[y == 0]
    diff = pos[:, None] - neg[None, :]
    return float(((diff > 0) + 0.5 * (diff == 0)).mean())


def ctr_data(n_users: int, per_user: int, seed: int, signal: float = 1.0):
    """Users with per-user offsets, a latent score and clicks drawn from it."""
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(n_users), per_user)
    z = rng.normal(size=len(users)) + rng.normal(size=n_users)[users]
    labels = (rng.random(len(users)) < 1 / (1 + np.exp(-signal * z))).astype(np.int64)
    return users, labels, z, rng


# ---------------------------------------------------------------------------------------------------- AUC / GAUC


def test_auc_with_ties_by_hand():
    # Positives scored 0.8 and 0.5, negatives 0.5 and 0.2: pairs (0.8>0.5, 0.8>0.2, 0.5=0.5, 0.5>0.2) -> 3.5 / 4.
    assert auc([1, 1, 0, 0], [0.8, 0.5, 0.5, 0.2]) == pytest.approx(0.875)
    assert auc([1, 0, 1, 0], [1.0, 1.0, 1.0, 1.0]) == pytest.approx(0.5)  # all tied
    assert auc([0, 1], [0.1, 0.9]) == 1.0
    assert math.isnan(auc([1, 1, 1], [0.1, 0.2, 0.3]))
    assert math.isnan(auc([], []))


def test_auc_rejects_bad_input():
    with pytest.raises(ValueError, match="same length"):
        auc([1, 0], [0.1])
    with pytest.raises(ValueError, match="0 or 1"):
        auc([1, 2], [0.1, 0.2])
    with pytest.raises(ValueError, match="finite"):
        auc([1, 0], [0.1, float("nan")])


def test_gauc_weights_by_impressions_and_skips_single_class_users():
    users = ["a"] * 4 + ["b"] * 2 + ["c"] * 3 + ["d"] * 2
    labels = [1, 0, 0, 0, 1, 0, 1, 1, 1, 0, 0]
    scores = [0.9, 0.1, 0.5, 0.95, 0.2, 0.7, 0.3, 0.3, 0.3, 0.4, 0.4]
    value, per_user = gauc(users, labels, scores)
    # a: positive above 2 of 3 negatives -> 2/3 (4 rows); b: 0 (2 rows); c all positive, d all negative: skipped.
    assert per_user.user.tolist() == ["a", "b"]
    np.testing.assert_allclose(per_user.auc, [2 / 3, 0.0])
    np.testing.assert_allclose(per_user.weight, [4, 2])
    assert per_user.n_users == 2 and per_user.n_skipped == 2
    assert value == pytest.approx((4 * 2 / 3 + 2 * 0.0) / 6)


def test_gauc_nan_when_no_user_has_both_classes():
    value, per_user = gauc([1, 1, 2], [1, 1, 0], [0.1, 0.2, 0.3])
    assert math.isnan(value) and per_user.n_users == 0 and per_user.n_skipped == 2


def test_gauc_matches_per_user_loop_on_random_data():
    rng = np.random.default_rng(3)
    users = rng.choice([5, 17, 99, 1000, 123456], size=300)  # sparse ids take the np.unique path
    labels = rng.integers(0, 2, 300)
    scores = rng.integers(0, 5, 300).astype(float)  # many ties within users
    value, per_user = gauc(users, labels, scores)
    for u, a, w in zip(per_user.user, per_user.auc, per_user.weight, strict=True):
        m = users == u
        assert a == pytest.approx(brute_auc(labels[m], scores[m])) and w == m.sum()
    assert value == pytest.approx(np.average(per_user.auc, weights=per_user.weight))


@settings(max_examples=60, deadline=None)
@given(data=st.lists(st.tuples(st.integers(0, 1), st.integers(-3, 3)), min_size=2, max_size=40))
def test_auc_properties(data):
    y = np.array([d[0] for d in data])
    s = np.array([d[1] for d in data], dtype=float) / 2
    assume(0 < y.sum() < len(y))
    a = auc(y, s)
    assert a == pytest.approx(brute_auc(y, s))
    assert auc(y, 1 - s) == pytest.approx(1 - a)
    assert auc(y, np.exp(s) * 3 + 7) == pytest.approx(a)  # strictly increasing transforms keep the order


@settings(max_examples=30, deadline=None)
@given(seed=st.integers(0, 10_000))
def test_paired_gauc_model_against_itself(seed):
    users, labels, z, _ = ctr_data(12, 6, seed)
    out = paired_gauc(users, labels, z, z.copy(), n_boot=50, seed=seed, n_perm=200)
    assert out["gauc"]["diff"] == 0 and out["gauc"]["p_value"] == 1.0
    assert out["gauc"]["ci_low"] == out["gauc"]["ci_high"] == 0
    assert out["auc"]["diff"] == 0 and out["auc"]["ci_low"] == out["auc"]["ci_high"] == 0


# ---------------------------------------------------------------------------------------------------- paired test


def test_paired_gauc_detects_a_clearly_better_model():
    users, labels, z, rng = ctr_data(200, 20, 0)
    good, noisy = z, z + rng.normal(scale=2.0, size=len(z))
    out = paired_gauc(users, labels, noisy, good, n_boot=300, seed=1, n_perm=2000)
    g = out["gauc"]
    assert g["b"] > g["a"] and g["diff"] == pytest.approx(g["b"] - g["a"])
    assert g["p_value"] < 0.05 and 0 < g["ci_low"] < g["diff"] < g["ci_high"]
    assert 0 < out["auc"]["ci_low"] < out["auc"]["diff"] < out["auc"]["ci_high"]
    assert out["users_better"] > out["users_worse"]
    # GAUC difference equals the difference of the two models' GAUCs.
    assert g["diff"] == pytest.approx(gauc(users, labels, good)[0] - gauc(users, labels, noisy)[0])


def test_paired_gauc_p_values_roughly_uniform_under_the_null():
    # Two equally noisy models: the test should reject about 5% of the time, not much more.
    rejections = 0
    for seed in range(60):
        users, labels, z, rng = ctr_data(30, 8, seed)
        a, b = z + rng.normal(size=len(z)), z + rng.normal(size=len(z))
        rejections += paired_gauc(users, labels, a, b, n_boot=10, seed=seed, n_perm=300)["gauc"]["p_value"] < 0.05
    assert rejections <= 9


def test_paired_gauc_exact_enumeration_with_few_users():
    # Two users, both better under B: all 4 sign patterns enumerated, only (+,+) and (-,-) reach |T| -> p = 1/2.
    users, labels = [0, 0, 1, 1], [1, 0, 1, 0]
    out = paired_gauc(users, labels, [0.1, 0.9, 0.1, 0.9], [0.9, 0.1, 0.9, 0.1], n_boot=20)
    assert out["gauc"]["diff"] == 1.0 and out["gauc"]["p_value"] == 0.5 and "exact" in out["test"]


def test_paired_gauc_refuses_different_lengths():
    with pytest.raises(ValueError, match="scores_b=3"):
        paired_gauc([0, 0, 1, 1], [1, 0, 1, 0], [0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3])


def test_paired_gauc_over_several_runs_per_model():
    # Seeds of one model: each user's AUC is their mean, so GAUC is the mean of the runs' GAUCs (same users).
    users, labels, z, rng = ctr_data(80, 10, 3)
    runs_b = [z + rng.normal(scale=0.5, size=len(z)) for _ in range(3)]
    runs_a = [z + rng.normal(scale=3.0, size=len(z)) for _ in range(2)]
    out = paired_gauc(users, labels, runs_a, runs_b, n_boot=100, n_perm=500)
    assert out["runs"] == [2, 3] and "averaged over runs" in out["test"]
    assert out["gauc"]["b"] == pytest.approx(np.mean([gauc(users, labels, r)[0] for r in runs_b]))
    assert out["gauc"]["a"] == pytest.approx(np.mean([gauc(users, labels, r)[0] for r in runs_a]))
    assert out["auc"]["b"] == pytest.approx(np.mean([auc(labels, r) for r in runs_b]))
    assert out["gauc"]["p_value"] < 0.05 and out["gauc"]["ci_low"] > 0
    # the same run twice is the run itself
    same = paired_gauc(users, labels, [runs_a[0], runs_a[0]], runs_a[0], n_boot=20, n_perm=100)
    assert same["gauc"]["diff"] == 0 and same["gauc"]["p_value"] == 1.0


def test_paired_gauc_refuses_bad_run_shapes():
    with pytest.raises(ValueError, match=r"scores_b\[1\]=3"):
        paired_gauc([0, 0, 1, 1], [1, 0, 1, 0], [0.1, 0.2, 0.3, 0.4], [[0.1, 0.2, 0.3, 0.4], [0.1, 0.2, 0.3]])
    with pytest.raises(ValueError, match="scores_a must be"):
        paired_gauc([0, 0, 1, 1], [1, 0, 1, 0], np.zeros((1, 1, 4)), [0.1, 0.2, 0.3, 0.4])


# ---------------------------------------------------------------------------------------------------- calibration


def test_log_loss_and_normalized_entropy():
    y = np.array([1, 0, 0, 0])
    assert log_loss(y, [0.25] * 4) == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)))
    assert normalized_entropy(y, [0.25] * 4) == pytest.approx(1.0)  # predicting the base rate
    assert normalized_entropy(y, [0.9, 0.1, 0.1, 0.1]) < 1
    assert math.isfinite(log_loss([1, 0], [0.0, 1.0]))  # clipped, not infinite
    assert math.isnan(normalized_entropy([1, 1], [0.5, 0.5]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        log_loss([1, 0], [1.5, 0.2])


def test_ece_calibrated_vs_shifted():
    rng = np.random.default_rng(0)
    p = rng.random(200_000)
    y = (rng.random(len(p)) < p).astype(int)
    value, table = ece(y, p)
    assert value < 0.01
    assert table["count"].sum() == len(p) and len(table["count"]) == 15
    np.testing.assert_allclose(table["mean_prob"], table["pos_rate"], atol=0.02)
    shifted, _ = ece(y, np.clip(p + 0.1, 0, 1))
    assert shifted > 0.08
    assert calibration_ratio(y, p) == pytest.approx(1, abs=0.01)
    assert calibration_ratio(y, np.clip(p + 0.1, 0, 1)) > 1.15


def test_ece_table_by_hand():
    value, table = ece([0, 1, 1, 1], [0.1, 0.2, 0.9, 1.0], bins=2)
    # Bin [0, .5): mean prob .15, positive rate .5; bin [.5, 1]: mean prob .95, rate 1 -> (2*.35 + 2*.05) / 4.
    np.testing.assert_allclose(table["count"], [2, 2])
    np.testing.assert_allclose(table["mean_prob"], [0.15, 0.95])
    np.testing.assert_allclose(table["pos_rate"], [0.5, 1.0])
    assert value == pytest.approx(0.2)
    _, table = ece([1], [0.3], bins=4)
    assert np.isnan(table["mean_prob"][0]) and table["count"][1] == 1


def test_regression_metrics():
    y, x = np.array([1.0, 2.0, 3.0, 4.0]), np.array([2.0, 2.0, 2.0, 6.0])
    assert mse(y, x) == pytest.approx((1 + 0 + 1 + 4) / 4)
    assert mae(y, x) == pytest.approx((1 + 0 + 1 + 2) / 4)
    assert pearson(y, x) == pytest.approx(np.corrcoef(y, x)[0, 1])
    assert pearson(y, 3 * y + 1) == pytest.approx(1.0)
    assert math.isnan(pearson(y, np.ones(4)))


# ---------------------------------------------------------------------------------------------------- reports


def test_task_report_binary():
    users, labels, z, _ = ctr_data(150, 12, 5)
    probs = 1 / (1 + np.exp(-z))
    rep = task_report(users, labels, probs, n_boot=200, seed=0)
    m = rep["metrics"]
    assert m["auc"]["value"] == pytest.approx(auc(labels, probs))
    assert m["gauc"]["value"] == pytest.approx(gauc(users, labels, probs)[0])
    assert m["log_loss"]["value"] == pytest.approx(log_loss(labels, probs))
    assert m["normalized_entropy"]["value"] == pytest.approx(normalized_entropy(labels, probs))
    assert m["calibration_ratio"]["value"] == pytest.approx(calibration_ratio(labels, probs))
    assert m["ece"]["value"] == pytest.approx(ece(labels, probs)[0])
    for k in ("auc", "gauc", "log_loss", "normalized_entropy", "calibration_ratio"):
        assert m[k]["ci_low"] < m[k]["value"] < m[k]["ci_high"], k
    assert rep["rows"] == len(labels) and rep["users"] == 150
    assert rep["gauc_users"] + rep["gauc_users_skipped"] == 150
    assert sum(rep["reliability"]["count"]) == len(labels)


def test_task_report_resamples_users_not_rows():
    # Every user's rows are identical copies: row resampling would shrink the interval ~sqrt(50)-fold.
    users, labels, z, _ = ctr_data(60, 1, 2)
    rep1 = task_report(users, labels, 1 / (1 + np.exp(-z)), n_boot=300)
    rep50 = task_report(np.repeat(users, 50), np.repeat(labels, 50), np.repeat(1 / (1 + np.exp(-z)), 50), n_boot=300)
    for k in ("auc", "log_loss"):
        w1 = rep1["metrics"][k]["ci_high"] - rep1["metrics"][k]["ci_low"]
        w50 = rep50["metrics"][k]["ci_high"] - rep50["metrics"][k]["ci_low"]
        assert w50 == pytest.approx(w1, rel=1e-6), k


def test_task_report_regression():
    rng = np.random.default_rng(0)
    users = np.repeat(np.arange(100), 10)
    watch = rng.gamma(2.0, 30.0, size=len(users))
    pred = watch + rng.normal(scale=10, size=len(users))
    rep = task_report(users, watch, pred, kind="regression", n_boot=200)
    m = rep["metrics"]
    assert m["mse"]["value"] == pytest.approx(mse(watch, pred))
    assert m["mae"]["value"] == pytest.approx(mae(watch, pred))
    assert m["pearson"]["value"] == pytest.approx(pearson(watch, pred))
    for k in ("mse", "mae", "pearson"):
        assert m[k]["ci_low"] < m[k]["value"] < m[k]["ci_high"], k


def test_task_report_rejects_bad_input():
    with pytest.raises(ValueError, match="kind"):
        task_report([0], [1], [0.5], kind="multiclass")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="sigmoid"):
        task_report([0, 1], [1, 0], [2.0, -1.0])
    with pytest.raises(ValueError, match="same length"):
        task_report([0, 1, 2], [1, 0], [0.2, 0.3])


def test_gauc_is_fast_on_many_rows():
    import time

    users, labels, z, _ = ctr_data(20_000, 25, 9)  # 5e5 rows
    t = time.perf_counter()
    value, per_user = gauc(users, labels, z)
    assert time.perf_counter() - t < 5  # generous for 2 shared cores; about 0.3 s when idle
    assert 0.5 < value < 1 and per_user.n_users + per_user.n_skipped == 20_000


def test_task_report_uses_the_resamples_of_bootstrap_ci():
    from genrec.eval.stats import bootstrap_ci

    users, labels, z, _ = ctr_data(60, 1, 2)  # one row per user: the log-loss resamples are bootstrap_ci's
    probs = 1 / (1 + np.exp(-z))
    rep = task_report(users, labels, probs, n_boot=300, seed=4)["metrics"]["log_loss"]
    rows = -(labels * np.log(probs) + (1 - labels) * np.log(1 - probs))
    ref = bootstrap_ci({"ll": rows}, n_boot=300, seed=4)["ll"]
    assert (rep["ci_low"], rep["ci_high"]) == pytest.approx((ref["ci_low"], ref["ci_high"]))
