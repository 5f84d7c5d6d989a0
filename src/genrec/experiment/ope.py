"""Off-policy evaluation: a candidate policy's value estimated from logs that another (logging) policy collected.

Each logged row is one decision (a request, or a slot of one under an item-position model) with the reward it got,
the logging policy's propensity of the logged action ``p`` and the candidate's probability of the same action
``pi``; ``w = pi / p``.

- **IPS** (Horvitz & Thompson, 1952): ``mean(w r)``, unbiased when ``p > 0`` wherever ``pi > 0``.
- **Self-normalised IPS** (Swaminathan & Joachims, 2015, "The self-normalized estimator for counterfactual
  learning", NeurIPS): ``sum(w r) / sum(w)``; slightly biased, much less variable when weights are large.
- **Doubly robust** (Dudik, Langford & Li, 2011, "Doubly robust policy evaluation and learning", ICML):
  ``mean(q_pi + w (r - q))``, ``q`` a reward model's prediction for the logged action and ``q_pi`` its expectation
  under the candidate (``sum over a of pi(a) q(a)``); unbiased when either the propensities or the model are right,
  and tight when the model is good.

Intervals are normal (1 - alpha) with the sample standard error; ``groups`` (e.g. the request or user of each
row) makes rows of one group count as one unit (delta method on group sums), as they must when one request logs
several slots. The effective sample size ``(sum w)^2 / sum w^2`` (Kish) says how many on-policy rows the
estimate is worth; far below n means the candidate strays where the logging policy rarely went.

Open Bandit Pipeline (``obp``) is not used: its maintained releases (0.5.x) pin Python < 3.11, torch 1.12,
numpy 1.23.5 and scipy 1.9.3, so they do not install beside genrec's Python 3.11 / numpy 2 / torch 2 stack; the
newest release that does install (0.4.1, 2021) pulls pandas, seaborn, matplotlib and scikit-learn for three
formulas, gives bootstrap-only intervals, no effective sample size and no grouping of rows by request. The
estimators below are its formulas (they return obp 0.4.1's values on the same logs); the tests check them on
hand-computed cases and simulated bandit data.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from dataclasses import dataclass

import numpy as np

from genrec.experiment.stats import ALPHA, Estimate, ratio_estimate, user_totals

Array = np.ndarray | Sequence[float]


@dataclass(frozen=True)
class OpeEstimate:
    """An estimator's value with its interval, the rows behind it and their effective sample size."""

    estimator: str
    estimate: Estimate
    ess: float

    @property
    def value(self) -> float:
        return self.estimate.value


def weights(target_prob: Array, logging_prob: Array, clip: float | None = None) -> np.ndarray:
    """Importance weights ``pi / p`` (clipped at ``clip`` when given: biased, less variable)."""
    pi, p = np.asarray(target_prob, dtype=np.float64), np.asarray(logging_prob, dtype=np.float64)
    if pi.shape != p.shape or pi.ndim != 1:
        raise ValueError(f"target_prob and logging_prob: one per logged row, got shapes {pi.shape} and {p.shape}")
    if (p <= 0).any() or (p > 1).any():
        raise ValueError("logging_prob: propensities must be in (0, 1] (a logged action had probability > 0)")
    if (pi < 0).any() or (pi > 1).any():
        raise ValueError("target_prob: probabilities must be in [0, 1]")
    w = pi / p
    return np.minimum(w, clip) if clip is not None else w


def effective_sample_size(w: Array) -> float:
    """Kish's effective sample size of importance weights, ``(sum w)^2 / sum w^2``."""
    w = np.asarray(w, dtype=np.float64)
    sq = float((w * w).sum())
    return float(w.sum() ** 2 / sq) if sq > 0 else 0.0


def _grouped(num: np.ndarray, den: np.ndarray | None, groups: Sequence[Hashable] | None, alpha: float) -> Estimate:
    if groups is None:
        return ratio_estimate(num, den, alpha)
    if len(groups) != len(num):
        raise ValueError(f"groups: one per logged row, got {len(groups)} for {len(num)} rows")
    d = np.ones_like(num) if den is None else den
    _, gn, gd = user_totals(np.asarray(groups).astype(str), num, d)
    return ratio_estimate(gn, gd, alpha)


def _reward(reward: Array, n: int) -> np.ndarray:
    r = np.asarray(reward, dtype=np.float64)
    if r.shape != (n,) or not np.isfinite(r).all():
        raise ValueError(f"reward: one finite value per logged row ({n}), got shape {r.shape}")
    return r


def ips(reward: Array, target_prob: Array, logging_prob: Array, *, groups: Sequence[Hashable] | None = None,
        clip: float | None = None, alpha: float = ALPHA) -> OpeEstimate:
    """Inverse propensity scoring: ``mean(w r)``."""
    w = weights(target_prob, logging_prob, clip)
    return OpeEstimate("ips", _grouped(w * _reward(reward, len(w)), None, groups, alpha), effective_sample_size(w))


def snips(reward: Array, target_prob: Array, logging_prob: Array, *, groups: Sequence[Hashable] | None = None,
          clip: float | None = None, alpha: float = ALPHA) -> OpeEstimate:
    """Self-normalised IPS: ``sum(w r) / sum(w)`` (delta-method interval)."""
    w = weights(target_prob, logging_prob, clip)
    if w.sum() <= 0:
        raise ValueError("snips: every importance weight is 0 (the candidate never takes a logged action)")
    return OpeEstimate("snips", _grouped(w * _reward(reward, len(w)), w, groups, alpha), effective_sample_size(w))


def doubly_robust(reward: Array, target_prob: Array, logging_prob: Array, q_logged: Array, q_target: Array, *,
                  groups: Sequence[Hashable] | None = None, clip: float | None = None,
                  alpha: float = ALPHA) -> OpeEstimate:
    """Doubly robust: ``mean(q_target + w (r - q_logged))``; ``q_logged`` the reward model's prediction for the
    logged action, ``q_target`` its expectation under the candidate policy (both one per row)."""
    w = weights(target_prob, logging_prob, clip)
    r = _reward(reward, len(w))
    q, qt = np.asarray(q_logged, dtype=np.float64), np.asarray(q_target, dtype=np.float64)
    if q.shape != w.shape or qt.shape != w.shape:
        raise ValueError(f"q_logged and q_target: one prediction per logged row ({len(w)}), "
                         f"got shapes {q.shape} and {qt.shape}")
    return OpeEstimate("dr", _grouped(qt + w * (r - q), None, groups, alpha), effective_sample_size(w))
