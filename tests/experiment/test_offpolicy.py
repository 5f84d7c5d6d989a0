"""Position-based off-policy estimates of ranked lists: the position probabilities, and the estimator against a
generated log whose candidate value is known exactly."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from genrec.experiment import Exploration, ips, snips
from genrec.experiment.explore import pl_propensities, position_probs

SCORES = np.array([2.0, 1.0, 0.0, -1.0])


def pl_list_probs(scores: np.ndarray, k: int, t: float) -> dict[tuple[int, ...], float]:
    """Every ordered list of k items with its exact Plackett-Luce probability."""
    return {order: float(np.prod(pl_propensities(scores, np.array(order), t)))
            for order in itertools.permutations(range(len(scores)), k)}


def exact_position_probs(lists: dict[tuple[int, ...], float], n: int, k: int) -> np.ndarray:
    out = np.zeros((n, k))
    for order, p in lists.items():
        out[list(order), np.arange(k)] += p
    return out


def test_position_probs_match_enumeration():
    for t in (0.3, 1.0):
        exact = exact_position_probs(pl_list_probs(SCORES, 3, t), 4, 3)
        got = position_probs(SCORES, 3, Exploration(kind="plackett_luce", temperature=t), 20_000,
                             np.random.default_rng(0))
        assert got == pytest.approx(exact, abs=4e-3)
        assert got[:, 0] == pytest.approx(exact[:, 0], abs=1e-12)  # slot 0 is exact
        assert (got[exact > 0] > 0).all()  # every possible placement has a positive probability (a finite weight)
    eps = position_probs(SCORES, 2, Exploration(kind="epsilon", epsilon=0.4), 20_000, np.random.default_rng(0))
    assert eps[:, 0] == pytest.approx([0.7, 0.1, 0.1, 0.1])  # 0.4 / 4 each, + 0.6 for the best
    # slot 1: after item 0 (0.7), item 1 is the best left (0.4 / 3 + 0.6); after item 2 or 3 (0.2), item 0 is
    assert eps[1, 1] == pytest.approx(0.7 * (0.4 / 3 + 0.6) + 0.2 * 0.4 / 3, abs=5e-3)
    assert eps[0, 1] == pytest.approx(0.3 * (0.4 / 3 + 0.6), abs=5e-3)
    assert position_probs(SCORES, 2, Exploration())[:, :].tolist() == [[1, 0], [0, 1], [0, 0], [0, 0]]
    assert eps.sum(0) == pytest.approx([1, 1])


def test_position_based_ips_recovers_a_known_value():
    """Logging: Plackett-Luce at temperature 1; candidate: at 0.3. Clicks follow the examination hypothesis
    (attraction of the item times a position discount, independent across slots), so the candidate's value per
    slot is known exactly from its position probabilities. The position-based weights recover it; weighting each
    slot by the ratio of conditional propensities given the logged slots above does not."""
    rng = np.random.default_rng(0)
    k, n_lists = 3, 60_000
    attraction = np.array([0.6, 0.4, 0.2, 0.05])
    examine = 1 / np.log2(np.arange(k) + 2)
    log_lists = pl_list_probs(SCORES, k, 1.0)
    target = Exploration(kind="plackett_luce", temperature=0.3)
    truth = float((exact_position_probs(pl_list_probs(SCORES, k, 0.3), 4, k) * attraction[:, None]
                   * examine[None, :]).sum() / k)
    orders = list(log_lists)
    drawn = np.array(orders)[rng.choice(len(orders), n_lists, p=np.array(list(log_lists.values())))]
    clicks = (rng.random((n_lists, k)) < attraction[drawn] * examine[None, :]).astype(float)
    pi_marg = position_probs(SCORES, k, target, 20_000, np.random.default_rng(1))
    mu_marg = position_probs(SCORES, k, Exploration(kind="plackett_luce", temperature=1.0), 20_000,
                             np.random.default_rng(2))
    slots = np.tile(np.arange(k), n_lists)
    items = drawn.ravel()
    groups = np.repeat(np.arange(n_lists), k)
    reward = clicks.ravel()
    est = ips(reward, pi_marg[items, slots], mu_marg[items, slots], groups=groups)
    assert est.estimate.low <= truth <= est.estimate.high
    sn = snips(reward, pi_marg[items, slots], mu_marg[items, slots], groups=groups)
    assert sn.estimate.low <= truth <= sn.estimate.high
    conditional = [(pl_propensities(SCORES, o, 0.3), pl_propensities(SCORES, o, 1.0)) for o in drawn]
    hybrid = ips(reward, np.concatenate([c[0] for c in conditional]), np.concatenate([c[1] for c in conditional]),
                 groups=groups)
    assert not hybrid.estimate.low <= truth <= hybrid.estimate.high  # the list it estimates is not the candidate's
