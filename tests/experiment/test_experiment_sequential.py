"""Always-valid intervals: over many generated experiments, the share whose interval *ever* excludes the truth, looking
after every user, stays at or under alpha, where the fixed-horizon interval looked at as often does not."""

from __future__ import annotations

import numpy as np
import pytest

from genrec.experiment import confidence_sequence, sequential_difference, tau_for
from genrec.experiment.stats import cumulative_ratio, mixture_halfwidth

RUNS, USERS, ALPHA = 300, 2000, 0.05


def ever_excluded(low: np.ndarray, high: np.ndarray, truth: float) -> float:
    return float(((low > truth) | (high < truth)).any(axis=1).mean())


@pytest.mark.parametrize("lift", [0.0, 0.05])
def test_time_uniform_coverage_of_a_difference_in_means(lift):
    rng = np.random.default_rng(0)
    treated = rng.random((RUNS, USERS)) < 0.5
    clicks = (rng.random((RUNS, USERS)) < np.where(treated, 0.1 + lift, 0.1)).astype(np.float64)
    tau = tau_for(np.sqrt(2 * 0.09 / (USERS / 2)), ALPHA)
    path = sequential_difference(clicks, treated, tau=tau, alpha=ALPHA)
    assert ever_excluded(path.low, path.high, lift) <= ALPHA + 0.03
    # The fixed-horizon interval, looked at after every user, excludes the truth far more often.
    ra, sa = cumulative_ratio(clicks, include=~treated)
    rb, sb = cumulative_ratio(clicks, include=treated)
    se = np.hypot(sa, sb)
    warm = np.isfinite(path.low)
    est = np.where(warm, rb - ra, lift)
    naive = ever_excluded(np.where(warm, est - 1.96 * se, -np.inf), np.where(warm, est + 1.96 * se, np.inf), lift)
    assert naive > 0.15
    # And the always-valid interval has still learned something: at the horizon it mostly excludes 0 when lift is 0.05.
    final_excludes_zero = ((path.low[:, -1] > 0) | (path.high[:, -1] < 0)).mean()
    assert final_excludes_zero > 0.5 if lift else final_excludes_zero <= ALPHA


def test_time_uniform_coverage_of_a_ratio_metric():
    rng = np.random.default_rng(1)
    treated = rng.random((RUNS, USERS)) < 0.3  # unequal arms
    exposures = rng.geometric(0.1, (RUNS, USERS)).astype(np.float64)
    rate = rng.beta(1.0, 9.0, (RUNS, USERS))
    clicks = rng.binomial(exposures.astype(np.int64), rate).astype(np.float64)
    path = sequential_difference(clicks, treated, exposures, tau=0.01)
    assert ever_excluded(path.low, path.high, 0.0) <= ALPHA + 0.03
    with np.errstate(invalid="ignore"):  # inf - inf before the burn-in
        widening = np.diff(path.high - path.low, axis=1)  # running intersection: never widens once finite
    assert (widening[np.isfinite(widening)] <= 1e-12).all() and np.isfinite(widening[:, -1]).all()


def test_mixing_parameter():
    se = 0.01
    tau = tau_for(se)
    best = float(mixture_halfwidth(se, tau))
    assert best < float(mixture_halfwidth(se, 2 * tau)) and best < float(mixture_halfwidth(se, tau / 2))
    assert 1.96 * se < best < 3.5 * se  # the price of looking at every step is bounded at the horizon
    low, high = confidence_sequence(np.array([0.5, 0.4, 0.45]), np.array([np.nan, 0.1, 0.05]), tau=0.1,
                                    intersect=False)
    assert low[0] == -np.inf and high[0] == np.inf  # no standard error yet: unbounded
    assert high[1] - low[1] > high[2] - low[2]
    with pytest.raises(ValueError, match="tau must be > 0"):
        mixture_halfwidth(0.1, 0.0)
