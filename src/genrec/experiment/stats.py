"""Statistics of an online experiment: users are the unit of analysis.

Ratio metrics (clicks per exposure, watch time per view) are ``sum(num) / sum(den)`` over an arm's users. Exposures
of one user are correlated, so treating exposures as independent understates the variance; the **delta method**
gives the variance of the ratio with users as the unit (Deng, Knoblich & Lu, 2018, "Applying the delta method in
metric analytics", KDD). It is computed through each user's *linearised* value
``L_u = R + (num_u - R den_u) / mean(den)``, whose mean is ``R`` and whose sample variance over n is the delta-method
variance, so every tool for means (CUPED, sequential intervals) applies to ratios unchanged.

**CUPED** (Deng, Xu, Kohavi & Walker, 2013, "Improving the sensitivity of online controlled experiments by utilizing
pre-experiment data", WSDM) subtracts ``theta (x - mean(x))`` from each user's value, ``x`` a pre-experiment
covariate and ``theta = cov(y, x) / var(x)`` estimated on both arms pooled (so it does not depend on the
assignment); the difference in means stays unbiased and its variance shrinks by about ``1 - corr(y, x)^2``.

The **sample-ratio-mismatch** check is Pearson's chi-square test of the users per arm against the configured shares
(Fabijan et al., 2019, "Diagnosing sample ratio mismatch in online controlled experiments", KDD); a p-value under
0.001 means the assignment or the logging is broken and no other number of the experiment should be trusted.

**Always-valid intervals** (looking every hour without inflating false positives) use the normal-mixture boundary
(Robbins, 1970; Howard, Ramdas, McAuliffe & Sekhon, 2021, "Time-uniform, nonparametric, nonasymptotic confidence
sequences", Ann. Statist., eq. (14); the two-sample form is the mSPRT of Johari, Koomen, Pekelis & Walsh, 2022,
"Always valid inference: continuous monitoring of A/B tests", Oper. Res.). With an estimate of standard error
``se`` and a N(0, tau^2) mixture over the effect, the interval at every look is
``estimate +- se sqrt((1 + se^2 / tau^2) (log(1 + tau^2 / se^2) - 2 log alpha))``; it covers the truth at all looks
at once with probability >= 1 - alpha (exactly for Gaussian increments with known variance, asymptotically with the
variance estimated: Waudby-Smith, Arbour, Sinha, Kennedy & Ramdas, 2024, "Time-uniform central limit theory and
asymptotic confidence sequences", Ann. Statist.). ``tau`` (the mixing parameter) sets where the interval is
tightest; :func:`tau_for` picks it for a planned horizon.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from statistics import NormalDist

import numpy as np

ALPHA = 0.05
_NORMAL = NormalDist()  # the standard normal without importing scipy.stats (slow to load) on the serving path


@dataclass(frozen=True)
class Estimate:
    """A point estimate with its standard error and a two-sided 1 - alpha normal interval; ``n`` units behind it."""

    value: float
    se: float
    low: float
    high: float
    n: int

    @property
    def p_value(self) -> float:
        """Two-sided p-value of value = 0 (meaningful for differences)."""
        if self.se == 0:
            return 0.0 if self.value != 0 else 1.0
        return 2 * (1 - _NORMAL.cdf(abs(self.value) / self.se))


@dataclass(frozen=True)
class Difference:
    """Treatment against control: absolute difference and relative lift (treatment / control - 1)."""

    control: Estimate
    treatment: Estimate
    absolute: Estimate
    relative: Estimate
    variance_reduction: float = 0.0  # CUPED: share of the difference's variance removed (0 without a covariate)


def normal_estimate(value: float, se: float, n: int, alpha: float = ALPHA) -> Estimate:
    z = _NORMAL.inv_cdf(1 - alpha / 2)
    return Estimate(float(value), float(se), float(value - z * se), float(value + z * se), int(n))


def _as_1d(x: Sequence[float] | np.ndarray, what: str) -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim != 1:
        raise ValueError(f"{what}: expected one value per user (1-d), got shape {a.shape}")
    if not np.isfinite(a).all():
        raise ValueError(f"{what}: values must be finite")
    return a


def user_totals(users: Sequence | np.ndarray, *values: Sequence[float] | np.ndarray) -> tuple[np.ndarray, ...]:
    """Sum per user: ``(unique users, totals of values[0], totals of values[1], ...)`` (e.g. exposures and clicks
    of an exposure log, one row per exposure)."""
    uniq, inv = np.unique(np.asarray(users), return_inverse=True)
    sums = tuple(np.bincount(inv, weights=_as_1d(v, "values"), minlength=len(uniq)) for v in values)
    return (uniq, *sums)


def linearize(num: Sequence[float] | np.ndarray, den: Sequence[float] | np.ndarray | None = None
              ) -> tuple[np.ndarray, float]:
    """Per-user linearised values of the ratio ``sum(num) / sum(den)`` and the ratio; their mean is the ratio and
    their variance / n the delta-method variance. ``den`` None: a plain mean (the values are ``num``)."""
    y = _as_1d(num, "num")
    if den is None:
        return y, float(y.mean()) if len(y) else float("nan")
    x = _as_1d(den, "den")
    if len(x) != len(y):
        raise ValueError(f"num and den: one value per user each, got {len(y)} and {len(x)}")
    if len(x) == 0 or x.sum() <= 0:
        raise ValueError("den: the denominator must have a positive total (no exposures?)")
    mean_x = x.mean()
    r = y.sum() / x.sum()
    return r + (y - r * x) / mean_x, float(r)


def _mean_estimate(values: np.ndarray, alpha: float) -> Estimate:
    n = len(values)
    if n < 2:
        raise ValueError(f"an interval needs at least 2 users, got {n}")
    return normal_estimate(values.mean(), values.std(ddof=1) / np.sqrt(n), n, alpha)


def ratio_estimate(num: Sequence[float] | np.ndarray, den: Sequence[float] | np.ndarray | None = None,
                   alpha: float = ALPHA) -> Estimate:
    """``sum(num) / sum(den)`` over users with its delta-method interval (``den`` None: the mean of ``num``)."""
    return _mean_estimate(linearize(num, den)[0], alpha)


def cuped_theta(y: np.ndarray, x: np.ndarray) -> float:
    """``cov(y, x) / var(x)``: the regression slope CUPED subtracts (0 when x does not vary)."""
    var = x.var(ddof=1)
    return float(np.cov(y, x, ddof=1)[0, 1] / var) if var > 0 else 0.0


def cuped(y_a: np.ndarray, x_a: np.ndarray, y_b: np.ndarray, x_b: np.ndarray
          ) -> tuple[np.ndarray, np.ndarray, float]:
    """CUPED-adjusted values of both arms and theta: ``y - theta (x - mean(x))``, theta and mean(x) on both arms
    pooled. ``x`` is each user's pre-experiment covariate (e.g. the same metric over the weeks before; users with
    no history: 0)."""
    y = np.concatenate([y_a, y_b])
    x = np.concatenate([x_a, x_b])
    theta, centre = cuped_theta(y, x), x.mean()
    return y_a - theta * (x_a - centre), y_b - theta * (x_b - centre), theta


def _difference(la: np.ndarray, lb: np.ndarray, alpha: float, reduction: float = 0.0) -> Difference:
    a, b = _mean_estimate(la, alpha), _mean_estimate(lb, alpha)
    se = float(np.hypot(a.se, b.se))
    absolute = normal_estimate(b.value - a.value, se, a.n + b.n, alpha)
    if a.value == 0:
        relative = normal_estimate(float("nan"), float("nan"), a.n + b.n, alpha)
    else:  # delta method for b / a - 1 with independent arms
        rel_se = np.sqrt(b.se**2 / a.value**2 + b.value**2 * a.se**2 / a.value**4)
        relative = normal_estimate(b.value / a.value - 1, rel_se, a.n + b.n, alpha)
    return Difference(a, b, absolute, relative, reduction)


def difference(num_a: np.ndarray | Sequence[float], num_b: np.ndarray | Sequence[float], *,
               den_a: np.ndarray | Sequence[float] | None = None, den_b: np.ndarray | Sequence[float] | None = None,
               pre_a: np.ndarray | Sequence[float] | None = None, pre_b: np.ndarray | Sequence[float] | None = None,
               alpha: float = ALPHA) -> Difference:
    """Arm b (treatment) against arm a (control), one value per user. With ``den_*``: the ratio metric
    ``sum(num) / sum(den)`` (delta method); with ``pre_*``: CUPED on each user's pre-experiment covariate.
    Each arm's own estimate is reported as measured (not CUPED-adjusted); the difference uses the adjustment."""
    if (den_a is None) != (den_b is None) or (pre_a is None) != (pre_b is None):
        raise ValueError("give den_a and den_b together, and pre_a and pre_b together")
    la, _ = linearize(num_a, den_a)
    lb, _ = linearize(num_b, den_b)
    if pre_a is None:
        return _difference(la, lb, alpha)
    xa, xb = _as_1d(pre_a, "pre_a"), _as_1d(pre_b, "pre_b")
    if len(xa) != len(la) or len(xb) != len(lb):
        raise ValueError("pre_a / pre_b: one covariate value per user of the arm")
    ca, cb, _ = cuped(la, xa, lb, xb)
    plain, adjusted = _difference(la, lb, alpha), _difference(ca, cb, alpha)
    reduction = 1 - (adjusted.absolute.se / plain.absolute.se) ** 2 if plain.absolute.se > 0 else 0.0
    return Difference(plain.control, plain.treatment, adjusted.absolute, adjusted.relative, float(reduction))


