"""Exploration: sample the shown list from the model's scores and log how likely each shown item was.

**Plackett-Luce** with temperature T: the list is drawn slot by slot without replacement, item i taking the next
slot with probability ``exp(s_i / T) / sum over the items not yet shown of exp(s_j / T)``. Adding independent
Gumbel(0, 1) noise to ``s / T`` and taking the top k draws exactly this list in one sort (the Gumbel-top-k trick:
Yellott, 1977; Kool, van Hoof & Welling, 2019, "Stochastic beams and where to find them", ICML).

**Epsilon-greedy slots**: each slot, in order, shows with probability epsilon a candidate drawn uniformly from those
not yet shown, and otherwise the best-scored candidate not yet shown.

**The logged propensity** of the item in slot j is, for both samplers, its *conditional* probability
``P(slot j = item | slots 0..j-1 as shown)``: exact and cheap. The product of a list's logged propensities is the
probability of the whole list (its log is :attr:`Sampled.log_prob`), the weight for estimators that treat the list
as one action; for slot 0 the conditional probability is also the marginal one. Estimators that credit items or
slots separately (item-position or inclusion models: Li, Kim, Kveton & Muthukrishnan, 2018, "Offline evaluation of
ranking policies with click models", KDD) need the *marginal* probability of an item at a position, or in the top
k at all, which has no closed form for Plackett-Luce: :func:`position_probs` estimates it for either sampler
(Rao-Blackwellised Monte Carlo, what :mod:`genrec.experiment.offpolicy` uses); :func:`pl_marginals` and
:func:`mc_marginals` count sampled lists.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from genrec.experiment.config import Exploration


@dataclass(frozen=True)
class Sampled:
    """A shown list: ``order`` (indices into the scored candidates, shown order) and ``propensity`` (each slot's
    conditional probability, module docstring)."""

    order: np.ndarray
    propensity: np.ndarray

    @property
    def log_prob(self) -> float:
        """Log-probability of the whole list."""
        return float(np.log(self.propensity).sum())


def _scores(scores: np.ndarray, k: int) -> np.ndarray:
    s = np.asarray(scores, dtype=np.float64)
    if s.ndim != 1 or len(s) == 0 or not np.isfinite(s).all():
        raise ValueError("scores: a non-empty 1-d array of finite scores")
    if not 1 <= k <= len(s):
        raise ValueError(f"k must be in 1..{len(s)} (the number of candidates), got {k}")
    return s


def pl_propensities(scores: np.ndarray, order: np.ndarray, temperature: float = 1.0) -> np.ndarray:
    """The conditional Plackett-Luce probability of each slot of ``order`` (also the target policy's probabilities
    of a logged list, for off-policy evaluation)."""
    order = np.asarray(order, dtype=np.int64)
    s = _scores(scores, max(len(order), 1)) / temperature
    e = np.exp(s - s.max())
    chosen = e[order]
    remaining = e.sum() - np.concatenate([[0.0], np.cumsum(chosen)[:-1]])
    out = np.divide(chosen, remaining, out=np.zeros(len(order)), where=remaining > 0)
    mask = np.ones(len(s), dtype=bool)
    for j in range(len(order)):  # little mass left: the running difference cancels, so shift by what is left
        if remaining[j] < e.sum() * 1e-9:
            left = s[mask]
            out[j] = np.exp(s[order[j]] - left.max()) / np.exp(left - left.max()).sum()
        mask[order[j]] = False
    return out


def plackett_luce(scores: np.ndarray, k: int, temperature: float, rng: np.random.Generator) -> Sampled:
    """Draw ``k`` of the scored candidates by Plackett-Luce (Gumbel top-k) with ``temperature``."""
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    s = _scores(scores, k) / temperature
    keys = s + rng.gumbel(size=len(s))
    top = np.argpartition(-keys, k - 1)[:k] if k < len(s) else np.arange(len(s))
    order = top[np.argsort(-keys[top], kind="stable")]
    return Sampled(order, pl_propensities(scores, order, temperature))


def epsilon_propensities(scores: np.ndarray, order: np.ndarray, epsilon: float) -> np.ndarray:
    """The conditional epsilon-greedy probability of each slot of ``order``: ``epsilon / remaining``, plus
    ``1 - epsilon`` for the best-scored candidate not yet shown (ties: the lower index is the best)."""
    order = np.asarray(order, dtype=np.int64)
    s = _scores(scores, max(len(order), 1))
    greedy = np.argsort(-s, kind="stable")
    shown = np.zeros(len(s), dtype=bool)
    out = np.empty(len(order))
    g = 0
    for j, item in enumerate(order):
        while shown[greedy[g]]:
            g += 1
        out[j] = epsilon / (len(s) - j) + (1 - epsilon) * (item == greedy[g])
        shown[item] = True
    return out


def epsilon_greedy(scores: np.ndarray, k: int, epsilon: float, rng: np.random.Generator) -> Sampled:
    """Fill ``k`` slots: each explores (a uniform draw among candidates not yet shown) with probability
    ``epsilon``, else shows the best-scored candidate not yet shown."""
    if not 0 <= epsilon <= 1:
        raise ValueError(f"epsilon must be in [0, 1], got {epsilon}")
    s = _scores(scores, k)
    greedy = np.argsort(-s, kind="stable")
    shown = np.zeros(len(s), dtype=bool)
    order = np.empty(k, dtype=np.int64)
    explore = rng.random(k) < epsilon
    g = 0
    for j in range(k):
        while shown[greedy[g]]:
            g += 1
        if explore[j]:
            order[j] = rng.choice(np.flatnonzero(~shown))
        else:
            order[j] = greedy[g]
        shown[order[j]] = True
    return Sampled(order, epsilon_propensities(scores, order, epsilon))


def sample_list(scores: np.ndarray, k: int, exploration: Exploration, rng: np.random.Generator) -> Sampled:
    """The shown list an arm's :class:`~genrec.experiment.config.Exploration` draws (kind none: the top k by
    score, each with propensity 1)."""
    if exploration.kind == "plackett_luce":
        return plackett_luce(scores, k, exploration.temperature, rng)
    if exploration.kind == "epsilon":
        return epsilon_greedy(scores, k, exploration.epsilon, rng)
    s = _scores(scores, k)
    return Sampled(np.argsort(-s, kind="stable")[:k], np.ones(k))


def pl_marginals(scores: np.ndarray, k: int, temperature: float, n_samples: int = 10_000,
                 rng: np.random.Generator | None = None, chunk: int = 1 << 20) -> np.ndarray:
    """Monte Carlo estimate of ``P(item i at position j)`` under Plackett-Luce, shape (items, k); a row's sum is
    the item's probability of being shown in the top k (the inclusion propensity). Error ~ sqrt(p (1 - p) / n)."""
    s = _scores(scores, k) / temperature
    rng = rng or np.random.default_rng(0)
    counts = np.zeros((len(s), k))
    rows = max(1, chunk // len(s))  # samples per block: bounded memory for large candidate sets
    for start in range(0, n_samples, rows):
        m = min(rows, n_samples - start)
        keys = s + rng.gumbel(size=(m, len(s)))
        top = np.argpartition(-keys, k - 1, axis=1)[:, :k] if k < len(s) else np.tile(np.arange(len(s)), (m, 1))
        order = np.take_along_axis(top, np.argsort(-np.take_along_axis(keys, top, 1), axis=1), 1)
        np.add.at(counts, (order.ravel(), np.tile(np.arange(k), m)), 1.0)
    return counts / n_samples


def mc_marginals(draw: Callable[[np.random.Generator], np.ndarray], n_items: int, k: int, n_samples: int = 10_000,
                 rng: np.random.Generator | None = None) -> np.ndarray:
    """Monte Carlo ``P(item i at position j)`` for any sampler: ``draw(rng)`` returns one list of k item indices
    (e.g. ``lambda r: epsilon_greedy(scores, k, 0.1, r).order``)."""
    rng = rng or np.random.default_rng(0)
    counts = np.zeros((n_items, k))
    for _ in range(n_samples):
        counts[np.asarray(draw(rng))[:k], np.arange(k)] += 1.0
    return counts / n_samples


def position_probs(scores: np.ndarray, k: int, exploration: Exploration, n_samples: int = 2000,
                   rng: np.random.Generator | None = None) -> np.ndarray:
    """``P(item i at position j)`` (shape (items, k)) of the list :func:`sample_list` draws, for off-policy
    estimators that weight each slot by its marginal propensity. Rao-Blackwellised Monte Carlo: the first ``j``
    slots are sampled and the *exact* conditional distribution of slot j given them is averaged, so every item
    the policy can put at j gets a positive estimate (plain counting gives 0 to rare ones, an infinite weight) and
    the error is far smaller than counting's. Slot 0 is exact. kind none: the top k by score, exactly."""
    s = _scores(scores, k)
    n = len(s)
    out = np.zeros((n, k))
    if exploration.kind == "none":
        out[np.argsort(-s, kind="stable")[:k], np.arange(k)] = 1.0
        return out
    rng = rng or np.random.default_rng(0)
    m = n_samples
    available = np.ones((m, n), dtype=bool)
    rows = np.arange(m)
    if exploration.kind == "plackett_luce":
        z = s / exploration.temperature
    else:
        best_order = np.argsort(-s, kind="stable")
        rank = np.empty(n, dtype=np.int64)
        rank[best_order] = np.arange(n)
    for j in range(k):
        if exploration.kind == "plackett_luce":
            logits = np.where(available, z[None, :], -np.inf)
            p = np.exp(logits - logits.max(1, keepdims=True))
            p /= p.sum(1, keepdims=True)
        else:
            eps = exploration.epsilon
            p = available * (eps / (n - j))
            best = np.where(available, rank[None, :], n).argmin(1)  # the best-scored item not yet shown
            p[rows, best] += 1 - eps
        out[:, j] = p.mean(0)
        if j + 1 < k:  # draw slot j from its conditional (Gumbel-max) and go on
            keys = np.log(np.maximum(p, 1e-300)) + rng.gumbel(size=p.shape)
            pick = np.where(available, keys, -np.inf).argmax(1)
            available[rows, pick] = False
    return out
