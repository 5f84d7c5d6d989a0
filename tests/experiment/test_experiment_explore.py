"""Exploration samplers: the logged propensities are the probabilities the samplers actually draw with."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from genrec.experiment import Exploration, epsilon_greedy, pl_marginals, plackett_luce, sample_list
from genrec.experiment.explore import epsilon_propensities, mc_marginals, pl_propensities

SCORES = np.array([2.0, 1.0, 0.5, -1.0])


def frequencies(draw, n: int) -> dict[tuple, float]:
    rng = np.random.default_rng(0)
    seen: dict[tuple, int] = {}
    for _ in range(n):
        key = tuple(int(i) for i in draw(rng).order)
        seen[key] = seen.get(key, 0) + 1
    return {k: v / n for k, v in seen.items()}


@pytest.mark.parametrize("sampler, propensities", [
    (lambda r: plackett_luce(SCORES, 2, 0.7, r), lambda o: pl_propensities(SCORES, o, 0.7)),
    (lambda r: epsilon_greedy(SCORES, 2, 0.3, r), lambda o: epsilon_propensities(SCORES, o, 0.3)),
])
def test_list_probabilities_match_draw_frequencies(sampler, propensities):
    n = 20_000
    freq = frequencies(sampler, n)
    lists = list(itertools.permutations(range(4), 2))
    prob = {lst: float(np.prod(propensities(np.array(lst)))) for lst in lists}
    assert sum(prob.values()) == pytest.approx(1.0)  # the propensities define a distribution over lists
    for lst in lists:
        assert abs(freq.get(lst, 0.0) - prob[lst]) < 4 * np.sqrt(prob[lst] * (1 - prob[lst]) / n) + 1e-9, lst


def test_plackett_luce_propensities_by_hand():
    p = pl_propensities(SCORES, np.array([1, 0, 3]), 1.0)
    e = np.exp(SCORES)
    assert p == pytest.approx([e[1] / e.sum(), e[0] / (e.sum() - e[1]), e[3] / (e[2] + e[3])])
    drawn = plackett_luce(SCORES, 3, 1.0, np.random.default_rng(1))
    assert drawn.propensity == pytest.approx(pl_propensities(SCORES, drawn.order, 1.0))
    assert drawn.log_prob == pytest.approx(np.log(drawn.propensity).sum())


def test_temperature_extremes_and_large_score_spreads():
    rng = np.random.default_rng(0)
    cold = plackett_luce(SCORES, 4, 1e-3, rng)  # exp(score / T) underflows for all but the best item
    assert list(cold.order) == [0, 1, 2, 3] and cold.propensity == pytest.approx([1, 1, 1, 1])
    hot = plackett_luce(SCORES, 4, 1e6, rng)
    assert hot.propensity == pytest.approx([1 / 4, 1 / 3, 1 / 2, 1], rel=1e-4)
    # After the dominant item, the mass left is e^-100 of the total: a running difference would lose it all.
    p = pl_propensities(np.array([100.0, 0.0, 0.5]), np.array([0, 1, 2]), 1.0)
    assert p == pytest.approx([1.0, 1 / (1 + np.exp(0.5)), 1.0])


def test_epsilon_greedy_by_hand_and_config_dispatch():
    by_hand = [0.4 / 4 + 0.6, 0.4 / 3, 0.4 / 2 + 0.6]  # slot 1 explored (2 is not the best left), slot 2 greedy
    assert epsilon_propensities(SCORES, np.array([0, 2, 1]), 0.4) == pytest.approx(by_hand)
    top = sample_list(SCORES, 3, Exploration(), np.random.default_rng(0))
    assert list(top.order) == [0, 1, 2] and list(top.propensity) == [1, 1, 1]
    pl = sample_list(SCORES, 2, Exploration(kind="plackett_luce", temperature=0.5), np.random.default_rng(0))
    assert pl.propensity == pytest.approx(pl_propensities(SCORES, pl.order, 0.5))
    with pytest.raises(ValueError, match="k must be in 1..4"):
        plackett_luce(SCORES, 5, 1.0, np.random.default_rng(0))


def test_marginals():
    m = pl_marginals(SCORES, 2, 1.0, n_samples=40_000, rng=np.random.default_rng(0), chunk=4 * 1000)
    e = np.exp(SCORES)
    assert m[:, 0] == pytest.approx(e / e.sum(), abs=0.01)  # slot 0: the softmax
    exact_second = [sum(e[i] / e.sum() * e[j] / (e.sum() - e[i]) for i in range(4) if i != j) for j in range(4)]
    assert m[:, 1] == pytest.approx(exact_second, abs=0.01)
    assert m.sum(0) == pytest.approx([1, 1]) and (m.sum(1) <= 1).all()
    generic = mc_marginals(lambda r: plackett_luce(SCORES, 2, 1.0, r).order, 4, 2, n_samples=5000)
    assert generic == pytest.approx(m, abs=0.03)
