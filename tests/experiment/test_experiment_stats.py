"""Fixed-horizon statistics: delta-method ratio intervals cover at the nominal rate with users as the unit, CUPED
shrinks the variance without bias, and the sample-ratio check flags a 52/48 split."""

from __future__ import annotations

import numpy as np
import pytest

from genrec.experiment import difference, ratio_estimate, srm_check, user_totals
from genrec.experiment.stats import cumulative_ratio, linearize


def test_ratio_by_hand():
    num, den = [1.0, 2.0, 3.0], [2.0, 2.0, 4.0]
    values, r = linearize(num, den)
    assert r == 0.75 and values == pytest.approx([0.75 - 0.1875, 0.75 + 0.1875, 0.75])
    est = ratio_estimate(num, den)
    assert est.value == 0.75 and est.se == pytest.approx(0.1875 / np.sqrt(3)) and est.n == 3
    assert est.low == pytest.approx(0.75 - 1.959964 * est.se)
    r_t, se_t = cumulative_ratio(np.array(num), np.array(den))
    assert r_t[-1] == 0.75 and se_t[-1] == pytest.approx(est.se) and np.isnan(se_t[0])
    users, exposures, clicks = user_totals(["b", "a", "b"], [1, 1, 1], [0, 1, 1])
    assert list(users) == ["a", "b"] and list(exposures) == [1, 2] and list(clicks) == [1, 1]


def test_relative_lift_by_hand():
    d = difference([1.0, 3.0], [2.0, 6.0])
    assert d.absolute.value == 2.0 and d.relative.value == pytest.approx(1.0)
    a, b = d.control, d.treatment
    assert d.relative.se == pytest.approx(np.sqrt(b.se**2 / a.value**2 + b.value**2 * a.se**2 / a.value**4))
    assert d.absolute.se == pytest.approx(np.hypot(a.se, b.se)) and d.variance_reduction == 0.0


def users(rng: np.random.Generator, n: int, lift: float = 0.0) -> tuple[np.ndarray, np.ndarray]:
    """Per-user exposures and clicks: heavy users and a per-user click rate, so exposures of a user correlate."""
    exposures = rng.geometric(0.08, n).astype(np.float64)
    rate = np.clip(rng.beta(1.0, 9.0, n) * (1 + lift), 0, 1)
    return exposures, rng.binomial(exposures.astype(int), rate).astype(np.float64)


def test_delta_method_covers_at_95_percent_on_aa_tests():
    rng = np.random.default_rng(0)
    reps, n = 800, 400
    delta_cover = naive_cover = 0
    for _ in range(reps):
        (xa, ya), (xb, yb) = users(rng, n), users(rng, n)
        d = difference(ya, yb, den_a=xa, den_b=xb).absolute
        delta_cover += d.low <= 0 <= d.high
        pa, pb = ya.sum() / xa.sum(), yb.sum() / xb.sum()  # exposures as independent trials: too narrow
        se = np.sqrt(pa * (1 - pa) / xa.sum() + pb * (1 - pb) / xb.sum())
        naive_cover += abs(pb - pa) <= 1.96 * se
    assert 0.925 <= delta_cover / reps <= 0.975
    assert naive_cover / reps < 0.88  # the check can tell a wrong unit of analysis


def test_cuped_reduces_variance_without_bias():
    rng = np.random.default_rng(1)
    plain, adjusted, reductions = [], [], []
    for _ in range(300):
        pre = rng.gamma(2.0, 1.0, 2 * 500)  # each user's activity before the experiment
        y = pre + rng.normal(0, 1.0, len(pre))
        y[500:] += 0.1  # the treatment effect
        d = difference(y[:500], y[500:], pre_a=pre[:500], pre_b=pre[500:])
        plain.append(difference(y[:500], y[500:]).absolute.value)
        adjusted.append(d.absolute.value)
        reductions.append(d.variance_reduction)
    plain_var, adjusted_var = np.var(plain), np.var(adjusted)
    assert adjusted_var < 0.5 * plain_var
    assert abs(np.mean(adjusted) - 0.1) < 3 * np.sqrt(adjusted_var / 300)
    assert np.mean(reductions) == pytest.approx(2 / 3, abs=0.05)  # 1 - corr^2 with var(pre) 2, noise 1
    # Ratio metrics take a covariate too: per-user clicks per exposure against the same users' earlier clicks.
    (xa, ya), (xb, yb) = users(rng, 2000), users(rng, 2000)
    pre_a, pre_b = ya + rng.poisson(2, 2000), yb + rng.poisson(2, 2000)
    r = difference(ya, yb, den_a=xa, den_b=xb, pre_a=pre_a, pre_b=pre_b)
    assert r.variance_reduction > 0.2 and r.absolute.se < difference(ya, yb, den_a=xa, den_b=xb).absolute.se


def test_sample_ratio_mismatch():
    flagged = srm_check([10_400, 9_600], [0.5, 0.5])
    assert flagged.mismatch and flagged.chi2 == pytest.approx(32.0) and flagged.expected == (10_000.0, 10_000.0)
    rng = np.random.default_rng(2)
    fine = srm_check(np.bincount(rng.choice(3, 30_000, p=[0.2, 0.3, 0.5]), minlength=3), [0.2, 0.3, 0.5])
    assert not fine.mismatch and fine.p_value > 0.001
    assert not srm_check([52, 48], [0.5, 0.5]).mismatch  # the same split on 100 users is noise
    with pytest.raises(ValueError, match="one per arm"):
        srm_check([1, 2, 3], [0.5, 0.5])


def test_bad_inputs():
    with pytest.raises(ValueError, match="one value per user each"):
        ratio_estimate([1.0, 2.0], [1.0])
    with pytest.raises(ValueError, match="positive total"):
        ratio_estimate([0.0, 0.0], [0.0, 0.0])
    with pytest.raises(ValueError, match="at least 2 users"):
        ratio_estimate([1.0])
    with pytest.raises(ValueError, match="together"):
        difference([1.0, 2.0], [1.0, 2.0], den_a=[1.0, 1.0])