@dataclass(frozen=True)
class SampleRatio:
    """Users per arm against the configured shares; ``mismatch`` True: do not trust the experiment."""

    observed: tuple[int, ...]
    expected: tuple[float, ...]
    chi2: float
    p_value: float
    mismatch: bool


def srm_check(counts: Sequence[int], shares: Sequence[float], threshold: float = 0.001) -> SampleRatio:
    """Pearson chi-square test of users per arm against ``shares`` (they are normalised to sum to 1); a p-value
    under ``threshold`` is a sample-ratio mismatch."""
    from scipy import stats

    obs = np.asarray(counts, dtype=np.float64)
    p = np.asarray(shares, dtype=np.float64)
    if obs.shape != p.shape or obs.ndim != 1 or len(obs) < 2:
        raise ValueError(f"counts and shares: one per arm (two or more), got {len(obs)} and {len(p)}")
    if (p <= 0).any() or (obs < 0).any() or obs.sum() == 0:
        raise ValueError("shares must be > 0 and counts >= 0 with at least one user")
    expected = obs.sum() * p / p.sum()
    chi2, pv = stats.chisquare(obs, expected)
    return SampleRatio(tuple(int(c) for c in obs), tuple(float(e) for e in expected), float(chi2), float(pv),
                       bool(pv < threshold))


