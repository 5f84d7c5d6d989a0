"""Bootstrap intervals and paired tests over per-user values (genrec.eval.stats)."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from genrec.eval.stats import bootstrap_ci, paired_test


def hits(n: int, p: float, seed: int) -> np.ndarray:
    return (np.random.default_rng(seed).random(n) < p).astype(np.float64)


def test_bootstrap_ci_contains_mean_and_keys():
    values = {"hr@10": hits(400, 0.3, 0), "ndcg@10": np.random.default_rng(1).random(400)}
    out = bootstrap_ci(values, n_boot=500)
    assert list(out) == ["hr@10", "ndcg@10"]
    for k, v in out.items():
        assert set(v) == {"mean", "ci_low", "ci_high"}
        assert v["mean"] == pytest.approx(values[k].mean())
        assert v["ci_low"] < v["mean"] < v["ci_high"]
    # A 95% interval of a mean of 400 Bernoulli(0.3) draws is about +-0.045 wide on each side.
    half = (out["hr@10"]["ci_high"] - out["hr@10"]["ci_low"]) / 2
    assert 0.03 < half < 0.06


@settings(max_examples=30, deadline=None)
@given(values=st.lists(st.floats(0, 1), min_size=2, max_size=60), seed=st.integers(0, 1000))
def test_bootstrap_ci_within_value_range(values, seed):
    x = np.array(values)
    v = bootstrap_ci({"m": x}, n_boot=200, seed=seed)["m"]
    # Every resampled mean lies between the smallest and the largest value.
    assert x.min() - 1e-12 <= v["ci_low"] <= v["ci_high"] <= x.max() + 1e-12
    assert v["mean"] == pytest.approx(x.mean())


def test_bootstrap_ci_narrower_with_more_users():
    widths = []
    for n in (50, 500, 5000):
        v = bootstrap_ci({"m": hits(n, 0.4, seed=n)}, n_boot=400, seed=0)["m"]
        widths.append(v["ci_high"] - v["ci_low"])
    assert widths[0] > widths[1] > widths[2] > 0
    # Width shrinks like 1/sqrt(n): a 10x larger sample is about 3.2x narrower.
    assert 2 < widths[0] / widths[1] < 5 and 2 < widths[1] / widths[2] < 5


def test_bootstrap_ci_deterministic_for_seed():
    values = {"a": hits(300, 0.2, 3), "b": hits(300, 0.6, 4)}
    assert bootstrap_ci(values, n_boot=300, seed=7) == bootstrap_ci(values, n_boot=300, seed=7)
    assert bootstrap_ci(values, n_boot=300, seed=7) != bootstrap_ci(values, n_boot=300, seed=8)


def test_bootstrap_ci_constant_and_empty():
    v = bootstrap_ci({"m": np.full(20, 0.25)}, n_boot=100)["m"]
    assert v == pytest.approx({"mean": 0.25, "ci_low": 0.25, "ci_high": 0.25})
    e = bootstrap_ci({"m": np.array([])})["m"]
    assert all(math.isnan(x) for x in e.values())


def test_bootstrap_ci_n_boot_not_multiple_of_chunk():
    # Resamples are drawn in chunks of 100; an odd count must still work and stay deterministic.
    a = bootstrap_ci({"m": hits(100, 0.5, 0)}, n_boot=257, seed=1)
    assert a == bootstrap_ci({"m": hits(100, 0.5, 0)}, n_boot=257, seed=1)


def test_paired_identical_inputs():
    a = hits(200, 0.3, 0)
    out = paired_test(a, a.copy(), n_boot=200)
    assert out["diff"] == 0 and out["p_value"] == 1 and out["p_wilcoxon"] == 1
    assert out["ci_low"] == out["ci_high"] == 0
    assert out["n"] == 200 and out["mean_a"] == out["mean_b"] == pytest.approx(a.mean())


def test_paired_clearly_better_b():
    rng = np.random.default_rng(0)
    a = rng.random(300) * 0.5
    b = a + 0.1 + rng.normal(0, 0.05, 300)
    out = paired_test(a, b, n_boot=500)
    assert out["diff"] == pytest.approx((b - a).mean()) and out["diff"] > 0
    assert 0 < out["ci_low"] <= out["diff"] <= out["ci_high"]
    assert out["p_value"] < 0.05 and out["p_wilcoxon"] < 0.05
    # Swapping the runs flips the sign, not the evidence.
    rev = paired_test(b, a, n_boot=500)
    assert rev["diff"] == pytest.approx(-out["diff"]) and rev["ci_high"] < 0
    assert rev["p_value"] == pytest.approx(out["p_value"])


def test_paired_no_real_difference_is_not_significant():
    rng = np.random.default_rng(1)
    a = hits(400, 0.3, 10)
    b = np.where(rng.random(400) < 0.5, a, hits(400, 0.3, 11))
    out = paired_test(a, b, n_boot=300)
    assert out["ci_low"] < 0 < out["ci_high"] or out["p_value"] > 0.05


def test_paired_shape_mismatch():
    with pytest.raises(ValueError, match="same shape"):
        paired_test(np.zeros(3), np.zeros(4))