def mixture_halfwidth(se: np.ndarray | float, tau: float, alpha: float = ALPHA) -> np.ndarray:
    """Half-width of the always-valid normal-mixture interval for an estimate with standard error ``se``, mixing
    N(0, tau^2) over the effect (module docstring). Vectorised over ``se`` (looks); NaN se: infinite."""
    if tau <= 0 or not 0 < alpha < 1:
        raise ValueError(f"tau must be > 0 and alpha in (0, 1), got tau={tau}, alpha={alpha}")
    s2 = np.asarray(se, dtype=np.float64) ** 2
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = tau**2 / s2
        w = np.sqrt(s2 * (1 + 1 / ratio) * (np.log1p(ratio) - 2 * np.log(alpha)))
    return np.where(s2 > 0, w, np.where(np.isnan(s2), np.inf, 0.0))  # no se yet: unbounded


def tau_for(se_at_horizon: float, alpha: float = ALPHA) -> float:
    """The mixing sd ``tau`` that makes the always-valid interval narrowest when the standard error has shrunk to
    ``se_at_horizon`` (the planned end of the experiment); narrower and wider elsewhere."""
    from scipy import optimize

    def width(log_c: float) -> float:
        c = np.exp(log_c)
        return (1 + 1 / c) * (np.log1p(c) - 2 * np.log(alpha))

    best = optimize.minimize_scalar(width, bounds=(-5, 15), method="bounded")
    return float(se_at_horizon * np.sqrt(np.exp(best.x)))


def confidence_sequence(estimate: np.ndarray | float, se: np.ndarray | float, tau: float, alpha: float = ALPHA,
                        intersect: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Always-valid (low, high) at each look, given the estimate and its standard error at each look in time
    order. ``intersect``: keep the running intersection (still valid, never widens)."""
    est = np.asarray(estimate, dtype=np.float64)
    w = mixture_halfwidth(se, tau, alpha)
    low, high = est - w, est + w
    low, high = np.where(np.isnan(low), -np.inf, low), np.where(np.isnan(high), np.inf, high)
    if intersect and low.ndim >= 1:
        low, high = np.maximum.accumulate(low, axis=-1), np.minimum.accumulate(high, axis=-1)
    return low, high


def cumulative_ratio(num: np.ndarray, den: np.ndarray | None = None, include: np.ndarray | None = None
                     ) -> tuple[np.ndarray, np.ndarray]:
    """Ratio ``sum(num[:t]) / sum(den[:t])`` and its delta-method standard error after each unit t, counting only
    the units where ``include`` is True (the last axis is arrival order; leading axes are independent streams).
    NaN until two units have arrived."""
    y = np.asarray(num, dtype=np.float64)
    x = np.ones_like(y) if den is None else np.asarray(den, dtype=np.float64)
    keep = np.ones(y.shape, dtype=bool) if include is None else np.asarray(include, dtype=bool)
    y, x = np.where(keep, y, 0.0), np.where(keep, x, 0.0)
    n = np.cumsum(keep, -1).astype(np.float64)
    sy, sx = np.cumsum(y, -1), np.cumsum(x, -1)
    syy, sxx, sxy = np.cumsum(y * y, -1), np.cumsum(x * x, -1), np.cumsum(x * y, -1)
    with np.errstate(divide="ignore", invalid="ignore"):
        r = sy / sx
        resid = np.maximum(syy - 2 * r * sxy + r * r * sxx, 0.0)  # sum of (y - r x)^2 (its mean is 0 by r's choice)
        se = np.sqrt(resid / (n - 1) / n) / (sx / n)
    return r, np.where(n >= 2, se, np.nan)


@dataclass(frozen=True)
class SequentialPath:
    """The difference (b - a) after each arriving user, with its always-valid interval (running intersection)."""

    estimate: np.ndarray
    low: np.ndarray
    high: np.ndarray
    tau: float


def sequential_difference(num: np.ndarray, treated: np.ndarray, den: np.ndarray | None = None, *,
                          tau: float, alpha: float = ALPHA, burn_in: int = 30) -> SequentialPath:
    """Always-valid intervals for treatment minus control after each user, users in arrival order: ``num`` (and
    ``den`` for a ratio metric) one value per user, ``treated`` True for arm b. Leading axes: independent runs.
    The interval is unbounded until each arm has ``burn_in`` users: the variance estimate needs them (a handful of
    users without a click would give a standard error of 0)."""
    y = np.asarray(num, dtype=np.float64)
    t = np.asarray(treated, dtype=bool)
    if t.shape != y.shape or (den is not None and np.shape(den) != y.shape):
        raise ValueError(f"num, treated and den need the same shape, got {y.shape}, {t.shape}, {np.shape(den)}")
    ra, se_a = cumulative_ratio(y, den, ~t)
    rb, se_b = cumulative_ratio(y, den, t)
    est = rb - ra
    warm = (np.cumsum(~t, -1) >= burn_in) & (np.cumsum(t, -1) >= burn_in)
    low, high = confidence_sequence(est, np.where(warm, np.hypot(se_a, se_b), np.nan), tau, alpha)
    return SequentialPath(est, low, high, tau)

